"""The outbound side's pure rules: events and EHR state → R4 resources and decisions.

No I/O (an import-linter contract forbids sqlalchemy, fastapi and httpx here): the
builders (`appointments`, `intake`, `messages`, `triage`), our identifier systems
(`identifiers`), the origin tag (`tags`) and the R4 validation gate (`r4`).
"""
