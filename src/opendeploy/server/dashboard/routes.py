"""The dashboard's HTTP side: ``/ui`` pages, fragments for live updates, and its actions.

Pages are rendered on the server with Jinja2; ``static/dashboard.js`` (plain JS, no build
step) polls the live fragments and opens logs in place. Every asset comes from this server.

Security, in one place:
- a session cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over HTTPS, path ``/ui``),
  issued by ``sessions.SessionKeeper`` after an access-key sign-in;
- every form POST carries the session's CSRF token (the sign-in form a token of its own
  bound to a short-lived cookie) and is refused when its ``Origin`` or ``Sec-Fetch-Site``
  says another site sent it;
- roles as in the API: readers see everything, Stop and Rollback need a role the API would
  let call StopDeployment / CreateDeployment, checked again when the form arrives;
- actions call the same service functions as the API and are audited the same way;
- a strict Content-Security-Policy (no inline script or style), no framing, no caching of
  pages, no referrer beyond this origin.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from opendeploy.core.errors import AuthError, ServiceError
from opendeploy.core.policies import PUBLIC
from opendeploy.server.auth import Authenticator
from opendeploy.server.dashboard import views
from opendeploy.server.dashboard.formatting import FILTERS
from opendeploy.server.dashboard.sessions import (
    DEFAULT_LIFETIME,
    SIGN_IN_FORM_LIFETIME,
    SessionKeeper,
    Viewer,
    tokens_match,
)
from opendeploy.server.service.context import Caller, ServiceContext
from opendeploy.store import identities

__all__ = ["SESSION_COOKIE", "SIGN_IN_COOKIE", "Dashboard", "dashboard_routes"]

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "od_session"
SIGN_IN_COOKIE = "od_signin"
#: Sent by dashboard.js on the requests it makes for fragments.
FRAGMENT_HEADER = "x-requested-with"
FRAGMENT_VALUE = "opendeploy-dashboard"
MAX_FORM_BYTES = 16 * 1024
_DEPLOYMENT_ID = re.compile(r"d-[A-Z0-9]{1,32}")
_NOTICES = {
    "stop-requested": "Stop requested. Commands already running on hosts finish; no new ones "
    "start. The deployment ends Stopped when they do.",
    "stopped": "The deployment is stopped.",
    "rollback": "Rollback started: this deployment redeploys the last successful revision.",
    "signed-out": "You are signed out.",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[Request, Viewer], Awaitable[Response]]


class Dashboard:
    """The dashboard of one server: its sessions, templates and handlers."""

    def __init__(self, context: ServiceContext, *, session_lifetime: int = DEFAULT_LIFETIME):
        self.context = context
        self.keeper = SessionKeeper(
            context.db, context.secrets, clock=context.clock, lifetime=session_lifetime
        )
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(FILTERS)
        self.templates.globals["static_version"] = _static_version()

    # -- plumbing -------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        page = self._page
        return [
            Route("/", self.root, methods=["GET"]),
            Route("/ui", page(self.home), methods=["GET"]),
            Route("/ui/signin", self.sign_in_form, methods=["GET"]),
            Route("/ui/signin", self.sign_in, methods=["POST"]),
            Route("/ui/signout", page(self.sign_out), methods=["POST"]),
            Route("/ui/applications/{name}", page(self.application), methods=["GET"]),
            Route("/ui/deployments", page(self.history), methods=["GET"]),
            Route("/ui/deployments/{deployment_id}", page(self.deployment), methods=["GET"]),
            Route("/ui/deployments/{deployment_id}/live", page(self.live), methods=["GET"]),
            Route("/ui/deployments/{deployment_id}/event", page(self.event), methods=["GET"]),
            Route("/ui/deployments/{deployment_id}/log.txt", page(self.log_text), methods=["GET"]),
            Route("/ui/deployments/{deployment_id}/stop", page(self.stop), methods=["POST"]),
            Route(
                "/ui/deployments/{deployment_id}/rollback", page(self.rollback), methods=["POST"]
            ),
            Mount("/ui/static", app=StaticFiles(directory=HERE / "static"), name="ui-static"),
        ]

    def _page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` for signed-in people only; POSTs must also carry the CSRF token."""

        async def endpoint(request: Request) -> Response:
            viewer = await run_in_threadpool(
                self.keeper.viewer, request.cookies.get(SESSION_COOKIE)
            )
            if viewer is None:
                return self._not_signed_in(request)
            if request.method == "POST":
                form = await _form(request)
                if not _same_origin(request) or not tokens_match(
                    viewer.session.csrf_token, form.get("csrf_token")
                ):
                    log.info("dashboard: refused a %s without a valid CSRF token", request.url.path)
                    return self._render(
                        request,
                        "error.html",
                        {
                            "title": "Request refused",
                            "message": "This form is stale or was not sent from this "
                            "dashboard. Reload the page and try again.",
                        },
                        viewer=viewer,
                        status=403,
                    )
                request.state.form = form
            try:
                return await handler(request, viewer)
            except ServiceError as error:
                return self._service_error(request, viewer, error)

        return endpoint

    def _not_signed_in(self, request: Request) -> Response:
        if _is_fragment(request):
            return _secure(PlainTextResponse("Sign in again.", status_code=401))
        if request.method != "GET":
            return _secure(RedirectResponse("/ui/signin", status_code=303))
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse("/ui/signin?" + urlencode({"next": target}), status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return _secure(response)

    def _service_error(self, request: Request, viewer: Viewer, error: ServiceError) -> Response:
        status = 404 if error.code.endswith("DoesNotExistException") else 400
        if error.code in (
            "DeploymentLimitExceededException",
            "DeploymentAlreadyCompletedException",
        ):
            status = 409
        if _is_fragment(request):
            return _secure(PlainTextResponse(error.message, status_code=status))
        return self._render(
            request,
            "error.html",
            {"title": _humanize(error.code), "message": error.message},
            viewer=viewer,
            status=status,
        )

    def _render(
        self,
        request: Request,
        template: str,
        values: Mapping[str, Any],
        *,
        viewer: Viewer | None,
        status: int = 200,
    ) -> Response:
        html = self.templates.get_template(template).render(
            {
                "viewer": viewer,
                "csrf_token": viewer.session.csrf_token if viewer else "",
                "path": request.url.path,
                "now": self.context.clock(),
                **values,
            }
        )
        return _secure(HTMLResponse(html, status_code=status))

    def _context(self, viewer: Viewer) -> ServiceContext:
        return dataclasses.replace(self.context, caller=viewer.caller)

    async def _call(self, viewer: Viewer, function: Callable[..., Any], *args: Any) -> Any:
        return await run_in_threadpool(function, self._context(viewer), *args)

    def _audit(self, caller: Caller, operation: str, request_id: str, outcome: str) -> None:
        """The API's audit record (``PublicApi._audit``), for the dashboard's actions."""
        with self.context.db.write() as connection:
            identities.record_audit(
                connection,
                time=self.context.clock(),
                principal=caller.arn,
                operation=operation,
                request_id=request_id,
                outcome=outcome,
            )

    async def _act(
        self, viewer: Viewer, operation: str, function: Callable[..., Any], *args: Any
    ) -> Any:
        """Run a mutating use case as the API would: authorize, call, audit the outcome."""
        request_id = str(uuid.uuid4())
        try:
            Authenticator.authorize(viewer.caller, PUBLIC, operation)
        except AuthError as error:
            await run_in_threadpool(self._audit, viewer.caller, operation, request_id, error.code)
            raise ServiceError(error.code, error.message) from error
        try:
            result = await self._call(viewer, function, *args)
        except ServiceError as error:
            await run_in_threadpool(self._audit, viewer.caller, operation, request_id, error.code)
            raise
        except Exception:
            await run_in_threadpool(
                self._audit, viewer.caller, operation, request_id, "InternalFailure"
            )
            raise
        await run_in_threadpool(self._audit, viewer.caller, operation, request_id, "Success")
        return result

    # -- signing in and out ---------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        """``GET /``: browsers go to the dashboard; anything else learns the API is POST."""
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/ui", status_code=302)
        return PlainTextResponse("Method Not Allowed", status_code=405, headers={"Allow": "POST"})

    def _sign_in_page(
        self, request: Request, *, error: str = "", status: int = 200, key_id: str = ""
    ) -> Response:
        cookie, token = self.keeper.new_sign_in_form()
        notice = _NOTICES.get(request.query_params.get("notice", ""), "")
        response = self._render(
            request,
            "signin.html",
            {
                "title": "Sign in",
                "form_token": token,
                "error": error,
                "notice": notice,
                "next": _safe_next(request.query_params.get("next")),
                "key_id": key_id,
            },
            viewer=None,
            status=status,
        )
        response.set_cookie(
            SIGN_IN_COOKIE,
            cookie,
            max_age=SIGN_IN_FORM_LIFETIME,
            path="/ui/signin",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def sign_in_form(self, request: Request) -> Response:
        viewer = await run_in_threadpool(self.keeper.viewer, request.cookies.get(SESSION_COOKIE))
        if viewer is not None:
            return _secure(
                RedirectResponse(_safe_next(request.query_params.get("next")), status_code=303)
            )
        return await run_in_threadpool(self._sign_in_page, request)

    async def sign_in(self, request: Request) -> Response:
        form = await _form(request)
        key_id = (form.get("access_key_id") or "").strip()
        if not _same_origin(request) or not await run_in_threadpool(
            self.keeper.check_sign_in_form,
            request.cookies.get(SIGN_IN_COOKIE),
            form.get("form_token"),
        ):
            return await run_in_threadpool(
                lambda: self._sign_in_page(
                    request,
                    error="The sign-in form expired. Please try again.",
                    status=403,
                    key_id=key_id,
                )
            )
        caller = await run_in_threadpool(
            self.keeper.check_credentials, key_id, form.get("secret_access_key") or ""
        )
        client = request.client.host if request.client else "unknown"
        if caller is None:
            log.info("dashboard: sign-in refused for key %s from %s", key_id[:32], client)
            return await run_in_threadpool(
                lambda: self._sign_in_page(
                    request,
                    error="That access key ID and secret access key do not match an active "
                    "key of a user who may use the dashboard.",
                    status=401,
                    key_id=key_id,
                )
            )
        cookie, _ = self.keeper.issue(caller)
        log.info("dashboard: %s signed in from %s", caller.user_name, client)
        await run_in_threadpool(
            self._audit, caller, "DashboardSignIn", str(uuid.uuid4()), "Success"
        )
        response = RedirectResponse(_safe_next(form.get("next")), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=self.keeper.lifetime,
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        response.delete_cookie(SIGN_IN_COOKIE, path="/ui/signin")
        return _secure(response)

    async def sign_out(self, request: Request, viewer: Viewer) -> Response:
        self.keeper.revoke(viewer.session)
        response = RedirectResponse("/ui/signin?notice=signed-out", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return _secure(response)

    # -- pages ----------------------------------------------------------------------------

    async def home(self, request: Request, viewer: Viewer) -> Response:
        values = await self._call(viewer, views.home_page)
        return self._render(
            request, "home.html", {**values, "title": "Applications"}, viewer=viewer
        )

    async def application(self, request: Request, viewer: Viewer) -> Response:
        name = request.path_params["name"]
        values = await self._call(viewer, views.application_page, name)
        return self._render(request, "application.html", {**values, "title": name}, viewer=viewer)

    async def history(self, request: Request, viewer: Viewer) -> Response:
        query = request.query_params
        filters = views.HistoryFilters(
            statuses=tuple(s for s in query.getlist("status") if s in views.DEPLOYMENT_STATUSES),
            group=query.get("group", ""),
            start=query.get("start", ""),
            end=query.get("end", ""),
            next_token=query.get("next", ""),
        )
        try:
            filters.params()
        except ValueError:
            filters = dataclasses.replace(filters, start="", end="")
            problem = "The time range must be given as YYYY-MM-DD HH:MM (UTC)."
        else:
            problem = ""
        values = await self._call(viewer, views.history_page, filters)
        next_link = ""
        if values["next_token"]:
            next_link = "?" + urlencode(filters.query(next_token=values["next_token"]))
        return self._render(
            request,
            "history.html",
            {
                **values,
                "title": "Deployments",
                "filters": filters,
                "problem": problem,
                "next_link": next_link,
                "first_link": "?" + urlencode(filters.query(next_token=""))
                if filters.next_token
                else "",
            },
            viewer=viewer,
        )

    def _deployment_id(self, request: Request) -> str:
        deployment_id: str = request.path_params["deployment_id"]
        if not _DEPLOYMENT_ID.fullmatch(deployment_id):
            raise ServiceError(
                "DeploymentDoesNotExistException",
                f"The deployment {deployment_id} could not be found.",
            )
        return deployment_id

    async def deployment(self, request: Request, viewer: Viewer) -> Response:
        deployment_id = self._deployment_id(request)
        view = await self._call(viewer, views.deployment_view, deployment_id)
        notice = _NOTICES.get(request.query_params.get("notice", ""), "")
        source = request.query_params.get("from", "")
        return self._render(
            request,
            "deployment.html",
            {
                "title": deployment_id,
                "d": view,
                "notice": notice,
                "rolled_back_from": source if _DEPLOYMENT_ID.fullmatch(source) else "",
                "selected": {
                    "target": request.query_params.get("target", ""),
                    "event": request.query_params.get("event", ""),
                },
            },
            viewer=viewer,
        )

    async def live(self, request: Request, viewer: Viewer) -> Response:
        view = await self._call(viewer, views.deployment_view, self._deployment_id(request))
        return self._render(request, "_live.html", {"d": view}, viewer=viewer)

    async def event(self, request: Request, viewer: Viewer) -> Response:
        deployment_id = self._deployment_id(request)
        target = request.query_params.get("target", "")
        event = request.query_params.get("event", "")
        values = await self._call(viewer, views.event_log, deployment_id, target, event)
        if _is_fragment(request):
            return self._render(request, "_event.html", {"e": values}, viewer=viewer)
        return self._render(
            request,
            "event.html",
            {"e": values, "title": f"{event} on {target} · {deployment_id}"},
            viewer=viewer,
        )

    async def log_text(self, request: Request, viewer: Viewer) -> Response:
        deployment_id = self._deployment_id(request)
        target = request.query_params.get("target", "")
        event = request.query_params.get("event", "")
        values = await self._call(viewer, views.event_log, deployment_id, target, event)
        filename = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{deployment_id}-{target}-{event}.log")
        return _secure(
            PlainTextResponse(
                values["full_log"],
                headers={"Content-Disposition": f'inline; filename="{filename}"'},
            )
        )

    # -- actions --------------------------------------------------------------------------

    async def stop(self, request: Request, viewer: Viewer) -> Response:
        deployment_id = self._deployment_id(request)
        result = await self._act(viewer, "StopDeployment", views.stop, deployment_id)
        notice = "stopped" if result.get("status") == "Succeeded" else "stop-requested"
        return _secure(
            RedirectResponse(f"/ui/deployments/{deployment_id}?notice={notice}", status_code=303)
        )

    async def rollback(self, request: Request, viewer: Viewer) -> Response:
        deployment_id = self._deployment_id(request)
        new_id = await self._act(viewer, "CreateDeployment", views.rollback, deployment_id)
        return _secure(
            RedirectResponse(
                f"/ui/deployments/{new_id}?"
                + urlencode({"notice": "rollback", "from": deployment_id}),
                status_code=303,
            )
        )


def dashboard_routes(context: ServiceContext, **options: Any) -> list[BaseRoute]:
    """The dashboard's routes (``/ui/...``, and ``GET /`` sending browsers there)."""
    return Dashboard(context, **options).routes()


# -- helpers -----------------------------------------------------------------------------------


def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _is_fragment(request: Request) -> bool:
    return request.headers.get(FRAGMENT_HEADER) == FRAGMENT_VALUE


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each); other bodies give none."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return {}
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {name: values[0] for name, values in fields.items() if values}


def _same_origin(request: Request) -> bool:
    """False when the browser says another site sent this request (Origin or
    Sec-Fetch-Site); requests that say nothing are left to the CSRF token."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if origin == "null":
        return False
    # Behind a reverse proxy that rewrites Host, the name the browser used is in
    # X-Forwarded-Host (a cross-site form cannot set that header).
    hosts = {
        request.headers.get("host", "").lower(),
        request.headers.get("x-forwarded-host", "").split(",")[0].strip().lower(),
    }
    return urlsplit(origin).netloc.lower() in hosts - {""}


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: a dashboard path of this server, never elsewhere."""
    if (
        not value
        or not value.startswith("/ui")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 32 for c in value)
        or value.startswith("/ui/signin")
    ):
        return "/ui"
    return value


def _humanize(code: str) -> str:
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", code.removesuffix("Exception")).strip()
    return words[:1].upper() + words[1:].lower() if words else "Error"


def _static_version() -> str:
    """Changes when a static file does, so browsers fetch the new one."""
    newest = max(
        (path.stat().st_mtime for path in (HERE / "static").iterdir() if path.is_file()),
        default=time.time(),
    )
    return str(int(newest))
