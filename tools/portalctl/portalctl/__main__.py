"""`python -m portalctl` (the same as the `portalctl` console script)."""

from portalctl.cli import main

raise SystemExit(main())
