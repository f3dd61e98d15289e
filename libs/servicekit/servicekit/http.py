"""Building blocks for services' HTTP routes: a read session dependency and the path
parameter type of an internal patient id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from servicekit.app import Service

ID_PATTERN = r"^[A-Za-z0-9._:-]+$"
PatientId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]
# Any other id in a path: bounded, so a huge or odd one is a 422, never a database error.
ResourceId = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]


async def read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A database session for a read-only request (`Database.reads`: no transaction)."""
    service: Service = request.app.state.service
    async with service.db.reads() as session:
        yield session


ReadSession = Annotated[AsyncSession, Depends(read_session)]
