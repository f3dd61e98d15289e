"""The CapabilityStatement tells the truth and takes registrations from other modules."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from ehr_sandbox.fhir import capabilities
from ehr_sandbox.fhir.resource_types import SUPPORTED_TYPES, params_for
from ehr_sandbox.testing import Sandbox


def _resource(statement: dict[str, Any], resource_type: str) -> dict[str, Any]:
    entries = [r for r in statement["rest"][0]["resource"] if r["type"] == resource_type]
    assert len(entries) == 1
    return entries[0]


async def test_metadata_is_a_valid_r4_capability_statement(sandbox: Sandbox) -> None:
    response = await sandbox.client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    statement = response.json()
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1"
    assert statement["kind"] == "instance"
    assert statement["implementation"]["url"] == sandbox.settings.fhir_base
    assert {r["type"] for r in statement["rest"][0]["resource"]} == set(SUPPORTED_TYPES)


async def test_metadata_lists_interactions_and_search_params(sandbox: Sandbox) -> None:
    statement = (await sandbox.client.get("/fhir/metadata")).json()
    observation = _resource(statement, "Observation")
    interactions = {i["code"] for i in observation["interaction"]}
    assert interactions == {
        "read",
        "vread",
        "update",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    }
    assert observation["versioning"] == "versioned-update"
    assert observation["conditionalCreate"] is True
    assert observation["conditionalUpdate"] is True
    assert observation["updateCreate"] is True
    names = {p["name"] for p in observation["searchParam"]}
    assert names == set(params_for("Observation"))
    assert {"patient", "code", "date", "_lastUpdated", "based-on"} <= names
    assert "DiagnosticReport:result" in _resource(statement, "DiagnosticReport")["searchInclude"]
    everything = _resource(statement, "Patient")["operation"]
    assert {
        "name": "everything",
        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    } in everything


async def test_metadata_points_at_the_smart_token_endpoint(sandbox: Sandbox) -> None:
    statement = (await sandbox.client.get("/fhir/metadata")).json()
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    oauth = next(
        e
        for e in security["extension"]
        if e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    )
    uris = {e["url"]: e["valueUri"] for e in oauth["extension"]}
    assert uris["token"] == sandbox.settings.base_url + "/auth/token"


async def test_registered_operations_and_extensions_appear(sandbox: Sandbox) -> None:
    capabilities.register_operation(
        "Task", "$test-op", "http://example.org/OperationDefinition/test-op"
    )
    extension = {"url": "http://example.org/StructureDefinition/test-ext", "valueString": "x"}
    capabilities.add_rest_extension(extension)
    capabilities.add_rest_extension(extension)  # idempotent
    statement = (await sandbox.client.get("/fhir/metadata")).json()
    task_ops = _resource(statement, "Task")["operation"]
    assert {
        "name": "test-op",
        "definition": "http://example.org/OperationDefinition/test-op",
    } in task_ops
    assert statement["rest"][0]["extension"].count(extension) == 1
    CapabilityStatement.model_validate(statement)
