"""gateway: the patients' API (BFF), their real-time event stream and the portal page."""
