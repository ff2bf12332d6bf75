"""The gateway's own errors: one line each, never holding a secret, a token or a signed URL.

Why our own classes: panoptes-client reports everything as ``PanoptesAPIException`` (or lets raw
``requests`` exceptions and ``KeyError: 'access_token'`` escape). Callers of the gateway need to tell
"the credentials are wrong" (stop, tell a person) from "Panoptes is unavailable" (try again later)
from "the server refused this request" (record it against the subject and go on).
"""

from __future__ import annotations

import re

_QUERY = re.compile(r"(https?://[^\s?'\"]+)\?[^\s'\"]*")


class PanoptesError(Exception):
    """Anything that went wrong talking to Panoptes."""


class PanoptesAuthError(PanoptesError):
    """Panoptes refused our client credentials: retrying will not help, a person must fix them."""

    def __init__(self, client_id: str | None, description: str) -> None:
        shown = client_id if client_id else "(none)"
        super().__init__(f"Panoptes rejected the client credentials for client id {shown}: {one_line(description)}")
        self.client_id = client_id


class PanoptesCredentialsMissing(PanoptesAuthError):
    """A client credential is not configured, so nothing was sent: the message names the setting and
    its variable, not a refusal Panoptes never made. An auth error still (a person must fix it)."""

    def __init__(self, client_id: str | None, missing: str) -> None:
        PanoptesError.__init__(self, f"cannot sign in to Panoptes: {one_line(missing)}")
        self.client_id = client_id


class PanoptesUnavailable(PanoptesError):
    """Panoptes kept failing (5xx, 429, timeouts, connection errors) after every allowed attempt.

    ``retry_after`` is the server's last ``Retry-After`` in seconds, when it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PanoptesRequestError(PanoptesError):
    """Panoptes answered, but refused the request (a 4xx other than 429) or answered nonsense."""


class PanoptesMediaError(PanoptesError):
    """A subject's media could not be uploaded, or is missing or incomplete after upload."""


def one_line(text: str) -> str:
    """Collapse whitespace so a server message fits on one log line."""
    return " ".join(text.split()) or "no reason given"


def without_queries(text: str) -> str:
    """Drop the query strings of URLs in ``text``: a signed blob URL's query is its signature."""
    return _QUERY.sub(r"\1?...", text)
