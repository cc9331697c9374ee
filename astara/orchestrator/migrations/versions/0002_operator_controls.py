"""Operator controls: boot overrides per router, debug per project, who asked in the log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("routers") as batch:
        batch.add_column(sa.Column("image", sa.String(255), nullable=True))
        batch.add_column(sa.Column("flavor", sa.String(255), nullable=True))
    with op.batch_alter_table("event_log") as batch:
        batch.add_column(sa.Column("actor", sa.String(255), nullable=True))
    op.create_table(
        "projects",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("debug", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("projects")
    with op.batch_alter_table("event_log") as batch:
        batch.drop_column("actor")
    with op.batch_alter_table("routers") as batch:
        batch.drop_column("flavor")
        batch.drop_column("image")
