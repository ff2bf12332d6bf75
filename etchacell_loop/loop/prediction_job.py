"""The worker's job for one prediction batch: a model version predicts an ROI for the correction round.

What it leaves behind, in this order (a file before the rows that name it):

1. ``<data_dir>/predictions/batch-<id>.zarr``: :func:`~etchacell_loop.model.predict.predict_volume`'s
   OME-Zarr (mean probability, ``labels/envelope``, per-slice uncertainty in its attributes). The
   name is the batch's, so a rerun after a crash overwrites its own leftovers, scratch folders
   included.
2. One :class:`~etchacell_loop.db.models.SlicePrediction` per source z-slice of the ROI, with the
   batch's ``output_uri`` and ``n_slices``, all in one transaction held under the lease: a rerun
   replaces the rows, and a worker that lost the batch writes none.

The prediction lives on the model's grid (e.g. 50 nm voxels); the loop speaks in source slices
(``Subject.slice_index``). A source slice takes the uncertainty of the model slice it was averaged
into, and its envelope and nucleus area are brought back to source pixels by linear interpolation
of the model's mask, thresholded at one half, so outlines are smooth rather than staircases of
model voxels. The nucleus area is the envelope band with what it encloses (holes filled per slice).

Keras is imported only when a model is loaded, so the daemon can import this module (the worker's
module tree) without the ``ml`` extra.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
import zarr
from numpy.typing import NDArray
from scipy import ndimage
from skimage.transform import resize
from sqlmodel import Session, col

from etchacell_loop.config import Settings
from etchacell_loop.db.models import Event, ModelVersion, PredictionBatch, Roi, SlicePrediction, Volume
from etchacell_loop.imaging.volume import RoiBox, open_label, open_volume
from etchacell_loop.loop.batches import CHUNK_PARAM, tap_params
from etchacell_loop.model.predict import DEFAULT_CHUNK_ZYX, predict_volume
from etchacell_loop.model.presets import ModelPreset
from etchacell_loop.model.tap import PredictFn, Shape3
from etchacell_loop.stored_files import resolve_uri

if TYPE_CHECKING:
    from etchacell_loop.loop.worker import Heartbeat

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
PREDICTIONS_DIR = "predictions"
ENVELOPE_LABEL = "envelope"
Mask = NDArray[np.bool_]


class PredictionReadError(ValueError):
    """A batch's prediction that cannot be read as asked; the message is one line."""


@dataclass(frozen=True)
class BatchSource:
    """What a batch predicts with and from, as the database describes it."""

    artifact: Path
    version: str
    volume_path: Path
    voxel_size_nm: tuple[float, float, float]
    roi: RoiBox


@dataclass(frozen=True)
class PredictionGeometry:
    """Where a written prediction lies in the source: the (clipped) ROI in level-0 voxels, source
    voxels per model voxel, and the uncertainty of each model z-slice."""

    region: RoiBox
    factor_zyx: Shape3
    uncertainty: tuple[float, ...]

    def model_slice(self, slice_index: int) -> int:
        """The model z-slice that source slice ``slice_index`` (absolute) was averaged into."""
        if not self.region.z <= slice_index < self.region.z + self.region.depth:
            last = self.region.z + self.region.depth - 1
            raise PredictionReadError(
                f"slice {slice_index} is outside the predicted ROI (slices {self.region.z}-{last})"
            )
        return (slice_index - self.region.z) // self.factor_zyx[0]


@dataclass(frozen=True)
class SliceSummary:
    """One source slice of a prediction: the axes' disagreement and the envelope's size."""

    slice_index: int
    uncertainty: float
    envelope_area_px: int


def prediction_job(
    session_factory: SessionFactory, settings: Settings, batch: PredictionBatch, heartbeat: Heartbeat
) -> int:
    """Predict the batch's ROI with its model version and record every slice; the number of slices."""
    source = batch_source(session_factory, settings.data_dir, batch)
    from etchacell_loop.compute.cluster import in_process, resolve_scheduler

    if not in_process(resolve_scheduler(settings.compute.scheduler, "worker")):
        return predict_batch_on_cluster(session_factory, settings, batch, heartbeat, source)
    from etchacell_loop.model.backend import running_backend_and_accelerator
    from etchacell_loop.model.keras_io import load_predict_fn  # Keras: only on the worker
    from etchacell_loop.model.tap import resolve_batch_size

    running_backend_and_accelerator()  # logs the backend and device once per process
    batch_size = resolve_batch_size(_optional_int(batch.params.get("batch_size")))
    predict_fn, preset = load_predict_fn(source.artifact, batch_size)  # the model takes each TAP batch whole
    return predict_batch(session_factory, settings.data_dir, batch, heartbeat, predict_fn, preset, source)


