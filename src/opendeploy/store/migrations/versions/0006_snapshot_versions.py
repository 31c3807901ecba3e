"""snapshot versions: deployments, targets and commands carry the decision that wrote them

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 14:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_VERSIONED = ("deployments", "deployment_targets", "host_commands")


def upgrade() -> None:
    for table in _VERSIONED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("version", sa.Integer(), server_default="0", nullable=False)
            )
    op.create_index(
        "ix_deployment_targets_version", "deployment_targets", ["deployment_id", "version"]
    )
    op.create_index("ix_host_commands_version", "host_commands", ["deployment_id", "version"])


def downgrade() -> None:
    op.drop_index("ix_host_commands_version", table_name="host_commands")
    op.drop_index("ix_deployment_targets_version", table_name="deployment_targets")
    for table in reversed(_VERSIONED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("version")
