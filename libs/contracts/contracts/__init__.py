"""Event contracts: payload schemas, the envelope and the topic registry. No I/O."""
