"""Alembic revisions of the scheduling service's own tables."""
