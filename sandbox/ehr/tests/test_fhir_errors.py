"""Client errors: each answered with the right status and an OperationOutcome, never a 500."""

from __future__ import annotations

import httpx
import pytest

from ehr_sandbox.testing import FHIR_JSON, Sandbox, patient


async def test_invalid_json_is_400(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.post(
        "/fhir/Patient", content=b'{"resourceType": "Patient",', headers=FHIR_JSON
    )
    assert response.status_code == 400
    assert "not valid JSON" in sandbox.diagnostics(sandbox.outcome(response))


async def test_json_that_is_not_an_object_is_400(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.post("/fhir/Patient", content=b"[1, 2]", headers=FHIR_JSON)
    assert response.status_code == 400
    sandbox.outcome(response)


async def test_empty_body_is_400(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.post("/fhir/Patient", content=b"", headers=FHIR_JSON)
    assert response.status_code == 400
    sandbox.outcome(response)


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"resourceType": "Patient", "birthDate": "17 May 1980"}, "Patient.birthDate"),
        ({"resourceType": "Patient", "favouriteColour": "blue"}, "Patient.favouriteColour"),
        ({"resourceType": "Patient", "name": [{"given": "Ann"}]}, "Patient.name[0].given"),
        ({"resourceType": "Observation", "status": "final"}, "Observation.code"),
    ],
)
async def test_invalid_resource_is_422_naming_the_element(
    sandbox: Sandbox, fhir: httpx.AsyncClient, resource: dict[str, object], expected: str
) -> None:
    response = await fhir.post(
        f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR_JSON
    )
    assert response.status_code == 422
    outcome = sandbox.outcome(response)
    assert expected in sandbox.diagnostics(outcome)
    assert all(issue["severity"] == "error" for issue in outcome["issue"])


