"""``openstack astara ...``: the management API's resources and actions as OSC commands.

Lists and shows take OSC's output options (``-f json``, ``-f value``, ``-c COLUMN``, table by
default). Actions print nothing when they succeed; a refusal exits non-zero with the API's
reason (for example "router ... is unmanaged: manage it before rebuilding it").
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from typing import Any

from keystoneauth1 import exceptions as ks_exceptions
from openstack import exceptions as sdk_exceptions
from osc_lib.cli import format_columns
from osc_lib.command import command

from astara.client.sdk import Proxy
from astara.orchestrator.state import State

Row = tuple[Any, ...]

ROUTER_COLUMNS = (
    ("ID", "id"),
    ("Project", "project_id"),
    ("State", "state"),
    ("Managed", "managed"),
    ("Health", "health"),
    ("Instance", "instance_id"),
    ("Desired", "desired_generation"),
    ("Acknowledged", "acknowledged_generation"),
    ("Last Error", "last_error"),
)
ROUTER_DETAIL = (
    *ROUTER_COLUMNS,
    ("Debug", "debug"),
    ("Errors", "error_count"),
    ("Image", "image"),
    ("Flavor", "flavor"),
    ("Updated At", "updated_at"),
    ("Worker", "worker"),
    ("Instances", "instances"),
    ("Events", "events"),
)
INSTANCE_COLUMNS = (
    ("ID", "id"),
    ("Router", "router_id"),
    ("Health", "health"),
    ("Management Address", "management_address"),
    ("Acknowledged", "acknowledged_generation"),
    ("Reported", "reported_generation"),
    ("Drifted", "drifted"),
    ("Last Heartbeat", "last_heartbeat_at"),
)
WORKER_COLUMNS = (
    ("Index", "id"),
    ("PID", "pid"),
    ("Alive", "alive"),
    ("Queue", "queue_events"),
    ("Inbox", "inbox_events"),
    ("Ready", "ready_routers"),
    ("Scheduled", "scheduled"),
    ("Stepping", "threads"),
)
EVENT_COLUMNS = (
    ("ID", "id"),
    ("Time", "time"),
    ("Router", "router_id"),
    ("Instance", "instance_id"),
    ("Message", "message"),
    ("Actor", "actor"),
)
BREAKER_COLUMNS = (
    ("Open", "open"),
    ("Reason", "reason"),
    ("Recent Deaths", "recent_deaths"),
    ("Watched Instances", "watched_instances"),
    ("Window", "window"),
    ("Max Dead Share", "max_dead_share"),
    ("Min Deaths", "min_deaths"),
)
FORMATTERS: dict[str, Any] = {
    "worker": format_columns.DictColumn,
    "instances": format_columns.ListDictColumn,
    "events": format_columns.ListDictColumn,
}


def client(cmd: command.Command) -> Proxy:
    found: Proxy = getattr(cmd.app.client_manager, "astara")  # noqa: B009 -- added by the plugin
    return found


def headings(columns: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    return tuple(heading for heading, _ in columns)


def row(item: Any, columns: Sequence[tuple[str, str]]) -> Row:
    """One row: each column's value (a formatter for structured ones, so -f json keeps them)."""
    values = item if isinstance(item, dict) else item.to_dict()
    return tuple(
        FORMATTERS[key](values.get(key)) if key in FORMATTERS else values.get(key)
        for _, key in columns
    )


def table(items: Iterable[Any], columns: Sequence[tuple[str, str]]) -> tuple[tuple[str, ...], Any]:
    return headings(columns), (row(item, columns) for item in items)


def stepping(threads: list[dict[str, Any]] | None) -> str:
    """What a worker's threads are stepping, for its table row."""
    busy = [t["router_id"] for t in threads or [] if t.get("router_id")]
    return ", ".join(busy) if busy else "-"


def project_id(cmd: command.Command, name_or_id: str) -> str:
    """A project's ID, from its name when Keystone can say (else taken as an ID)."""
    try:
        identity = cmd.app.client_manager.sdk_connection.identity
        found = identity.find_project(name_or_id, ignore_missing=True)  # type: ignore[union-attr]
    except (sdk_exceptions.SDKException, ks_exceptions.ClientException, AttributeError):
        return name_or_id  # no identity v3 service (a standalone orchestrator): an ID
    return str(found.id) if found is not None else name_or_id


def router_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("router", metavar="<router>", help="Router (Neutron router ID)")


