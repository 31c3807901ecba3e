"""The dashboard in a real browser (Debian's chromium driven by Playwright) against a real
server process and real agents (LocalFleet): sign-in, live grids, logs, stop, rollback, roles.

Hooks that must be caught in the act wait for a gate file that the test creates, so every
"while it runs" step is deterministic. Screenshots go to ``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import os
import signal
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from opendeploy.cli.push import push_directory
from opendeploy.localfleet import REGION, LocalFleet, LocalServer, start_server

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
SERVICE_ROLE = "arn:aws:iam::000000000000:role/opendeploy-dashboard"
HOSTS = 2
TIMEOUT_MS = 30_000
GREEN = "rgb(21, 146, 79)"  # --ok in dashboard.css
RED = "rgb(209, 52, 47)"  # --bad


def _require_browser() -> Any:
    """Playwright's sync API, or a skip (a failure in CI) when the browser is missing."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed: pip install playwright"
    if problem is None and not os.path.exists(CHROMIUM):
        problem = f"{CHROMIUM} is missing: apt-get install chromium"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{problem} (required in CI)", pytrace=False)
        pytest.skip(problem)
    return sync_playwright


# -- bundles -----------------------------------------------------------------------------------


def _script(body: str) -> str:
    return "#!/bin/bash\nset -e\n" + textwrap.dedent(body)


def gated(gate: Path) -> str:
    """A hook that waits (at most a minute) until ``gate`` exists."""
    return _script(
        f"""\
        echo "waiting for the release gate"
        for i in $(seq 1 600); do [ -f "{gate}" ] && break; sleep 0.1; done
        echo "gate open, carrying on"
        """
    )


FAILING = _script(
    """\
    for i in $(seq 1 300); do echo "output line $i of the failing script"; done
    echo "something went wrong" >&2
    exit 1
    """
)


def write_bundle(directory: Path, scripts: dict[str, str], content: str) -> Path:
    """A bundle installing ``app/`` and running ``scripts`` (event -> script text)."""
    hooks: dict[str, list[dict[str, Any]]] = {}
    every = {"ApplicationStart": _script('echo "starting the shop"\n'), **scripts}
    for event, text in every.items():
        name = f"scripts/{event.lower()}.sh"
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
        hooks[event] = [{"location": name, "timeout": 90}]
    (directory / "app").mkdir(parents=True, exist_ok=True)
    (directory / "app" / "index.html").write_text(content)
    appspec = {
        "version": 0.0,
        "os": "linux",
        "files": [{"source": "app", "destination": f"/srv/shop-{uuid.uuid4().hex[:8]}"}],
        "hooks": hooks,
    }
    (directory / "appspec.yml").write_text(yaml.safe_dump(appspec, sort_keys=False))
    return directory


# -- the world: a server, agents, an application, browsers ---------------------------------------


