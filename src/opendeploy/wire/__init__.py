"""Wire models of the agent API, in botocore's service-model format.

``codedeploy-commands`` is the host command service the stock CodeDeploy agent speaks;
``opendeploy-agent`` holds our own extra operations (full log upload) under another target
prefix; both are signed for the SigV4 service ``codedeploy-commands``. ``opendeploy`` holds
our extensions of the public API (full lifecycle event logs), signed for ``codedeploy``.
The server validates against them; the agent's requests follow them (``agent/transport.py``).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from botocore.model import ServiceModel

__all__ = [
    "COMMANDS_SERVICE",
    "DATA_PATH",
    "EXTENSIONS_SERVICE",
    "PUBLIC_EXTENSIONS_SERVICE",
    "service_model",
]

DATA_PATH = Path(__file__).with_name("data")
COMMANDS_SERVICE = "codedeploy-commands"
EXTENSIONS_SERVICE = "opendeploy-agent"
PUBLIC_EXTENSIONS_SERVICE = "opendeploy"
_VERSIONS = {
    COMMANDS_SERVICE: "2014-10-06",
    EXTENSIONS_SERVICE: "2026-11-26",
    PUBLIC_EXTENSIONS_SERVICE: "2026-11-26",
}


@lru_cache(maxsize=4)
def service_model(name: str) -> ServiceModel:
    path = DATA_PATH / name / _VERSIONS[name] / "service-2.json"
    return ServiceModel(json.loads(path.read_text()), service_name=name)