class ListRouter(command.Lister):
    """List the routers Astara knows: state, health, instance, generations, last error."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--project", metavar="<project>", help="Only this project's (name or ID)"
        )
        parser.add_argument(
            "--state", choices=[s.value for s in State], help="Only routers in this state"
        )
        parser.add_argument("--failing", action="store_true", help="Only routers with a last error")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Any]:
        query: dict[str, Any] = {}
        if parsed_args.project:
            query["project_id"] = project_id(self, parsed_args.project)
        if parsed_args.state:
            query["state"] = parsed_args.state
        if parsed_args.failing:
            query["failing"] = True
        return table(client(self).routers(**query), ROUTER_COLUMNS)


class ShowRouter(command.ShowOne):
    """Show a router: its instances and their health, its worker, its newest events."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        router_argument(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Row]:
        router = client(self).get_router(parsed_args.router)
        return headings(ROUTER_DETAIL), row(router, ROUTER_DETAIL)


class RebuildRouter(command.Command):
    """Replace a router's instance (the new one is built first, then takes over)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        router_argument(parser)
        for kind, what in (("image", "Glance image"), ("flavor", "Nova flavor")):
            group = parser.add_mutually_exclusive_group()
            group.add_argument(
                f"--{kind}",
                metavar=f"<{kind}>",
                help=f"Boot it and later replacements from this {what} (name or ID)",
            )
            group.add_argument(
                f"--default-{kind}",
                action="store_true",
                help=f"Go back to the configured {kind}",
            )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        overrides: dict[str, str | None] = {}
        for kind in ("image", "flavor"):
            if getattr(parsed_args, kind):
                overrides[kind] = getattr(parsed_args, kind)
            elif getattr(parsed_args, f"default_{kind}"):
                overrides[kind] = None
        client(self).rebuild_router(parsed_args.router, **overrides)


class PollRouter(command.Command):
    """Read a router from Neutron and its appliance now, and act on any difference."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        router_argument(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        client(self).poll_router(parsed_args.router)


class ManageRouter(PollRouter):
    """Give a router back to Astara (it is reconciled at once)."""

    managed = True

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        client(self).manage_router(parsed_args.router, self.managed)


class UnmanageRouter(ManageRouter):
    """Leave a router alone: no step, no health check, no replacement until managed again."""

    managed = False


def debug_switch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--disable", action="store_true", help="Stop tracing (default: start tracing)"
    )


class DebugRouter(command.Command):
    """Trace a router's steps: observations and decisions in the log, actions in the event
    log."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        router_argument(parser)
        debug_switch(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        client(self).debug_router(parsed_args.router, not parsed_args.disable)


class DebugProject(command.Command):
    """Trace the steps of every router of a project, also of those created later."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("project", metavar="<project>", help="Project (name or ID)")
        debug_switch(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> None:
        project = project_id(self, parsed_args.project)
        client(self).debug_project(project, not parsed_args.disable)


class ListInstance(command.Lister):
    """List appliance instances and their health."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--router", metavar="<router>", help="Only this router's")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Any]:
        query = {"router_id": parsed_args.router} if parsed_args.router else {}
        return table(client(self).instances(**query), INSTANCE_COLUMNS)


class ListWorker(command.Lister):
    """List worker processes: pid, queues, and the router each thread is stepping."""

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Any]:
        workers = [
            {**w.to_dict(), "id": w.id, "threads": stepping(w.threads)}
            for w in client(self).workers()
        ]
        return table(workers, WORKER_COLUMNS)


class ListEvent(command.Lister):
    """List the event log, newest first (operators' actions name who asked)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--router", metavar="<router>", help="Only this router's")
        parser.add_argument(
            "--limit", metavar="<count>", type=int, default=100, help="At most this many (100)"
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Any]:
        query: dict[str, Any] = {"limit": parsed_args.limit}
        if parsed_args.router:
            query["router_id"] = parsed_args.router
        return table(client(self).events(**query), EVENT_COLUMNS)


class ShowBreaker(command.ShowOne):
    """Show the replacement circuit breaker."""

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Row]:
        return headings(BREAKER_COLUMNS), row(client(self).get_breaker(), BREAKER_COLUMNS)


class ResetBreaker(command.ShowOne):
    """Close the open breaker: dead instances are replaced again (as SIGUSR1 does)."""

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Row]:
        return headings(BREAKER_COLUMNS), row(client(self).reset_breaker(), BREAKER_COLUMNS)


class ReloadConfig(command.Lister):
    """Re-read the orchestrator's configuration files; list the mutable options changed."""

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], Any]:
        changed = client(self).reload_config()["changed"]
        return table(changed, (("Option", "option"), ("Old", "old"), ("New", "new")))
