"""Refuse development secrets outside development.

A setting is a secret when its field says so (`json_schema_extra={"secret": True}`; a
`"secret": "file"` field names a key file, and empty means "use the generated dev key").
Outside `dev`/`test` a service refuses to start when a secret is empty, is its development
default (`dev-ops-token`, `dev-webhook-token`, ...), or is too short to be a real one; the
error names every offending setting by its environment variable, never echoing a real
value.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

DEVELOPMENT_ENVIRONMENTS = frozenset({"dev", "development", "test", "local"})
# Shipped development values, refused wherever they appear in a secret setting.
KNOWN_DEV_SECRETS = frozenset(
    {
        "dev-ops-token",
        "dev-webhook-token",
        "dev-service-token-key-not-for-production",
        "dev-audit-key-not-for-production",
        "changeme",
        "secret",
    }
)
MIN_SECRET_LENGTH = 16


class InsecureSettingsError(ValueError):
    """Development secrets in a non-development environment."""


def _kind(field: Any) -> object:
    extra = field.json_schema_extra
    return extra.get("secret") if isinstance(extra, dict) else None


def development_secrets(settings: BaseModel) -> list[str]:
    """What is wrong with each secret setting (empty when all are fit for production)."""
    problems: list[str] = []
    for name, field in type(settings).model_fields.items():
        kind = _kind(field)
        if not kind:
            continue
        env = name.upper()
        value = getattr(settings, name)
        text = "" if value is None else str(value)
        if kind == "file":
            if not text:
                problems.append(f"{env} is empty (the development key would be used)")
            continue
        if not text:
            problems.append(f"{env} is empty")
        elif text in KNOWN_DEV_SECRETS or text == field.default:
            problems.append(f"{env} is the development default {text!r}")
        elif len(text) < MIN_SECRET_LENGTH:
            problems.append(f"{env} is shorter than {MIN_SECRET_LENGTH} characters")
    return problems


def refuse_development_secrets(settings: BaseModel, environment: str, service: str) -> None:
    """Raise InsecureSettingsError naming each development secret, unless in development."""
    if environment.strip().lower() in DEVELOPMENT_ENVIRONMENTS:
        return
    problems = development_secrets(settings)
    if problems:
        raise InsecureSettingsError(
            f"{service} refuses to start in environment {environment!r} with development "
            f"secrets: {'; '.join(problems)}. Set them from a Secret (environment or mounted "
            "file)."
        )
