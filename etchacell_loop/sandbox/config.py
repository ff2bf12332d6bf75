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


# What a poisoned classification can be served as (etchacell_loop/sandbox/poison.py does each).
POISON_KINDS = (
    "user_not_a_number",
    "fractional_id",
    "id_not_a_number",
    "id_out_of_range",
    "missing_id",
    "not_an_object",
    "links_not_an_object",
    "missing_subjects",
    "subject_not_a_number",
    "missing_annotations",
    "annotations_not_a_list",
    "metadata_not_an_object",
    "bad_created_at",
    "long_version",
    "nul_in_session",
    "huge",
)
# Served damaged but still a classification the loop must store: text that is awkward to keep.
ODD_KINDS = ("odd_text",)


@dataclass(frozen=True)
class FaultPlan:
    """Faults injected into answers. Shares are probabilities per request, drawn from a seeded RNG.

    ``error_rate`` answers instead of processing (a status from ``error_statuses``; 429 carries
    ``Retry-After``); ``lost_response_rate`` processes the request and then answers 502, as a proxy
    timing out would; ``stall_rate`` holds the answer ``stall_s`` seconds (past a client timeout);
    ``blob_put_failure_rate`` fails media uploads; ``export_stuck`` keeps exports in ``creating``.

    Poison: classifications listed by ``GET /api/classifications…`` are served damaged, as a
    buggy front end or a bad migration would have stored them: those in ``poison_ids`` (the i-th
    gets the i-th of ``poison_kinds``, cycling), and a ``poison_rate`` share of the others, drawn per
    id from ``seed`` (a kind from ``poison_kinds`` too). The choice depends only on the id, so a page
    read again is damaged the same way. ``huge`` pads a classification to ``poison_huge_chars``.
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
    poison_rate: float = 0.0
    poison_ids: tuple[int, ...] = ()
    poison_kinds: tuple[str, ...] = POISON_KINDS
    poison_huge_chars: int = 5 * 1024 * 1024
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
            elif key == "poison_ids":
                values[key] = tuple(int(v) for v in value)
            elif key == "poison_kinds":
                values[key] = _poison_kinds(value)
            elif key in ("error_rate", "lost_response_rate", "stall_rate", "blob_put_failure_rate", "poison_rate"):
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

    @property
    def poisons(self) -> bool:
        """Whether any classification may be served damaged."""
        return bool(self.poison_rate or self.poison_ids)


def _poison_kinds(value: Any) -> tuple[str, ...]:
    kinds = tuple(str(kind) for kind in value)
    if not kinds:
        raise ValueError("poison_kinds is empty")
    unknown = sorted(set(kinds) - set(POISON_KINDS) - set(ODD_KINDS))
    if unknown:
        known = ", ".join((*POISON_KINDS, *ODD_KINDS))
        raise ValueError(f"poison_kinds: unknown {', '.join(unknown)} (known: {known})")
    return kinds


@dataclass(frozen=True)
class SandboxConfig:
    """Behaviour of one sandbox server."""

    token_lifetime_s: int = 7200
    retirement_delay_s: float = 0.5  # Panoptes retires in a background worker
    export_delay_s: float = 1.0  # creating → ready
    blob_url_lifetime_s: int = 300  # signed URL expiry, as the Azure adapter's default
    faults: FaultPlan = field(default_factory=FaultPlan)
