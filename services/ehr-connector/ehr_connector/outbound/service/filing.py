"""Filing what the patient sent into the chart: intake answers, messages, triage outcomes.

Each resource is created on the condition of a business identifier derived from our id
(intake, message, triage session), so a replayed event finds what the first delivery
created instead of filing it twice. The EHR is called with no transaction open; what was
filed is recorded afterwards with the inbox row (`Journal`).
"""

from __future__ import annotations

from contracts.base import SourceVersion, utc_now
from contracts.intake import IntakeSubmittedV1
from contracts.message import MessageSentV1, MessageSyncedV1
from contracts.triage import TriageCompletedV1
from ehr_connector.context import Connector
from ehr_connector.ehr.port import WriteResult
from ehr_connector.outbound.domain import appointments, intake, messages, triage
from ehr_connector.outbound.domain.identifiers import (
    INTAKE_ID,
    MESSAGE_ID,
    TRIAGE_SESSION_ID,
    if_none_exist,
)
from ehr_connector.outbound.domain.r4 import validate
from ehr_connector.outbound.service.booking import apply_change, booked_appointment
from ehr_connector.outbound.service.journal import Journal
from ehr_connector.outbound.service.lookups import (
    NotInEhrYet,
    known_patient,
    linked_fhir_id,
    patient_fhir_id,
)
from ehr_connector.store import Interaction
from servicekit.consumer import BeforeCommit, Event, Record


def _record(journal: Journal, *, kind: str, our_id: str, result: WriteResult) -> None:
    interaction = Interaction.CREATE if result.created else Interaction.MATCH
    journal.record(our_id, result.resource_type, interaction, result)
    journal.link(kind, our_id, result, patient_id=journal.patient_id)


async def file_intake(
    connector: Connector, reads: BeforeCommit, event: Event[IntakeSubmittedV1]
) -> Record:
    """File intake answers as a QuestionnaireResponse linked to the appointment (waiting,
    bounded, for the appointment's booking when it is not in the EHR yet)."""
    ehr, data = connector.ehr, event.data
    patient = await known_patient(reads, data.patient_id)
    appointment_fhir_id = data.appointment_fhir_id or await linked_fhir_id(
        reads, "appointment", data.appointment_id
    )
    if appointment_fhir_id is None or patient is None:
        found = await booked_appointment(
            connector,
            reads,
            patient_id=data.patient_id,
            appointment_id=data.appointment_id,
            appointment_fhir_id=appointment_fhir_id,
        )
        if found is not None:
            appointment_fhir_id = found.id
            patient = patient or appointments.patient_of(found.resource)
    if patient is None:
        raise NotInEhrYet(f"no EHR Patient is known for portal patient {data.patient_id}")
    response = validate(
        intake.intake_response(
            data, patient_fhir_id=patient, appointment_fhir_id=appointment_fhir_id
        )
    )
    result = await ehr.create(response, if_none_exist=if_none_exist(INTAKE_ID, data.intake_id))
    journal = Journal.of(event)
    _record(journal, kind="intake", our_id=data.intake_id, result=result)
    if data.revision > 1 and not result.created:
        # An amendment: the filed answers are replaced (If-Match, re-applied on conflict).
        current = await ehr.read("QuestionnaireResponse", result.id)
        written, changed = await apply_change(ehr, current, lambda r: intake.amended(r, data))
        interaction = Interaction.UPDATE if changed else Interaction.NOOP
        journal.record(data.intake_id, "QuestionnaireResponse", interaction, written)
    return journal.commit


async def send_message(
    connector: Connector, reads: BeforeCommit, event: Event[MessageSentV1]
) -> Record:
    """File the patient's message as a Communication to the care team, threaded."""
    ehr, data = connector.ehr, event.data
    patient = await patient_fhir_id(
        reads, data.patient_id, wait_s=connector.settings.outbound_link_wait_s
    )
    thread_root = (
        data.thread_fhir_id
        or await linked_fhir_id(reads, "thread", data.thread_id)
        or data.in_reply_to_fhir_id
    )
    communication = validate(
        messages.communication(
            data,
            patient_fhir_id=patient,
            recipient=(
                f"CareTeam/{data.care_team_fhir_id}"
                if data.care_team_fhir_id
                else connector.recipients.for_pool(data.recipient_pool)
            ),
            thread_fhir_id=thread_root,
            in_reply_to_fhir_id=data.in_reply_to_fhir_id,
        )
    )
    result = await ehr.create(
        communication, if_none_exist=if_none_exist(MESSAGE_ID, data.message_id)
    )
    journal = Journal.of(event)
    _record(journal, kind="message", our_id=data.message_id, result=result)
    if thread_root is None:
        # The first message of a thread: later ones are `partOf` it.
        journal.link("thread", data.thread_id, result, patient_id=data.patient_id)
    # Messaging learns the EHR identity of its message and thread, so the care team's
    # answers (`partOf`/`inResponseTo` these ids) land in the patient's thread.
    journal.publish(
        MessageSyncedV1(
            patient_id=data.patient_id,
            communication_fhir_id=result.id,
            message_id=data.message_id,
            thread_id=data.thread_id,
            thread_fhir_id=thread_root or result.id,
            in_reply_to_fhir_id=data.in_reply_to_fhir_id,
            from_patient=True,
            status="completed",
            sent_at=data.sent_at,
            source=SourceVersion(
                resource_type="Communication",
                fhir_id=result.id,
                version_id=result.version_id,
                last_updated=result.last_updated or utc_now(),
            ),
        ),
        subject=data.patient_id,
    )
    return journal.commit


async def file_triage(
    connector: Connector, reads: BeforeCommit, event: Event[TriageCompletedV1]
) -> Record:
    """File the triage outcome as a QuestionnaireResponse and give the care team a Task
    to review it, prioritised by the urgency."""
    ehr, data, settings = connector.ehr, event.data, connector.settings
    patient = await patient_fhir_id(
        reads, data.patient_id, wait_s=connector.settings.outbound_link_wait_s
    )
    journal = Journal.of(event)
    response = validate(
        triage.triage_response(
            data, patient_fhir_id=patient, questionnaire=settings.ehr_triage_questionnaire
        )
    )
    condition = if_none_exist(TRIAGE_SESSION_ID, data.session_id)
    filed = await ehr.create(response, if_none_exist=condition)
    _record(journal, kind="triage-response", our_id=data.session_id, result=filed)
    task = validate(
        triage.review_task(
            data,
            patient_fhir_id=patient,
            response_fhir_id=filed.id,
            owner=connector.recipients.task_owner(data.recommended_pool),
        )
    )
    created = await ehr.create(task, if_none_exist=condition)
    _record(journal, kind="triage-task", our_id=data.session_id, result=created)
    return journal.commit
