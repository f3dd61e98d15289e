"""The service kit: the runtime every portal service is built from.

Settings, structured logging without PHI, tracing across HTTP and Kafka, metrics, the
database engine, the transactional outbox and its relay, the idempotent consumer (inbox,
retries, dead letters, per-patient parking) and the app factory that wires them.
"""
