"""Astara's Horizon plugin: an admin panel of every router (state, health, instance, last
error, and the operator's actions) and a project panel of the project's own routers.

It talks to the orchestrator's management API only (found in the Keystone catalog as service
type ``astara``), with the logged-in user's token: what a user may see and do is the API's
policy. Enable it by copying the files of ``astara/dashboard/enabled/`` into Horizon's
``openstack_dashboard/local/enabled/``.
"""
