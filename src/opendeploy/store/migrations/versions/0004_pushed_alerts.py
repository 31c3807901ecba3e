"""pushed alerts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 11:36:38.568448
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pushed_alerts",
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("alert_name", sa.String(length=255), nullable=False),
        sa.Column("firing", sa.Boolean(), nullable=False),
        sa.Column("changed_time", sa.Float(), nullable=False),
        sa.Column("received_time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("fingerprint", name=op.f("pk_pushed_alerts")),
    )
    with op.batch_alter_table("pushed_alerts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pushed_alerts_alert_name"), ["alert_name"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_pushed_alerts_received_time"), ["received_time"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("pushed_alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pushed_alerts_received_time"))
        batch_op.drop_index(batch_op.f("ix_pushed_alerts_alert_name"))

    op.drop_table("pushed_alerts")
