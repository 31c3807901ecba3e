"""The agent process: configuration, logging, signals, and the loop.

``opendeploy agent run --config FILE`` calls ``run``. Logs go to stderr (systemd's journal
picks them up), one line each; while a command is handled every line carries its deployment id
(``[d-XXXXXXXXX]``). SIGTERM or SIGINT once: stop polling and let the running command finish;
twice: kill the running hook and exit (the next start reports that event as failed, code 7).
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Final

from opendeploy.agent.client import CommandClient
from opendeploy.agent.config import load_config
from opendeploy.agent.loop import Agent, current_deployment

__all__ = ["DeploymentFilter", "configure_logging", "run"]

LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(deployment)s%(name)s: %(message)s"
_QUIET: Final = ("botocore", "boto3", "urllib3", "httpx", "httpcore", "s3transfer")


class DeploymentFilter(logging.Filter):
    """Adds ``%(deployment)s``: ``"[d-XXXX] "`` while a command is handled, else ``""``."""

    def filter(self, record: logging.LogRecord) -> bool:
        deployment = current_deployment()
        record.deployment = f"[{deployment}] " if deployment else ""
        return True


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(DeploymentFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _QUIET:
        # Their debug output would include request signatures and bodies.
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def run(config_path: Path, *, log_level: str = "INFO") -> int:
    """Run the agent until stopped; the process exit status."""
    configure_logging(log_level)
    config = load_config(config_path)
    client = CommandClient(config)
    agent = Agent(config, client)

    def on_signal(number: int, frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("received %s", signal.Signals(number).name)
        agent.request_stop()

    previous = {
        number: signal.signal(number, on_signal) for number in (signal.SIGTERM, signal.SIGINT)
    }
    # A signal the kernel hands to another thread must still end the main thread's wait.
    previous_wakeup = signal.set_wakeup_fd(agent.wakeup.fileno(), warn_on_full_buffer=False)
    try:
        return agent.run_forever()
    finally:
        signal.set_wakeup_fd(previous_wakeup)
        for number, handler in previous.items():
            signal.signal(number, handler)
        client.close()
        agent.wakeup.close()
