"""The OpenStackClient plugin: ``openstack astara ...`` (entry point openstack.cli.extension)."""
