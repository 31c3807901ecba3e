"""Deployment benchmark: the reference bundle to N real agents, beside Ansible on the same work.

One real ``opendeploy server`` and 50 real ``opendeploy agent`` processes on this machine
(each with its own deployment root and destination root). For every N and config it times
CreateDeployment -> Succeeded (one deployment group per N, each warmed up by one untimed deployment,
so every timed one also runs the previous revision's ApplicationStop), then runs
``../shared/bench/anchors/ansible/run.sh`` for the same N (up to --ansible-max) in the same
run. Each OpenDeploy cell is timed --repeat times (this machine is noisy): the samples and
their median are printed, and the ratio uses the median. Before each cell the machine's dirty
pages are written back (``os.sync``): Ansible's writes, or the previous cell's, are not charged
to the agents' fsyncs of the next one. A run's time is from sending
CreateDeployment to the deployment's completeTime (the server's clock); the median run's
targets tell where its time went: ``host_events_ms``, the median time a host spends from its
first lifecycle event's start to its last one's end (the agent's work and the server's
answers between its events), and ``gap_between_hosts_ms``, the median time from one host's
last event end to the next host's first event start (finding and handing over the next
host's first command). Prints one line per measurement:

    opendeploy hosts=N config=AllAtOnce wall_s=<median> per_host_ms=<median> samples_s=a,b,c
        host_events_ms=... gap_between_hosts_ms=... event_ms=ApplicationStop:...,...
    ansible hosts=N batch=100% wall_s=... per_host_ms=...
    ratio hosts=N config=AllAtOnce ansible_per_opendeploy=...x

Usage: python bench/deploy.py [--hosts 1,10,50] [--configs AllAtOnce,OneAtATime]
       [--ansible-max 10] [--repeat 3] [--database-url postgresql+psycopg://...]
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from opendeploy.cli.push import push_directory
from opendeploy.localfleet import LocalFleet, start_server

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "bench"
BUNDLE = SHARED / "reference-bundle"
ANSIBLE = SHARED / "anchors" / "ansible" / "run.sh"
ANSIBLE_BATCH = {"AllAtOnce": "100%", "OneAtATime": "1"}


def _wait(codedeploy: Any, deployment_id: str, timeout: float = 600.0) -> dict[str, Any]:
    """The deployment once it ended. Polled every 100 ms: each GetDeployment costs the server
    CPU (about 4 ms here) the deployment would otherwise use on this 2-core machine, and the
    time is read off the deployment's own completeTime anyway."""
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = codedeploy.get_deployment(deploymentId=deployment_id)[
            "deploymentInfo"
        ]
        if info["status"] in ("Succeeded", "Failed", "Stopped"):
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"{deployment_id} still {info['status']} after {timeout} s")
        time.sleep(0.1)


def _deploy(
    codedeploy: Any, group: str, config: str, revision: dict[str, Any]
) -> tuple[float, str]:
    """Seconds from sending CreateDeployment to the deployment's completeTime (the server's
    clock, this machine's), and the deployment id."""
    start = time.time()
    deployment_id = codedeploy.create_deployment(
        applicationName="bench",
        deploymentGroupName=group,
        deploymentConfigName=f"CodeDeployDefault.{config}",
        revision=revision,
        # The groups of different N share hosts and the destination: let each take it over.
        fileExistsBehavior="OVERWRITE",
    )["deploymentId"]
    info = _wait(codedeploy, deployment_id)
    if info["status"] != "Succeeded":
        raise RuntimeError(
            f"{deployment_id} ended {info['status']}: {info.get('errorInformation')}"
        )
    wall: float = info["completeTime"].timestamp() - start
    return wall, deployment_id


def _timeline(codedeploy: Any, deployment_id: str, *, one_at_a_time: bool) -> str:
    """Where a deployment's time went, from its targets' lifecycle events: the median time a
    host spends in its events (first start to last end) and, between consecutive hosts, the
    median gap from one host's last event end to the next one's first start (OneAtATime), and
    each lifecycle event's median duration (from the server's ack, or its hand-over with the
    previous event's completion, to the event's completion: the agent's work and one round
    trip)."""
    ids = codedeploy.list_deployment_targets(deploymentId=deployment_id)["targetIds"]
    spans: list[tuple[float, float]] = []
    durations: dict[str, list[float]] = {}
    for start in range(0, len(ids), 25):
        found = codedeploy.batch_get_deployment_targets(
            deploymentId=deployment_id, targetIds=ids[start : start + 25]
        )["deploymentTargets"]
        for target in found:
            events = target["instanceTarget"]["lifecycleEvents"]
            for event in events:
                if "startTime" in event and "endTime" in event:
                    durations.setdefault(event["lifecycleEventName"], []).append(
                        event["endTime"].timestamp() - event["startTime"].timestamp()
                    )
            spans.append(
                (
                    min(e["startTime"].timestamp() for e in events if "startTime" in e),
                    max(e["endTime"].timestamp() for e in events if "endTime" in e),
                )
            )
    spans.sort()
    busy = statistics.median(end - begin for begin, end in spans)
    gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(spans)]
    gap = ""
    if one_at_a_time and gaps:
        gap = f" gap_between_hosts_ms={1000 * statistics.median(gaps):.1f}"
    each = ",".join(
        f"{name}:{1000 * statistics.median(values):.1f}" for name, values in durations.items()
    )
    return f"host_events_ms={1000 * busy:.1f}{gap} event_ms={each}"


