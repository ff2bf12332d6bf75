"""The prediction-batch queue on a real database (SQLite and PostgreSQL): idempotent queueing,
atomic claims, lease-guarded updates, re-queueing the silent."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from etchacell_loop.db.models import Event, ModelVersion, PredictionBatch, Roi, RunStatus, Volume
from etchacell_loop.db.types import utcnow
from etchacell_loop.loop import batches
from etchacell_loop.loop.batches import BatchRequestError
from etchacell_loop.loop.runs import Lease
from tests.loop.support import claim_concurrently


def _model_and_rois(engine: Engine, n_rois: int = 1) -> tuple[int, list[int]]:
    with Session(engine) as session:
        volume = Volume(
            name="hela", storage_uri="/data/hela.zarr", shape_z=16, shape_y=64, shape_x=64,
            voxel_size_z_nm=50.0, voxel_size_y_nm=10.0, voxel_size_x_nm=10.0,
        )  # fmt: skip
        session.add(volume)
        session.flush()
        assert volume.id is not None
        rois = [
            Roi(volume_id=volume.id, name=f"cell{i:02d}", x=0, y=0, z=0, width=64, height=64, depth=16)
            for i in range(n_rois)
        ]
        version = ModelVersion(
            version="v0001-00000000", artifact_uri="models/m.keras", preset="small", architecture="unet-2.5d",
            data_hash="0" * 64,
        )  # fmt: skip
        session.add_all([*rois, version])
        session.commit()
        assert version.id is not None
        return version.id, [roi.id for roi in rois if roi.id is not None]


def _queue(engine: Engine, version_id: int, roi_id: int, **params: object) -> int:
    with Session(engine) as session:
        batch = batches.queue_prediction_batch(session, version_id, roi_id, "majority", params)
        session.commit()
        assert batch.id is not None
        return batch.id


def _claim(engine: Engine, host: str) -> Lease | None:
    with Session(engine) as session:
        lease = batches.claim_next_batch(session, host)
        session.commit()
    return lease


def _read(engine: Engine, batch_id: int) -> PredictionBatch:
    with Session(engine) as session:
        batch = session.get(PredictionBatch, batch_id)
        assert batch is not None
        session.expunge(batch)
        return batch


def test_a_model_predicts_an_roi_once_unless_its_batch_failed(migrated_engine: Engine) -> None:
    version_id, (roi_a, roi_b) = _model_and_rois(migrated_engine, 2)
    first = _queue(migrated_engine, version_id, roi_a, min_component_voxels=0)
    assert _queue(migrated_engine, version_id, roi_a) == first
    other = _queue(migrated_engine, version_id, roi_b)
    assert other != first
    lease = _claim(migrated_engine, "w")
    assert lease == Lease(first, "w")
    with Session(migrated_engine) as session:
        assert batches.finish_batch(session, lease)
        session.commit()
    assert _queue(migrated_engine, version_id, roi_a) == first  # succeeded: not predicted again
    assert _claim(migrated_engine, "w") == Lease(other, "w")
    with Session(migrated_engine) as session:
        assert batches.fail_batch(session, Lease(other, "w"), "Traceback …\nOSError: disk full")
        session.commit()
    retry = _queue(migrated_engine, version_id, roi_b)
    assert retry not in (first, other)
    queued = _read(migrated_engine, first)
    assert (queued.tap_rule, queued.params) == ("majority", {"min_component_voxels": 0})
    with Session(migrated_engine) as session:
        events = session.exec(select(Event).where(Event.kind == "prediction.queued")).all()
        assert sorted(e.payload["prediction_batch_id"] for e in events) == sorted([first, other, retry])
        assert {e.model_version_id for e in events} == {version_id}
        failed = session.exec(select(Event).where(Event.kind == "prediction.failed")).one()
        assert "OSError: disk full" in failed.message


@pytest.mark.parametrize(
    ("rule", "params", "problem"),
    [
        ("unanimous", {}, "TAP rule 'unanimous'"),
        ("all", {"patch_zyx": [1, 2, 3]}, "unknown prediction parameter(s) patch_zyx"),
        ("all", {"threshold": 1.5}, "threshold must be in (0, 1)"),
        ("all", {"chunk_zyx": [64, 0, 256]}, "chunk_zyx [64, 0, 256]"),
    ],
)
def test_bad_requests_are_refused_with_one_line(
    migrated_engine: Engine, rule: str, params: dict[str, object], problem: str
) -> None:
    version_id, (roi_id,) = _model_and_rois(migrated_engine)
    with Session(migrated_engine) as session:
        with pytest.raises(BatchRequestError) as refused:
            batches.queue_prediction_batch(session, version_id, roi_id, rule, params)
        assert problem in str(refused.value) and "\n" not in str(refused.value)
        with pytest.raises(BatchRequestError, match="no model version with id 999"):
            batches.queue_prediction_batch(session, 999, roi_id)
        assert session.exec(select(PredictionBatch)).all() == []


def test_updates_need_the_lease_and_release_keeps_the_place_in_line(migrated_engine: Engine) -> None:
    version_id, (roi_a, roi_b) = _model_and_rois(migrated_engine, 2)
    first, second = _queue(migrated_engine, version_id, roi_a), _queue(migrated_engine, version_id, roi_b)
    assert _claim(migrated_engine, "owner") == Lease(first, "owner")
    with Session(migrated_engine) as session:
        assert batches.record_heartbeat(session, Lease(first, "owner"))
        assert not batches.record_heartbeat(session, Lease(first, "intruder"))
        assert not batches.finish_batch(session, Lease(first, "intruder"))
        assert not batches.fail_batch(session, Lease(first, "intruder"), "boom")
        assert not batches.record_heartbeat(session, Lease(second, "owner"))  # queued, not claimed
        assert batches.release_batch(session, Lease(first, "owner"), "worker stopped")
        session.commit()
    released = _read(migrated_engine, first)
    assert released.status == RunStatus.QUEUED and released.worker_host is None
    assert _claim(migrated_engine, "other") == Lease(first, "other")


def test_silent_batches_are_requeued_and_their_old_worker_cannot_write(migrated_engine: Engine) -> None:
    version_id, (roi_a, roi_b) = _model_and_rois(migrated_engine, 2)
    stale, fresh = _queue(migrated_engine, version_id, roi_a), _queue(migrated_engine, version_id, roi_b)
    assert _claim(migrated_engine, "dead") is not None
    assert _claim(migrated_engine, "alive") is not None
    with Session(migrated_engine) as session:
        batch = session.get(PredictionBatch, stale)
        assert batch is not None
        batch.heartbeat_at = utcnow() - timedelta(seconds=700)
        session.commit()
        assert batches.requeue_stale_batches(session, timeout_s=600) == [stale]
        session.commit()
        assert batches.requeue_stale_batches(session, timeout_s=600) == []
        event = session.exec(select(Event).where(Event.kind == "prediction.requeued")).one()
        assert event.payload["prediction_batch_id"] == stale and event.payload["worker_host"] == "dead"
    assert _read(migrated_engine, fresh).status == RunStatus.RUNNING
    assert _claim(migrated_engine, "rescuer") == Lease(stale, "rescuer")
    with Session(migrated_engine) as session:
        assert not batches.finish_batch(session, Lease(stale, "dead"))
        session.commit()
    assert _read(migrated_engine, stale).worker_host == "rescuer"


def test_concurrent_claimers_never_get_the_same_batch(db_url: str, migrated_engine: Engine) -> None:
    n_rois, n_workers = 24, 4
    version_id, roi_ids = _model_and_rois(migrated_engine, n_rois)
    ids = [_queue(migrated_engine, version_id, roi_id) for roi_id in roi_ids]
    claims = claim_concurrently(db_url, n_workers, lambda engine, host: _lease_id(_claim(engine, host)))
    counted = Counter(batch_id for mine in claims.values() for batch_id in mine)
    assert sorted(counted) == sorted(ids) and set(counted.values()) == {1}
    with Session(migrated_engine) as session:
        owner = {batch_id: host for host, mine in claims.items() for batch_id in mine}
        rows = session.exec(select(PredictionBatch).order_by(col(PredictionBatch.id))).all()
        assert all(row.status == RunStatus.RUNNING and row.worker_host == owner[row.id] for row in rows if row.id)


def _lease_id(lease: Lease | None) -> int | None:
    return None if lease is None else lease.run_id
