"""Who may do what in the management API: oslo.policy rules in code.

Admins by default; readers may read the routers (and their instances) of their own project,
and a system-scoped reader may read everything. Every action is admin-only. Override any
rule in a policy file (``[oslo_policy] policy_file``);
``oslopolicy-sample-generator --namespace astara.orchestrator`` prints them all.
"""

from __future__ import annotations

from oslo_policy import policy

SCOPES = ["system", "project"]

ROUTER_READ = "astara:router:read"
PROJECT_READ = "astara:project:read"
WORKER_READ = "astara:worker:read"
BREAKER_READ = "astara:breaker:read"
EVENT_READ = "astara:event:read"
ROUTER_REBUILD = "astara:router:rebuild"
ROUTER_POLL = "astara:router:poll"
ROUTER_MANAGE = "astara:router:manage"
ROUTER_DEBUG = "astara:router:debug"
PROJECT_DEBUG = "astara:project:debug"
BREAKER_RESET = "astara:breaker:reset"
CONFIG_RELOAD = "astara:config:reload"

BASE = [
    policy.RuleDefault("admin_api", "role:admin", description="Astara's operators"),
    policy.RuleDefault(
        "fleet_reader",
        "rule:admin_api or (role:reader and system_scope:all)",
        description="May read everything Astara knows",
    ),
    policy.RuleDefault(
        "project_reader",
        "rule:fleet_reader or (role:reader and project_id:%(project_id)s)",
        description="May read the routers of the project in the target",
    ),
]


def _rule(
    name: str, check: str, description: str, operations: list[tuple[str, str]]
) -> policy.DocumentedRuleDefault:
    return policy.DocumentedRuleDefault(
        name=name,
        check_str=check,
        description=description,
        operations=[{"method": method, "path": path} for method, path in operations],
        scope_types=SCOPES,
    )


RULES = [
    _rule(
        ROUTER_READ,
        "rule:project_reader",
        "List and show routers and their instances",
        [
            ("GET", "/v1/routers"),
            ("GET", "/v1/routers/{router_id}"),
            ("GET", "/v1/instances"),
        ],
    ),
    _rule(
        PROJECT_READ,
        "rule:project_reader",
        "Show a project",
        [("GET", "/v1/projects/{project_id}")],
    ),
    _rule(WORKER_READ, "rule:fleet_reader", "List the workers", [("GET", "/v1/workers")]),
    _rule(BREAKER_READ, "rule:fleet_reader", "Show the breaker", [("GET", "/v1/breaker")]),
    _rule(EVENT_READ, "rule:fleet_reader", "List the event log", [("GET", "/v1/events")]),
    _rule(
        ROUTER_REBUILD,
        "rule:admin_api",
        "Replace a router's instance (optionally with another image or flavor)",
        [("POST", "/v1/routers/{router_id}/rebuild")],
    ),
    _rule(
        ROUTER_POLL,
        "rule:admin_api",
        "Read a router from Neutron and its appliance now",
        [("POST", "/v1/routers/{router_id}/poll")],
    ),
    _rule(
        ROUTER_MANAGE,
        "rule:admin_api",
        "Manage or unmanage a router",
        [
            ("POST", "/v1/routers/{router_id}/manage"),
            ("POST", "/v1/routers/{router_id}/unmanage"),
        ],
    ),
    _rule(
        ROUTER_DEBUG,
        "rule:admin_api",
        "Trace a router's steps",
        [("POST", "/v1/routers/{router_id}/debug")],
    ),
    _rule(
        PROJECT_DEBUG,
        "rule:admin_api",
        "Trace the steps of a project's routers",
        [("POST", "/v1/projects/{project_id}/debug")],
    ),
    _rule(
        BREAKER_RESET,
        "rule:admin_api",
        "Close the replacement circuit breaker",
        [("POST", "/v1/breaker/reset")],
    ),
    _rule(
        CONFIG_RELOAD,
        "rule:admin_api",
        "Reload the mutable options",
        [("POST", "/v1/config/reload")],
    ),
]


def list_rules() -> list[policy.RuleDefault]:
    """Every rule (entry point ``oslo.policy.policies``, namespace astara.orchestrator)."""
    return [*BASE, *RULES]
