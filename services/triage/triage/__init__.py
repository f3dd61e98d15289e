"""triage: assesses a patient's symptoms before a visit and routes the outcome."""
