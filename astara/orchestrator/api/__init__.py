"""The orchestrator's management API: versioned REST and JSON for operators (``[api]``)."""
