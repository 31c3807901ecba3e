"""trigger deliveries

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 11:37:37.203836
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trigger_deliveries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("notification_id", sa.Integer(), nullable=False),
        sa.Column("deployment_id", sa.String(length=16), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("trigger_name", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("instance_name", sa.String(length=100), nullable=True),
        sa.Column("subject", sa.String(length=100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_time", sa.Float(), nullable=True),
        sa.Column("lease_token", sa.String(length=36), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_http_status", sa.Integer(), nullable=True),
        sa.Column("create_time", sa.Float(), nullable=False),
        sa.Column("last_attempt_time", sa.Float(), nullable=True),
        sa.Column("complete_time", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trigger_deliveries")),
        sa.UniqueConstraint(
            "notification_id", "trigger_name", name="uq_trigger_deliveries_notification_trigger"
        ),
    )
    with op.batch_alter_table("trigger_deliveries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_trigger_deliveries_deployment_id"), ["deployment_id"], unique=False
        )
        batch_op.create_index(
            "ix_trigger_deliveries_status_next", ["status", "next_attempt_time"], unique=False
        )

    op.create_table(
        "trigger_fanout",
        sa.Column("notification_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("fanout_time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("notification_id", name=op.f("pk_trigger_fanout")),
    )


def downgrade() -> None:
    op.drop_table("trigger_fanout")
    with op.batch_alter_table("trigger_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_trigger_deliveries_status_next")
        batch_op.drop_index(batch_op.f("ix_trigger_deliveries_deployment_id"))

    op.drop_table("trigger_deliveries")
