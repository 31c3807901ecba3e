"""API latency: GetApplication and ListDeploymentGroups through boto3 on one connection.

Starts a real ``opendeploy server`` process per backend (SQLite in a temporary data dir, and
PostgreSQL when --postgres-url is given), warms up, then times N sequential calls of each
operation and an unauthenticated ``GET /healthz`` over one keep-alive connection as the
transport floor measured in the same run. Prints one line per backend and operation:

    backend=sqlite op=GetApplication n=2000 rps=... p50_ms=... p99_ms=... vs_floor_p50=...x

Usage: python bench/api.py [--requests 2000] [--postgres-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import configparser
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx
import sqlalchemy as sa
from botocore.config import Config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _server(database_url: str) -> Iterator[tuple[str, configparser.SectionProxy]]:
    with tempfile.TemporaryDirectory(prefix="od-bench-") as data_dir:
        port = _free_port()
        command = [
            sys.executable,
            "-m",
            "opendeploy",
            "server",
            "--data-dir",
            data_dir,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        if database_url:
            command += ["--database-url", database_url]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        endpoint = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(endpoint + "/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(
                        f"server exited {process.poll()}: " + process.stderr.read().decode()
                    )
                time.sleep(0.1)
            credentials = configparser.ConfigParser()
            credentials.read(Path(data_dir) / "admin-credentials")
            yield endpoint, credentials["default"]
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=15)


def _time(call: Callable[[], Any], count: int) -> list[float]:
    for _ in range(min(200, count)):
        call()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def _line(backend: str, op: str, samples: list[float], floor_p50: float | None) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    text = (
        f"backend={backend} op={op} n={len(samples)} rps={len(samples) / sum(samples):.0f} "
        f"p50_ms={p50 * 1000:.2f} p99_ms={p99 * 1000:.2f}"
    )
    if floor_p50:
        text += f" vs_floor_p50={p50 / floor_p50:.1f}x"
    return text


def run(backend: str, database_url: str, count: int) -> None:
    with _server(database_url) as (endpoint, credentials):
        client = boto3.session.Session().client(
            "codedeploy",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=credentials["aws_access_key_id"],
            aws_secret_access_key=credentials["aws_secret_access_key"],
            config=Config(max_pool_connections=1, retries={"max_attempts": 1}),
        )
        app = "bench-" + uuid.uuid4().hex[:8]
        client.create_application(applicationName=app)
        for index in range(20):
            client.create_deployment_group(
                applicationName=app,
                deploymentGroupName=f"group-{index:02d}",
                serviceRoleArn="arn:aws:iam::000000000000:role/bench",
            )
        with httpx.Client() as http:
            floor = _time(lambda: http.get(endpoint + "/healthz"), count)
        floor_p50 = statistics.median(floor)
        print(_line(backend, "healthz-floor", floor, None), flush=True)
        get = _time(lambda: client.get_application(applicationName=app), count)
        print(_line(backend, "GetApplication", get, floor_p50), flush=True)
        listing = _time(lambda: client.list_deployment_groups(applicationName=app), count)
        print(_line(backend, "ListDeploymentGroups", listing, floor_p50), flush=True)


def _fresh_postgres(base_url: str) -> tuple[str, Callable[[], None]]:
    name = "od_bench_" + uuid.uuid4().hex[:8]
    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    url = sa.engine.make_url(base_url).set(database=name)
    return url.render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--postgres-url", default=os.environ.get("OPENDEPLOY_TEST_POSTGRES_URL", "")
    )
    args = parser.parse_args()
    run("sqlite", "", args.requests)
    if args.postgres_url:
        url, drop = _fresh_postgres(args.postgres_url)
        try:
            run("postgresql", url, args.requests)
        finally:
            drop()


if __name__ == "__main__":
    main()
