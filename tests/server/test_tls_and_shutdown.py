"""``opendeploy server`` over HTTPS, and how a server process stops.

TLS: a CA and a server certificate made here (``cryptography``); boto3 trusting the CA and a
real ``opendeploy agent run`` process with ``ca_bundle`` in its configuration deploy a bundle
over HTTPS, clients that do not trust the CA are refused, and unusable ``--tls-cert`` /
``--tls-key`` files stop the server with a message naming the file.

Shutdown: real server processes on PostgreSQL. On SIGTERM or SIGINT a replica answers its held
long polls at once (empty, ``Connection: close``) and releases the reconciler lease, so a second
replica takes the lease at its next pass instead of once the lease has expired.

Tests with real server or agent processes are marked ``e2e``.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import SSLError
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from opendeploy.cli.main import cli
from opendeploy.cli.push import push_directory
from opendeploy.cli.server import GRACEFUL_SHUTDOWN_SECONDS
from opendeploy.localfleet import REGION, LocalFleet, LocalServer, start_server
from opendeploy.server.reconciler import LEASE
from opendeploy.server.secrets import SecretBox
from opendeploy.store import contacts, leases
from opendeploy.store.database import Database

AGENT_POLICY = "arn:aws:iam::aws:policy/OpenDeployAgentAccess"
SERVICE_ROLE = "arn:aws:iam::000000000000:role/opendeploy-tls"
#: The servers' default: how often a replica tries to take the reconciler lease, and its TTL.
RECONCILE_INTERVAL = 5.0
LEASE_TTL = 15.0
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


# -- certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    #: A CA that signed nothing the server has.
    other_ca: Path
    #: A key that is not the certificate's.
    other_key: Path
    encrypted_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    path.chmod(0o600)
    return path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
) -> x509.Certificate:
    """A CA certificate (self-signed) without ``issuer``, else a server certificate for
    127.0.0.1 and localhost signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        ).add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.DNSName("localhost"),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
                critical=False,
            )
        )
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
    )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _certificate("OpenDeploy test CA", ca_key)
    server_key = _key()
    server = _certificate("opendeploy test server", server_key, issuer=(ca, ca_key))
    (directory / "ca.pem").write_bytes(_pem(ca))
    (directory / "server.pem").write_bytes(_pem(server))
    (directory / "other-ca.pem").write_bytes(_pem(_certificate("Another CA", _key())))
    return Pki(
        ca=directory / "ca.pem",
        cert=directory / "server.pem",
        key=_write_key(directory / "server.key", server_key),
        other_ca=directory / "other-ca.pem",
        other_key=_write_key(directory / "other.key", _key()),
        encrypted_key=_write_key(directory / "encrypted.key", server_key, b"secret"),
    )


# -- the flags ---------------------------------------------------------------------------------


def _server_cli(tmp_path: Path, *args: str) -> Any:
    data_dir = tmp_path / "data"
    return CliRunner().invoke(
        cli, ["server", "--data-dir", str(data_dir), "--port", "1", *args], catch_exceptions=False
    )


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing cert", "cannot read --tls-cert {missing}: No such file or directory"),
        ("missing key", "cannot read --tls-key {missing}: No such file or directory"),
        ("key as cert", "--tls-cert {key} holds no PEM certificate"),
        ("cert as key", "--tls-key {cert} holds no PEM private key"),
        ("other key", "--tls-key {other_key} does not match the certificate in --tls-cert {cert}"),
        ("encrypted key", "--tls-key {encrypted_key} is encrypted"),
    ],
)
def test_an_unusable_certificate_or_key_stops_the_server_naming_the_file(
    pki: Pki, tmp_path: Path, case: str, expected: str
) -> None:
    missing = tmp_path / "nowhere.pem"
    cert, key = {
        "missing cert": (missing, pki.key),
        "missing key": (pki.cert, missing),
        "key as cert": (pki.key, pki.key),
        "cert as key": (pki.cert, pki.cert),
        "other key": (pki.cert, pki.other_key),
        "encrypted key": (pki.cert, pki.encrypted_key),
    }[case]
    result = _server_cli(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key))
    assert result.exit_code == 1, result.output
    message = expected.format(
        missing=missing,
        key=pki.key,
        cert=pki.cert,
        other_key=pki.other_key,
        encrypted_key=pki.encrypted_key,
    )
    assert f"Error: {message}" in result.output
    assert not (tmp_path / "data").exists(), "nothing may be set up before the files are checked"


