"""deployments, targets, host commands, health, agent contacts, logs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 10:52:45.308355
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_contacts",
        sa.Column("instance_name", sa.String(length=100), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("instance_name", name=op.f("pk_agent_contacts")),
    )
    op.create_table(
        "instance_health",
        sa.Column("instance_name", sa.String(length=100), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("revision_identity", sa.String(length=2048), nullable=True),
        sa.Column("updated_time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("instance_name", "group_id", name=op.f("pk_instance_health")),
    )
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("application_id", sa.String(length=36), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("application_name", sa.String(length=100), nullable=False),
        sa.Column("group_name", sa.String(length=100), nullable=False),
        sa.Column("config_name", sa.String(length=100), nullable=False),
        sa.Column(
            "minimum_healthy_hosts",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "revision",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("revision_identity", sa.String(length=2048), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("active_group_id", sa.String(length=36), nullable=True),
        sa.Column("ignore_application_stop_failures", sa.Boolean(), nullable=False),
        sa.Column("file_exists_behavior", sa.String(length=16), nullable=True),
        sa.Column("deployment_type", sa.String(length=16), nullable=False),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column(
            "status_messages",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("create_time", sa.Float(), nullable=False),
        sa.Column("start_time", sa.Float(), nullable=True),
        sa.Column("complete_time", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["applications.id"],
            name=op.f("fk_deployments_application_id_applications"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint("active_group_id", name=op.f("uq_deployments_active_group_id")),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deployments_create_time"), ["create_time"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_deployments_group_id"), ["group_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_deployments_status"), ["status"], unique=False)

    op.create_table(
        "deployment_targets",
        sa.Column("deployment_id", sa.String(length=16), nullable=False),
        sa.Column("instance_name", sa.String(length=100), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("standing", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column(
            "events",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("last_updated", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_deployment_targets_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "deployment_id", "instance_name", name=op.f("pk_deployment_targets")
        ),
    )
    op.create_table(
        "host_commands",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("deployment_id", sa.String(length=16), nullable=False),
        sa.Column("instance_name", sa.String(length=100), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_time", sa.Float(), nullable=False),
        sa.Column("dispatched_time", sa.Float(), nullable=True),
        sa.Column("acked_time", sa.Float(), nullable=True),
        sa.Column("completed_time", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployments.id"],
            name=op.f("fk_host_commands_deployment_id_deployments"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_commands")),
    )
    with op.batch_alter_table("host_commands", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_host_commands_deployment_id"), ["deployment_id"], unique=False
        )
        batch_op.create_index(
            "ix_host_commands_instance_status", ["instance_name", "status"], unique=False
        )

    op.create_table(
        "command_logs",
        sa.Column("command_id", sa.String(length=64), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["command_id"],
            ["host_commands.id"],
            name=op.f("fk_command_logs_command_id_host_commands"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("command_id", name=op.f("pk_command_logs")),
    )


def downgrade() -> None:
    op.drop_table("command_logs")
    with op.batch_alter_table("host_commands", schema=None) as batch_op:
        batch_op.drop_index("ix_host_commands_instance_status")
        batch_op.drop_index(batch_op.f("ix_host_commands_deployment_id"))

    op.drop_table("host_commands")
    op.drop_table("deployment_targets")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployments_status"))
        batch_op.drop_index(batch_op.f("ix_deployments_group_id"))
        batch_op.drop_index(batch_op.f("ix_deployments_create_time"))

    op.drop_table("deployments")
    op.drop_table("instance_health")
    op.drop_table("agent_contacts")
