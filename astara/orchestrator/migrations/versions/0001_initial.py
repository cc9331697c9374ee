"""Routers, instances and the event log.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "routers",
        sa.Column("id", ID, primary_key=True),
        sa.Column("project_id", ID, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("desired_generation", sa.Integer, nullable=False),
        sa.Column("error_count", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_failure_at", sa.DateTime, nullable=True),
        sa.Column("error_generation", sa.Integer, nullable=True),
        sa.Column("snapshot_digest", sa.String(64), nullable=True),
        sa.Column("rebuild_requested", sa.Boolean, nullable=False),
        sa.Column("managed", sa.Boolean, nullable=False),
        sa.Column("debug", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_routers_project_id", "routers", ["project_id"])
    op.create_table(
        "instances",
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "router_id",
            ID,
            sa.ForeignKey("routers.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("provider_ref", sa.String(255), nullable=False),
        sa.Column("management_address", sa.String(64), nullable=True),
        sa.Column("acknowledged_generation", sa.Integer, nullable=False),
        sa.Column("health", sa.String(32), nullable=False),
        sa.Column("ever_reachable", sa.Boolean, nullable=False),
        sa.Column("last_seen_at", sa.DateTime, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_instances_router_id", "instances", ["router_id"])
    op.create_table(
        "event_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime, nullable=False),
        sa.Column("router_id", ID, nullable=True),
        sa.Column("instance_id", ID, nullable=True),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_event_log_time", "event_log", ["time"])
    op.create_index("ix_event_log_router_id", "event_log", ["router_id"])


def downgrade() -> None:
    op.drop_table("event_log")
    op.drop_table("instances")
    op.drop_table("routers")
