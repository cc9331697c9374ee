"""Neutron API extension descriptors; the status plugin adds this folder to Neutron's path."""
