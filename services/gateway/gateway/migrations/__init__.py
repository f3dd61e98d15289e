"""Alembic revisions of the gateway service's own tables."""
