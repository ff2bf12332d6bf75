"""The dashboard's web application: server-rendered pages over the shared database.

``create_app(settings, engine)`` builds it; the caller (``etchacell dashboard``, a test, a WSGI/ASGI
host) owns the engine. Pages are plain HTML from Jinja templates with autoescaping on, charts are
inline SVG, and no script runs in the page (the Content-Security-Policy says so), so a volunteer's
user name — or anything else that came from outside — is only ever text.

Reading needs a signed-in operator unless ``dashboard.public_read`` is set; acting always does, and
every action is a POST carrying the session's CSRF token (see :mod:`.security`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import FastAPI, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from etchacell_loop import __version__
from etchacell_loop.config import Settings
from etchacell_loop.dashboard import actions, pages
from etchacell_loop.dashboard.overlay import LAYERS, OverlayError, overlay_png
from etchacell_loop.dashboard.security import SESSION_COOKIE, SESSION_LIFETIME_S, Operator, OperatorGuard
from etchacell_loop.db.queries import QueryError
from etchacell_loop.db.types import utcnow
from etchacell_loop.model.presets import PRESETS

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NOTICES = {
    "signed-in": "Signed in: actions are enabled.",
    "signed-out": "Signed out.",
    "promoted": "The model version is promoted.",
    "rolled-back": "Rolled back to the previously promoted version.",
}
EVENT_LEVELS = ("info", "warning", "error")


class LoginRequired(Exception):
    """Reading needs an operator and there is none: send the browser to sign in."""


class ReadingClosed(Exception):
    """Neither an operator token nor public reading is configured: nobody can open the pages."""


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    """The dashboard for ``settings`` over ``engine``; nothing is read until a page is asked for."""
    token = settings.dashboard.operator_token
    guard = OperatorGuard(token.get_secret_value() if token is not None else None)
    book = pages.QueryBook(engine, cache_s=settings.dashboard.cache_s)
    templates = _templates()
    app = FastAPI(title="etchacell dashboard", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(packages=[("etchacell_loop.dashboard", "static")]), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    def operator_of(request: Request) -> Operator | None:
        return guard.operator_from_bearer(request.headers.get("authorization")) or guard.operator_from_cookie(
            request.cookies.get(SESSION_COOKIE)
        )

    def reader(request: Request) -> Operator | None:
        operator = operator_of(request)
        if operator is None and not settings.dashboard.public_read:
            raise LoginRequired() if guard.enabled else ReadingClosed()
        return operator

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        operator = operator_of(request)
        notice = NOTICES.get(request.query_params.get("done", ""))
        html = templates.get_template(name).render(
            request_path=request.url.path,
            operator=operator,
            csrf=guard.csrf_token(operator) if operator else "",
            can_act=guard.enabled,
            public_read=settings.dashboard.public_read,
            notice=notice,
            now=utcnow(),
            version=__version__,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def acting(request: Request, csrf: str | None) -> Operator:
        """The operator behind an action, or a refusal: no token configured, not signed in, bad CSRF."""
        if not guard.enabled:
            raise actions.ActionRefused("actions are disabled: no operator token is configured", status=403)
        operator = operator_of(request)
        if operator is None:
            raise actions.ActionRefused("sign in with the operator token to do this", status=403)
        if not guard.csrf_valid(operator, csrf):
            raise actions.ActionRefused(
                "the form is stale or forged (CSRF token missing or wrong): reload the page", status=403
            )
        return operator

    def refused(request: Request, exc: actions.ActionRefused) -> Response:
        if _wants_json(request):
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return render(request, "refused.html", status=exc.status, message=str(exc))

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, _exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={quote(_local_path(request), safe='/')}", status_code=303)

    @app.exception_handler(ReadingClosed)
    async def closed(request: Request, _exc: ReadingClosed) -> Response:
        return render(request, "closed.html", status=403)

    @app.exception_handler(actions.ActionRefused)
    async def action_refused(request: Request, exc: actions.ActionRefused) -> Response:
        return refused(request, exc)

    @app.exception_handler(QueryError)
    async def bad_query(request: Request, exc: QueryError) -> Response:
        return render(request, "refused.html", status=400, message=str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return render(request, "refused.html", status=exc.status_code, message=str(exc.detail))

    # --- pages ----------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def overview_page(request: Request) -> Response:
        reader(request)
        now = utcnow()
        return render(request, "overview.html", page="overview", view=pages.overview(book, settings, now))

    @app.get("/subject-sets", response_class=HTMLResponse)
    def subject_sets_page(request: Request) -> Response:
        reader(request)
        return render(request, "subject_sets.html", page="subject-sets", view=pages.subject_sets(book))

    @app.get("/consensus", response_class=HTMLResponse)
    def consensus_page(
        request: Request,
        roi: str | None = None,
        kind: str | None = None,
        skip: Annotated[int, Query(ge=0)] = 0,
        flagged_only: bool = False,
    ) -> Response:
        reader(request)
        top, skip = pages.page_window(50, skip)
        slices = book.rows("consensus_slices", roi=roi, kind=kind, top=top + 1, skip=skip)
        volunteers = book.rows(
            "volunteer_reliability", **pages.reliability_params(settings), flagged_only=int(flagged_only), top=50
        )
        return render(
            request, "consensus.html", page="consensus", slices=slices[:top], more=len(slices) > top, top=top,
            skip=skip, roi=roi or "", kind=kind or "", volunteers=volunteers, flagged_only=flagged_only,
            reliability=pages.reliability_params(settings),
        )  # fmt: skip

    @app.get("/consensus/{consensus_id}", response_class=HTMLResponse)
    def consensus_slice_page(
        request: Request, consensus_id: int, layers: Annotated[list[str] | None, Query()] = None
    ) -> Response:
        reader(request)
        view = pages.consensus_view(book, settings, consensus_id)
        if view is None:
            raise StarletteHTTPException(404, f"no consensus result {consensus_id}")
        chosen = [layer for layer in (layers if layers is not None else LAYERS) if layer in LAYERS]
        return render(
            request, "consensus_slice.html", page="consensus", view=view, layers=chosen, all_layers=LAYERS,
            reliability=pages.reliability_params(settings),
        )  # fmt: skip

    @app.get("/consensus/{consensus_id}/overlay.png")
    def overlay(request: Request, consensus_id: int, layers: str = ",".join(LAYERS)) -> Response:
        reader(request)
        view = pages.consensus_view(book, settings, consensus_id)
        if view is None or view.sources is None:
            raise StarletteHTTPException(404, f"consensus result {consensus_id} has no images")
        try:
            png = overlay_png(view.sources, [layer for layer in layers.split(",") if layer in LAYERS])
        except OverlayError as exc:
            raise StarletteHTTPException(404, str(exc)) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    @app.get("/models", response_class=HTMLResponse)
    def models_page(request: Request) -> Response:
        reader(request)
        return render(
            request, "models.html", page="models", view=pages.models(book), presets=sorted(PRESETS),
            default_preset=settings.training.preset,
        )  # fmt: skip

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: int) -> Response:
        reader(request)
        view = pages.run_view(book, run_id)
        if view is None:
            raise StarletteHTTPException(404, f"no training run {run_id}")
        if _wants_json(request):
            return JSONResponse(_run_json(view))
        return render(request, "run.html", page="models", view=view)

    @app.get("/events", response_class=HTMLResponse)
    def events_page(
        request: Request,
        level: str | None = None,
        kind: str | None = None,
        since: str = "-7d",
        skip: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        reader(request)
        top, skip = pages.page_window(100, skip)
        chosen_level = level if level in EVENT_LEVELS else None
        rows = book.rows(
            "recent_events", level=chosen_level, kind=kind or None, since=since or "-7d", top=top + 1, skip=skip
        )
        return render(
            request, "events.html", page="events", events=rows[:top], more=len(rows) > top, top=top, skip=skip,
            level=chosen_level or "", kind=kind or "", since=since, levels=EVENT_LEVELS, kinds=book.rows("event_kinds"),
        )  # fmt: skip

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        book.rows("event_kinds")
        return JSONResponse({"ok": True, "version": __version__})

    # --- signing in and out -----------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> Response:
        return render(request, "login.html", page="login", next=_safe_next(next), failed=False)

    @app.post("/login", response_class=HTMLResponse)
    def login(
        request: Request,
        token: Annotated[str, Form()] = "",
        name: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        if not guard.enabled:
            return render(request, "closed.html", status=403)
        if not guard.token_matches(token):
            log.warning(
                "dashboard: a sign-in with a wrong operator token from %s",
                request.client.host if request.client else "?",
            )
            return render(request, "login.html", status=403, page="login", next=_safe_next(next), failed=True)
        target = _safe_next(next)
        response = RedirectResponse(f"{target}{'&' if '?' in target else '?'}done=signed-in", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, guard.issue_session(name or "operator"), max_age=SESSION_LIFETIME_S, httponly=True,
            samesite="strict", secure=request.url.scheme == "https", path="/",
        )  # fmt: skip
        return response

    @app.post("/logout")
    def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        acting(request, csrf)
        response = RedirectResponse("/login?done=signed-out", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # --- actions ---------------------------------------------------------------------------------------

    @app.post("/actions/retrain")
    def retrain(
        request: Request,
        reason: Annotated[str, Form()] = "",
        preset: Annotated[str, Form()] = "",
        force: Annotated[bool, Form()] = False,
        csrf: Annotated[str, Form()] = "",
    ) -> Response:
        operator = acting(request, csrf)
        book.forget()
        run_id = actions.queue_retrain(
            engine, settings, by=f"{operator.name} (dashboard)", reason=reason, preset=preset or None, force=force
        )
        log.info("dashboard: training run %d queued by %s", run_id, operator.name)
        if _wants_json(request):
            return JSONResponse({"run_id": run_id}, status_code=201)
        return RedirectResponse(f"/runs/{run_id}", status_code=303)

    @app.post("/actions/promote")
    def promote(
        request: Request,
        version: Annotated[str, Form()],
        reason: Annotated[str, Form()] = "",
        csrf: Annotated[str, Form()] = "",
    ) -> Response:
        operator = acting(request, csrf)
        book.forget()
        actions.promote(engine, version, by=f"{operator.name} (dashboard)", reason=reason)
        return RedirectResponse("/models?done=promoted", status_code=303)

    @app.post("/actions/rollback")
    def rollback(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        operator = acting(request, csrf)
        book.forget()
        actions.rollback(engine, by=f"{operator.name} (dashboard)")
        return RedirectResponse("/models?done=rolled-back", status_code=303)

    return app


def _templates() -> Environment:
    env = Environment(loader=PackageLoader("etchacell_loop.dashboard", "templates"), autoescape=True)
    env.filters["num"] = _num
    env.filters["ago"] = _ago
    env.filters["when"] = _when
    env.filters["pct"] = lambda value: "—" if value is None else f"{100 * float(value):.0f}%"
    env.filters["fixed"] = lambda value, digits=3: "—" if value is None else f"{float(value):.{digits}f}"
    env.filters["short_key"] = pages.short_key
    env.globals["humanize_seconds"] = pages.humanize_seconds
    return env


def _num(value: object) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(float(str(value))):,}"


def _ago(value: object, now: datetime | None = None) -> str:
    moment = value if isinstance(value, datetime) else pages.parse_time(value)
    if moment is None:
        return "never"
    return f"{pages.humanize_seconds(((now or utcnow()) - moment).total_seconds())} ago"


def _when(value: object) -> str:
    moment = value if isinstance(value, datetime) else pages.parse_time(value)
    return "—" if moment is None else f"{moment:%Y-%m-%d %H:%M} UTC"


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _local_path(request: Request) -> str:
    query = f"?{request.url.query}" if request.url.query else ""
    return f"{request.url.path}{query}"


def _safe_next(target: str) -> str:
    """Only a path on this site: no scheme, no host, no ``//`` (an open redirect otherwise)."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _run_json(view: pages.RunView) -> dict[str, Any]:
    run = view.run
    return {
        "id": run.id,
        "status": run.status.value,
        "requested_by": run.requested_by,
        "reason": run.reason,
        "worker_host": run.worker_host,
        "progress": run.progress,
        "queued_at": run.queued_at.isoformat(),
        "heartbeat_at": run.heartbeat_at.isoformat() if run.heartbeat_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "error": run.error,
        "model_version": view.version,
    }
