"""Developer conveniences around the FHIR core: demo patients and tokens, simulated
clinician and lab actions, fault injection, the command line and the clinical vocabulary
the seed and the simulator write with."""
