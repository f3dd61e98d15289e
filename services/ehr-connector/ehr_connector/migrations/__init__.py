"""Alembic revisions of the ehr-connector service's own tables."""
