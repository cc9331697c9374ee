"""The OpenStack test bed: Keystone, Glance, Placement, Nova (libvirt) and Neutron (ML2/OVS)."""
