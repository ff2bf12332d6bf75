"""The prediction-batch queue: a model version predicts one ROI, claimed and run by a worker.

Why a queue and not a call: the daemon, which decides what to predict, has no deep-learning stack;
the worker, which has it, may be on another machine. A :class:`~etchacell_loop.db.models.PredictionBatch`
row is the request and its whole life (who took it, whether it is alive, how it ended), with the
same discipline as training runs (:mod:`etchacell_loop.loop.runs`, whose claim, lease-guarded update
and silent-row re-queue are reused as they are): one atomic claim, every later write guarded by the
lease, rows of a silent worker back in the queue.

Queueing is idempotent: a model version predicts an ROI once. While a batch for the pair is queued,
running or succeeded, asking again returns it; only a failed or cancelled batch makes way for a new
one. The schema has no unique index for this (a failed batch must not block a retry), so the check
runs under a lock on the model version's row on PostgreSQL; SQLite serialises writers anyway.

Events carry the batch id in their payload (``prediction_batch_id``) and the model version in
``model_version_id``. Pure database functions: each takes a Session and does not commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, get_args

from sqlmodel import Session, col, select

from etchacell_loop.db.models import Event, EventLevel, ModelVersion, PredictionBatch, RunStatus
from etchacell_loop.db.types import utcnow
from etchacell_loop.loop.runs import Lease, claim_oldest, requeue_silent, update_leased
from etchacell_loop.model.tap import TAP_RULES, TapParams, TapRule

LIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SUCCEEDED)
CHUNK_PARAM = "chunk_zyx"
TAP_PARAMS = frozenset({"axes", "threshold", "overlap", "batch_size", "min_component_voxels", "keep_largest"})
"""What ``params`` may set besides the chunk size: the fields of TapParams other than patch and rule
(the patch is the model's, the rule is ``tap_rule``)."""


class BatchRequestError(ValueError):
    """A prediction request that cannot be queued; the message is one line."""


def queue_prediction_batch(
    session: Session,
    model_version_id: int,
    roi_id: int,
    tap_rule: str = "all",
    params: Mapping[str, Any] | None = None,
) -> PredictionBatch:
    """Queue ``model_version_id`` predicting ``roi_id``, or return the pair's live batch.

    ``params`` may hold TAP settings (:data:`TAP_PARAMS`) and ``chunk_zyx``; they are checked here,
    so a bad request fails at once and not on the worker.
    """
    requested = dict(params or {})
    check_request(tap_rule, requested)
    version = session.exec(
        select(ModelVersion).where(ModelVersion.id == model_version_id).with_for_update()
    ).one_or_none()
    if version is None:
        raise BatchRequestError(f"no model version with id {model_version_id}")
    existing = live_batch(session, model_version_id, roi_id)
    if existing is not None:
        return existing
    batch = PredictionBatch(model_version_id=model_version_id, roi_id=roi_id, tap_rule=tap_rule, params=requested)
    session.add(batch)
    session.flush()
    message = f"prediction batch {batch.id} queued: model {version.version} on ROI {roi_id} (TAP rule {tap_rule})"
    _event(session, batch, "prediction.queued", message)
    return batch


def check_request(tap_rule: str, params: Mapping[str, Any]) -> None:
    """Raise :class:`BatchRequestError` unless the rule and parameters make valid TAP settings."""
    if tap_rule not in TAP_RULES:
        raise BatchRequestError(f"TAP rule {tap_rule!r}: expected one of {', '.join(TAP_RULES)}")
    unknown = sorted(set(params) - TAP_PARAMS - {CHUNK_PARAM})
    if unknown:
        raise BatchRequestError(f"unknown prediction parameter(s) {', '.join(unknown)}")
    chunk = params.get(CHUNK_PARAM)
    if chunk is not None and not _is_chunk(chunk):
        raise BatchRequestError(f"{CHUNK_PARAM} {chunk!r}: expected three positive whole numbers")
    try:
        tap_params((1, 1, 1), tap_rule, params)
    except (TypeError, ValueError) as exc:
        raise BatchRequestError(f"prediction parameters: {exc}") from None


def tap_params(patch_zyx: tuple[int, int, int], tap_rule: str, params: Mapping[str, Any]) -> TapParams:
    """The batch's TAP settings for a model of ``patch_zyx``."""
    settings = {key: value for key, value in params.items() if key in TAP_PARAMS}
    if "axes" in settings:
        settings["axes"] = tuple(settings["axes"])
    return TapParams(patch_zyx=patch_zyx, rule=_rule(tap_rule), **settings)


def live_batch(session: Session, model_version_id: int, roi_id: int) -> PredictionBatch | None:
    """The pair's queued, running or succeeded batch (the oldest, should there be several)."""
    statement = (
        select(PredictionBatch)
        .where(
            PredictionBatch.model_version_id == model_version_id,
            PredictionBatch.roi_id == roi_id,
            col(PredictionBatch.status).in_(LIVE_STATUSES),
        )
        .order_by(col(PredictionBatch.id))
    )
    return session.exec(statement).first()


def claim_next_batch(session: Session, worker_host: str) -> Lease | None:
    """Atomically take the oldest queued batch for ``worker_host``; None when none is queued.

    Must be the first write of its transaction, committed right after (see :func:`runs.claim_next_run`).
    """
    claimed = claim_oldest(session, PredictionBatch, col(PredictionBatch.requested_at), worker_host, {})
    if claimed is None:
        return None
    batch = session.get(PredictionBatch, claimed, populate_existing=True)
    assert batch is not None
    _event(session, batch, "prediction.claimed", f"prediction batch {claimed} claimed by {worker_host}")
    return Lease(claimed, worker_host)


def record_heartbeat(session: Session, lease: Lease) -> bool:
    """Mark the batch alive; False when it is no longer this worker's."""
    return update_leased(session, PredictionBatch, lease, {"heartbeat_at": utcnow()})


def finish_batch(session: Session, lease: Lease) -> bool:
    """The batch succeeded (its output and slice rows are written); False when it was taken away."""
    done = update_leased(session, PredictionBatch, lease, {"status": RunStatus.SUCCEEDED, "finished_at": utcnow()})
    if done:
        batch = session.get(PredictionBatch, lease.run_id, populate_existing=True)
        assert batch is not None
        message = f"prediction batch {lease.run_id} succeeded: {batch.n_slices} slices in {batch.output_uri}"
        _event(session, batch, "prediction.succeeded", message)
    return done


def fail_batch(session: Session, lease: Lease, error: str) -> bool:
    """The batch failed with ``error`` (a traceback); False when it was taken from this worker."""
    done = update_leased(
        session, PredictionBatch, lease, {"status": RunStatus.FAILED, "error": error, "finished_at": utcnow()}
    )
    if done:
        batch = session.get(PredictionBatch, lease.run_id, populate_existing=True)
        assert batch is not None
        last_line = error.strip().splitlines()[-1] if error.strip() else "unknown error"
        _event(
            session,
            batch,
            "prediction.failed",
            f"prediction batch {lease.run_id} failed: {last_line}",
            EventLevel.ERROR,
        )
    return done


def release_batch(session: Session, lease: Lease, reason: str) -> bool:
    """Put a running batch back in the queue (the worker is stopping); its place in line is kept."""
    values: dict[str, Any] = {"status": RunStatus.QUEUED, "worker_host": None, "started_at": None}
    done = update_leased(session, PredictionBatch, lease, values)
    if done:
        batch = session.get(PredictionBatch, lease.run_id, populate_existing=True)
        assert batch is not None
        message = f"prediction batch {lease.run_id} re-queued by {lease.worker_host}: {reason}"
        _event(session, batch, "prediction.requeued", message, EventLevel.WARNING, {"reason": reason})
    return done


def requeue_stale_batches(session: Session, timeout_s: float, now: datetime | None = None) -> list[int]:
    """Re-queue running batches silent for longer than ``timeout_s``; returns their ids."""
    requeued: list[int] = []
    for row in requeue_silent(session, PredictionBatch, timeout_s, now):
        batch = session.get(PredictionBatch, row.id)
        assert batch is not None
        message = f"prediction batch {row.id} re-queued: no heartbeat from {row.worker_host} for over {timeout_s:g} s"
        payload = {
            "worker_host": row.worker_host,
            "heartbeat_at": row.heartbeat_at.isoformat() if row.heartbeat_at else None,
        }
        _event(session, batch, "prediction.requeued", message, EventLevel.WARNING, payload)
        requeued.append(row.id)
    return requeued


def _event(
    session: Session,
    batch: PredictionBatch,
    kind: str,
    message: str,
    level: EventLevel = EventLevel.INFO,
    payload: Mapping[str, Any] | None = None,
) -> None:
    details = {"prediction_batch_id": batch.id, "roi_id": batch.roi_id, **(payload or {})}
    session.add(
        Event(kind=kind, message=message, level=level, model_version_id=batch.model_version_id, payload=details)
    )


def _is_chunk(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value)
    )


def _rule(name: str) -> TapRule:
    rules: tuple[TapRule, ...] = get_args(TapRule)
    return next(rule for rule in rules if rule == name)
