"""A prediction batch from queue to slice rows: a real OME-Zarr volume, a real database, and both a
stand-in model whose envelope is known (geometry, areas, reruns, a lost lease) and a real, untrained
Keras model run by the worker (the mechanics end to end)."""

from __future__ import annotations

import functools
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from etchacell_loop.config import Settings
from etchacell_loop.db.models import Event, ModelVersion, PredictionBatch, Roi, RunStatus, SlicePrediction, Volume
from etchacell_loop.imaging.synth_volume import SynthSpec, generate_volume
from etchacell_loop.imaging.volume import RoiBox, open_volume
from etchacell_loop.loop import batches
from etchacell_loop.loop.prediction_job import (
    PredictionReadError,
    batch_output_path,
    batch_source,
    predict_batch,
    predicted_area,
    record_slices,
    slice_summaries,
)
from etchacell_loop.loop.runs import Lease
from etchacell_loop.loop.worker import PREDICTION_QUEUE, RunHeartbeat, RunLost, SessionFactory, run_worker
from etchacell_loop.model.presets import ModelPreset, get_preset
from tests.imaging.support import write_ome_zarr

SHAPE_ZYX = (10, 120, 130)
ROI_XYZ_WHD = (10, 5, 2, 110, 105, 7)  # x, y, z, width, height, depth in source voxels
INNER, OUTER = 0.8, 1.0  # the shell's radii, in units of the ellipsoid's semi-axes


def _factory(engine: Engine) -> SessionFactory:
    return functools.partial(Session, engine, expire_on_commit=False)


def _radius(shape_zyx: tuple[int, int, int]) -> np.ndarray:
    z, y, x = np.indices(shape_zyx, dtype=np.float32)
    cz, cy, cx = (n / 2 for n in shape_zyx)
    squared = ((z - cz) / (0.9 * cz)) ** 2 + ((y - cy) / (0.7 * cy)) ** 2 + ((x - cx) / (0.7 * cx)) ** 2
    return np.asarray(np.sqrt(squared), dtype=np.float32)


def shell_volume(path: Path) -> Path:
    """uint8 at 50 x 10 x 10 nm: a bright ellipsoidal shell (the envelope) on a noisy dark background."""
    rng = np.random.default_rng(0)
    radius = _radius(SHAPE_ZYX)
    volume = 40 + 20 * rng.random(SHAPE_ZYX)
    volume[(radius >= INNER) & (radius < OUTER)] = 210
    return write_ome_zarr(path, volume.astype(np.uint8), scale=(50.0, 10.0, 10.0))


def brightness_fn(batch: np.ndarray) -> np.ndarray:
    """A stand-in model: the envelope probability is the normalised brightness."""
    return np.asarray(batch, dtype=np.float32)


def stand_in_preset() -> ModelPreset:
    return replace(get_preset("small"), name="stand-in", patch_zyx=(4, 8, 8), depth=2, voxel_size_nm=50.0)


def _rows(engine: Engine, volume_path: Path, artifact_uri: str, tmp_path: Path) -> tuple[int, int]:
    """Volume, ROI and model version rows; the ids of the version and the ROI."""
    x, y, z, width, height, depth = ROI_XYZ_WHD
    with open_volume(volume_path) as volume:
        shape, voxel = volume.shape_zyx, volume.voxel_size_nm
    with Session(engine) as session:
        row = Volume(
            name="shell", storage_uri=str(volume_path), shape_z=shape[0], shape_y=shape[1], shape_x=shape[2],
            voxel_size_z_nm=voxel[0], voxel_size_y_nm=voxel[1], voxel_size_x_nm=voxel[2],
        )  # fmt: skip
        session.add(row)
        session.flush()
        assert row.id is not None
        roi = Roi(volume_id=row.id, name="cell01", x=x, y=y, z=z, width=width, height=height, depth=depth)
        version = ModelVersion(
            version="v0001-00000000", artifact_uri=artifact_uri, preset="small", architecture="unet-2.5d",
            data_hash="0" * 64,
        )  # fmt: skip
        session.add_all([roi, version])
        session.commit()
        assert version.id is not None and roi.id is not None
        return version.id, roi.id


def _queue_and_claim(engine: Engine, version_id: int, roi_id: int, host: str = "w") -> PredictionBatch:
    with Session(engine, expire_on_commit=False) as session:
        batches.queue_prediction_batch(session, version_id, roi_id, "all", {"min_component_voxels": 0})
        session.commit()
        lease = batches.claim_next_batch(session, host)
        session.commit()
        assert lease is not None
        batch = session.get(PredictionBatch, lease.run_id)
        assert batch is not None
        session.expunge(batch)
        return batch