def _wait_until_polling(endpoint: str, agents: int, timeout: float = 300.0) -> None:
    """Until every agent holds a long poll (they start as Python processes: seconds of CPU)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(endpoint + "/metrics", timeout=10).text
        match = re.search(r"^opendeploy_waiting_long_polls (\S+)", text, re.MULTILINE)
        if match and float(match.group(1)) >= agents:
            time.sleep(2.0)
            return
        time.sleep(0.5)
    raise TimeoutError(f"fewer than {agents} agents polling after {timeout:.0f} s")


def _ansible(hosts: int, config: str) -> float | None:
    batch = ANSIBLE_BATCH[config]
    forks = "1" if batch == "1" else str(max(hosts, 1))
    result = subprocess.run(
        ["bash", str(ANSIBLE), str(hosts), forks, batch], capture_output=True, text=True
    )
    match = re.search(r"wall_s=([0-9.]+)", result.stdout)
    if result.returncode != 0 or match is None:
        print(f"ansible hosts={hosts} batch={batch} failed: {result.stdout[-500:]}", flush=True)
        return None
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="1,10,50")
    parser.add_argument("--configs", default="AllAtOnce,OneAtATime")
    parser.add_argument("--ansible-max", type=int, default=10)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each cell")
    args = parser.parse_args()
    sizes = sorted({int(n) for n in args.hosts.split(",")})
    configs = args.configs.split(",")

    work = Path(tempfile.mkdtemp(prefix="od-bench-deploy-"))
    server_args = ["--long-poll-seconds", "30"]
    if args.database_url:
        server_args += ["--database-url", args.database_url]
    server = start_server(work / "server", args=server_args)
    fleet = LocalFleet(server, work / "hosts")
    try:
        start = time.perf_counter()
        for index in range(max(sizes)):
            tags = {f"in-{n}": "yes" for n in sizes if index < n}
            fleet.add_hosts(
                1, prefix="bench", tags=tags, hook_environment={"HOOK_LOG": "{home}/hooks.log"}
            )
        print(
            f"# {max(sizes)} agents registered and started in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
        _wait_until_polling(server.endpoint, max(sizes))
        codedeploy = server.client("codedeploy")
        codedeploy.create_application(applicationName="bench")
        os.environ["AWS_ACCESS_KEY_ID"] = server.access_key_id
        os.environ["AWS_SECRET_ACCESS_KEY"] = server.secret_access_key
        revision = push_directory(
            BUNDLE,
            application="bench",
            description="reference bundle",
            endpoint=server.endpoint,
            region="us-east-1",
        )
        for n in sizes:
            group = f"n{n}"
            codedeploy.create_deployment_group(
                applicationName="bench",
                deploymentGroupName=group,
                serviceRoleArn="arn:aws:iam::000000000000:role/bench",
                onPremisesInstanceTagFilters=[
                    {"Key": f"in-{n}", "Value": "yes", "Type": "KEY_AND_VALUE"}
                ],
            )
            _deploy(codedeploy, group, "AllAtOnce", revision)
            for config in configs:
                # The previous cell's (and Ansible's) dirty pages are written back now, not
                # while the agents of this cell wait for their own fsyncs.
                os.sync()
                runs = [
                    _deploy(codedeploy, group, config, revision) for _ in range(max(args.repeat, 1))
                ]
                samples = [wall for wall, _ in runs]
                wall = statistics.median(samples)
                median_run = sorted(runs)[len(runs) // 2][1]
                print(
                    f"opendeploy hosts={n} config={config} wall_s={wall:.3f} "
                    f"per_host_ms={wall / n * 1000:.1f} "
                    f"samples_s={','.join(f'{sample:.3f}' for sample in samples)} "
                    f"{_timeline(codedeploy, median_run, one_at_a_time=config == 'OneAtATime')}",
                    flush=True,
                )
                if n > args.ansible_max:
                    continue
                ansible = _ansible(n, config)
                if ansible is None:
                    continue
                print(
                    f"ansible hosts={n} batch={ANSIBLE_BATCH[config]} wall_s={ansible:.3f} "
                    f"per_host_ms={ansible / n * 1000:.1f}",
                    flush=True,
                )
                print(
                    f"ratio hosts={n} config={config} ansible_per_opendeploy={ansible / wall:.1f}x",
                    flush=True,
                )
    finally:
        fleet.stop()
        server.stop()


if __name__ == "__main__":
    main()
