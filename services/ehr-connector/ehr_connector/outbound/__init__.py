"""The outbound side: portal events become FHIR writes in the EHR.

Pure mapping (events and EHR state → R4 resources and decisions) lives in `appointments`,
`intake`, `messages` and `triage`; the use cases that talk to the EHR through the port and
record what they did are `booking` (appointments and slots) and `filing` (questionnaire
responses, communications, tasks).
"""
