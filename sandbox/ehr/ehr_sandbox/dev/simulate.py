"""Clinician and lab actions the sandbox can perform on demand (`POST /sandbox/simulate/...`).

Each action writes real FHIR resources through the same store calls as the REST API, so
the change feed (and thus Subscriptions) fires exactly as for a client write:

- `lab-result`: a lab system files a panel: Observations (LOINC, UCUM, reference ranges,
  interpretations) and the DiagnosticReport over them, in one transaction (the report's
  notification never precedes its results); or amends an earlier report;
- `medication-change`: a prescriber starts, stops or re-doses a MedicationRequest;
- `message-reply`: a clinician answers the patient's latest message (a Communication);
- `appointment-cancel`: the clinic cancels a booked Appointment and frees its Slot.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ehr_sandbox.dev.vocabulary import (
    FORMULARY,
    PANELS,
    conclusion_for,
    dosage,
    lab_observation,
    lab_report,
    medication_request,
    reference,
    sample_value,
)
from ehr_sandbox.fhir.outcomes import FhirError, issues_from_errors
from ehr_sandbox.fhir.validation import validate_resource
from ehr_sandbox.search import SearchRequest, parse_search
from ehr_sandbox.seed import (
    DEFAULT_PATIENT,
    DEMO_PATIENTS,
    LAB_ORG,
    PRIMARY_PRACTITIONER,
)
from ehr_sandbox.store import Store, StoredResource

ACTIONS = ("lab-result", "medication-change", "message-reply", "appointment-cancel")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    patient: str | None = Field(default=None, description="Patient id; a demo patient if unset")


class LabResultBody(_Body):
    """`lab-result`: a new panel, or an amendment of an earlier report."""

    panel: Literal["bmp", "cbc", "lipid", "a1c"] = "bmp"
    abnormal: bool = False
    status: Literal["final", "preliminary"] = "final"
    amend: str | None = Field(default=None, description="DiagnosticReport id to amend")


class MedicationChangeBody(_Body):
    """`medication-change`: start, stop or change the dose of a medication."""

    action: Literal["start", "stop", "dose-change"] | None = None
    medication: (
        Literal["metformin", "lisinopril", "atorvastatin", "amlodipine", "albuterol"] | None
    ) = None
    medication_request: str | None = Field(default=None, description="MedicationRequest id")


class MessageReplyBody(_Body):
    """`message-reply`: a clinician's reply to the patient's latest message."""

    text: str | None = Field(default=None, min_length=1, max_length=4000)
    sender: str | None = Field(default=None, description="Practitioner id")


class AppointmentCancelBody(_Body):
    """`appointment-cancel`: the clinic cancels a booked appointment."""

    appointment: str | None = Field(default=None, description="Appointment id")
    reason: str | None = Field(default=None, max_length=500)


_BODIES: dict[str, type[_Body]] = {
    "lab-result": LabResultBody,
    "medication-change": MedicationChangeBody,
    "message-reply": MessageReplyBody,
    "appointment-cancel": AppointmentCancelBody,
}

_DEFAULT_REPLY = (
    "Thank you for your message. I have reviewed it; please keep taking your medicines as"
    " prescribed and book a visit if things do not improve."
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Simulator:
    """Performs simulated clinician and lab actions against the store."""

    def __init__(self, store: Store, *, fhir_base: str) -> None:
        self.store = store
        self.fhir_base = fhir_base
        self._random = random.Random()

    async def run(self, action: str, body: dict[str, Any]) -> list[StoredResource]:
        """Perform `action` with the JSON `body`; returns what was written, in order."""
        model = _BODIES.get(action)
        if model is None:
            raise FhirError(
                404, f"Unknown simulation {action}; one of {', '.join(ACTIONS)}", code="not-found"
            )
        try:
            parsed = model.model_validate(body)
        except ValidationError as exc:
            raise FhirError(
                422, "Invalid simulation request", issues=issues_from_errors(action, exc.errors())
            ) from exc
        handlers: dict[str, Callable[[Any], Awaitable[list[StoredResource]]]] = {
            "lab-result": self.lab_result,
            "medication-change": self.medication_change,
            "message-reply": self.message_reply,
            "appointment-cancel": self.appointment_cancel,
        }
        return await handlers[action](parsed)

    # -- helpers ---------------------------------------------------------------------------

    async def _patient(self, patient_id: str | None) -> str:
        if patient_id is not None:
            if not await self.store.exists("Patient", patient_id):
                raise FhirError(404, f"Patient/{patient_id} is not known", code="not-found")
            return patient_id
        candidates = [DEFAULT_PATIENT, *(p.id for p in DEMO_PATIENTS if p.has_history)]
        for candidate in candidates:
            if await self.store.exists("Patient", candidate):
                return candidate
        raise FhirError(404, "No demo patient exists; pass a patient id", code="not-found")

    def _query(
        self, resource_type: str, pairs: Sequence[tuple[str, str]], count: int = 1
    ) -> SearchRequest:
        return parse_search(
            resource_type,
            pairs,
            fhir_base=self.fhir_base,
            default_count=count,
            max_count=count,
            strict=True,
        )

    async def _first(
        self, resource_type: str, pairs: Sequence[tuple[str, str]]
    ) -> StoredResource | None:
        result = await self.store.search(self._query(resource_type, pairs))
        return result.matches[0] if result.matches else None

    async def _create(self, resource: dict[str, Any]) -> StoredResource:
        validate_resource(resource, expected_type=resource["resourceType"])
        return (await self.store.create(resource["resourceType"], resource)).stored

    async def _create_all(self, resources: list[dict[str, Any]]) -> list[StoredResource]:
        for resource in resources:
            validate_resource(resource, expected_type=resource["resourceType"])
        return [r.stored for r in await self.store.create_many(resources)]

    async def _update(self, current: StoredResource, resource: dict[str, Any]) -> StoredResource:
        # Based on the version we read, as a careful client would: a concurrent change wins.
        validate_resource(resource, expected_type=current.resource_type, expected_id=current.id)
        result = await self.store.update(
            current.resource_type, current.id, resource, if_match=current.version
        )
        return result.stored

    async def _read(self, resource_type: str, resource_id: str) -> StoredResource:
        return await self.store.read(resource_type, resource_id)

    # -- lab-result ------------------------------------------------------------------------

    async def lab_result(self, body: LabResultBody) -> list[StoredResource]:
        """File a new lab panel (its Observations and the DiagnosticReport over them, at
        once), or amend one."""
        if body.amend is not None:
            return await self._amend_report(body)
        patient = await self._patient(body.patient)
        panel = PANELS[body.panel]
        now = _now()
        abnormal: set[str] = set()
        if body.abnormal:
            count = 1 if len(panel.analytes) == 1 else self._random.randint(1, 2)
            abnormal = {a.code for a in self._random.sample(list(panel.analytes), count)}
        performer = [reference("Organization", LAB_ORG, "Riverside Clinical Laboratory")]
        observations: list[dict[str, Any]] = []
        for analyte in panel.analytes:
            value = sample_value(analyte, abnormal=analyte.code in abnormal, rng=self._random)
            observations.append(
                lab_observation(
                    patient,
                    analyte,
                    value,
                    effective=now,
                    issued=now,
                    status=body.status,
                    performer=performer,
                    resource_id=str(uuid.uuid4()),
                )
            )
        report = lab_report(
            patient,
            panel,
            [reference("Observation", o["id"]) for o in observations],
            effective=now,
            issued=now,
            status=body.status,
            performer=performer,
            interpreter=[reference("Practitioner", PRIMARY_PRACTITIONER, "Dr. Grace Adams")],
            conclusion=conclusion_for(observations),
            resource_id=str(uuid.uuid4()),
        )
        # The panel is filed at once, as a lab's result message is: the results and the
        # report that names them commit together (never a report before its results).
        return await self._create_all([*observations, report])

    async def _amend_report(self, body: LabResultBody) -> list[StoredResource]:
        assert body.amend is not None
        report = await self._read("DiagnosticReport", body.amend)
        if (
            body.patient is not None
            and report.content.get("subject", {}).get("reference") != f"Patient/{body.patient}"
        ):
            raise FhirError(
                409,
                f"DiagnosticReport/{body.amend} is not about Patient/{body.patient}",
                code="conflict",
            )
        results = [r.get("reference", "") for r in report.content.get("result", [])]
        if not results:
            raise FhirError(
                409, f"DiagnosticReport/{body.amend} has no results to amend", code="conflict"
            )
        target_type, _, target_id = results[0].partition("/")
        observation = await self._read(target_type, target_id)
        now = _now()
        content = dict(observation.content)
        quantity = dict(content.get("valueQuantity") or {})
        if isinstance(quantity.get("value"), int | float):
            quantity["value"] = round(float(quantity["value"]) * self._random.uniform(0.9, 1.1), 2)
            content["valueQuantity"] = quantity
        content["status"] = "amended"
        content["issued"] = now
        content["note"] = [{"text": "Result amended after re-analysis of the sample."}]
        written = [await self._update(observation, content)]
        amended = dict(report.content)
        amended["status"] = "amended"
        amended["issued"] = now
        amended["conclusion"] = (
            f"{amended.get('conclusion', '')} Amended: a result was corrected.".strip()
        )
        written.append(await self._update(report, amended))
        return written

    # -- medication-change -----------------------------------------------------------------

    async def medication_change(self, body: MedicationChangeBody) -> list[StoredResource]:
        """Start, stop or re-dose a MedicationRequest (by default re-dose the latest active one)."""
        patient = await self._patient(body.patient)
        current: StoredResource | None = None
        if body.medication_request is not None:
            current = await self._read("MedicationRequest", body.medication_request)
        elif body.action != "start":
            pairs = [("patient", patient), ("status", "active"), ("_sort", "-_lastUpdated")]
            if body.medication is not None:
                drug = FORMULARY[body.medication]
                pairs.append(("code", f"http://www.nlm.nih.gov/research/umls/rxnorm|{drug.rxnorm}"))
            current = await self._first("MedicationRequest", pairs)
        action = body.action or ("dose-change" if current is not None else "start")
        if action == "start":
            return [await self._start_medication(patient, body.medication)]
        if current is None:
            raise FhirError(
                404, "The patient has no active MedicationRequest to change", code="not-found"
            )
        content = dict(current.content)
        if action == "stop":
            content["status"] = "stopped"
            content["statusReason"] = {"text": "Stopped by prescriber"}
            return [await self._update(current, content)]
        return [await self._update(current, self._redosed(content))]

    async def _start_medication(self, patient: str, key: str | None) -> StoredResource:
        if key is None:
            active = await self.store.search(
                self._query(
                    "MedicationRequest", [("patient", patient), ("status", "active")], count=100
                )
            )
            taken = {
                coding.get("code")
                for m in active.matches
                for coding in m.content.get("medicationCodeableConcept", {}).get("coding", [])
            }
            key = next((k for k, d in FORMULARY.items() if d.rxnorm not in taken), "metformin")
        request = medication_request(
            patient,
            FORMULARY[key],
            authored_on=_now(),
            requester=reference("Practitioner", PRIMARY_PRACTITIONER, "Dr. Grace Adams"),
        )
        return await self._create(request)

    def _redosed(self, content: dict[str, Any]) -> dict[str, Any]:
        codes = {
            c.get("code") for c in content.get("medicationCodeableConcept", {}).get("coding", [])
        }
        drug = next((d for d in FORMULARY.values() if d.rxnorm in codes), None)
        instructions = content.get("dosageInstruction") or [{}]
        old_dose = 1.0
        for rate in instructions[0].get("doseAndRate", []):
            value = rate.get("doseQuantity", {}).get("value")
            if isinstance(value, int | float):
                old_dose = float(value)
        new_dose = old_dose * 2 if old_dose <= 1 else old_dose / 2
        if drug is not None:
            text = f"{drug.sig} (dose changed to {new_dose:g} {drug.dose_unit} per dose)"
            content["dosageInstruction"] = [dosage(drug, dose=new_dose, text=text)]
        else:
            first = dict(instructions[0])
            first["text"] = f"Dose changed to {new_dose:g} per dose"
            content["dosageInstruction"] = [first, *instructions[1:]]
        content["note"] = [{"text": "Dose changed by the prescriber.", "time": _now()}]
        return content

    # -- message-reply ---------------------------------------------------------------------

    async def message_reply(self, body: MessageReplyBody) -> list[StoredResource]:
        """A clinician replies to the patient's latest Communication, in the same thread."""
        patient = await self._patient(body.patient)
        latest = await self._first(
            "Communication", [("patient", patient), ("_sort", "-_lastUpdated")]
        )
        sender_id = body.sender
        if sender_id is None and latest is not None:
            for recipient in latest.content.get("recipient", []):
                ref_type, _, ref_id = str(recipient.get("reference", "")).partition("/")
                if ref_type == "Practitioner":
                    sender_id = ref_id
                    break
        sender_id = sender_id or PRIMARY_PRACTITIONER
        if not await self.store.exists("Practitioner", sender_id):
            raise FhirError(404, f"Practitioner/{sender_id} is not known", code="not-found")
        reply: dict[str, Any] = {"resourceType": "Communication"}
        if latest is not None:
            root = latest.content.get("partOf") or [reference("Communication", latest.id)]
            reply["partOf"] = root
            reply["inResponseTo"] = [reference("Communication", latest.id)]
        reply |= {
            "status": "completed",
            "subject": reference("Patient", patient),
            "sent": _now(),
            "recipient": [reference("Patient", patient)],
            "sender": reference("Practitioner", sender_id),
            "payload": [{"contentString": body.text or _DEFAULT_REPLY}],
        }
        if latest is not None and "topic" in latest.content:
            reply["topic"] = latest.content["topic"]
        return [await self._create(reply)]

    # -- appointment-cancel ----------------------------------------------------------------

    async def appointment_cancel(self, body: AppointmentCancelBody) -> list[StoredResource]:
        """Cancel a booked appointment (the next one by default) and free its slots."""
        patient = await self._patient(body.patient)
        appointment: StoredResource | None
        if body.appointment is not None:
            appointment = await self._read("Appointment", body.appointment)
        else:
            booked = [("patient", patient), ("status", "booked,pending,proposed,arrived")]
            # The next upcoming appointment, else the latest booked one.
            appointment = await self._first(
                "Appointment", [*booked, ("date", f"ge{_now()}"), ("_sort", "date")]
            )
            appointment = appointment or await self._first(
                "Appointment", [*booked, ("_sort", "-date")]
            )
            if appointment is None:
                raise FhirError(
                    404, "The patient has no booked appointment to cancel", code="not-found"
                )
        if appointment.content.get("status") in (
            "cancelled",
            "fulfilled",
            "noshow",
            "entered-in-error",
        ):
            raise FhirError(
                409,
                f"Appointment/{appointment.id} is {appointment.content['status']}",
                code="business-rule",
            )
        content = dict(appointment.content)
        content["status"] = "cancelled"
        content["cancelationReason"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason",
                    "code": "prov",
                    "display": "Provider",
                }
            ],
            "text": body.reason or "Cancelled by the clinic",
        }
        written = [await self._update(appointment, content)]
        for slot_ref in content.get("slot", []):
            ref_type, _, ref_id = str(slot_ref.get("reference", "")).partition("/")
            if ref_type != "Slot" or not await self.store.exists("Slot", ref_id):
                continue
            slot = await self._read("Slot", ref_id)
            if slot.content.get("status") != "free":
                written.append(await self._update(slot, {**slot.content, "status": "free"}))
        return written
