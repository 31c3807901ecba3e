"""Registering a host: its agent user and key, the on-premises instance, the agent config.

Used by ``opendeploy agent register`` and by the local fleets of ``opendeploy demo``, the
benchmarks and the end-to-end tests. Runs with an admin's or deployer's boto3 clients.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

from opendeploy.agent.config import AgentConfig
from opendeploy.core.errors import OpenDeployError
from opendeploy.core.policies import POLICY_ARNS, Role

__all__ = [
    "SIGNER_PATH",
    "USER_PREFIX",
    "Registration",
    "RegistrationError",
    "fetch_signer_certificate",
    "register_host",
]

USER_PREFIX = "opendeploy-agent-"
SIGNER_PATH = "/agent/spec-signer.pem"


class RegistrationError(OpenDeployError):
    """Registration could not finish; the message says what is left behind."""


@dataclass(frozen=True)
class Registration:
    endpoint: str
    instance_name: str
    root: Path
    destination_root: Path = Path("/")
    region: str = "us-east-1"
    tags: Mapping[str, str] = field(default_factory=dict)
    hook_environment: Mapping[str, str] = field(default_factory=dict)
    ca_bundle: Path | None = None


def fetch_signer_certificate(endpoint: str, ca_bundle: Path | None = None) -> str:
    """The server's spec signer certificate (PEM), checked to be one."""
    url = endpoint.rstrip("/") + SIGNER_PATH
    verify = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    try:
        response = httpx.get(url, timeout=30.0, verify=verify)
    except httpx.HTTPError as error:
        raise RegistrationError(f"cannot reach {url}: {error}") from None
    if response.status_code != 200:
        raise RegistrationError(
            f"GET {url} answered HTTP {response.status_code}; is this an OpenDeploy server?"
        )
    text = response.text
    try:
        x509.load_pem_x509_certificate(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise RegistrationError(f"{url} did not return a PEM certificate") from None
    return text


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""


def _error_text(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        details = response.get("Error") or {}
        return f"{details.get('Code')}: {details.get('Message')}"
    return str(error)


def register_host(
    iam: Any,
    codedeploy: Any,
    registration: Registration,
    *,
    certificate: str,
    report: Callable[[str], None] = lambda _: None,
) -> AgentConfig:
    """Create (or reuse) the host's agent user, give it a key, register and tag the instance.

    Returns the agent's configuration, secret included; nothing is written to disk here. On
    failure after the key was made, the key is deleted again.
    """
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    name = registration.instance_name
    user_name = USER_PREFIX + name
    key_id: str | None = None
    try:
        try:
            user = iam.create_user(UserName=user_name)["User"]
            report(f"created IAM user {user['Arn']}")
        except ClientError as error:
            if _error_code(error) != "EntityAlreadyExists":
                raise
            user = iam.get_user(UserName=user_name)["User"]
            report(f"reusing the existing IAM user {user['Arn']}")
        iam.attach_user_policy(UserName=user_name, PolicyArn=POLICY_ARNS[Role.AGENT])
        report(f"attached {POLICY_ARNS[Role.AGENT]}")
        key = iam.create_access_key(UserName=user_name)["AccessKey"]
        key_id = key["AccessKeyId"]
        report(f"created access key {key_id}")
        codedeploy.register_on_premises_instance(instanceName=name, iamUserArn=user["Arn"])
        report(f"registered on-premises instance {name}")
        if registration.tags:
            codedeploy.add_tags_to_on_premises_instances(
                tags=[{"Key": k, "Value": v} for k, v in registration.tags.items()],
                instanceNames=[name],
            )
            shown = ", ".join(f"{k}={v}" for k, v in registration.tags.items())
            report(f"tagged it {shown}")
    except (ClientError, BotoCoreError) as error:
        left = ""
        if key_id is not None:
            try:
                iam.delete_access_key(UserName=user_name, AccessKeyId=key_id)
                report(f"deleted access key {key_id} again")
            except (ClientError, BotoCoreError):
                left = f"; delete access key {key_id} by hand"
            left += f" (IAM user {user_name} is left in place; a re-run reuses it)"
        raise RegistrationError(f"registration failed: {_error_text(error)}{left}") from None
    return AgentConfig(
        endpoint=registration.endpoint.rstrip("/"),
        region=registration.region,
        instance_name=name,
        host_identifier=user["Arn"],
        access_key_id=key["AccessKeyId"],
        secret_access_key=key["SecretAccessKey"],
        root_dir=registration.root,
        spec_signer_certificate=certificate,
        destination_root=registration.destination_root,
        ca_bundle=registration.ca_bundle.absolute() if registration.ca_bundle else None,
        hook_environment=dict(registration.hook_environment),
    )
