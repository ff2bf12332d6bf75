"""The only code that talks to Panoptes: retries and timeouts (``http``), typed operations
(``gateway``), idempotent subject upload (``upload``)."""

from etchacell_loop.panoptes.errors import (
    PanoptesAuthError,
    PanoptesCredentialsMissing,
    PanoptesError,
    PanoptesMediaError,
    PanoptesRequestError,
    PanoptesUnavailable,
)
from etchacell_loop.panoptes.gateway import CreatedSubject, MediaReport, PanoptesGateway, connect
from etchacell_loop.panoptes.http import RetryingAdapter, RetryPolicy

__all__ = [
    "CreatedSubject",
    "MediaReport",
    "PanoptesAuthError",
    "PanoptesCredentialsMissing",
    "PanoptesError",
    "PanoptesGateway",
    "PanoptesMediaError",
    "PanoptesRequestError",
    "PanoptesUnavailable",
    "RetryPolicy",
    "RetryingAdapter",
    "connect",
]
