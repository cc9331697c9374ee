"""Clients of the orchestrator's management API (openstacksdk resources and proxy)."""
