"""Astara: L3-L7 network services for OpenStack, served by appliances that Astara orchestrates."""
