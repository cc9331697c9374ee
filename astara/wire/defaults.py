"""Fixed ports and paths the appliance and the orchestrator agree on."""

API_PORT = 5000
METADATA_PORT = 9697
METADATA_ADDRESS = "169.254.169.254"
