"""In-code policies of the router status API (entry points ``neutron.policies`` and
``oslo.policy.policies``, so ``oslopolicy-sample-generator --namespace astara`` lists them).
"""

from __future__ import annotations

from oslo_policy import policy

from astara.neutron.status_api import COLLECTION, PATH_PREFIX

ADMIN_OR_SERVICE = "rule:admin_only or role:service"
# The router's own project may read what it can already see as the router's status. It also
# makes Neutron answer a project member's update with 403 rather than 404 (Neutron hides with
# 404 only what the caller may not even read).
ADMIN_SERVICE_OR_PROJECT_READER = (
    f"{ADMIN_OR_SERVICE} or (role:reader and project_id:%(project_id)s)"
)
PATH = f"{PATH_PREFIX}/{COLLECTION}/{{id}}"


def list_rules() -> list[policy.DocumentedRuleDefault]:
    return [
        policy.DocumentedRuleDefault(
            name="get_router_status",
            check_str=ADMIN_SERVICE_OR_PROJECT_READER,
            scope_types=["project"],
            description="Show the Astara status of a router and of its ports",
            operations=[{"method": "GET", "path": PATH}],
        ),
        policy.DocumentedRuleDefault(
            name="update_router_status",
            check_str=ADMIN_OR_SERVICE,
            scope_types=["project"],
            description="Set the status of an Astara router and of its ports",
            operations=[{"method": "PUT", "path": PATH}],
        ),
    ]