def test_tls_cert_without_tls_key_is_a_usage_error(pki: Pki, tmp_path: Path) -> None:
    result = _server_cli(tmp_path, "--tls-cert", str(pki.cert))
    assert result.exit_code == 2, result.output
    assert "--tls-cert and --tls-key go together" in result.output


# -- HTTPS with real clients and a real agent --------------------------------------------------


@pytest.fixture(scope="module")
def https_server(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    workdir = tmp_path_factory.mktemp("https")
    server = start_server(
        workdir / "server",
        args=["--long-poll-seconds", "10"],
        tls=(pki.cert, pki.key),
        ca_bundle=pki.ca,
    )
    yield server
    server.stop()


@pytest.mark.e2e
def test_boto3_trusting_the_ca_talks_https_and_others_are_refused(
    https_server: LocalServer, pki: Pki
) -> None:
    assert https_server.endpoint.startswith("https://")
    assert "applications" in https_server.client("codedeploy").list_applications()

    # Not trusting the CA (boto3's own bundle): the certificate is refused.
    untrusting = dataclasses.replace(https_server, ca_bundle=None)
    with pytest.raises(SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.client("codedeploy").list_applications()
    other_ca = dataclasses.replace(https_server, ca_bundle=pki.other_ca)
    with pytest.raises(SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        other_ca.client("codedeploy").list_applications()

    # Plain HTTP to the HTTPS port gets no answer.
    with pytest.raises(httpx.HTTPError):
        httpx.get(https_server.endpoint.replace("https://", "http://") + "/healthz", timeout=5)


@pytest.mark.e2e
def test_a_real_agent_deploys_over_https_trusting_only_the_ca(
    https_server: LocalServer,
    pki: Pki,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = LocalFleet(https_server, tmp_path / "fleet")
    try:
        (agent,) = fleet.add_hosts(1, prefix=f"tls-{uuid.uuid4().hex[:6]}")
        configured = yaml.safe_load(agent.config_path.read_text())
        assert configured["ca_bundle"] == str(pki.ca)
        assert configured["endpoint"].startswith("https://")

        codedeploy = https_server.client("codedeploy")
        application = f"app-{uuid.uuid4().hex[:8]}"
        codedeploy.create_application(applicationName=application, computePlatform="Server")
        codedeploy.create_deployment_group(
            applicationName=application,
            deploymentGroupName="tls",
            serviceRoleArn=SERVICE_ROLE,
            deploymentConfigName="CodeDeployDefault.AllAtOnce",
            onPremisesInstanceTagFilters=[
                {"Key": "Name", "Value": agent.name, "Type": "KEY_AND_VALUE"}
            ],
        )
        source = tmp_path / "bundle"
        (source / "site").mkdir(parents=True)
        (source / "site" / "index.html").write_text("over https\n")
        (source / "appspec.yml").write_text(
            yaml.safe_dump(
                {
                    "version": 0.0,
                    "os": "linux",
                    "files": [{"source": "site", "destination": "/srv/tls-site"}],
                }
            )
        )
        # ``opendeploy push`` trusts a private CA the documented way: AWS_CA_BUNDLE for its
        # API calls (boto3), SSL_CERT_FILE for the bundle upload (httpx).
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(https_server.credentials_file))
        monkeypatch.setenv("AWS_CA_BUNDLE", str(pki.ca))
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        revision = push_directory(
            source,
            application=application,
            description=None,
            endpoint=https_server.endpoint,
            region=REGION,
        )
        deployment_id = codedeploy.create_deployment(
            applicationName=application, deploymentGroupName="tls", revision=revision
        )["deploymentId"]
        info = _wait_terminal(codedeploy, deployment_id)
        assert info["status"] == "Succeeded", (info, agent.log_path.read_text()[-3000:])
        installed = agent.destination_root / "srv" / "tls-site" / "index.html"
        assert installed.read_text() == "over https\n"
    finally:
        fleet.stop()


@pytest.mark.e2e
def test_an_agent_pinned_to_another_ca_does_not_talk_to_the_server(
    https_server: LocalServer, pki: Pki, tmp_path: Path
) -> None:
    fleet = LocalFleet(https_server, tmp_path / "fleet")
    (agent,) = fleet.add_hosts(1, prefix=f"pinned-{uuid.uuid4().hex[:6]}", start=False)
    configured = yaml.safe_load(agent.config_path.read_text())
    configured["ca_bundle"] = str(pki.other_ca)
    agent.config_path.write_text(yaml.safe_dump(configured))
    agent.start()
    try:
        deadline = time.monotonic() + 20
        while "CERTIFICATE_VERIFY_FAILED" not in agent.log_path.read_text():
            assert time.monotonic() < deadline, agent.log_path.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        fleet.stop()


def _wait_terminal(codedeploy: Any, deployment_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = codedeploy.get_deployment(deploymentId=deployment_id)[
            "deploymentInfo"
        ]
        if info["status"] in ("Succeeded", "Failed", "Stopped") or time.monotonic() > deadline:
            return info
        time.sleep(0.2)


# -- leases --------------------------------------------------------------------------------------


def test_a_released_lease_is_taken_at_once_and_only_its_holder_releases_it(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        db.upgrade()
        name = f"test-{uuid.uuid4().hex[:8]}"
        assert leases.acquire(db, name, "replica-a", now=100.0, ttl=15.0)
        assert not leases.acquire(db, name, "replica-b", now=101.0, ttl=15.0)
        assert not leases.release(db, name, "replica-b"), "only the holder releases"
        assert leases.current(db, name, now=101.0) == leases.Lease("replica-a", 115.0)

        assert leases.release(db, name, "replica-a")
        assert leases.current(db, name, now=101.0) is None
        assert not leases.release(db, name, "replica-a"), "released already"
        assert leases.acquire(db, name, "replica-b", now=101.5, ttl=15.0), "before 115"
        assert leases.current(db, name, now=102.0) == leases.Lease("replica-b", 116.5)
        assert leases.current(db, name, now=116.5) is None, "expired"
    finally:
        db.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_lifespan_end_releases_the_lease_under_a_plain_uvicorn(
    backend: str, tmp_path: Path
) -> None:
    """Any ASGI server runs the lifespan's end: the lease goes there at the latest."""
    import agentsim

    with agentsim.open_site(backend, tmp_path / "site", reconcile_interval=0.1) as site:
        db = Database(site.database_url)
        try:
            holder = _wait_for_holder(db, lambda lease: lease is not None, timeout=10)
            assert holder is not None and f":{os.getpid()}:" in holder.holder
            site.server.stop()
            assert leases.current(db, LEASE, now=time.time()) is None
        finally:
            db.dispose()


def test_the_contacts_noted_last_are_stored_when_the_server_stops(tmp_path: Path) -> None:
    """Contacts are written every few seconds; a clean stop writes those still in memory."""
    import agentsim

    with agentsim.open_site("sqlite", tmp_path / "site", long_poll_seconds=0.5) as site:
        host = _register_host(site.server)
        before = time.time()
        assert _poll(site.server.endpoint, host, timeout=10).status_code == 200
        site.server.stop()
        db = Database(site.database_url)
        try:
            with db.read() as connection:
                seen = contacts.last_contacts(connection, [host.name]).get(host.name)
        finally:
            db.dispose()
        assert seen is not None and seen >= before - 1


# -- stopping a replica --------------------------------------------------------------------------


@dataclass(frozen=True)
class PollingHost:
    name: str
    arn: str
    credentials: Credentials


def _register_host(server: LocalServer) -> PollingHost:
    iam = server.client("iam")
    name = f"host-{uuid.uuid4().hex[:8]}"
    user = f"agent-{name}"
    arn = iam.create_user(UserName=user)["User"]["Arn"]
    iam.attach_user_policy(UserName=user, PolicyArn=AGENT_POLICY)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    server.client("codedeploy").register_on_premises_instance(instanceName=name, iamUserArn=arn)
    return PollingHost(name, arn, Credentials(key["AccessKeyId"], key["SecretAccessKey"]))


def _poll(endpoint: str, host: PollingHost, timeout: float) -> httpx.Response:
    """One signed PollHostCommand, as an agent sends it."""
    body = json.dumps({"HostIdentifier": host.arn}).encode()
    request = AWSRequest(
        method="POST",
        url=endpoint + "/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "CodeDeployCommandService_v20141006.PollHostCommand",
        },
    )
    SigV4Auth(host.credentials, "codedeploy-commands", REGION).add_auth(request)
    return httpx.post(
        endpoint + "/", content=body, headers=dict(request.headers.items()), timeout=timeout
    )


def _waiting_polls(server: LocalServer) -> float:
    text = httpx.get(server.endpoint + "/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("opendeploy_waiting_long_polls "))
    return float(line.split()[1])


def _wait_for_holder(
    db: Database, done: Any, *, timeout: float, interval: float = 0.05
) -> leases.Lease | None:
    """The reconciler lease once ``done(lease)``; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        lease = leases.current(db, LEASE, now=time.time())
        if done(lease):
            return lease
        assert time.monotonic() < deadline, f"the reconciler lease is still {lease}"
        time.sleep(interval)


def _holds(server: LocalServer) -> Any:
    return lambda lease: lease is not None and f":{server.process.pid}:" in lease.holder


@pytest.mark.e2e
@pytest.mark.postgres
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_stopped_replica_answers_held_polls_and_hands_its_lease_over_at_once(
    fresh_postgres: str, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    args = ["--database-url", fresh_postgres, "--long-poll-seconds", "40"]
    env = {"OPENDEPLOY_SECRET_KEY": SecretBox.generate_key()}
    db = Database(fresh_postgres)
    replicas: list[LocalServer] = []
    try:
        replicas.append(start_server(tmp_path / "a", args=args, env=env))
        a = replicas[0]
        _wait_for_holder(db, _holds(a), timeout=RECONCILE_INTERVAL + 15)
        (tmp_path / "b").mkdir(mode=0o700)
        shutil.copy(a.credentials_file, tmp_path / "b" / "admin-credentials")
        replicas.append(start_server(tmp_path / "b", args=args, env=env))
        b = replicas[1]

        host = _register_host(a)
        answers: list[tuple[float, httpx.Response | Exception]] = []

        def poll() -> None:
            try:
                answers.append((time.time(), _poll(a.endpoint, host, timeout=60)))
            except Exception as error:
                answers.append((time.time(), error))

        def logs() -> str:
            return "".join(
                f"\n--- replica {name} log\n{server.log_path.read_text()[-4000:]}"
                for name, server in zip("AB", replicas, strict=True)
            )

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        deadline = time.monotonic() + 20
        while _waiting_polls(a) < 1:
            assert not answers, f"the poll was answered before the stop: {answers}{logs()}"
            assert time.monotonic() < deadline, "the poll was not held" + logs()
            time.sleep(0.05)
        held = leases.current(db, LEASE, now=time.time())
        assert held is not None and _holds(a)(held), held

        signalled = time.time()
        a.process.send_signal(stop_signal)

        # The held poll is answered, empty, well before uvicorn would cut it, and the agent is
        # told not to reuse the connection: its next poll goes through the balancer to a
        # replica still serving.
        poller.join(timeout=10)
        assert answers, "the held poll got no answer" + logs()
        answered, response = answers[0]
        assert isinstance(response, httpx.Response), f"the poll was cut: {response!r}{logs()}"
        assert response.status_code == 200, response.text
        assert response.json() == {}
        assert response.headers["connection"] == "close"
        assert answered - signalled < GRACEFUL_SHUTDOWN_SECONDS - 0.5, (
            f"answered {answered - signalled:.2f} s after the signal{logs()}"
        )

        # A clean stop: uvicorn re-raises SIGTERM once stopped; SIGINT ends as a normal exit.
        expected_code = -signal.SIGTERM if stop_signal == signal.SIGTERM else 0
        assert a.process.wait(timeout=15) == expected_code, logs()
        log = a.log_path.read_text()
        assert "timeout graceful shutdown exceeded" not in log, logs()
        assert "Traceback" not in log, logs()

        # Released, not left to expire: replica B takes it at one of its next passes (every
        # 5 s), before A's lease would have run out (10 to 15 s after the signal).
        after = leases.current(db, LEASE, now=time.time())
        assert after is None or _holds(b)(after), after
        taken = _wait_for_holder(db, _holds(b), timeout=held.expires - time.time() + 2)
        assert taken is not None
        took = taken.expires - LEASE_TTL
        assert took < held.expires, f"B waited for A's lease to expire{logs()}"
    finally:
        for server in replicas:
            server.stop()
        db.dispose()
