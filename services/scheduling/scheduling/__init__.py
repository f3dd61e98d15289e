"""scheduling: slots cached from the EHR, appointments and their state machine, intake."""
