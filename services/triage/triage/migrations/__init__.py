"""Alembic revisions of the triage service's own tables."""
