"""Signing in and out, sessions, CSRF and roles, over HTTP against an in-process server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from dashboard_support import Key, UiServer, csrf_token, form_token, user_with_key

from opendeploy.core.policies import Role
from opendeploy.server.dashboard.sessions import SessionKeeper
from opendeploy.server.secrets import SecretBox
from opendeploy.server.service.context import Caller
from opendeploy.store import identities
from opendeploy.store.database import Database

FRAGMENT = {"X-Requested-With": "opendeploy-dashboard"}


@pytest.fixture
def signed_in(ui: UiServer) -> Iterator[Callable[[UiServer, Key], httpx.Client]]:
    """``signed_in(ui, key)``: a client with a session of ``key``'s user, closed after the
    test."""
    clients: list[httpx.Client] = []

    def sign_in(server: UiServer, key: Key) -> httpx.Client:
        clients.append(server.client())
        return server.sign_in(key, clients[-1])

    yield sign_in
    for client in clients:
        client.close()


def _sign_in_form(client: httpx.Client, key_id: str, secret: str, **extra: str) -> httpx.Response:
    token = form_token(client.get("/ui/signin").text)
    return client.post(
        "/ui/signin",
        data={"form_token": token, "access_key_id": key_id, "secret_access_key": secret, **extra},
    )


def _audit(ui: UiServer, operation: str) -> list[tuple[str, str]]:
    with ui.context.db.read() as connection:
        rows = identities.audit_entries(connection, limit=500)
    return [(row.principal, row.outcome) for row in rows if row.operation == operation]


def test_browsers_asking_for_the_root_go_to_the_dashboard(ui: UiServer) -> None:
    with ui.client() as client:
        browser = client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert (browser.status_code, browser.headers["location"]) == (302, "/ui")
        # API clients still learn that the endpoint takes POST only.
        assert client.get("/").status_code == 405


def test_pages_need_a_session(ui: UiServer) -> None:
    with ui.client() as client:
        page = client.get("/ui/deployments?status=Failed")
        assert page.status_code == 303
        assert page.headers["location"] == "/ui/signin?next=%2Fui%2Fdeployments%3Fstatus%3DFailed"
        assert client.get("/ui/deployments/d-AAAAAAAAA/live", headers=FRAGMENT).status_code == 401
        refused = client.post("/ui/deployments/d-AAAAAAAAA/stop", data={"csrf_token": "x"})
        assert (refused.status_code, refused.headers["location"]) == (303, "/ui/signin")


def test_signing_in_gives_a_strict_http_only_session_cookie(ui: UiServer) -> None:
    with ui.client() as client:
        response = _sign_in_form(
            client, ui.admin.access_key_id, ui.admin.secret, next="/ui/deployments"
        )
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/deployments"
        cookie = next(
            c for c in response.headers.get_list("set-cookie") if c.startswith("od_session=")
        )
        attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "path=/ui", "samesite=strict"} <= attributes
        assert any(a.startswith("max-age=") for a in attributes)
        assert "secure" not in attributes  # plain HTTP here; HTTPS requests get Secure
        page = client.get("/ui")
        assert page.status_code == 200
        assert "admin" in page.text
        headers = page.headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "credentials",
    ["wrong secret", "unknown key", "empty secret", "agent-only user"],
)
def test_sign_in_is_refused_without_the_right_secret_of_a_dashboard_user(
    ui: UiServer, credentials: str
) -> None:
    key_id, secret = {
        "wrong secret": (ui.admin.access_key_id, ui.admin.secret[:-1] + "x"),
        "unknown key": ("AKIANOSUCHKEY0000000", ui.admin.secret),
        "empty secret": (ui.admin.access_key_id, ""),
        "agent-only user": (ui.agent.access_key_id, ui.agent.secret),
    }[credentials]
    with ui.client() as client:
        response = _sign_in_form(client, key_id, secret)
        assert response.status_code == 401
        assert "do not match an active key" in response.text
        assert "od_session" not in client.cookies
        assert client.get("/ui").status_code == 303


def test_sign_in_needs_its_form_token(ui: UiServer) -> None:
    """Login CSRF: a form posted from elsewhere (no token bound to our cookie) is refused."""
    with ui.client() as client:
        client.get("/ui/signin")
        data = {"access_key_id": ui.admin.access_key_id, "secret_access_key": ui.admin.secret}
        assert client.post("/ui/signin", data=data).status_code == 403
        assert client.post("/ui/signin", data={**data, "form_token": "forged"}).status_code == 403
    with ui.client() as first, ui.client() as other:  # a token without its cookie
        token = form_token(first.get("/ui/signin").text)
        refused = other.post("/ui/signin", data={**data, "form_token": token})
        assert refused.status_code == 403
        assert "od_session" not in other.cookies


def test_sign_in_from_another_origin_is_refused(ui: UiServer) -> None:
    with ui.client() as client:
        token = form_token(client.get("/ui/signin").text)
        response = client.post(
            "/ui/signin",
            data={
                "form_token": token,
                "access_key_id": ui.admin.access_key_id,
                "secret_access_key": ui.admin.secret,
            },
            headers={"Origin": "https://evil.example"},
        )
        assert response.status_code == 403


@pytest.mark.parametrize(
    "target", ["//evil.example/ui", "https://evil.example/", "/ui/signin", "/\\evil", "/other"]
)
def test_after_sign_in_only_dashboard_pages_are_followed(ui: UiServer, target: str) -> None:
    with ui.client() as client:
        response = _sign_in_form(client, ui.admin.access_key_id, ui.admin.secret, next=target)
        assert response.headers["location"] == "/ui"


def test_a_tampered_session_cookie_is_no_session(
    ui: UiServer, signed_in: Callable[[UiServer, Key], httpx.Client]
) -> None:
    client = signed_in(ui, ui.reader)
    value = client.cookies["od_session"]
    tampered = value[:-6] + ("A" if value[-6] != "A" else "B") + value[-5:]
    client.cookies.clear()
    client.cookies.set("od_session", tampered, domain="127.0.0.1", path="/ui")
    assert client.get("/ui").status_code == 303


def test_signing_out_ends_the_session_for_good(
    ui: UiServer, signed_in: Callable[[UiServer, Key], httpx.Client]
) -> None:
    client = signed_in(ui, ui.reader)
    stolen = client.cookies["od_session"]
    token = csrf_token(client.get("/ui").text)
    assert client.post("/ui/signout", data={"csrf_token": "wrong"}).status_code == 403
    response = client.post("/ui/signout", data={"csrf_token": token})
    assert (response.status_code, response.headers["location"]) == (
        303,
        "/ui/signin?notice=signed-out",
    )
    assert client.get("/ui").status_code == 303
    with ui.client() as replay:  # the old cookie, replayed, is refused too
        replay.cookies.set("od_session", stolen, domain="127.0.0.1", path="/ui")
        assert replay.get("/ui").status_code == 303


def test_deleting_the_access_key_ends_its_sessions(
    ui: UiServer, signed_in: Callable[[UiServer, Key], httpx.Client]
) -> None:
    key = _fresh_reader(ui)
    client = signed_in(ui, key)
    assert client.get("/ui").status_code == 200
    with ui.context.db.write() as connection:
        identities.delete_access_key(connection, "short-lived", key.access_key_id)
    assert client.get("/ui").status_code == 303


def _fresh_reader(ui: UiServer) -> Key:
    return user_with_key(ui.context, "short-lived", Role.READER)


def test_sessions_expire(tmp_path: Path) -> None:
    class Clock:
        now = 1_800_000_000.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    db = Database(f"sqlite:///{tmp_path / 'sessions.db'}")
    db.upgrade()
    keeper = SessionKeeper(
        db, SecretBox.from_key(SecretBox.generate_key()), clock=clock, lifetime=3600
    )
    caller = Caller(
        user_name="u", arn="arn:aws:iam::1:user/u", policies=frozenset(), access_key_id="K"
    )
    cookie, session = keeper.issue(caller)
    assert keeper.open(cookie) == session
    clock.now += 3599
    assert keeper.open(cookie) == session
    clock.now += 2
    assert keeper.open(cookie) is None
    # A sign-in form's token is single-purpose: it is not a session, nor the other way.
    form_cookie, _ = keeper.new_sign_in_form()
    assert keeper.open(form_cookie) is None
    assert not keeper.check_sign_in_form(cookie, session.csrf_token)
    # Another installation's key opens nothing of this one's.
    other_db = Database(f"sqlite:///{tmp_path / 'other.db'}")
    other_db.upgrade()
    stranger = SessionKeeper(
        other_db, SecretBox.from_key(SecretBox.generate_key()), clock=clock, lifetime=3600
    )
    assert stranger.open(keeper.issue(caller)[0]) is None
    db.dispose()
    other_db.dispose()


def test_actions_need_the_csrf_token_of_the_session(
    ui: UiServer, signed_in: Callable[[UiServer, Key], httpx.Client]
) -> None:
    client = signed_in(ui, ui.admin)
    token = csrf_token(client.get("/ui").text)
    url = "/ui/deployments/d-NOSUCH123/stop"
    assert client.post(url).status_code == 403
    assert client.post(url, data={"csrf_token": ""}).status_code == 403
    assert client.post(url, data={"csrf_token": token[:-1]}).status_code == 403
    other = csrf_token(signed_in(ui, ui.admin).get("/ui").text)
    assert client.post(url, data={"csrf_token": other}).status_code == 403
    cross_site = client.post(
        url, data={"csrf_token": token}, headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert cross_site.status_code == 403
    cross_origin = client.post(url, data={"csrf_token": token}, headers={"Origin": "http://evil"})
    assert cross_origin.status_code == 403
    proxied = client.post(
        url,
        data={"csrf_token": token},
        headers={"Origin": "https://deploy.example", "X-Forwarded-Host": "deploy.example"},
    )
    assert proxied.status_code == 404  # a proxy's public name is this server's name
    # With the token the request reaches the use case, which knows no such deployment.
    reached = client.post(url, data={"csrf_token": token})
    assert reached.status_code == 404
    assert "could not be found" in reached.text


def test_roles_decide_who_may_stop_and_every_attempt_is_audited(
    ui: UiServer, signed_in: Callable[[UiServer, Key], httpx.Client]
) -> None:
    url = "/ui/deployments/d-NOSUCH456/stop"
    reader = signed_in(ui, ui.reader)
    refused = reader.post(url, data={"csrf_token": csrf_token(reader.get("/ui").text)})
    assert refused.status_code == 400
    assert "not authorized to perform: codedeploy:StopDeployment" in refused.text
    deployer = signed_in(ui, ui.deployer)
    allowed = deployer.post(url, data={"csrf_token": csrf_token(deployer.get("/ui").text)})
    assert allowed.status_code == 404  # authorized: the service looked for it
    outcomes = _audit(ui, "StopDeployment")
    reader_arn = f"arn:aws:iam::{ui.context.account_id}:user/rita-reader"
    deployer_arn = f"arn:aws:iam::{ui.context.account_id}:user/dana-deployer"
    assert (reader_arn, "AccessDeniedException") in outcomes
    assert (deployer_arn, "DeploymentDoesNotExistException") in outcomes
    assert any(outcome == "Success" for _, outcome in _audit(ui, "DashboardSignIn"))
