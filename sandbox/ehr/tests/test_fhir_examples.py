"""Every official R4 example of a type the sandbox serves can be stored and read back unchanged."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ehr_sandbox.fhir.resource_types import SUPPORTED_TYPES
from ehr_sandbox.seed import examples_dir
from ehr_sandbox.testing import FHIR_JSON, Sandbox, running

# Examples the sandbox rejects, with what the OperationOutcome must name:
# - an old-style questionnaire whose nested items have no linkId, which R4B (like R4) requires;
# - R4 query-criteria Subscriptions: the sandbox serves topic-based Subscriptions only (R5
#   Backport IG), whose criteria must be a SubscriptionTopic canonical.
INVALID_EXAMPLES = {
    "Questionnaire-qs1.json": "linkId",
    "Subscription-example.json": "Subscription.criteria",
    "Subscription-example-error.json": "Subscription.criteria",
}


def _examples() -> dict[str, dict[str, Any]]:
    directory = examples_dir()
    assert directory is not None, "the official examples are expected in ../shared/fhir-examples"
    found = {}
    for path in sorted(directory.glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        if resource.get("resourceType") in SUPPORTED_TYPES:
            found[path.name] = resource
    return found


EXAMPLES = _examples()


def _without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


@pytest.fixture(scope="module")
async def box(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    async with running(tmp_path_factory.mktemp("examples")) as sandbox:
        yield sandbox


def test_examples_cover_many_types() -> None:
    types = {resource["resourceType"] for resource in EXAMPLES.values()}
    assert len(EXAMPLES) > 150
    assert {"Patient", "Observation", "Appointment", "Questionnaire", "Task"} <= types


@pytest.mark.parametrize("name", sorted(EXAMPLES))
async def test_example_round_trips(box: Sandbox, name: str) -> None:
    example = EXAMPLES[name]
    resource_type, resource_id = example["resourceType"], example["id"]
    put = await box.client.put(
        f"/fhir/{resource_type}/{resource_id}", json=example, headers=FHIR_JSON
    )
    if name in INVALID_EXAMPLES:
        assert put.status_code == 422, put.text
        assert INVALID_EXAMPLES[name] in box.diagnostics(box.outcome(put))
        return
    assert put.status_code in (200, 201), put.text
    read = await box.client.get(f"/fhir/{resource_type}/{resource_id}")
    assert read.status_code == 200
    stored = read.json()
    assert _without_meta(stored) == _without_meta(example)
    for key, value in (example.get("meta") or {}).items():
        if key not in ("versionId", "lastUpdated"):
            assert stored["meta"][key] == value
    posted = await box.client.post(f"/fhir/{resource_type}", json=example, headers=FHIR_JSON)
    assert posted.status_code == 201, posted.text
    new_id = posted.json()["id"]
    assert new_id != resource_id
    again = (await box.client.get(f"/fhir/{resource_type}/{new_id}")).json()
    assert _without_meta(again) == {**_without_meta(example), "id": new_id}
    found = await box.search(f"/fhir/{resource_type}", _id=f"{resource_id},{new_id}")
    assert found["total"] == 2
