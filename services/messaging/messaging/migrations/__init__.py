"""Alembic revisions of the messaging service's own tables."""