def predict_batch_on_cluster(
    session_factory: SessionFactory,
    settings: Settings,
    batch: PredictionBatch,
    heartbeat: Heartbeat,
    source: BatchSource,
) -> int:
    """The batch's chunks as tasks on the cluster ``compute.scheduler`` names by address or file
    (``compute.tap_blocks``), each of its workers loading the model once; the slice rows are written
    here, under the lease, as always. ``auto``, ``local`` and ``none`` predict in the worker itself:
    it is already one process on its GPU, and a cluster started per batch would cost more than a
    small ROI takes."""
    from etchacell_loop.compute.cluster import model_resources, open_client
    from etchacell_loop.compute.tap_blocks import KerasArtifact, predict_volume_blocks
    from etchacell_loop.model.artifact import read_preset

    assert batch.id is not None
    out = batch_output_path(settings.data_dir, batch.id)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    preset = read_preset(source.artifact)
    params = tap_params(preset.patch_zyx, batch.tap_rule, batch.params)
    chunk = tuple(batch.params.get(CHUNK_PARAM, DEFAULT_CHUNK_ZYX))
    model = KerasArtifact(source.artifact.resolve(), settings.training.backend, params.batch_size)
    log.info("prediction batch %d: model %s on ROI %s, on the cluster", batch.id, source.version, source.roi.name)
    with (
        open_client(settings.compute.scheduler) as client,
        open_volume(source.volume_path, voxel_size_nm=source.voxel_size_nm) as volume,
    ):
        assert client is not None
        report = predict_volume_blocks(
            client, volume, model, preset, out, params=params, roi=source.roi, chunk_zyx=(chunk[0], chunk[1], chunk[2]),
            overwrite=True, progress=lambda _phase, _done, _total: heartbeat.check(),
            model_attrs={"version": source.version, "artifact": str(source.artifact), "prediction_batch_id": batch.id},
            resources=model_resources(client),
        )  # fmt: skip
    heartbeat.check()
    slices = slice_summaries(out)
    record_slices(session_factory, batch, heartbeat, slices, output_uri(batch.id), report.seconds)
    return len(slices)


def predict_batch(
    session_factory: SessionFactory,
    data_dir: Path,
    batch: PredictionBatch,
    heartbeat: Heartbeat,
    predict_fn: PredictFn,
    preset: ModelPreset,
    source: BatchSource,
) -> int:
    """The job once the model is loaded: write the prediction, then the slice rows under the lease."""
    assert batch.id is not None
    out = batch_output_path(data_dir, batch.id)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    params = tap_params(preset.patch_zyx, batch.tap_rule, batch.params)
    chunk = tuple(batch.params.get(CHUNK_PARAM, DEFAULT_CHUNK_ZYX))
    log.info("prediction batch %d: model %s on ROI %s", batch.id, source.version, source.roi.name)
    with open_volume(source.volume_path, voxel_size_nm=source.voxel_size_nm) as volume:
        report = predict_volume(
            volume, predict_fn, preset, out, params=params, roi=source.roi, chunk_zyx=(chunk[0], chunk[1], chunk[2]),
            overwrite=True, progress=lambda _phase, _done, _total: heartbeat.check(),
            model_attrs={"version": source.version, "artifact": str(source.artifact), "prediction_batch_id": batch.id},
        )  # fmt: skip
    heartbeat.check()
    slices = slice_summaries(out)
    record_slices(session_factory, batch, heartbeat, slices, output_uri(batch.id), report.seconds)
    return len(slices)


def batch_source(session_factory: SessionFactory, data_dir: Path, batch: PredictionBatch) -> BatchSource:
    """The model artefact, the volume and the ROI box of a batch."""
    with session_factory() as session:
        version = session.get(ModelVersion, batch.model_version_id)
        roi = session.get(Roi, batch.roi_id)
        volume = session.get(Volume, roi.volume_id) if roi is not None else None
        if version is None or roi is None or volume is None:
            raise PredictionReadError(f"prediction batch {batch.id}: its model version or ROI is gone")
        return BatchSource(
            artifact=resolve_uri(version.artifact_uri, data_dir),
            version=version.version,
            volume_path=resolve_uri(volume.storage_uri, data_dir),
            voxel_size_nm=(volume.voxel_size_z_nm, volume.voxel_size_y_nm, volume.voxel_size_x_nm),
            roi=RoiBox(roi.name, roi.x, roi.y, roi.z, roi.width, roi.height, roi.depth),
        )


def output_uri(batch_id: int) -> str:
    """The batch's prediction, relative to the data directory."""
    return f"{PREDICTIONS_DIR}/batch-{batch_id}.zarr"


def batch_output_path(data_dir: Path, batch_id: int) -> Path:
    return data_dir / output_uri(batch_id)


def remove_leftovers(out: Path) -> None:
    """Scratch folders an interrupted run of the same batch left beside ``out`` (``.<name>.*``)."""
    for leftover in out.parent.glob(f".{out.name}.*"):
        shutil.rmtree(leftover, ignore_errors=True)


