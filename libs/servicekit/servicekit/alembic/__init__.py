"""The Alembic environment shared by every service (see `servicekit.migrations`)."""