@dataclass
class World:
    server: LocalServer
    fleet: LocalFleet
    workdir: Path
    codedeploy: Any
    application: str = "storefront"
    revisions: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[str, str] = field(default_factory=dict)

    def push(self, name: str, scripts: dict[str, str]) -> dict[str, Any]:
        directory = write_bundle(self.workdir / "bundles" / name, scripts, f"<h1>{name}</h1>\n")
        saved = os.environ.get("AWS_SHARED_CREDENTIALS_FILE")
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(self.server.credentials_file)
        try:
            revision = push_directory(
                directory,
                application=self.application,
                description=name,
                endpoint=self.server.endpoint,
                region=REGION,
            )
        finally:
            if saved is None:
                os.environ.pop("AWS_SHARED_CREDENTIALS_FILE", None)
            else:
                os.environ["AWS_SHARED_CREDENTIALS_FILE"] = saved
        self.revisions[name] = revision
        return revision

    def deploy(self, group: str, revision: dict[str, Any]) -> str:
        deployment_id: str = self.codedeploy.create_deployment(
            applicationName=self.application, deploymentGroupName=group, revision=revision
        )["deploymentId"]
        return deployment_id

    def info(self, deployment_id: str) -> dict[str, Any]:
        info: dict[str, Any] = self.codedeploy.get_deployment(deploymentId=deployment_id)[
            "deploymentInfo"
        ]
        return info

    def user(self, name: str, policy: str) -> tuple[str, str]:
        iam = self.server.client("iam")
        iam.create_user(UserName=name)
        iam.attach_user_policy(UserName=name, PolicyArn=f"arn:aws:iam::aws:policy/{policy}")
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def url(self, path: str) -> str:
        return self.server.endpoint + path

    def logs(self) -> str:
        parts = []
        for path in [self.server.log_path, *(agent.log_path for agent in self.fleet.agents)]:
            try:
                tail = "\n".join(path.read_text(errors="replace").splitlines()[-30:])
            except FileNotFoundError:
                tail = "(missing)"
            parts.append(f"--- {path}\n{tail}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    _require_browser()
    workdir = tmp_path_factory.mktemp("dashboard-e2e")
    server = start_server(
        workdir / "server", args=["--long-poll-seconds", "10", "--heartbeat-timeout", "30"]
    )
    fleet = LocalFleet(server, workdir / "fleet")
    world = World(server, fleet, workdir, server.client("codedeploy"))
    try:
        fleet.add_hosts(HOSTS, prefix="shop", tags={"tier": "web"})
        world.codedeploy.create_application(applicationName=world.application)
        for group, config in (("web", "AllAtOnce"), ("canary", "OneAtATime")):
            world.codedeploy.create_deployment_group(
                applicationName=world.application,
                deploymentGroupName=group,
                serviceRoleArn=SERVICE_ROLE,
                deploymentConfigName=f"CodeDeployDefault.{config}",
                onPremisesInstanceTagFilters=[
                    {"Key": "tier", "Value": "web", "Type": "KEY_AND_VALUE"}
                ],
            )
        yield world
    finally:
        for agent in fleet.agents:
            agent.signal(signal.SIGTERM)
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGINT)
        fleet.stop()
        server.stop()


class Browsers:
    """One chromium per person, each with a fresh user-data-dir."""

    def __init__(self) -> None:
        self._playwright = _require_browser()().start()
        self._contexts: list[Any] = []
        self._profiles: list[tempfile.TemporaryDirectory[str]] = []
        #: Script errors and console errors (Content-Security-Policy violations among them).
        self.errors: list[str] = []

    def page(self) -> Any:
        profile = tempfile.TemporaryDirectory(prefix="od-chromium-")
        self._profiles.append(profile)
        context = self._playwright.chromium.launch_persistent_context(
            profile.name,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1360, "height": 860},
        )
        context.set_default_timeout(TIMEOUT_MS)
        self._contexts.append(context)
        page = context.pages[0] if context.pages else context.new_page()
        page.on("dialog", lambda dialog: dialog.accept())
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: {error}"))
        page.on(
            "console",
            lambda message: (
                message.type == "error" and self.errors.append(f"{page.url}: {message.text}")
            ),
        )
        return page

    def close(self) -> None:
        for context in self._contexts:
            context.close()
        self._playwright.stop()
        for profile in self._profiles:
            profile.cleanup()


@pytest.fixture(scope="module")
def browsers(world: World) -> Iterator[Browsers]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    found = Browsers()
    yield found
    found.close()


def sign_in(page: Any, world: World, key_id: str, secret: str) -> None:
    page.goto(world.url("/ui"))
    page.fill("#access_key_id", key_id)
    page.fill("#secret_access_key", secret)
    page.click("#signin-form button[type=submit]")


@pytest.fixture(scope="module")
def admin(world: World, browsers: Browsers) -> Any:
    page = browsers.page()
    sign_in(page, world, world.server.access_key_id, world.server.secret_access_key)
    page.wait_for_selector(".topbar .role-admin")
    return page


def shot(page: Any, name: str) -> None:
    # Back to the top (a smooth scroll to an opened log may still be under way).
    for _ in range(50):
        page.evaluate("window.scrollTo({top: 0, behavior: 'instant'})")
        page.wait_for_timeout(50)
        if page.evaluate("window.scrollY") == 0:
            break
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def status_of(page: Any) -> str:
    return str(page.get_attribute("#live .live-root", "data-status"))


