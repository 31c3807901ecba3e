"""Creating a deployment's rows: its targets resolved and ordered, the group's target revision.

Shared by CreateDeployment and by automatic rollbacks; starting it (the engine's ``Started``)
is the caller's next step.
"""

from __future__ import annotations

import secrets
import string

from sqlalchemy import Connection

from opendeploy.core.deployments import Deployment
from opendeploy.core.lifecycle import events_for
from opendeploy.core.model import DeploymentGroup
from opendeploy.core.planner import plan_targets
from opendeploy.core.revisions import revision_identity, with_sha256
from opendeploy.core.targeting import matches_any, matches_tag_set
from opendeploy.store import deployments as store
from opendeploy.store import groups as group_store
from opendeploy.store import instances as instance_store

__all__ = ["launch", "matching_instances", "new_deployment_id"]

_ID_ALPHABET = string.ascii_uppercase + string.digits


def new_deployment_id() -> str:
    """AWS's form: ``d-`` and nine upper-case letters or digits."""
    return "d-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(9))


def matching_instances(connection: Connection, group: DeploymentGroup) -> list[str]:
    """Registered on-premises instances the group's tag filters or tag set select."""
    filters = group.spec.get("onPremisesInstanceTagFilters") or []
    tag_set = (group.spec.get("onPremisesTagSet") or {}).get("onPremisesTagSetList") or []
    if not filters and not tag_set:
        return []
    return [
        instance.name
        for instance in instance_store.listing(connection, registered=True)
        if (filters and matches_any(instance.tags, filters))
        or (tag_set and matches_tag_set(instance.tags, tag_set))
    ]


def launch(
    connection: Connection,
    deployment: Deployment,
    group: DeploymentGroup,
    *,
    outdated_only: bool = False,
) -> None:
    """Store ``deployment`` with its planned targets; Conflict if the group is busy."""
    names = matching_instances(connection, group)
    targets = plan_targets(
        deployment.deployment_id,
        names,
        store.health_of(connection, group.group_id, names),
        revision_identity=revision_identity(with_sha256(deployment.revision)),
        events=events_for(deployment.deployment_type),
        now=deployment.create_time,
        outdated_only=outdated_only,
    )
    store.create(connection, deployment, targets)
    group_store.set_target_revision(connection, group.group_id, dict(deployment.revision))
