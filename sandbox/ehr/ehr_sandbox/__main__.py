"""`python -m ehr_sandbox ...`: the sandbox's command line (see `ehr_sandbox.cli`)."""

from ehr_sandbox.cli import main

raise SystemExit(main())
