"""No route of any app runs a plain function in FastAPI's worker threads.

FastAPI runs a sync endpoint or dependency in a worker thread: a hand-off to the thread
pool and back on every request, for functions that only read `request.app.state`. The lab
benchmark's profile showed it (the sandbox's content negotiation on every FHIR request, 3%
of its time); every route and dependency here is `async def`, and this keeps it so.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Mount

APPS = [
    "gateway.app",
    "records.app",
    "scheduling.app",
    "messaging.app",
    "triage.app",
    "ehr_connector.app",
    "ehr_sandbox.app",
]


def _is_async(call: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    if inspect.isfunction(call) or inspect.isclass(call):
        return False
    method = type(call).__call__  # an instance used as a dependency
    return inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)


def _routes(routes: list[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, Mount):
            yield from _routes(list(getattr(route.app, "routes", None) or []))
        elif isinstance(route, APIRoute):
            yield route


def _sync_dependencies(dependant: Dependant) -> Iterator[str]:
    for dependency in dependant.dependencies:
        if dependency.call is not None and not _is_async(dependency.call):
            yield getattr(dependency.call, "__qualname__", repr(dependency.call))
        yield from _sync_dependencies(dependency)


def _sync_callables(module: str) -> set[str]:
    app = importlib.import_module(module).create_app()
    found: set[str] = set()
    for route in _routes(list(app.routes)):
        if not _is_async(route.endpoint):
            found.add(f"{route.path}: {route.endpoint.__qualname__}")
        found.update(f"{route.path}: {name}" for name in _sync_dependencies(route.dependant))
    return found


@pytest.mark.parametrize("module", APPS)
def test_every_route_and_dependency_runs_on_the_event_loop(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Building an app opens no connection: any address will do.
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://u:p@127.0.0.1:9/none")
    monkeypatch.setenv("SANDBOX_DATABASE_URL", "postgresql://u:p@127.0.0.1:9/none")
    assert _sync_callables(module) == set()


def test_a_sync_dependency_is_found() -> None:
    from fastapi import Depends, FastAPI

    def blocking() -> int:
        return 1

    app = FastAPI()

    @app.get("/x")
    async def endpoint(value: int = Depends(blocking)) -> int:
        return value

    route = next(_routes(list(app.routes)))
    assert list(_sync_dependencies(route.dependant)) == [
        "test_a_sync_dependency_is_found.<locals>.blocking"
    ]
