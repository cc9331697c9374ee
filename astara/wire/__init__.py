"""What the orchestrator and the appliance both speak, and nothing else.

``document`` (the configuration document), ``api`` (the bodies of the appliance API's
answers), ``heartbeat`` (the signed datagram codec), ``bootstrap`` (the first-boot document on
a config drive) and ``defaults`` (the ports both sides agree on). The orchestrator imports
these, never the appliance's web framework, engine or data-plane modules.
"""