def wait_status(page: Any, *statuses: str) -> None:
    selector = ", ".join(f'#live .live-root[data-status="{status}"]' for status in statuses)
    page.wait_for_selector(selector, timeout=TIMEOUT_MS)


# -- the tests -----------------------------------------------------------------------------------


def test_a_wrong_secret_is_refused(world: World, browsers: Browsers) -> None:
    page = browsers.page()
    sign_in(page, world, world.server.access_key_id, "not-the-secret")
    error = page.wait_for_selector("#signin-error")
    assert "do not match" in error.inner_text()
    assert "/ui/signin" in page.url
    assert not [c for c in page.context.cookies() if c["name"] == "od_session"]
    shot(page, "01-signin-refused.png")


def test_a_deployment_appears_and_its_cells_turn_green(world: World, admin: Any) -> None:
    gate = world.workdir / "gate-first"
    revision = world.push("v1", {"BeforeInstall": gated(gate)})
    deployment_id = world.deploy("web", revision)
    world.deployments["good"] = deployment_id

    admin.goto(world.url("/ui"))
    row = admin.wait_for_selector(f'tr[data-deployment="{deployment_id}"]')
    assert "InProgress" in row.inner_text() or "Created" in row.inner_text()
    shot(admin, "02-applications.png")

    admin.click(f'tr[data-deployment="{deployment_id}"] a[href="/ui/deployments/{deployment_id}"]')
    admin.wait_for_selector(
        'a.cell[data-event="BeforeInstall"][data-status="InProgress"]', timeout=TIMEOUT_MS
    )
    assert status_of(admin) == "InProgress"
    assert admin.is_visible("#stop-button")
    admin.evaluate("window.__sameDocument = true")
    shot(admin, "03-deployment-in-progress.png")

    gate.touch()
    wait_status(admin, "Succeeded")
    assert admin.evaluate("window.__sameDocument === true"), "the page reloaded"
    for host in (agent.name for agent in world.fleet.agents):
        for event in ("BeforeInstall", "Install", "AfterInstall", "ApplicationStart"):
            cell = admin.locator(f'a.cell[data-target="{host}"][data-event="{event}"]')
            assert cell.get_attribute("data-status") == "Succeeded", (host, event)
            colour = cell.evaluate("c => getComputedStyle(c).backgroundColor")
            assert colour == GREEN, (host, event, colour)
    assert admin.locator('a.cell[data-status="Failed"]').count() == 0
    assert admin.inner_text('[data-count="Succeeded"]') == str(HOSTS)
    assert not admin.is_visible("#stop-button")
    shot(admin, "04-deployment-succeeded.png")
    assert world.info(deployment_id)["status"] == "Succeeded"


def test_a_failed_cell_shows_its_full_log(world: World, admin: Any) -> None:
    revision = world.push("v2-broken", {"AfterInstall": FAILING})
    deployment_id = world.deploy("web", revision)
    world.deployments["failed"] = deployment_id

    admin.goto(world.url(f"/ui/deployments/{deployment_id}"))
    wait_status(admin, "Failed")
    assert admin.is_visible("#error-information")
    failed = admin.locator('a.cell[data-event="AfterInstall"][data-status="Failed"]').first
    assert failed.evaluate("c => getComputedStyle(c).backgroundColor") == RED
    host = failed.get_attribute("data-target")
    failed.click()
    panel = admin.locator(f'#log-panel .event-detail[data-target="{host}"]')
    panel.wait_for()
    log = admin.locator("#log-panel pre.log")
    # The whole output, not the tail in the diagnostics (the last chunk may follow the
    # completion, which the panel picks up by itself).
    admin.wait_for_function(
        "() => { const t = document.querySelector('#log-panel pre.log')?.textContent || '';"
        " return t.includes('something went wrong') && t.includes('output line 1 of'); }",
        timeout=TIMEOUT_MS,
    )
    assert "output line 300 of the failing script" in log.inner_text()
    diagnostics = admin.inner_text("#log-panel .diagnostics")
    assert "ScriptFailed" in diagnostics
    assert "scripts/afterinstall.sh" in diagnostics
    assert "event=AfterInstall" in admin.url
    shot(admin, "05-failed-cell-log.png")


