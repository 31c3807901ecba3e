"""Operation name -> use case, per service."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opendeploy.server.service import (
    applications,
    configs,
    deployments,
    groups,
    iam,
    instances,
    revisions,
    tagging,
    triggers_api,
)
from opendeploy.server.service.context import ServiceContext

__all__ = ["CODEDEPLOY_OPERATIONS", "IAM_OPERATIONS", "OPENDEPLOY_OPERATIONS", "Handler"]

Handler = Callable[[ServiceContext, dict[str, Any]], dict[str, Any]]

CODEDEPLOY_OPERATIONS: Mapping[str, Handler] = {
    "CreateApplication": applications.create_application,
    "GetApplication": applications.get_application,
    "BatchGetApplications": applications.batch_get_applications,
    "ListApplications": applications.list_applications,
    "UpdateApplication": applications.update_application,
    "DeleteApplication": applications.delete_application,
    "RegisterApplicationRevision": revisions.register_application_revision,
    "GetApplicationRevision": revisions.get_application_revision,
    "BatchGetApplicationRevisions": revisions.batch_get_application_revisions,
    "ListApplicationRevisions": revisions.list_application_revisions,
    "CreateDeploymentConfig": configs.create_deployment_config,
    "GetDeploymentConfig": configs.get_deployment_config,
    "ListDeploymentConfigs": configs.list_deployment_configs,
    "DeleteDeploymentConfig": configs.delete_deployment_config,
    "CreateDeploymentGroup": groups.create_deployment_group,
    "GetDeploymentGroup": groups.get_deployment_group,
    "BatchGetDeploymentGroups": groups.batch_get_deployment_groups,
    "ListDeploymentGroups": groups.list_deployment_groups,
    "UpdateDeploymentGroup": groups.update_deployment_group,
    "DeleteDeploymentGroup": groups.delete_deployment_group,
    "RegisterOnPremisesInstance": instances.register_on_premises_instance,
    "DeregisterOnPremisesInstance": instances.deregister_on_premises_instance,
    "GetOnPremisesInstance": instances.get_on_premises_instance,
    "BatchGetOnPremisesInstances": instances.batch_get_on_premises_instances,
    "ListOnPremisesInstances": instances.list_on_premises_instances,
    "AddTagsToOnPremisesInstances": instances.add_tags_to_on_premises_instances,
    "RemoveTagsFromOnPremisesInstances": instances.remove_tags_from_on_premises_instances,
    "CreateDeployment": deployments.create_deployment,
    "GetDeployment": deployments.get_deployment,
    "BatchGetDeployments": deployments.batch_get_deployments,
    "ListDeployments": deployments.list_deployments,
    "StopDeployment": deployments.stop_deployment,
    "GetDeploymentTarget": deployments.get_deployment_target,
    "BatchGetDeploymentTargets": deployments.batch_get_deployment_targets,
    "ListDeploymentTargets": deployments.list_deployment_targets,
    "GetDeploymentInstance": deployments.get_deployment_instance,
    "BatchGetDeploymentInstances": deployments.batch_get_deployment_instances,
    "ListDeploymentInstances": deployments.list_deployment_instances,
    "TagResource": tagging.tag_resource,
    "UntagResource": tagging.untag_resource,
    "ListTagsForResource": tagging.list_tags_for_resource,
}

IAM_OPERATIONS: Mapping[str, Handler] = {
    "CreateUser": iam.create_user,
    "GetUser": iam.get_user,
    "ListUsers": iam.list_users,
    "DeleteUser": iam.delete_user,
    "CreateAccessKey": iam.create_access_key,
    "ListAccessKeys": iam.list_access_keys,
    "DeleteAccessKey": iam.delete_access_key,
    "AttachUserPolicy": iam.attach_user_policy,
    "DetachUserPolicy": iam.detach_user_policy,
    "ListAttachedUserPolicies": iam.list_attached_user_policies,
}

#: Our extensions of the public API (target prefix ``OpenDeploy_20261126``).
OPENDEPLOY_OPERATIONS: Mapping[str, Handler] = {
    "GetLifecycleEventLog": deployments.get_lifecycle_event_log,
    "ListTriggerDeliveries": triggers_api.list_trigger_deliveries,
    "RevealTriggerSecret": triggers_api.reveal_trigger_secret,
}