def record_slices(
    session_factory: SessionFactory,
    batch: PredictionBatch,
    heartbeat: Heartbeat,
    slices: Sequence[SliceSummary],
    uri: str,
    seconds: float,
) -> None:
    """Replace the batch's slice rows and name its output, in one transaction under the lease."""
    assert batch.id is not None
    with session_factory() as session:
        heartbeat.hold(session)
        connection = session.connection()
        connection.execute(sa.delete(SlicePrediction).where(col(SlicePrediction.batch_id) == batch.id))
        session.add_all(
            SlicePrediction(
                batch_id=batch.id,
                roi_id=batch.roi_id,
                slice_index=s.slice_index,
                uncertainty=s.uncertainty,
                envelope_area_px=s.envelope_area_px,
            )
            for s in slices
        )
        connection.execute(
            sa.update(PredictionBatch)
            .where(col(PredictionBatch.id) == batch.id)
            .values(output_uri=uri, n_slices=len(slices))
        )
        session.add(_written_event(batch, slices, uri, seconds))
        session.commit()


def _written_event(batch: PredictionBatch, slices: Sequence[SliceSummary], uri: str, seconds: float) -> Event:
    worst = max((s.uncertainty for s in slices), default=0.0)
    mean = sum(s.uncertainty for s in slices) / len(slices) if slices else 0.0
    return Event(
        kind="prediction.written",
        message=f"prediction batch {batch.id}: {len(slices)} slices predicted in {seconds:.1f} s, written to {uri}",
        model_version_id=batch.model_version_id,
        payload={
            "prediction_batch_id": batch.id,
            "roi_id": batch.roi_id,
            "n_slices": len(slices),
            "mean_uncertainty": mean,
            "worst_uncertainty": worst,
            "seconds": seconds,
        },
    )


# --- reading a prediction back at source resolution -------------------------------------------------


def read_geometry(path: Path) -> PredictionGeometry:
    """The placement and uncertainty recorded in a prediction's ``etchacell`` attribute."""
    try:
        attrs: Any = zarr.open_group(str(path), mode="r").attrs["etchacell"]
        box, factor = attrs["roi"], attrs["factor_zyx"]
        region = RoiBox(str(box["name"]), *(int(box[k]) for k in ("x", "y", "z", "width", "height", "depth")))
        return PredictionGeometry(
            region=region,
            factor_zyx=(int(factor[0]), int(factor[1]), int(factor[2])),
            uncertainty=tuple(float(u) for u in attrs["uncertainty"]),
        )
    except (FileNotFoundError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise PredictionReadError(f"{path}: not a readable prediction ({type(exc).__name__}: {exc})") from None


def slice_summaries(path: Path) -> list[SliceSummary]:
    """Every source slice of the predicted ROI, in order."""
    geometry = read_geometry(path)
    envelope = open_label(path, ENVELOPE_LABEL)
    areas: dict[int, int] = {}
    summaries = []
    for slice_index in range(geometry.region.z, geometry.region.z + geometry.region.depth):
        model_z = geometry.model_slice(slice_index)
        if model_z not in areas:
            band = _model_band(envelope.read(model_z, slice(None), slice(None)))
            areas[model_z] = int(np.count_nonzero(to_source(band, geometry)))
        uncertainty = min(max(geometry.uncertainty[model_z], 0.0), 1.0)
        summaries.append(SliceSummary(slice_index, uncertainty, areas[model_z]))
    return summaries


def predicted_area(data_dir: Path, batch: PredictionBatch, slice_index: int) -> Mask:
    """The predicted nucleus area of source slice ``slice_index`` at source (level-0) resolution.

    The array covers the predicted region (the ROI's box, clipped to the volume: see
    :func:`read_geometry`): element (r, c) is source pixel (y + r, x + c) of the region.
    """
    if batch.output_uri is None:
        raise PredictionReadError(f"prediction batch {batch.id} has no prediction yet (status {batch.status.value})")
    path = resolve_uri(batch.output_uri, data_dir)
    geometry = read_geometry(path)
    band = _model_band(
        open_label(path, ENVELOPE_LABEL).read(geometry.model_slice(slice_index), slice(None), slice(None))
    )
    return to_source(ndimage.binary_fill_holes(band), geometry)


def to_source(mask: NDArray[Any], geometry: PredictionGeometry) -> Mask:
    """A model-grid slice mask at source pixels over the region: linear interpolation, threshold ½.

    Model voxel j covers source pixels ``[j·f, (j+1)·f)`` from the region's corner (as the
    resampling averaged them); the last, partial block is cut at the region's end.
    """
    fy, fx = geometry.factor_zyx[1], geometry.factor_zyx[2]
    full = (mask.shape[0] * fy, mask.shape[1] * fx)
    values = mask.astype(np.float32)
    if (fy, fx) != (1, 1):
        values = resize(values, full, order=1, mode="edge", anti_aliasing=False, preserve_range=True)  # type: ignore[no-untyped-call]
    upsampled = np.asarray(values >= 0.5)
    return upsampled[: geometry.region.height, : geometry.region.width]


def _model_band(label: NDArray[Any]) -> Mask:
    return np.asarray(label > 0)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
