"""Who may look and who may act: the operator token, the signed session cookie and CSRF tokens.

Why no user table: a project has a handful of operators, and the loop already has one secret they
share (``dashboard.operator_token``, from the environment or a file, never the database). Signing in
proves knowledge of it once; the browser then holds a cookie signed with a key derived from the token,
so the token itself never travels again, changing the token signs everyone out, and a restart of the
dashboard does not. Scripts may send ``Authorization: Bearer <token>`` instead.

Every action is a POST that must carry a CSRF token: an HMAC of the session cookie under a second
derived key. Another site can make a browser send the cookie, but cannot read the page that holds the
CSRF token; the cookie is also ``SameSite=Strict`` and ``HttpOnly``. All comparisons are constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

SESSION_COOKIE = "etchacell_session"
SESSION_LIFETIME_S = 12 * 3600
MAX_OPERATOR_NAME = 64


@dataclass(frozen=True)
class Operator:
    """A signed-in operator: the name they gave (for ``requested_by``) and their session cookie."""

    name: str
    cookie: str | None  # None when authenticated by a bearer token (no CSRF needed: no cookie)


class OperatorGuard:
    """Checks the operator token and issues, verifies and binds sessions and CSRF tokens to it."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token else None
        self._session_key = _derive(self._token, b"session") if self._token else None
        self._csrf_key = _derive(self._token, b"csrf") if self._token else None

    @property
    def enabled(self) -> bool:
        """False when no operator token is configured: nobody can act, and reading needs ``public_read``."""
        return self._token is not None

    def token_matches(self, candidate: str | None) -> bool:
        """Constant-time comparison of ``candidate`` with the operator token."""
        if self._token is None or not candidate:
            return False
        return hmac.compare_digest(candidate.strip().encode(), self._token)

    def issue_session(self, name: str, now: float | None = None) -> str:
        """A cookie value for an operator who proved the token: name and expiry, signed."""
        if self._session_key is None:
            raise PermissionError("no operator token is configured")
        body = json.dumps({"n": clean_operator_name(name), "e": int((now or time.time()) + SESSION_LIFETIME_S)})
        payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
        return f"{payload}.{_sign(self._session_key, payload)}"

    def operator_from_cookie(self, cookie: str | None, now: float | None = None) -> Operator | None:
        """The operator a cookie names, if it is signed by the current token and not expired."""
        if self._session_key is None or not cookie or "." not in cookie:
            return None
        payload, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(signature, _sign(self._session_key, payload)):
            return None
        try:
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            name, expires = str(body["n"]), int(body["e"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < (now or time.time()):
            return None
        return Operator(name, cookie)

    def operator_from_bearer(self, authorization: str | None) -> Operator | None:
        """The operator of an ``Authorization: Bearer <token>`` header (scripts, not browsers)."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and self.token_matches(value):
            return Operator("api", None)
        return None

    def csrf_token(self, operator: Operator) -> str:
        """The CSRF token that pages show in their forms for this session."""
        if self._csrf_key is None or operator.cookie is None:
            return ""
        return _sign(self._csrf_key, operator.cookie)

    def csrf_valid(self, operator: Operator, submitted: str | None) -> bool:
        """A cookie session's POST must carry its CSRF token; a bearer request carries no cookie."""
        if operator.cookie is None:
            return True
        return bool(submitted) and hmac.compare_digest(str(submitted), self.csrf_token(operator))


def clean_operator_name(name: str) -> str:
    """The name an operator typed, trimmed to printable text of a sane length (shown escaped anyway)."""
    text = "".join(ch for ch in name if ch.isprintable()).strip()
    return text[:MAX_OPERATOR_NAME] or "operator"


def _derive(token: bytes, purpose: bytes) -> bytes:
    return hmac.new(token, b"etchacell-dashboard/" + purpose, hashlib.sha256).digest()


def _sign(key: bytes, payload: str) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, payload.encode(), hashlib.sha256).digest()).decode().rstrip("=")