async def test_resource_type_mismatch_is_400(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.post("/fhir/Observation", json=patient(), headers=FHIR_JSON)
    assert response.status_code == 400
    assert "resourceType" in sandbox.diagnostics(sandbox.outcome(response))


async def test_missing_resource_type_is_400(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.post("/fhir/Patient", json={"gender": "male"}, headers=FHIR_JSON)
    assert response.status_code == 400
    sandbox.outcome(response)


async def test_id_mismatch_on_put_is_400(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.put("/fhir/Patient/abc", json=patient(id="xyz"), headers=FHIR_JSON)
    assert response.status_code == 400
    assert "does not match" in sandbox.diagnostics(sandbox.outcome(response))
    missing_id = await fhir.put("/fhir/Patient/abc", json=patient(), headers=FHIR_JSON)
    assert missing_id.status_code == 400
    sandbox.outcome(missing_id)


async def test_invalid_id_is_400(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.get("/fhir/Patient/" + "x" * 65)
    assert response.status_code == 400
    sandbox.outcome(response)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/Spaceship"),
        ("GET", "/fhir/Spaceship/1"),
        ("POST", "/fhir/Spaceship"),
        ("GET", "/fhir/Medication/1"),  # a FHIR type this server does not serve
        ("GET", "/fhir/Spaceship/_history"),
    ],
)
async def test_unknown_type_is_404(
    sandbox: Sandbox, fhir: httpx.AsyncClient, method: str, path: str
) -> None:
    body = {"resourceType": "Spaceship"} if method == "POST" else None
    response = await fhir.request(method, path, json=body, headers=FHIR_JSON)
    assert response.status_code == 404
    assert "resource type" in sandbox.diagnostics(sandbox.outcome(response))


async def test_unknown_route_is_404_outcome(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.get("/fhir/Patient/p1/$no-such-operation")
    assert response.status_code == 404
    sandbox.outcome(response)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "application/fhir+xml", None]
)
async def test_wrong_content_type_is_415(
    sandbox: Sandbox, fhir: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await fhir.post(
        "/fhir/Patient", content=b'{"resourceType":"Patient"}', headers=headers
    )
    assert response.status_code == 415
    sandbox.outcome(response)


async def test_plain_json_content_type_is_accepted(fhir: httpx.AsyncClient) -> None:
    response = await fhir.post(
        "/fhir/Patient", json=patient(), headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 201


async def test_xml_only_accept_is_406(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"})
    assert response.status_code == 406
    sandbox.outcome(response)
    assert (await fhir.get("/fhir/metadata", params={"_format": "xml"})).status_code == 406
    assert (await fhir.get("/fhir/metadata", params={"_format": "json"})).status_code == 200


async def test_no_token_is_401(sandbox: Sandbox) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sandbox.app), base_url="http://test"
    ) as anonymous:
        for method, path in (
            ("GET", "/fhir/Patient"),
            ("GET", "/fhir/Patient/x"),
            ("POST", "/fhir/Patient"),
        ):
            response = await anonymous.request(method, path, json=patient(), headers=FHIR_JSON)
            assert response.status_code == 401, (method, path)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert {i["code"] for i in sandbox.outcome(response)["issue"]} == {"login"}
        wrong = await anonymous.get("/fhir/Patient", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        sandbox.outcome(wrong)
        # The CapabilityStatement is public, as on every FHIR server.
        assert (await anonymous.get("/fhir/metadata")).status_code == 200


async def test_bad_paging_params_are_400(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    for params in ({"_count": "many"}, {"_count": "-1"}, {"_offset": "x"}):
        response = await fhir.get("/fhir/Patient", params=params)
        assert response.status_code == 400, params
        sandbox.outcome(response)


async def test_bad_vread_version_is_404(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    created = await sandbox.create(patient())
    response = await fhir.get(f"/fhir/Patient/{created['id']}/_history/latest")
    assert response.status_code == 404
    sandbox.outcome(response)


async def test_unsupported_method_is_405_outcome(sandbox: Sandbox, fhir: httpx.AsyncClient) -> None:
    response = await fhir.patch(
        "/fhir/Patient/x", content=b"[]", headers={"Content-Type": "application/json-patch+json"}
    )
    assert response.status_code == 405
    sandbox.outcome(response)


@pytest.mark.parametrize(
    "body",
    [
        b'{"resourceType": "Patient", "multipleBirthInteger": NaN}',
        b'{"resourceType": "Patient", "gender": "\\ud800"}',
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe not utf-8",
    ],
    ids=["nan", "lone-surrogate", "deep-nesting", "not-utf8"],
)
async def test_hostile_bodies_are_400(
    sandbox: Sandbox, fhir: httpx.AsyncClient, body: bytes
) -> None:
    response = await fhir.post("/fhir/Patient", content=body, headers=FHIR_JSON)
    assert response.status_code == 400
    sandbox.outcome(response)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/fhir/Patient", {"_offset": str(10**30)}),
        ("/fhir/Patient", {"_count": str(10**30)}),
        ("/fhir/Patient/_history", {"_offset": str(10**30)}),
        ("/fhir/Patient/x/_history/" + "9" * 30, {}),
        ("/fhir/Patient", {"birthdate": "ge"}),
        ("/fhir/Patient", {"birthdate": "2024-02-30"}),
        ("/fhir/Patient", {"_sort": ""}),
        ("/fhir/Patient", {"_include": "::::"}),
        ("/fhir/Patient", {"identifier": "|"}),
        ("/fhir/Patient", {"_lastUpdated": "gt"}),
        ("/fhir/Patient", {"name": "%_\\"}),
        ("/fhir/Patient/$everything", {}),
        ("/fhir/Patient/x/$everything", {"_type": "Nope"}),
    ],
)
async def test_odd_queries_never_fail_the_server(
    sandbox: Sandbox, fhir: httpx.AsyncClient, path: str, params: dict[str, str]
) -> None:
    response = await fhir.get(path, params=params)
    assert response.status_code < 500, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