def _heartbeat(engine: Engine, batch: PredictionBatch, host: str = "w") -> RunHeartbeat:
    assert batch.id is not None
    return RunHeartbeat(_factory(engine), Lease(batch.id, host), threading.Event(), PREDICTION_QUEUE)


def _slice_rows(engine: Engine, batch_id: int) -> list[SlicePrediction]:
    with Session(engine) as session:
        statement = select(SlicePrediction).where(SlicePrediction.batch_id == batch_id)
        return list(session.exec(statement.order_by(col(SlicePrediction.slice_index))).all())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_slice_rows_and_areas_follow_the_source_slices(migrated_engine: Engine, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    version_id, roi_id = _rows(migrated_engine, shell_volume(tmp_path / "shell.zarr"), "models/none.keras", tmp_path)
    batch = _queue_and_claim(migrated_engine, version_id, roi_id)
    assert batch.id is not None
    factory = _factory(migrated_engine)
    source = batch_source(factory, data_dir, batch)
    leftover = batch_output_path(data_dir, batch.id).parent / f".batch-{batch.id}.zarr.abc123"
    leftover.mkdir(parents=True)  # scratch of a run killed earlier
    heartbeat = _heartbeat(migrated_engine, batch)
    n = predict_batch(factory, data_dir, batch, heartbeat, brightness_fn, stand_in_preset(), source)

    x, y, z, width, height, depth = ROI_XYZ_WHD
    assert n == depth and not leftover.exists()
    rows = _slice_rows(migrated_engine, batch.id)
    assert [r.slice_index for r in rows] == list(range(z, z + depth))
    assert all(0.0 <= r.uncertainty <= 1.0 and r.roi_id == roi_id for r in rows)
    with Session(migrated_engine) as session:
        stored = session.get(PredictionBatch, batch.id)
        assert stored is not None and stored.n_slices == depth
        assert stored.output_uri == f"predictions/batch-{batch.id}.zarr"
        assert (data_dir / stored.output_uri / "labels" / "envelope").is_dir()
        session.expunge(stored)
    radius = _radius(SHAPE_ZYX)[:, y : y + height, x : x + width]
    for row in rows:
        truth_band = (radius[row.slice_index] >= INNER) & (radius[row.slice_index] < OUTER)
        area = predicted_area(data_dir, stored, row.slice_index)
        assert area.shape == (height, width)
        assert _dice(area, radius[row.slice_index] < OUTER) > 0.9  # the band and what it encloses
        assert abs(row.envelope_area_px - np.count_nonzero(truth_band)) < 0.25 * np.count_nonzero(truth_band)
    with pytest.raises(PredictionReadError, match=f"slice {z + depth} is outside the predicted ROI"):
        predicted_area(data_dir, stored, z + depth)

    with Session(migrated_engine) as session:  # a stale row from an interrupted earlier attempt
        first = session.get(SlicePrediction, rows[0].id)
        assert first is not None
        first.uncertainty, first.envelope_area_px = 0.99, -1
        session.commit()
    assert predict_batch(factory, data_dir, batch, heartbeat, brightness_fn, stand_in_preset(), source) == depth
    again = _slice_rows(migrated_engine, batch.id)
    assert [(r.slice_index, r.uncertainty, r.envelope_area_px) for r in again] == [
        (r.slice_index, r.uncertainty, r.envelope_area_px) for r in rows
    ]  # replaced, not added to


def test_a_worker_that_lost_the_batch_writes_no_rows(migrated_engine: Engine, tmp_path: Path) -> None:
    version_id, roi_id = _rows(migrated_engine, shell_volume(tmp_path / "shell.zarr"), "models/none.keras", tmp_path)
    batch = _queue_and_claim(migrated_engine, version_id, roi_id, host="holder")
    assert batch.id is not None
    factory = _factory(migrated_engine)
    source = batch_source(factory, tmp_path, batch)
    predict_batch(factory, tmp_path, batch, _heartbeat(migrated_engine, batch, "holder"), brightness_fn,
                  stand_in_preset(), source)  # fmt: skip
    written = _slice_rows(migrated_engine, batch.id)
    summaries = slice_summaries(batch_output_path(tmp_path, batch.id))
    with pytest.raises(RunLost):
        record_slices(factory, batch, _heartbeat(migrated_engine, batch, "loser"), summaries[:2], "elsewhere", 0.0)
    assert [r.id for r in _slice_rows(migrated_engine, batch.id)] == [r.id for r in written]


def test_the_worker_predicts_a_queued_batch_with_a_real_model(migrated_engine: Engine, tmp_path: Path) -> None:
    pytest.importorskip("keras")
    from etchacell_loop.model.keras_io import save_model
    from etchacell_loop.model.unet import build_unet
    from tests.model.support import tiny_preset

    data_dir = tmp_path / "data"
    volume_path = tmp_path / "hela.zarr"
    generate_volume(volume_path, SynthSpec(shape=(8, 160, 160), cells=1, seed=5))
    preset = tiny_preset()
    save_model(build_unet(preset), preset, data_dir / "models" / "v0001" / "model.keras")  # untrained
    with open_volume(volume_path) as volume:
        box = volume.rois[0]
    version_id, roi_id = _rows(migrated_engine, volume_path, "models/v0001/model.keras", tmp_path)
    with Session(migrated_engine) as session:
        roi = session.get(Roi, roi_id)
        assert roi is not None
        roi.x, roi.y, roi.z, roi.width, roi.height, roi.depth = box.x, box.y, box.z, box.width, box.height, box.depth
        batch = batches.queue_prediction_batch(session, version_id, roi_id, "all", {"min_component_voxels": 0})
        session.commit()
        batch_id = batch.id
        assert batch_id is not None

    factory = _factory(migrated_engine)
    report = run_worker(factory, Settings(data_dir=data_dir), once=True)
    assert (report.claimed, report.batches_claimed, report.succeeded) == (1, 1, 1)
    assert run_worker(factory, Settings(data_dir=data_dir), once=True).claimed == 0
    assert batch_output_path(data_dir, batch_id).is_dir()
    rows = _slice_rows(migrated_engine, batch_id)
    assert [r.slice_index for r in rows] == list(range(box.z, box.z + box.depth))
    assert all(0.0 <= r.uncertainty <= 1.0 for r in rows)
    with Session(migrated_engine) as session:
        done = session.get(PredictionBatch, batch_id)
        assert done is not None and done.status == RunStatus.SUCCEEDED and done.n_slices == box.depth
        assert batches.queue_prediction_batch(session, version_id, roi_id).id == batch_id
        kinds = {e.kind for e in session.exec(select(Event)).all()}
        assert {"prediction.claimed", "prediction.written", "prediction.succeeded"} <= kinds
        area = predicted_area(data_dir, done, box.z)
        assert area.shape == (box.height, box.width) and area.dtype == np.bool_


def test_a_worker_with_a_cluster_named_predicts_its_batch_there_as_it_would_alone(
    migrated_engine: Engine, tmp_path: Path
) -> None:
    """``compute.scheduler`` naming a cluster's address: the batch's chunks are tasks on it, the
    slice rows are written, and the prediction equals the single-process run's byte for byte."""
    pytest.importorskip("keras")
    distributed = pytest.importorskip("distributed")
    from etchacell_loop.config import ComputeSettings
    from etchacell_loop.loop.batches import tap_params
    from etchacell_loop.model.keras_io import load_predict_fn, save_model
    from etchacell_loop.model.predict import predict_volume
    from etchacell_loop.model.tap import resolve_batch_size
    from etchacell_loop.model.unet import build_unet
    from tests.compute.test_tap_blocks import digests
    from tests.model.support import tiny_preset

    data_dir = tmp_path / "data"
    volume_path = tmp_path / "hela.zarr"
    generate_volume(volume_path, SynthSpec(shape=(8, 160, 160), cells=1, seed=5))
    preset = tiny_preset()
    artefact = save_model(build_unet(preset), preset, data_dir / "models" / "v0001" / "model.keras")
    version_id, roi_id = _rows(migrated_engine, volume_path, "models/v0001/model.keras", tmp_path)
    with Session(migrated_engine) as session:
        batch = batches.queue_prediction_batch(session, version_id, roi_id, "all", {"min_component_voxels": 0})
        session.commit()
        batch_id, roi = batch.id, session.get(Roi, roi_id)
        assert batch_id is not None and roi is not None
        box = RoiBox(roi.name, roi.x, roi.y, roi.z, roi.width, roi.height, roi.depth).clipped((8, 160, 160))
        params = tap_params(preset.patch_zyx, batch.tap_rule, batch.params)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        settings = Settings(data_dir=data_dir, compute=ComputeSettings(scheduler=cluster.scheduler_address))
        report = run_worker(_factory(migrated_engine), settings, once=True)
    assert (report.batches_claimed, report.succeeded) == (1, 1)
    assert [r.slice_index for r in _slice_rows(migrated_engine, batch_id)] == list(range(box.z, box.z + box.depth))

    alone = tmp_path / "alone.zarr"
    predict_fn, _ = load_predict_fn(artefact, resolve_batch_size(params.batch_size))
    with open_volume(volume_path) as volume:
        predict_volume(volume, predict_fn, preset, alone, params=params, roi=box)
    ours, theirs = digests(batch_output_path(data_dir, batch_id)), digests(alone)
    assert ours.pop(".zattrs") and theirs.pop(".zattrs")  # the batch's names its model version and batch
    assert ours == theirs and len(ours) > 4