def test_rollback_redeploys_the_last_good_revision(world: World, admin: Any) -> None:
    failed, good = world.deployments["failed"], world.deployments["good"]
    admin.goto(world.url(f"/ui/deployments/{failed}"))
    button = admin.locator("#rollback-button")
    assert good in button.inner_text()
    button.click()
    admin.wait_for_url(lambda url: f"/ui/deployments/{failed}" not in url)
    assert "notice=rollback" in admin.url
    assert admin.is_visible("#notice")
    wait_status(admin, "Succeeded")
    rollback_id = admin.url.split("/ui/deployments/")[1].split("?")[0]
    info = world.info(rollback_id)
    assert info["revision"]["s3Location"]["key"] == world.revisions["v1"]["s3Location"]["key"]
    assert f"Rollback of {failed}" in info["description"]


def test_a_reader_sees_no_stop_button_and_the_stop_button_stops(
    world: World, browsers: Browsers, admin: Any
) -> None:
    gate = world.workdir / "gate-stop"
    revision = world.push("v3-slow", {"BeforeInstall": gated(gate)})
    deployment_id = world.deploy("canary", revision)
    page_path = f"/ui/deployments/{deployment_id}"
    try:
        reader = browsers.page()
        sign_in(reader, world, *world.user("rita", "AWSCodeDeployReadOnlyAccess"))
        reader.wait_for_selector(".topbar .role-reader")
        reader.goto(world.url(page_path))
        reader.wait_for_selector('a.cell[data-event="BeforeInstall"][data-status="InProgress"]')
        assert reader.locator("#stop-button").count() == 0
        assert reader.locator("form[action$='/stop']").count() == 0
        shot(reader, "06-reader-view.png")

        admin.goto(world.url(page_path))
        admin.wait_for_selector("#stop-button")
        # A POST from the page itself, with the session cookie but without the CSRF token.
        refused = admin.evaluate(
            """url => fetch(url, {method: 'POST', redirect: 'manual',
                 headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                 body: 'csrf_token=forged'}).then(r => r.status)""",
            page_path + "/stop",
        )
        assert refused == 403
        assert world.info(deployment_id)["status"] == "InProgress"

        admin.click("#stop-button")
        admin.wait_for_selector("#notice")
        assert "Stop requested" in admin.inner_text("#notice") or "stopped" in admin.inner_text(
            "#notice"
        )
    finally:
        gate.touch()
    wait_status(admin, "Stopped")
    assert world.info(deployment_id)["status"] == "Stopped"
    assert admin.locator('a.cell[data-status="Skipped"]').count() > 0
    shot(admin, "07-stopped.png")


def test_history_filters(world: World, admin: Any) -> None:
    admin.goto(world.url("/ui/deployments"))
    admin.check("input[name=status][value=Failed]")
    admin.click("#history-filters button[type=submit]")
    admin.wait_for_url("**status=Failed**")
    rows = admin.locator("tr[data-deployment]")
    assert rows.count() == 1
    assert rows.first.get_attribute("data-deployment") == world.deployments["failed"]
    admin.goto(world.url("/ui/deployments"))
    admin.select_option("select[name=group]", f"{world.application}/canary")
    admin.click("#history-filters button[type=submit]")
    admin.wait_for_url("**group=**")
    assert admin.locator("tr[data-deployment]").count() == 1
    admin.goto(world.url("/ui/deployments"))
    shot(admin, "08-history.png")
    admin.goto(world.url(f"/ui/applications/{world.application}"))
    admin.wait_for_selector('section[data-group="web"] tr[data-instance]')
    shot(admin, "09-application.png")


def test_no_page_had_a_script_error_or_a_policy_violation(browsers: Browsers) -> None:
    # Refused sign-ins and the forged POST answer 401/403 on purpose; the browser logs those.
    unexpected = [e for e in browsers.errors if "Failed to load resource" not in e]
    assert not unexpected, unexpected
