"""``opendeploy demo`` end to end, as a user runs it: a subprocess with no AWS settings, run
until it serves, then Ctrl-C (SIGINT), which must stop every process it started."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

DEADLINE = 90.0


def _processes_under(directory: str) -> list[str]:
    """Command lines of live processes that mention ``directory`` (the demo's children)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_bytes().rpartition(b")")[2].split()[0]
        except (OSError, UnicodeDecodeError, IndexError):
            continue
        if directory in cmdline and state not in (b"Z", b"X"):
            found.append(cmdline)
    return found


def test_demo_deploys_fails_rolls_back_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "OPENDEPLOY_"))}
    env.update(
        HOME=str(tmp_path / "home"),  # a fresh machine: no ~/.aws
        TMPDIR=str(tmp_path),
        COLUMNS="200",
        AWS_EC2_METADATA_DISABLED="true",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "opendeploy", "demo", "--hosts", "3", "--port", "0", "--pace", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    output: list[str] = []
    deadline = time.monotonic() + DEADLINE
    try:
        while not any("serving until Ctrl-C" in line for line in output):
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the demo did not get to serving:\n" + "".join(output)
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, "the demo exited early:\n" + "".join(output)
            output.append(line)
        text = "".join(output)
        workdir = re.search(r"Everything lives in: (\S+)", text)
        assert workdir is not None, text
        assert _processes_under(workdir.group(1)), "the server and agents should be running"

        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    while (line := lines.get(timeout=5)) is not None:
        output.append(line)
    assert process.stdout is not None
    process.stdout.close()
    text = "".join(output)

    assert process.returncode == 0, text
    # Release 1, half at a time, on every host.
    assert re.search(r"✓ d-\w+ succeeded in .* on 3 host\(s\)", text), text
    # Release 2 fails on host-02 and says where, with the script's own words.
    assert "host-02 failed at ValidateService running scripts/validate.sh" in text
    assert "health check failed on host-02" in text
    # ... and is rolled back, by the server or by the demo itself.
    assert "rollback d-" in text and "every host runs release 1 again" in text
    assert "/ui" in text and "admin-credentials" in text
    assert "stopped" in text.splitlines()[-1]
    # Nothing is left running, and the temporary directory is gone.
    assert _processes_under(workdir.group(1)) == []
    assert not Path(workdir.group(1)).exists()
