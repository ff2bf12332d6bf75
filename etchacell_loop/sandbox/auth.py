"""Signing in as panoptes-client does: Devise session + CSRF, then Doorkeeper OAuth tokens.

Flows: ``GET /users/sign_in`` (CSRF token header + session cookie), ``POST /users/sign_in``
(JSON login), ``POST /oauth/token`` (form) with ``password`` (the session's user),
``client_credentials`` (the application's owner) and ``refresh_token``. Access tokens expire after
the configured lifetime, so tests can make the client refresh.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from etchacell_loop.sandbox import resources as res
from etchacell_loop.sandbox.config import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    PANOPTES_CLIENT_DEFAULT_ID,
)
from etchacell_loop.sandbox.jsonapi import ApiError, document, json_response, single_meta
from etchacell_loop.sandbox.runtime import Runtime, RuntimeDep

SESSION_COOKIE = "_Panoptes_session"
SCOPE = "user project group collection classification subject medium public"
# Registered OAuth applications: id -> secret (None: a public app, password grant only).
APPLICATIONS: dict[str, str | None] = {DEFAULT_CLIENT_ID: DEFAULT_CLIENT_SECRET, PANOPTES_CLIENT_DEFAULT_ID: None}
APPLICATION_OWNER_LOGIN = "sandbox"

router = APIRouter()


def current_user(rt: Runtime, request: Request) -> int | None:
    """The user a Bearer token stands for; no header means anonymous; a bad token is a 401."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    found = rt.store.get_token(token.strip(), "access") if scheme.lower() == "bearer" else None
    if found is None or found[2] < time.time():
        raise ApiError(401, "You must be logged in to access this resource.")
    return found[0]


def require_user(rt: Runtime, request: Request) -> int:
    user_id = current_user(rt, request)
    if user_id is None:
        raise ApiError(401, "You must be logged in to access this resource.")
    return user_id


@router.get("/users/sign_in")
def sign_in_form(request: Request, rt: RuntimeDep) -> Response:
    sid = request.cookies.get(SESSION_COOKIE) or secrets.token_hex(16)
    csrf = secrets.token_urlsafe(32)
    existing = rt.store.get_web_session(sid)
    rt.store.put_web_session(sid, csrf, existing[1] if existing else None)
    response = JSONResponse({"login": "/users/sign_in"})
    response.headers["X-CSRF-Param"] = "authenticity_token"
    response.headers["X-CSRF-Token"] = csrf
    response.set_cookie(SESSION_COOKIE, sid, httponly=True)
    return response


@router.post("/users/sign_in")
async def sign_in(request: Request, rt: RuntimeDep) -> Response:
    sid = request.cookies.get(SESSION_COOKIE, "")
    session = rt.store.get_web_session(sid)
    try:
        body = json.loads(await request.body() or b"{}")
    except json.JSONDecodeError:
        body = {}
    token = body.get("authenticity_token") or request.headers.get("x-csrf-token")
    if session is None or not token or not secrets.compare_digest(str(token), session[0]):
        return JSONResponse({"error": "Can't verify CSRF token authenticity."}, status_code=422)
    user_fields = body.get("user") or {}
    user = res.find_user(rt.store, str(user_fields.get("login", "")))
    if user is None or not res.check_password(user, str(user_fields.get("password", ""))):
        return JSONResponse({"error": "Invalid email or password."}, status_code=401)
    rt.store.put_web_session(sid, session[0], user.id)
    payload = document("users", [res.serialize_user(user, rt.store)], single_meta("users", "/users"))
    return json_response(payload)


@router.post("/oauth/token")
async def oauth_token(request: Request, rt: RuntimeDep) -> Response:
    form = {k: v[-1] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
    grant = str(form.get("grant_type", ""))
    client_id = str(form.get("client_id", ""))
    allowed = {"password", "refresh_token"} | ({"client_credentials"} if APPLICATIONS.get(client_id) else set())
    if client_id not in APPLICATIONS or grant not in allowed:
        # Panoptes' TokensController answers an unknown client, or a grant the application is not
        # allowed, with an empty 422 before Doorkeeper sees the secret (reference §1.2; recorded).
        return Response(status_code=422)
    if grant == "password":
        user_id = _session_user(rt, request)
        if user_id is None:
            return _oauth_error(401, "invalid_grant", "The provided authorization grant is invalid.")
        return _issue(rt, user_id, client_id, refresh=True)
    if grant == "client_credentials":
        expected = APPLICATIONS[client_id]
        given = str(form.get("client_secret", ""))
        if expected is None or not secrets.compare_digest(given, expected):
            return _oauth_error(401, "invalid_client", "Client authentication failed due to unknown client.")
        owner = res.find_user(rt.store, APPLICATION_OWNER_LOGIN)
        return _issue(rt, owner.id if owner else None, client_id, refresh=False)
    if grant == "refresh_token":
        found = rt.store.get_token(str(form.get("refresh_token", "")), "refresh")
        if found is None or found[1] != client_id:
            return _oauth_error(401, "invalid_grant", "The provided authorization grant is invalid.")
        rt.store.drop_token(str(form.get("refresh_token", "")))
        return _issue(rt, found[0], client_id, refresh=True)
    return _oauth_error(400, "unsupported_grant_type", "The authorization grant type is not supported.")


def _session_user(rt: Runtime, request: Request) -> int | None:
    session = rt.store.get_web_session(request.cookies.get(SESSION_COOKIE, ""))
    return session[1] if session else None


def _issue(rt: Runtime, user_id: int | None, client_id: str, *, refresh: bool) -> Response:
    lifetime = rt.config.token_lifetime_s
    access = secrets.token_hex(32)
    rt.store.put_token(access, "access", user_id, client_id, time.time() + lifetime)
    payload: dict[str, object] = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": SCOPE,
        "created_at": int(time.time()),
    }
    if refresh:
        refresh_token = secrets.token_hex(32)
        rt.store.put_token(refresh_token, "refresh", user_id, client_id, time.time() + 90 * 86_400)
        payload["refresh_token"] = refresh_token
    response = JSONResponse(payload, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
    # Rails' Rack::ETag gives every 200 with a body a weak ETag; the recorded token answer has one.
    response.headers["ETag"] = f'W/"{hashlib.md5(bytes(response.body), usedforsecurity=False).hexdigest()}"'
    return response


def _oauth_error(status: int, error: str, description: str) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)
