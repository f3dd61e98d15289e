"""Settings of the scheduling service (environment variables, local defaults)."""

from __future__ import annotations

from pydantic import Field

from scheduling.domain import ClinicRules
from servicekit.crypto import EncryptionSettings
from servicekit.settings import ServiceSettings


class Settings(ServiceSettings, EncryptionSettings):
    """Slots, appointments and digital intake."""

    service_name: str = "scheduling"
    http_port: int = 8002
    intake_questionnaire: str = Field(
        default="http://example.org/fhir/ehr-sandbox/Questionnaire/intake|1",
        description="Canonical URL|version of the EHR's intake Questionnaire for visit types "
        "without one of their own",
    )
    intake_questionnaires: dict[str, str] = Field(
        default_factory=dict,
        description="Visit type code (Appointment.appointmentType) -> Questionnaire "
        "canonical URL|version, as JSON",
    )
    ehr_connector_url: str = Field(
        default="http://127.0.0.1:8005",
        description="The ehr-connector, which reads Questionnaires from the EHR",
    )
    ehr_connector_timeout_s: float = 5.0
    change_cutoff_hours: float = Field(
        default=24.0, description="No cancel or move online within this many hours of start"
    )
    booking_horizon_days: int = Field(default=90, description="How far ahead one may book")
    max_open_bookings: int = Field(default=3, description="Upcoming bookings per patient")
    clinic_phone: str = Field(
        default="the clinic on +1 217 555 0100", description="Who to call instead"
    )
    intake_reminder_hours: float = Field(
        default=24.0, description="Remind about missing intake this long before a visit"
    )
    intake_reminder_interval_s: float = Field(
        default=60.0, description="How often to look for visits that need a reminder"
    )
    slot_page_max: int = 200

    def clinic_rules(self) -> ClinicRules:
        """The clinic's booking rules."""
        return ClinicRules(
            change_cutoff_hours=self.change_cutoff_hours,
            booking_horizon_days=self.booking_horizon_days,
            max_open_bookings=self.max_open_bookings,
            clinic_phone=self.clinic_phone,
        )

    def questionnaire_for(self, visit_type: str | None) -> str:
        """The intake Questionnaire (canonical URL|version) of a visit type."""
        if visit_type and visit_type in self.intake_questionnaires:
            return self.intake_questionnaires[visit_type]
        return self.intake_questionnaire
