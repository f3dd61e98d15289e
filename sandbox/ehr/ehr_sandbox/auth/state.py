"""Where an app's `AuthService` lives, and which one `mint_patient_token` uses.

The service is kept on `app.state.auth`, made on first use from `app.state.auth_settings`
(if a test or the app factory set one) or from the environment. The most recently started
app is also the process's *active* service, because `mint_patient_token(patient_id)` has
no app to ask.
"""

from __future__ import annotations

import threading

from fastapi import FastAPI

from ehr_sandbox.auth.service import AuthService
from ehr_sandbox.auth.settings import AuthSettings

_lock = threading.Lock()
_active: list[AuthService] = []


def get_auth_service(app: FastAPI) -> AuthService:
    """The app's auth service, created on first use."""
    service: AuthService | None = getattr(app.state, "auth", None)
    if service is not None:
        return service
    with _lock:
        service = getattr(app.state, "auth", None)
        if service is None:
            settings = getattr(app.state, "auth_settings", None) or AuthSettings()
            sandbox = app.state.settings
            service = AuthService(settings, base_url=sandbox.base_url, dev_mode=sandbox.dev_mode)
            app.state.auth = service
    return service


def activate(service: AuthService) -> None:
    """Make `service` the one `mint_patient_token` uses (the latest started app wins)."""
    with _lock:
        _active.append(service)


def deactivate(service: AuthService) -> None:
    """Forget `service` when its app stops."""
    with _lock:
        if service in _active:
            _active.remove(service)


def active_service() -> AuthService | None:
    """The auth service of the most recently started app still running, if any."""
    with _lock:
        return _active[-1] if _active else None
