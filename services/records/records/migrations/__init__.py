"""Alembic revisions of the records service's own tables."""
