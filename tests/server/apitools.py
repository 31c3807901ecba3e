"""Helpers shared by the public API test modules: expected errors, raw JSON bodies, tokens."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

__all__ = ["api_error", "assert_no_nulls", "forged_token", "raw_call"]


def api_error(call: Callable[..., Any], **params: Any) -> tuple[str, str]:
    """Call a client method that must fail; return (error code, message) after checking the
    HTTP status is the 400 every modeled CodeDeploy exception uses."""
    with pytest.raises(ClientError) as caught:
        call(**params)
    response = caught.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return response["Error"]["Code"], response["Error"]["Message"]


def raw_call(client: Any, method: str, **params: Any) -> tuple[dict[str, Any], Any]:
    """Call ``method`` and return (what boto3 parsed, the JSON body the server sent)."""
    operation = client.meta.method_to_api_mapping[method]
    seen: dict[str, bytes] = {}

    def grab(http_response: Any, **_: Any) -> None:
        seen["body"] = http_response.content

    event = f"after-call.codedeploy.{operation}"
    client.meta.events.register(event, grab)
    try:
        parsed = getattr(client, method)(**params)
    finally:
        client.meta.events.unregister(event, grab)
    return parsed, json.loads(seen["body"] or b"{}")


def assert_no_nulls(value: Any, path: str = "$") -> None:
    """Unset members are omitted from responses, never sent as null (spec §1.1)."""
    assert value is not None, f"{path} is null"
    if isinstance(value, dict):
        for key, item in value.items():
            assert_no_nulls(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            assert_no_nulls(item, f"{path}[{index}]")


def forged_token(scope: str, position: Any) -> str:
    raw = json.dumps({"s": scope, "p": position}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
