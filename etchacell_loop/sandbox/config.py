"""What a sandbox run is configured with: credentials, token lifetime, delays, and injected faults."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

DEFAULT_USER = "sandbox"
DEFAULT_PASSWORD = "sandbox"
DEFAULT_CLIENT_ID = "sandbox"
DEFAULT_CLIENT_SECRET = "sandbox-secret"
# panoptes-client sends this id for any endpoint it does not know (see its per-endpoint table).
PANOPTES_CLIENT_DEFAULT_ID = "ce310d45f951de68c4cc8ef46ca38cc0a008f607a2026680295757bfef99f43c"


@dataclass(frozen=True)
class FaultPlan:
    """Faults injected into answers. Shares are probabilities per request, drawn from a seeded RNG.

    ``error_rate`` answers instead of processing (a status from ``error_statuses``; 429 carries
    ``Retry-After``); ``lost_response_rate`` processes the request and then answers 502, as a proxy
    timing out would; ``stall_rate`` holds the answer ``stall_s`` seconds (past a client timeout);
    ``blob_put_failure_rate`` fails media uploads; ``export_stuck`` keeps exports in ``creating``.
    """

    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503, 429)
    lost_response_rate: float = 0.0
    latency_ms: int = 0
    stall_rate: float = 0.0
    stall_s: float = 30.0
    blob_put_failure_rate: float = 0.0
    export_stuck: bool = False
    retry_after_s: int = 1
    path_prefixes: tuple[str, ...] = ("/api", "/oauth", "/users", "/_blobs")
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: FaultPlan | None = None) -> FaultPlan:
        """Merge a JSON object into a plan; unknown keys and bad values raise ``ValueError``."""
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in ("error_statuses", "path_prefixes"):
                values[key] = tuple(value)
            elif key in ("error_rate", "lost_response_rate", "stall_rate", "blob_put_failure_rate"):
                share = float(value)
                if not 0.0 <= share <= 1.0:
                    raise ValueError(f"{key} must be between 0 and 1")
                values[key] = share
            elif key == "export_stuck":
                values[key] = bool(value)
            elif key == "stall_s":
                values[key] = float(value)
            else:
                values[key] = int(value)
        return replace(base or cls(), **values)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SandboxConfig:
    """Behaviour of one sandbox server."""

    token_lifetime_s: int = 7200
    retirement_delay_s: float = 0.5  # Panoptes retires in a background worker
    export_delay_s: float = 1.0  # creating → ready
    blob_url_lifetime_s: int = 300  # signed URL expiry, as the Azure adapter's default
    faults: FaultPlan = field(default_factory=FaultPlan)
