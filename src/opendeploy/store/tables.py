"""The schema, one MetaData for both dialects. Times are epoch seconds (float)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Json = JSON().with_variant(JSONB(), "postgresql")

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

applications = Table(
    "applications",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("compute_platform", String(16), nullable=False),
    Column("create_time", Float, nullable=False),
    Column("github_account_name", String(100)),
)

deployment_configs = Table(
    "deployment_configs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("compute_platform", String(16), nullable=False),
    Column("minimum_healthy_hosts", Json),
    Column("traffic_routing", Json),
    Column("zonal", Json),
    Column("create_time", Float, nullable=False),
)

deployment_groups = Table(
    "deployment_groups",
    metadata,
    Column("id", String(36), primary_key=True),
    Column(
        "application_id",
        String(36),
        ForeignKey("applications.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", String(100), nullable=False),
    Column("deployment_config_name", String(100), nullable=False, index=True),
    Column("service_role_arn", String(2048), nullable=False),
    # Every other member of the CreateDeploymentGroup model, exactly as the user gave it.
    Column("spec", Json, nullable=False),
    Column("target_revision", Json),
    Column("create_time", Float, nullable=False),
    UniqueConstraint("application_id", "name", name="uq_deployment_groups_app_name"),
)

revisions = Table(
    "revisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "application_id",
        String(36),
        ForeignKey("applications.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # A canonical string of the revision's identity (codedeploy-spec §3.2).
    Column("identity", String(2048), nullable=False),
    Column("location", Json, nullable=False),
    Column("description", Text),
    Column("register_time", Float, nullable=False),
    Column("first_used_time", Float),
    Column("last_used_time", Float),
    Column("s3_bucket", String(255)),
    Column("s3_key", String(1024)),
    UniqueConstraint("application_id", "identity", name="uq_revisions_app_identity"),
)

instances = Table(
    "instances",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("instance_arn", String(2048), nullable=False),
    Column("iam_user_arn", String(2048)),
    Column("iam_session_arn", String(2048)),
    Column("register_time", Float, nullable=False),
    Column("deregister_time", Float),
)
Index("ix_instances_iam_user_arn", instances.c.iam_user_arn)

instance_tags = Table(
    "instance_tags",
    metadata,
    Column(
        "instance_name",
        String(100),
        ForeignKey("instances.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("key", String(128), primary_key=True),
    Column("value", String(256), nullable=False),
)

resource_tags = Table(
    "resource_tags",
    metadata,
    Column("resource_arn", String(2048), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("value", String(256), nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("user_id", String(32), nullable=False, unique=True),
    Column("arn", String(2048), nullable=False, unique=True),
    Column("path", String(512), nullable=False),
    Column("create_time", Float, nullable=False),
)

access_keys = Table(
    "access_keys",
    metadata,
    Column("access_key_id", String(32), primary_key=True),
    Column(
        "user_name",
        String(64),
        ForeignKey("users.name", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    # The secret sealed with the server's key (server.secrets.SecretBox); never stored plain.
    Column("sealed_secret", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("create_time", Float, nullable=False),
)

user_policies = Table(
    "user_policies",
    metadata,
    Column(
        "user_name",
        String(64),
        ForeignKey("users.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("policy_arn", String(2048), primary_key=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False, index=True),
    Column("principal", String(2048), nullable=False),
    Column("operation", String(128), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("outcome", String(128), nullable=False),
)

deployments = Table(
    "deployments",
    metadata,
    Column("id", String(16), primary_key=True),
    Column(
        "application_id",
        String(36),
        ForeignKey("applications.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # No foreign key: a group may be deleted under a running deployment, as on AWS.
    Column("group_id", String(36), nullable=False, index=True),
    Column("application_name", String(100), nullable=False),
    Column("group_name", String(100), nullable=False),
    Column("config_name", String(100), nullable=False),
    Column("minimum_healthy_hosts", Json, nullable=False),
    Column("revision", Json, nullable=False),
    Column("revision_identity", String(2048), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    # The group id while the deployment is active, else NULL: one active deployment per group.
    Column("active_group_id", String(36), unique=True),
    Column("ignore_application_stop_failures", Boolean, nullable=False),
    Column("file_exists_behavior", String(16)),
    Column("deployment_type", String(16), nullable=False),
    Column("stop_requested", Boolean, nullable=False),
    Column("rollback_on_stop", Boolean),
    Column("error_code", String(64)),
    Column("error_message", Text),
    Column("status_messages", Json, nullable=False),
    Column("details", Json, nullable=False),
    Column("create_time", Float, nullable=False, index=True),
    Column("start_time", Float),
    Column("complete_time", Float),
    # Bumped by every applied engine decision; targets and commands carry the version that
    # last wrote them, so a cached snapshot catches up by reading only newer rows.
    Column("version", Integer, nullable=False, server_default="0"),
)

deployment_targets = Table(
    "deployment_targets",
    metadata,
    Column(
        "deployment_id",
        String(16),
        ForeignKey("deployments.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("instance_name", String(100), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("standing", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("events", Json, nullable=False),
    Column("last_updated", Float, nullable=False),
    Column("version", Integer, nullable=False, server_default="0"),
)
Index(
    "ix_deployment_targets_version",
    deployment_targets.c.deployment_id,
    deployment_targets.c.version,
)

host_commands = Table(
    "host_commands",
    metadata,
    Column("id", String(64), primary_key=True),
    Column(
        "deployment_id",
        String(16),
        ForeignKey("deployments.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("instance_name", String(100), nullable=False),
    Column("event", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_time", Float, nullable=False),
    Column("dispatched_time", Float),
    Column("acked_time", Float),
    Column("completed_time", Float),
    Column("version", Integer, nullable=False, server_default="0"),
)
Index("ix_host_commands_instance_status", host_commands.c.instance_name, host_commands.c.status)
Index("ix_host_commands_version", host_commands.c.deployment_id, host_commands.c.version)

instance_health = Table(
    "instance_health",
    metadata,
    Column("instance_name", String(100), primary_key=True),
    Column("group_id", String(36), primary_key=True),
    Column("healthy", Boolean, nullable=False),
    Column("revision_identity", String(2048)),
    Column("updated_time", Float, nullable=False),
)

agent_contacts = Table(
    "agent_contacts",
    metadata,
    Column("instance_name", String(100), primary_key=True),
    Column("last_seen", Float, nullable=False),
)

command_logs = Table(
    "command_logs",
    metadata,
    Column(
        "command_id",
        String(64),
        ForeignKey("host_commands.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("content", Text, nullable=False),
    Column("size", Integer, nullable=False),
)

#: The transactional outbox of trigger events: written with the decision that caused them,
#: delivered later by the trigger worker.
notifications = Table(
    "notifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("deployment_id", String(16), nullable=False, index=True),
    Column("group_id", String(36), nullable=False),
    Column("event", String(32), nullable=False),
    Column("instance_name", String(100)),
    Column("created_time", Float, nullable=False, index=True),
)

#: Alert states pushed by Alertmanager's webhook (server/alarms.py), one row per alert
#: (Alertmanager's fingerprint of its label set). ``changed_time`` is when the alert started
#: firing or was resolved, by Alertmanager's clock; an older notification never overwrites a
#: newer one.
pushed_alerts = Table(
    "pushed_alerts",
    metadata,
    Column("fingerprint", String(64), primary_key=True),
    Column("alert_name", String(255), nullable=False, index=True),
    Column("firing", Boolean, nullable=False),
    Column("changed_time", Float, nullable=False),
    Column("received_time", Float, nullable=False, index=True),
)

#: Outbox rows the trigger worker has matched against their group's triggers: one row each,
#: written with the deliveries it made (none when no trigger wanted the event).
trigger_fanout = Table(
    "trigger_fanout",
    metadata,
    Column("notification_id", Integer, primary_key=True, autoincrement=False),
    Column("fanout_time", Float, nullable=False),
)

#: One trigger event on its way to one trigger target, with its retry state and outcome.
trigger_deliveries = Table(
    "trigger_deliveries",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("notification_id", Integer, nullable=False),
    Column("deployment_id", String(16), nullable=False, index=True),
    Column("group_id", String(36), nullable=False),
    Column("trigger_name", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("event", String(32), nullable=False),
    Column("instance_name", String(100)),
    Column("subject", String(100), nullable=False),
    # The exact message sent at every attempt (its signature covers these bytes).
    Column("body", Text, nullable=False),
    # Pending (first attempt or a retry is due at next_attempt_time), InProgress (claimed by
    # a worker until lease_until), Delivered, Failed.
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_time", Float),
    Column("lease_token", String(36)),
    Column("lease_until", Float),
    Column("last_error", Text),
    Column("last_http_status", Integer),
    Column("create_time", Float, nullable=False),
    Column("last_attempt_time", Float),
    Column("complete_time", Float),
    UniqueConstraint(
        "notification_id", "trigger_name", name="uq_trigger_deliveries_notification_trigger"
    ),
)
Index(
    "ix_trigger_deliveries_status_next",
    trigger_deliveries.c.status,
    trigger_deliveries.c.next_attempt_time,
)
