"""rollback on stop, notifications outbox

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 11:29:31.924408
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("deployment_id", sa.String(length=16), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("instance_name", sa.String(length=100), nullable=True),
        sa.Column("created_time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_notifications_created_time"), ["created_time"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_notifications_deployment_id"), ["deployment_id"], unique=False
        )

    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rollback_on_stop", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("rollback_on_stop")

    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notifications_deployment_id"))
        batch_op.drop_index(batch_op.f("ix_notifications_created_time"))

    op.drop_table("notifications")
