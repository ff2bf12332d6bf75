"""The sandbox application: Panoptes' routes, the blob store, the control API, fault injection."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from etchacell_loop.sandbox import api, auth, blobs, caesar, control
from etchacell_loop.sandbox import resources as res
from etchacell_loop.sandbox.config import DEFAULT_PASSWORD, DEFAULT_USER, SandboxConfig
from etchacell_loop.sandbox.faults import ASGIApp, FaultMiddleware, FaultState
from etchacell_loop.sandbox.jsonapi import ApiError, error_response
from etchacell_loop.sandbox.runtime import Runtime
from etchacell_loop.sandbox.store import Store


def create_app(state_dir: Path, config: SandboxConfig | None = None) -> tuple[ASGIApp, Runtime]:
    """A sandbox over ``state_dir`` (created if needed; an existing one is resumed as it was)."""
    config = config or SandboxConfig()
    state_dir.mkdir(parents=True, exist_ok=True)
    store = Store(state_dir)
    if res.find_user(store, DEFAULT_USER) is None:
        res.create_user(store, DEFAULT_USER, DEFAULT_PASSWORD, admin=False)
    runtime = Runtime(store, config, FaultState(config.faults))
    app = FastAPI(title="Panoptes sandbox", docs_url="/_sandbox/docs", openapi_url="/_sandbox/openapi.json")
    app.state.runtime = runtime
    app.include_router(auth.router)
    app.include_router(api.router)
    app.include_router(blobs.router)
    app.include_router(control.router)
    app.include_router(caesar.router)
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    return FaultMiddleware(app, runtime.faults), runtime


async def _api_error(_request: Request, exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if request.url.path.startswith("/_sandbox"):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)
    return error_response(exc.status_code, str(exc.detail))


async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
    first = exc.errors()[0] if exc.errors() else {"msg": "invalid request"}
    return error_response(422, str(first.get("msg")))
