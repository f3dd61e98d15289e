"""Developer and CI tooling for the portal monorepo.

Runs Kafka brokers (Tansu by default, Apache Kafka for CI), creates the registry's topics,
makes a local PostgreSQL usable and supervises the whole local stack (`python -m devstack`).
Production code never imports this package (import-linter enforces it).
"""
