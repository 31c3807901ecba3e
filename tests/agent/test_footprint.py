"""What keeps an idle agent small and quiet: lazy imports, a blocking wait, prompt wake-ups."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opendeploy.agent.config import AgentConfig, is_pem_certificate, write_config
from opendeploy.agent.loop import Agent, _Stopped
from opendeploy.agent.wakeup import Wakeup

HOST = "arn:aws:iam::000000000000:user/opendeploy-agent-idle"
#: Libraries an idle agent must not load: each costs megabytes in every host of a fleet.
HEAVY = ("botocore", "boto3", "s3transfer", "urllib3", "httpx", "cryptography", "asn1crypto")


def _certificate() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


CERT = _certificate()


class HoldingServer:
    """Holds every PollHostCommand until released, as the real server's long poll does."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.polls = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                if target.endswith((".PollHostCommand", ".TakeHostCommand")):
                    server.polls += 1
                    server.release.wait(30)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.thread = threading.Thread(
            target=self.http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.http.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def holding() -> Iterator[HoldingServer]:
    server = HoldingServer()
    yield server
    server.close()


def _config(tmp_path: Path, endpoint: str) -> AgentConfig:
    return AgentConfig(
        endpoint=endpoint,
        region="us-east-1",
        instance_name="idle-1",
        host_identifier=HOST,
        access_key_id="AKIAIDLE",
        secret_access_key="idle-secret",
        root_dir=tmp_path / "root",
        spec_signer_certificate=CERT,
        destination_root=tmp_path / "dest",
    )


_DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    from pathlib import Path
    from opendeploy.agent.main import run

    def report():
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
        print(json.dumps({{"heavy": heavy, "killed_at": time.monotonic()}}), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Timer(1.5, report).start()
    code = run(Path(sys.argv[1]))
    print(json.dumps({{"exited_at": time.monotonic(), "code": code}}), flush=True)
    """
).format(heavy=HEAVY)


def test_an_idle_agent_loads_no_aws_sdk_http_or_x509_library_and_stops_at_once(
    tmp_path: Path, holding: HoldingServer
) -> None:
    """A real ``run``: it polls (held by the server), then SIGTERM must end it at once."""
    path = tmp_path / "agent.yml"
    write_config(path, _config(tmp_path, holding.endpoint))
    result = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(path)],
        capture_output=True,
        text=True,
        timeout=25,
        env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
    )
    assert result.returncode == 0, result.stderr
    first, last = (json.loads(line) for line in result.stdout.splitlines())
    assert holding.polls == 1
    assert first["heavy"] == []
    assert last["code"] == 0
    assert last["exited_at"] - first["killed_at"] < 1.0


def test_importing_the_agent_loads_none_of_them() -> None:
    code = (
        "import sys, json, opendeploy.agent.main, opendeploy.agent.executor;"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(output) == []


# -- waiting -----------------------------------------------------------------------------------


class _Client:
    host_identifier = HOST

    def __init__(self) -> None:
        self.abort = threading.Event()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    made = Agent(_config(tmp_path, "http://127.0.0.1:1"), _Client())  # type: ignore[arg-type]
    yield made
    made.wakeup.close()


def test_the_wait_for_a_call_wakes_when_it_returns_and_not_before(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float | None] = []
    original = Wakeup.wait

    def counted(self: Wakeup, timeout: float | None = None) -> bool:
        waits.append(timeout)
        return original(self, timeout)

    monkeypatch.setattr(Wakeup, "wait", counted)
    started = time.monotonic()
    value = agent._wait_for(lambda: time.sleep(0.3) or "done", stop_on=lambda: False)
    elapsed = time.monotonic() - started
    assert value == "done"
    assert 0.3 <= elapsed < 0.35
    assert waits and len(waits) <= 2, "the main thread must block, not poll"
    assert all(timeout is None for timeout in waits)


def test_a_stop_request_ends_the_wait_at_once(agent: Agent) -> None:
    threading.Timer(0.1, agent.request_stop).start()
    started = time.monotonic()
    with pytest.raises(_Stopped):
        agent._wait_for(lambda: time.sleep(5), stop_on=lambda: agent.stopping)
    assert time.monotonic() - started < 0.2


def test_a_stop_request_ends_a_sleep_at_once(agent: Agent) -> None:
    threading.Timer(0.1, agent.request_stop).start()
    started = time.monotonic()
    assert agent._sleep(5) is True
    assert time.monotonic() - started < 0.2
    assert agent._sleep(1) is True  # once stopping, never sleeps


def test_a_wakeup_is_not_lost_between_clear_and_wait() -> None:
    wakeup = Wakeup()
    try:
        wakeup.clear()
        wakeup.notify()
        assert wakeup.wait(0) is True
        wakeup.clear()
        assert wakeup.wait(0.01) is False
        for _ in range(100_000):  # a full pipe neither blocks nor raises
            wakeup.notify()
        wakeup.clear()
        assert wakeup.wait(0) is False
    finally:
        wakeup.close()


# -- the configuration's certificate check -------------------------------------------------------


def test_the_certificate_shape_check() -> None:
    assert is_pem_certificate(CERT)
    body = "".join(CERT.splitlines()[1:-1])
    assert not is_pem_certificate("nope")
    assert not is_pem_certificate(CERT.replace(body[:40], body[:39] + "*"))
    lines = CERT.splitlines()
    truncated = "\n".join([*lines[:2], lines[-1]])
    assert not is_pem_certificate(truncated)
    not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n"
    assert not is_pem_certificate(not_der)


def test_verifying_a_specification_loads_no_openssl_binding(tmp_path: Path) -> None:
    """An agent keeps what it imported: a deployment must not leave cryptography behind."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs7

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "signer")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    signed = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(b'{"DeploymentId": "d-FOOTPRINT"}')
        .add_signer(certificate, key, hashes.SHA256())
        .sign(serialization.Encoding.PEM, [pkcs7.PKCS7Options.Binary])
    )
    (tmp_path / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "spec.pem").write_bytes(signed)
    code = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        from opendeploy.agent.envelope import verify_envelope
        folder = Path({str(tmp_path)!r})
        envelope = {{"Format": "PKCS7/JSON", "Payload": (folder / "spec.pem").read_text()}}
        spec = verify_envelope(envelope, (folder / "cert.pem").read_text())
        print(json.dumps([spec, sorted(m for m in sys.modules if m.startswith("cryptography"))]))
        """
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(output) == [{"DeploymentId": "d-FOOTPRINT"}, []]
