"""records: the read model of the patient's chart, fed by EHR events and back-fill."""
