"""`python -m ehr_sandbox ...`: the sandbox's command line (see `ehr_sandbox.dev.cli`)."""

from ehr_sandbox.dev.cli import main

raise SystemExit(main())
