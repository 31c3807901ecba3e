"""``opendeploy push``: archive a directory, upload it, register it as a revision."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import click
import httpx

from opendeploy.bundles.archive import BundleError, make_bundle
from opendeploy.cli.common import (
    ENDPOINT,
    REGION,
    aws_client,
    aws_credentials,
    fail_on_client_error,
)
from opendeploy.httpsign import signed_headers

__all__ = ["push", "push_directory"]


def push_directory(
    source: Path, *, application: str, description: str | None, endpoint: str, region: str
) -> dict[str, Any]:
    """Upload ``source`` as a bundle and register it; the RevisionLocation."""
    credentials = aws_credentials()
    with tempfile.TemporaryFile() as bundle:
        try:
            info = make_bundle(source, bundle)
        except BundleError as error:
            raise click.ClickException(str(error)) from error
        bundle.seek(0)
        url = endpoint.rstrip("/") + "/bundles"
        headers = signed_headers(
            method="PUT",
            url=url,
            payload_sha256=info.sha256,
            access_key_id=credentials.access_key,
            secret_access_key=credentials.secret_key,
            session_token=credentials.token,
            service="codedeploy",
            region=region,
            headers={"Content-Type": "application/x-gzip", "Content-Length": str(info.size)},
        )
        try:
            response = httpx.put(url, content=_chunks(bundle), headers=headers, timeout=300)
        except httpx.HTTPError as error:
            raise click.ClickException(f"Cannot reach {endpoint}: {error}") from error
    if response.status_code != 200:
        raise click.ClickException(_error_text(response))
    revision: dict[str, Any] = response.json()["revision"]
    codedeploy = aws_client("codedeploy", endpoint, region)
    arguments: dict[str, Any] = {"applicationName": application, "revision": revision}
    if description:
        arguments["description"] = description
    fail_on_client_error(codedeploy.register_application_revision, **arguments)
    return revision


def _chunks(stream: Any) -> Any:
    while chunk := stream.read(1024 * 1024):
        yield chunk


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{body.get('__type')}: {body.get('message')}"
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"


@click.command()
@click.option("--application", "-a", required=True, help="The application to register it in.")
@click.option(
    "--source",
    "-s",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The directory to push; appspec.yml must be at its root.",
)
@click.option("--description", "-d", default=None, help="A description of the revision.")
@ENDPOINT
@REGION
def push(
    application: str, source: Path, description: str | None, endpoint: str, region: str
) -> None:
    """Push a directory as a revision; prints {"revision": ...} ready for CreateDeployment."""
    revision = push_directory(
        source, application=application, description=description, endpoint=endpoint, region=region
    )
    click.echo(json.dumps({"revision": revision}, indent=2))
