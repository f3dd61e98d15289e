"""One realistic payload per registered event version, for contract tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from contracts.appointment import (
    AppointmentBookedV1,
    AppointmentCancelledV1,
    AppointmentRescheduledV1,
    AppointmentStatus,
    AppointmentUpdatedV1,
    SlotStatus,
    SlotUpdatedV1,
)
from contracts.base import Coding, Payload, Quantity, ReferenceRange, SourceVersion
from contracts.consent import CaregiverPart, ConsentGrantedV1, ConsentRevokedV1
from contracts.intake import IntakeAnswer, IntakeRemindedV1, IntakeSubmittedV1
from contracts.lab import LabObservation, LabResultedV1, ReportStatus
from contracts.medication import MedicationChangedV1, MedicationStatus
from contracts.message import MessageReceivedV1, MessageSentV1, MessageSyncedV1
from contracts.patient import PatientLinkedV1
from contracts.record import DocumentAttachment, ImportedEntry, RecordImportedV1, RecordKind
from contracts.triage import TriageCompletedV1, Urgency

CET = timezone(timedelta(hours=1))
T0 = datetime(2026, 11, 25, 9, 30, tzinfo=CET)
PATIENT = "pat-7f3a2c"
SRC = SourceVersion(
    resource_type="DiagnosticReport", fhir_id="lab-1", version_id="2", last_updated=T0
)
GLUCOSE = Coding(
    system="http://loinc.org", code="2345-7", display="Glucose [Mass/volume] in Serum or Plasma"
)

EXAMPLES: dict[str, Payload] = {
    "consent.granted": ConsentGrantedV1(
        consent_id="cg-1",
        patient_id=PATIENT,
        patient_fhir_id="example",
        related_person_fhir_id="rp-1",
        parts=[CaregiverPart.APPOINTMENTS, CaregiverPart.MESSAGES],
        start=T0,
        end=T0 + timedelta(days=90),
        granted_at=T0,
    ),
    "consent.revoked": ConsentRevokedV1(
        consent_id="cg-1",
        patient_id=PATIENT,
        patient_fhir_id="example",
        related_person_fhir_id="rp-1",
        revoked_at=T0 + timedelta(days=3),
    ),
    "appointment.booked": AppointmentBookedV1(
        appointment_id="apt-1",
        patient_id=PATIENT,
        patient_fhir_id="example",
        slot_fhir_id="slot-9",
        practitioner_fhir_id="pr-1",
        start=T0,
        end=T0 + timedelta(minutes=20),
        reason="Follow-up on blood pressure",
        booked_at=T0 - timedelta(days=2),
    ),
    "appointment.cancelled": AppointmentCancelledV1(
        appointment_id="apt-1",
        patient_id=PATIENT,
        appointment_fhir_id="ap-1",
        based_on_version="3",
        reason_code="pat",
        cancelled_at=T0,
    ),
    "appointment.rescheduled": AppointmentRescheduledV1(
        appointment_id="apt-1",
        patient_id=PATIENT,
        appointment_fhir_id="ap-1",
        based_on_version="1",
        old_slot_fhir_id="slot-9",
        new_slot_fhir_id="slot-12",
        start=T0,
        end=T0 + timedelta(minutes=20),
        rescheduled_at=T0,
    ),
    "appointment.updated": AppointmentUpdatedV1(
        appointment_fhir_id="ap-1",
        appointment_id="apt-1",
        patient_id=PATIENT,
        status=AppointmentStatus.BOOKED,
        start=T0,
        end=T0 + timedelta(minutes=20),
        slot_fhir_ids=["slot-9"],
        practitioner_fhir_id="pr-1",
        source=SourceVersion(
            resource_type="Appointment", fhir_id="ap-1", version_id="1", last_updated=T0
        ),
    ),
    "slot.updated": SlotUpdatedV1(
        slot_fhir_id="slot-9",
        schedule_fhir_id="sch-1",
        practitioner_fhir_id="pr-1",
        status=SlotStatus.BUSY,
        start=T0,
        end=T0 + timedelta(minutes=20),
        source=SourceVersion(
            resource_type="Slot", fhir_id="slot-9", version_id="4", last_updated=T0
        ),
    ),
    "intake.submitted": IntakeSubmittedV1(
        intake_id="in-1",
        appointment_id="apt-1",
        appointment_fhir_id="ap-1",
        patient_id=PATIENT,
        questionnaire_canonical="http://portal.example.org/fhir/Questionnaire/intake|1",
        answers=[
            IntakeAnswer(link_id="smoker", value_boolean=False),
            IntakeAnswer(link_id="pain", value_integer=3),
            IntakeAnswer(link_id="concern", value_string="Headaches in the morning"),
        ],
        submitted_at=T0,
    ),
    "intake.reminded": IntakeRemindedV1(
        appointment_id="apt-1",
        patient_id=PATIENT,
        start=T0 + timedelta(hours=20),
        questionnaire_canonical="http://portal.example.org/fhir/Questionnaire/intake|1",
        reminded_at=T0,
    ),
    "lab.resulted": LabResultedV1(
        patient_id=PATIENT,
        report_fhir_id="lab-1",
        status=ReportStatus.FINAL,
        code=Coding(
            system="http://loinc.org", code="24323-8", display="Comprehensive metabolic panel"
        ),
        category=[Coding(system="http://terminology.hl7.org/CodeSystem/v2-0074", code="LAB")],
        effective=T0,
        issued=T0 + timedelta(hours=3),
        performer=["Acme Laboratory"],
        observations=[
            LabObservation(
                observation_fhir_id="obs-1",
                code=GLUCOSE,
                status="final",
                value_quantity=Quantity(value=6.3, unit="mmol/L", code="mmol/L"),
                reference_ranges=[
                    ReferenceRange(
                        low=Quantity(value=3.1, unit="mmol/L"),
                        high=Quantity(value=6.2, unit="mmol/L"),
                    )
                ],
                interpretation=[
                    Coding(
                        system="http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        code="H",
                        display="High",
                    )
                ],
                effective=T0,
                issued=T0 + timedelta(hours=3),
                performer=["Acme Laboratory"],
                version_id="2",
                last_updated=T0 + timedelta(hours=3),
            )
        ],
        source=SRC,
    ),
    "medication.changed": MedicationChangedV1(
        patient_id=PATIENT,
        medication_request_fhir_id="mr-1",
        status=MedicationStatus.ACTIVE,
        medication=Coding(
            system="http://www.nlm.nih.gov/research/umls/rxnorm",
            code="314076",
            display="lisinopril 10 MG Oral Tablet",
        ),
        dosage_text="1 tablet once daily",
        authored_on=T0,
        prescriber="Dr. Adam Careful",
        source=SourceVersion(
            resource_type="MedicationRequest", fhir_id="mr-1", version_id="1", last_updated=T0
        ),
    ),
    "message.sent": MessageSentV1(
        message_id="msg-1",
        thread_id="th-1",
        patient_id=PATIENT,
        recipient_pool="nurses",
        care_team_fhir_id="ct-1",
        subject="Question about my dose",
        body="Can I take it with food?",
        sent_at=T0,
    ),
    "message.received": MessageReceivedV1(
        patient_id=PATIENT,
        communication_fhir_id="com-2",
        thread_id="th-1",
        in_reply_to_fhir_id="com-1",
        thread_fhir_id="com-1",
        sender_display="Nurse Joy",
        body="Yes, with or without food.",
        sent_at=T0,
        source=SourceVersion(
            resource_type="Communication", fhir_id="com-2", version_id="1", last_updated=T0
        ),
    ),
    "message.synced": MessageSyncedV1(
        patient_id=PATIENT,
        communication_fhir_id="com-1",
        message_id="msg-1",
        thread_id="th-1",
        thread_fhir_id="com-1",
        from_patient=True,
        status="completed",
        sent_at=T0,
        received_at=T0 + timedelta(hours=2),
        source=SourceVersion(
            resource_type="Communication", fhir_id="com-1", version_id="2", last_updated=T0
        ),
    ),
    "triage.completed": TriageCompletedV1(
        session_id="tri-1",
        patient_id=PATIENT,
        urgency=Urgency.URGENT,
        summary="Chest tightness on exertion for 2 days",
        findings=[Coding(system="http://snomed.info/sct", code="23924001", display="Tight chest")],
        rule_set_version="2026.11.1",
        recommended_pool="cardiology-nurses",
        completed_at=T0,
    ),
    "patient.linked": PatientLinkedV1(patient_id=PATIENT, patient_fhir_id="example", linked_at=T0),
    "record.imported": RecordImportedV1(
        patient_id=PATIENT,
        backfill_id="bf-1",
        batch_number=1,
        last_batch=True,
        entries=[
            ImportedEntry(
                kind=RecordKind.ALLERGY,
                resource_type="AllergyIntolerance",
                fhir_id="al-1",
                version_id="1",
                status="active",
                code=Coding(
                    system="http://snomed.info/sct", code="227493005", display="Cashew nuts"
                ),
            ),
            ImportedEntry(
                kind=RecordKind.LAB_RESULT,
                resource_type="Observation",
                fhir_id="obs-9",
                version_id="1",
                status="final",
                code=GLUCOSE,
                value="6.3 mmol/L",
                effective=T0,
                observation=LabObservation(
                    observation_fhir_id="obs-9",
                    code=GLUCOSE,
                    status="final",
                    value_quantity=Quantity(value=6.3, unit="mmol/L"),
                    effective=T0,
                    version_id="1",
                ),
            ),
            ImportedEntry(
                kind=RecordKind.DOCUMENT,
                resource_type="DocumentReference",
                fhir_id="doc-1",
                version_id="1",
                attachments=[
                    DocumentAttachment(content_type="text/plain", title="Summary", data="SGk=")
                ],
            ),
        ],
        imported_at=T0,
    ),
}
