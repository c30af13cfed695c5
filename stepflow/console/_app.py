"""The console's ASGI application: Starlette routes, Jinja2 pages, and its guards.

Security model
--------------
* **Who may look**: with a token, every request must carry it, in an
  ``Authorization: Bearer`` or ``X-Stepflow-Token`` header or in the
  ``stepflow_token`` cookie (HttpOnly, SameSite=Strict) that opening any page with
  ``?token=...`` sets. Without a token the console is only for the machine it runs
  on, so it answers only requests addressed to a loopback name
  (``TrustedHostMiddleware``): a page elsewhere cannot reach it by rebinding a
  DNS name to 127.0.0.1.
* **What may change**: the actions (resume, cancel) are POSTs that must carry the
  CSRF token of the page they came from (``asgi-csrf``'s signed double-submit
  cookie), and are refused in read-only mode.
* **What is shown**: every piece of user data goes through Jinja2's autoescaping;
  pages send a Content-Security-Policy that only runs the inline script carrying
  the response's nonce, so markup in an input or an output stays text.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from asgi_csrf import asgi_csrf  # type: ignore[import-untyped]
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URL
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from stepflow.console import _views
from stepflow.errors import StaleWriteError, StateError, StepflowError, UnknownRunError
from stepflow.flow import Flow
from stepflow.runtime.runs import cancel_run, resume_run
from stepflow.stores.base import Store

__all__ = ["LOOPBACK_HOSTS", "TOKEN_COOKIE", "build_app"]

#: The host names a console without a token answers to.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

#: The cookie that carries the token after a ``?token=`` login.
TOKEN_COOKIE = "stepflow_token"

#: Runs shown on one page of the runs list.
PAGE_SIZE = 50

_ACTIONS = ("/actions/resume", "/actions/cancel")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _TokenGate:
    """Let a request through only if it carries the console's token.

    ``?token=...`` with the right token answers with a redirect to the same URL
    without it, setting the token cookie, so the token does not stay in the
    address bar or the history.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        login = request.query_params.get("token")
        if self._matches(login):
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = URL(scope=scope).replace(query=urlencode(query))
            response: Response = RedirectResponse(
                f"{target.path}{'?' + target.query if target.query else ''}", status_code=303
            )
            response.set_cookie(
                TOKEN_COOKIE, self.token.decode(), httponly=True, samesite="strict", path="/"
            )
            await response(scope, receive, send)
            return
        authorization = request.headers.get("authorization", "")
        given = [
            request.headers.get("x-stepflow-token"),
            authorization[7:] if authorization.lower().startswith("bearer ") else None,
            request.cookies.get(TOKEN_COOKIE),
        ]
        if any(self._matches(value) for value in given):
            await self.app(scope, receive, send)
            return
        response = HTMLResponse(
            "<!doctype html><title>stepflow: token required</title>"
            "<h1>Token required</h1><p>This console needs its token: open it once as "
            "<code>/?token=YOUR-TOKEN</code> (the token given to <code>stepflow ui "
            "--token</code> or <code>STEPFLOW_UI_TOKEN</code>), or send it in an "
            "<code>Authorization: Bearer</code> header.</p>",
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    stamp = datetime.fromtimestamp(at, tz=timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ago(at: float | None, now: float) -> str:
    if at is None:
        return "-"
    delta = at - now
    size = abs(delta)
    for unit, seconds in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if size >= seconds:
            text = f"{size / seconds:.0f}{unit}"
            break
    else:
        text = f"{size:.1f}s" if size < 10 else f"{size:.0f}s"
    return f"in {text}" if delta > 0 else f"{text} ago"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s" if value < 60 else f"{value / 60:.1f} min"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # every template, whatever its file name
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["seconds"] = _seconds
    env.filters["pretty"] = _views.pretty
    env.filters["inline"] = _views.inline
    env.filters["q"] = _quote
    return env


def build_app(
    store: Store,
    flows: Iterable[Flow],
    *,
    read_only: bool = False,
    token: str | None = None,
    allowed_hosts: Sequence[str] | None = None,
) -> ASGIApp:
    """Build the console (see :func:`stepflow.console.create_app`)."""
    served: dict[str, Flow] = {flow.name: flow for flow in flows}
    templates = Jinja2Templates(env=_environment())

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        nonce = secrets.token_urlsafe(16)
        context.update(
            request=request,
            nonce=nonce,
            read_only=read_only,
            csrftoken=request.scope["csrftoken"](),
            served=sorted(served),
            now=time.time(),
            ago=_ago,
            statuses=_views.STATUSES,
        )
        response = templates.TemplateResponse(request, name, context, status_code=status_code)
        response.headers["content-security-policy"] = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
            "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["referrer-policy"] = "no-referrer"
        response.headers["cache-control"] = "no-store"
        return response

    def message(request: Request, status_code: int, title: str, text: str) -> Response:
        return page(request, "message.html", status_code, title=title, text=text)

    async def home(request: Request) -> Response:
        return RedirectResponse("/runs", status_code=303)

    async def runs(request: Request) -> Response:
        query = request.query_params
        status = query.get("status") or None
        if status is not None and status not in _views.STATUSES:
            status = None
        flow = query.get("flow") or None
        prefix = query.get("prefix") or None
        try:
            listing = await run_in_threadpool(
                _views.runs_page,
                store,
                sorted(served),
                status=status,
                flow=flow,
                prefix=prefix,
                older=query.get("older"),
                newer=query.get("newer"),
                limit=PAGE_SIZE,
            )
        except (StepflowError, ValueError) as exc:  # a row the store cannot read
            return message(request, 500, "Cannot list the runs", f"The store failed: {exc}")
        filters = {"status": status or "", "flow": flow or "", "prefix": prefix or ""}
        template = "runs_body.html" if query.get("partial") else "runs.html"
        return page(request, template, listing=listing, filters=filters, url_for=_link)

    async def run(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            view = await run_in_threadpool(_views.run_page, store, served, run_id)
        except UnknownRunError:
            return message(request, 404, "No such run", f"There is no run with id {run_id!r}.")
        except (StepflowError, ValueError) as exc:  # its row or journal cannot be read
            return message(request, 500, "Cannot read this run", f"Run {run_id!r}: {exc}")
        template = "run_body.html" if request.query_params.get("partial") else "run.html"
        return page(
            request,
            template,
            view=view,
            done=request.query_params.get("done"),
            problem=request.query_params.get("problem"),
        )

    async def flows_page(request: Request) -> Response:
        try:
            pages = [await run_in_threadpool(_views.flow_page, store, f) for f in served.values()]
        except (StepflowError, ValueError) as exc:  # a row the store cannot read
            return message(request, 500, "Cannot read the flows' runs", f"The store failed: {exc}")
        return page(request, "flows.html", pages=pages)

    async def action(request: Request) -> Response:
        verb = request.url.path.rpartition("/")[2]
        form = await request.form()
        run_id = str(form.get("run_id") or "")
        if read_only:
            return message(
                request,
                403,
                "Read-only console",
                f"This console was started with --read-only: it cannot {verb} runs.",
            )
        target = f"/runs/{_quote(run_id)}"
        try:
            if verb == "cancel":
                reason = str(form.get("reason") or "")
                if not await run_in_threadpool(cancel_run, store, run_id, reason):
                    status = (await run_in_threadpool(store.load, run_id)).status
                    raise StateError(f"run {run_id!r} is already {status}; nothing to cancel")
                status = (await run_in_threadpool(store.load, run_id)).status
                done = "cancelled" if status == "cancelled" else "cancelling"
            else:
                record = await run_in_threadpool(store.load, run_id)
                flow = served.get(record.flow)
                if flow is None:
                    raise StateError(
                        f"run {run_id!r} is a run of {record.flow!r}, which this console does "
                        "not serve: start it with that flow's MODULE:FLOW to resume it"
                    )
                await run_in_threadpool(resume_run, store, flow, run_id)
                done = "resumed"
        except UnknownRunError:
            return message(request, 404, "No such run", f"There is no run with id {run_id!r}.")
        except (StateError, StaleWriteError) as exc:
            return RedirectResponse(f"{target}?{urlencode({'problem': str(exc)})}", status_code=303)
        return RedirectResponse(f"{target}?done={done}", status_code=303)

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/runs", runs),
            Route("/runs/{run_id:path}", run),
            Route("/flows", flows_page),
            *(Route(path, action, methods=["POST"]) for path in _ACTIONS),
        ],
        middleware=[
            Middleware(
                TrustedHostMiddleware,
                allowed_hosts=list(allowed_hosts) if allowed_hosts is not None else ["*"],
            )
        ],
    )
    guarded: ASGIApp = asgi_csrf(
        app,
        cookie_name="stepflow_csrf",
        signing_secret=secrets.token_hex(32),
        always_protect=set(_ACTIONS),
        always_set_cookie=True,
        cookie_samesite="Strict",
    )
    if token:
        guarded = _TokenGate(guarded, token)
    return guarded


def _quote(run_id: str) -> str:
    return quote(run_id, safe="")


def _link(path: str, params: Mapping[str, str | None]) -> str:
    """Return ``path`` with the non-empty ``params`` as its query string."""
    query = urlencode({k: v for k, v in params.items() if v})
    return f"{path}?{query}" if query else path
