"""The CapabilityStatement served at `/fhir/metadata`, built from what the server really does.

Types and search parameters come from `registry`; operations and extra REST extensions are
registered by the modules that implement them:

- `register_operation(resource_type, name, definition_url)`: an operation such as
  `Subscription/$status` (name without `$`);
- `add_rest_extension(ext)`: an extension on `rest[0]`, e.g. the backport IG's
  `capabilitystatement-subscriptiontopic-canonical`;
- `register_oauth_uri(name, path)`: an entry of the SMART `oauth-uris` extension (the
  token endpoint `/auth/token` is there from the start).

Register at import time or during app set-up; the statement is rebuilt on every request.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ehr_sandbox.fhir.resource_types import SUPPORTED_TYPES, params_for
from ehr_sandbox.search import format_instant
from ehr_sandbox.settings import SandboxSettings

SOFTWARE_VERSION = "0.1.0"
_SMART_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@dataclass
class _Capabilities:
    operations: dict[tuple[str, str], str] = field(default_factory=dict)
    rest_extensions: list[dict[str, Any]] = field(default_factory=list)
    resource_extensions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    supported_profiles: dict[str, list[str]] = field(default_factory=dict)
    oauth_uris: dict[str, str] = field(default_factory=dict)


_STATE = _Capabilities(
    operations={
        ("Patient", "everything"): "http://hl7.org/fhir/OperationDefinition/Patient-everything"
    },
    oauth_uris={"token": "/auth/token"},
)


def register_operation(resource_type: str, name: str, definition_url: str) -> None:
    """Advertise operation `$name` on `resource_type` (idempotent)."""
    _STATE.operations[(resource_type, name.lstrip("$"))] = definition_url


def add_rest_extension(ext: dict[str, Any]) -> None:
    """Add an extension to the statement's `rest` entry (an equal one is added only once)."""
    if ext not in _STATE.rest_extensions:
        _STATE.rest_extensions.append(deepcopy(ext))


def add_resource_extension(resource_type: str, ext: dict[str, Any]) -> None:
    """Add an extension to `rest.resource` of `resource_type` (an equal one only once)."""
    extensions = _STATE.resource_extensions.setdefault(resource_type, [])
    if ext not in extensions:
        extensions.append(deepcopy(ext))


def add_supported_profile(resource_type: str, profile: str) -> None:
    """List `profile` in `rest.resource.supportedProfile` of `resource_type` (idempotent)."""
    profiles = _STATE.supported_profiles.setdefault(resource_type, [])
    if profile not in profiles:
        profiles.append(profile)


def register_oauth_uri(name: str, path: str) -> None:
    """Advertise a SMART OAuth endpoint (`authorize`, `register`...) at `path` on the base URL."""
    _STATE.oauth_uris[name] = path


_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)


def _resource_entry(resource_type: str) -> dict[str, Any]:
    params = params_for(resource_type)
    reference_params = sorted(p.name for p in params.values() if p.type == "reference")
    revincludes = sorted(
        f"{other}:{p.name}"
        for other in SUPPORTED_TYPES
        for p in params_for(other).values()
        if p.type == "reference" and resource_type in p.targets
    )
    entry: dict[str, Any] = {
        "type": resource_type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
        "interaction": [{"code": code} for code in _INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "not-supported",
        "conditionalUpdate": True,
        "conditionalDelete": "not-supported",
        "searchInclude": [f"{resource_type}:{name}" for name in reference_params],
        "searchParam": [
            {
                "name": p.name,
                "definition": p.definition_url(resource_type),
                "type": p.type,
                **({"documentation": p.documentation} if p.documentation else {}),
            }
            for p in sorted(params.values(), key=lambda p: p.name)
        ],
    }
    if revincludes:
        entry["searchRevInclude"] = revincludes
    if _STATE.supported_profiles.get(resource_type):
        entry["supportedProfile"] = list(_STATE.supported_profiles[resource_type])
    if _STATE.resource_extensions.get(resource_type):
        entry["extension"] = deepcopy(_STATE.resource_extensions[resource_type])
    operations = sorted(
        (name, url) for (rtype, name), url in _STATE.operations.items() if rtype == resource_type
    )
    if operations:
        entry["operation"] = [{"name": name, "definition": url} for name, url in operations]
    return entry


def capability_statement(settings: SandboxSettings) -> dict[str, Any]:
    """The CapabilityStatement of this server."""
    base = settings.base_url.rstrip("/")
    security: dict[str, Any] = {
        "cors": True,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ]
            }
        ],
        "description": "Bearer tokens: SMART Backend Services (client credentials with a signed"
        " JWT assertion) from the token endpoint, dev-issuer patient tokens, or the admin token.",
        "extension": [
            {
                "url": _SMART_OAUTH_URIS,
                "extension": [
                    {"url": name, "valueUri": base + path}
                    for name, path in sorted(_STATE.oauth_uris.items())
                ],
            }
        ],
    }
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": "Search result parameters: _count, _offset (paging links), _sort,"
        " _include, _revinclude, _summary=count. Unknown parameters are ignored and reported in"
        " an OperationOutcome entry unless the client sends Prefer: handling=strict.",
        "security": security,
        "resource": [_resource_entry(t) for t in SUPPORTED_TYPES],
    }
    if _STATE.rest_extensions:
        rest["extension"] = deepcopy(_STATE.rest_extensions)
    return {
        "resourceType": "CapabilityStatement",
        "id": "ehr-sandbox",
        "url": f"{settings.fhir_base}/metadata",
        "version": SOFTWARE_VERSION,
        "name": "EhrSandbox",
        "title": "EHR sandbox FHIR R4 server",
        "status": "active",
        "experimental": True,
        "date": format_instant(datetime.now(UTC)),
        "publisher": "Patient portal project",
        "description": "A standards-faithful stand-in for a vendor EHR, for development and tests.",
        "kind": "instance",
        "software": {"name": "ehr-sandbox", "version": SOFTWARE_VERSION},
        "implementation": {"description": "EHR sandbox", "url": settings.fhir_base},
        "fhirVersion": "4.0.1",
        "format": ["json", "application/fhir+json"],
        "rest": [rest],
    }
