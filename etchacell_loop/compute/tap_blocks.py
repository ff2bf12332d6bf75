"""Block-wise TAP on a Dask cluster: one task per chunk, resumable, equal to the single-process run.

The same four steps as :mod:`etchacell_loop.model.predict` (read that module first), each a set of
tasks over the chunks instead of a loop in one process:

1. **Resample** each chunk from the source into a scratch array (float32, uncompressed), on any
   worker. The intensity window is the same percentiles of the same values as there (the whole
   region when it is small, else evenly spaced slices:
   :func:`~etchacell_loop.model.predict.window_rows`), but nothing is gathered in this process:
   each resampling task also counts its share of those values, a second round of small tasks
   counts the few key ranges the percentiles fall in, and the window is read off the sums
   (:mod:`etchacell_loop.model.quantiles`, exact: ``np.percentile``'s result bit for bit). Each
   task applies the window as it reads its halo
   (:func:`~etchacell_loop.model.predict.apply_window` is elementwise, so the values are those the
   single-process run stores normalised).
2. **Predict** each chunk (its halo, all views) with the model, loaded once per worker process
   (:func:`loaded_model`) and, on a cluster with GPUs, only on a worker holding one (``GPU=1``).
   The task writes the chunk's probability image (level 0) and its voted envelope labelled with
   *local* ids, and returns the label count, sizes and agreement counts. On a GPU worker the TAP
   pipeline reads, cuts and blends on threads beside the model; a CPU worker, one core of many,
   runs the same steps in turn (the same values: :func:`~etchacell_loop.model.tap.predict_regions_in_turn`).
3. **Components**: this process numbers the labels (chunk order, as the single-process run does),
   pairs those touching across chunk borders and decides which merged components stay
   (:func:`~etchacell_loop.model.predict.kept_labels`); then a task per chunk writes the envelope.
4. **Pyramids**: the coarser levels of the image and of the envelope, a task per chunk of each
   level, made from the level below (a 2 x 2 reduction never crosses a chunk, so this equals the
   single-process run's chunk-by-chunk pyramid).

Every task writes whole chunks of its arrays (no two tasks share a zarr chunk), so tasks may run
in any order, twice, or on any worker. **Resuming**: the run keeps a work folder beside the output
(``.<name>.work``: the scratch, the run's description, and a record of each chunk done, written
after its data); a run started again with ``resume`` skips every chunk recorded, and a worker
killed mid-chunk has its task retried elsewhere by Dask. Either way the output equals an
undisturbed run's, byte for byte. The output and the work folder must lie on storage every worker
sees (a cluster file system on SLURM).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import zarr
from numpy.typing import NDArray

from etchacell_loop.imaging.omezarr import create_label, create_multiscale, create_volume, downsample_2x
from etchacell_loop.imaging.volume import LazyVolume, RoiBox, open_volume
from etchacell_loop.model.predict import (
    HIGH_PERCENTILE,
    LOW_PERCENTILE,
    PredictError,
    PredictionGrid,
    Progress,
    VolumePrediction,
    _check_alignment,
    _output_attrs,
    _region,
    _scratch_array,
    apply_window,
    border_pairs,
    chunk_borders,
    chunk_boxes,
    kept_labels,
    prediction_grid,
    read_resampled,
    scratch_chunks,
    window_rows,
)
from etchacell_loop.model.presets import ModelPreset
from etchacell_loop.model.quantiles import Counts, coarse_counts, fine_counts, merged, needed_bins, percentiles
from etchacell_loop.model.tap import (
    AxisRegion,
    PredictFn,
    Shape3,
    TapParams,
    agreement_counts,
    combine_votes,
    disagreement,
    label_components,
    predict_regions,
    predict_regions_in_turn,
    resolve_batch_size,
    vote,
)

if TYPE_CHECKING:
    from distributed import Client, Future

PROBABILITY_MAX = 255
WORK_SUFFIX = ".work"
MANIFEST = "run.json"
RUN_FORMAT = 1


class ModelSource(Protocol):
    """What a worker loads the model from: small, picklable, hashable (the per-process cache key)."""

    def load(self) -> tuple[PredictFn, ModelPreset]: ...


@dataclass(frozen=True)
class KerasArtifact:
    """A ``.keras`` artefact, loaded on the backend ``training.backend`` chooses, taking
    ``batch_size`` windows a call (None: the automatic size on the worker's own device)."""

    path: Path
    backend: str = "auto"
    batch_size: int | None = None

    def load(self) -> tuple[PredictFn, ModelPreset]:
        from etchacell_loop.model.backend import select_backend

        select_backend(self.backend)  # type: ignore[arg-type]
        from etchacell_loop.model.keras_io import load_predict_fn

        return load_predict_fn(self.path, resolve_batch_size(self.batch_size))


_MODELS: dict[Any, tuple[PredictFn, ModelPreset]] = {}
_VOLUMES: dict[tuple[str, tuple[float, float, float]], LazyVolume] = {}


def loaded_model(source: ModelSource) -> tuple[PredictFn, ModelPreset]:
    """The model of ``source``, loaded once per worker process and kept for its later chunks."""
    if source not in _MODELS:
        _MODELS[source] = source.load()
    return _MODELS[source]


def _opened_volume(path: str, voxel_size_nm: tuple[float, float, float]) -> LazyVolume:
    key = (path, voxel_size_nm)
    if key not in _VOLUMES:
        _VOLUMES[key] = open_volume(Path(path), voxel_size_nm=voxel_size_nm)
    return _VOLUMES[key]


# --- the run's description, as the tasks see it ----------------------------------------------------


@dataclass(frozen=True)
class BlockRun:
    """Everything a task needs (small and picklable): where things are and how to predict."""

    source: str
    voxel_size_nm: tuple[float, float, float]
    grid: PredictionGrid
    chunk_zyx: Shape3
    out: str
    work: str
    tap: TapParams
    model: Any  # a ModelSource
    window: tuple[float, float] = (0.0, 1.0)
    overlap: bool = False  # read, cut and blend on threads beside the model (a GPU worker's way)

    @property
    def raw(self) -> zarr.Array[Any]:
        return zarr.open_array(os.path.join(self.work, "scratch.zarr", "resampled"), mode="r+")

    @property
    def labels(self) -> zarr.Array[Any]:
        return zarr.open_array(os.path.join(self.work, "scratch.zarr", "labels"), mode="r+")

    def level(self, image: str, level: int) -> zarr.Array[Any]:
        """Level ``level`` of the image (``""``) or of a label image (``labels/<name>``)."""
        return zarr.open_array(os.path.join(self.out, image, str(level)), mode="r+")

    def marker(self, phase: str, index: int, suffix: str = "") -> Path:
        return Path(self.work) / "done" / phase / f"{index}{suffix}"


def _record(path: Path, write: Callable[[Path], object]) -> None:
    """Write a record atomically: to a temporary name, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    write(temporary)
    os.replace(temporary, path)


# --- the tasks -------------------------------------------------------------------------------------


WINDOW_PERCENTILES = (LOW_PERCENTILE, HIGH_PERCENTILE)
Rows = tuple[int, ...] | None  # the model slices the window is taken over; None: all


def resample_task(run: BlockRun, index: int, start: Shape3, stop: Shape3, rows: Rows, count: bool) -> Counts | None:
    """Step 1 for one chunk: the source resampled to the model grid, into the scratch; with
    ``count``, the window's first pass over the chunk's share of ``rows`` (a chunk recorded as
    resampled by an interrupted run is read back for it)."""
    marker = run.marker("resample", index)
    block = None
    if not marker.exists():
        volume = _opened_volume(run.source, run.voxel_size_nm)
        block = read_resampled(volume, run.grid, start, stop)
        run.raw[_region(start, stop)] = block
        _record(marker, lambda p: p.write_bytes(b""))
    if not count:
        return None
    return coarse_counts(_window_share(run, start, stop, rows, block))


def _window_share(run: BlockRun, start: Shape3, stop: Shape3, rows: Rows, block: NDArray[np.float32] | None) -> Any:
    """The chunk's resampled values on the window's slices (from ``block`` when given, else the scratch)."""
    if block is None:
        block = np.asarray(run.raw[_region(start, stop)])
    if rows is None:
        return block
    return block[[k - start[0] for k in rows if start[0] <= k < stop[0]]]


def window_fine_task(
    run: BlockRun, boxes: Sequence[tuple[Shape3, Shape3]], rows: Rows, bins: tuple[int, ...]
) -> Counts:
    """The window's second pass over some chunks: their values in ``bins``, counted in full."""
    return merged(fine_counts(_window_share(run, start, stop, rows, None), bins) for start, stop in boxes)


@dataclass(frozen=True)
class ChunkResult:
    """What predicting one chunk gives the run: its local label count, each label's size, and its
    slices' agreement counts."""

    index: int
    n_labels: int
    sizes: NDArray[np.int64]
    every: NDArray[np.int64]
    some: NDArray[np.int64]


def predict_task(run: BlockRun, index: int, start: Shape3, stop: Shape3) -> ChunkResult:
    """Step 2 for one chunk: TAP over its halo, its probability image and local labels written."""
    marker = run.marker("predict", index, ".npz")
    if marker.exists():
        return _read_chunk_result(index, marker)
    predict_fn, _ = loaded_model(run.model)
    raw = run.raw

    def read(lo: Shape3, hi: Shape3) -> NDArray[np.float32]:
        return apply_window(np.asarray(raw[_region(lo, hi)], dtype=np.float32), run.window)

    regions = [AxisRegion(read, run.grid.shape_zyx, start, stop, axis) for axis in run.tap.axes]
    in_turn = not run.overlap  # a CPU worker has its one core: no threads beside the model
    probabilities = list((predict_regions_in_turn if in_turn else predict_regions)(regions, predict_fn, run.tap))
    votes = vote(probabilities, run.tap.threshold)
    every, some = agreement_counts(votes)
    mean = np.mean(probabilities, axis=0)
    run.level("", 0)[_region(start, stop)] = np.rint(mean * PROBABILITY_MAX).astype(np.uint8)
    labels, n = label_components(combine_votes(votes, run.tap.rule))
    run.labels[_region(start, stop)] = labels.astype(np.uint32)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
    result = ChunkResult(index, int(n), sizes, np.asarray(every, np.int64), np.asarray(some, np.int64))
    _fault_point(f"tap:chunk:{index}")
    _record(marker, lambda p: _write_chunk_result(p, result))
    return result


def _write_chunk_result(path: Path, result: ChunkResult) -> None:
    with path.open("wb") as handle:
        np.savez(handle, n=result.n_labels, sizes=result.sizes, every=result.every, some=result.some)


def _read_chunk_result(index: int, path: Path) -> ChunkResult:
    with np.load(path) as saved:
        return ChunkResult(index, int(saved["n"]), saved["sizes"], saved["every"], saved["some"])


def envelope_task(run: BlockRun, index: int, start: Shape3, stop: Shape3, offset: int, keep: NDArray[np.bool_]) -> int:
    """Step 3 for one chunk: its kept components as the envelope (level 0); returns its voxels."""
    marker = run.marker("envelope", index)
    if marker.exists():
        return int(marker.read_text())
    local = np.asarray(run.labels[_region(start, stop)]).astype(np.int64)
    mask = keep[np.where(local > 0, local + offset, 0)]
    run.level("labels/envelope", 0)[_region(start, stop)] = mask.astype(np.uint8)
    kept = int(np.count_nonzero(mask))
    _record(marker, lambda p: p.write_text(str(kept)))
    return kept


def pyramid_task(
    run: BlockRun, image: str, method: str, level: int, start: Shape3, stop: Shape3, after: Sequence[Any] = ()
) -> None:
    """Step 4 for one chunk of ``level``: made from the level below, as the single-process run
    makes it from the same chunk's block (chunk starts are even at every level below). ``after``:
    the tasks that write the level below (their results, unused: Dask runs this one after them)."""
    below = run.level(image, level - 1)
    lo = (start[0], 2 * start[1], 2 * start[2])
    hi = (stop[0], min(2 * stop[1], below.shape[1]), min(2 * stop[2], below.shape[2]))
    block = downsample_2x(np.asarray(below[_region(lo, hi)]), method)  # type: ignore[arg-type]
    run.level(image, level)[_region(start, stop)] = block[:, : stop[1] - start[1], : stop[2] - start[2]]


def _fault_point(point: str) -> None:
    """A test's named point (``ETCHACELL_TEST_FAULT_AT``); one look at the environment otherwise."""
    if os.environ.get("ETCHACELL_TEST_FAULT_AT"):
        from etchacell_loop.loop.fault_points import reach

        reach(point)


# --- the run ---------------------------------------------------------------------------------------


def work_folder(out: Path) -> Path:
    """Where a run on ``out`` keeps its scratch and its record of chunks done."""
    return out.parent / f".{out.name}{WORK_SUFFIX}"


def predict_volume_blocks(
    client: Client,
    volume: LazyVolume,
    model: ModelSource,
    preset: ModelPreset,
    out: Path,
    *,
    params: TapParams | None = None,
    roi: RoiBox | None = None,
    chunk_zyx: Shape3 = (64, 256, 256),
    overwrite: bool = False,
    resume: bool = False,
    model_attrs: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
    resources: dict[str, float] | None = None,
) -> VolumePrediction:
    """:func:`~etchacell_loop.model.predict.predict_volume` on ``client``'s cluster, a task a chunk
    (see the module docstring); ``resume`` continues an interrupted run on ``out``. ``resources``
    are what a model task asks of a worker (e.g. ``{"GPU": 1}``)."""
    started = time.perf_counter()
    out = out.resolve()
    tap = params or TapParams(patch_zyx=preset.patch_zyx, keep_largest=roi is not None)
    tap = replace(tap, batch_size=resolve_batch_size(tap.batch_size))
    if tap.patch_zyx != preset.patch_zyx:
        raise PredictError(f"TAP patch {tap.patch_zyx} differs from the model's patch {preset.patch_zyx}")
    if len(chunk_zyx) != 3 or min(chunk_zyx) < 1:
        raise PredictError(f"chunk size {chunk_zyx} must be three positive sizes")
    grid = prediction_grid(volume, preset.voxel_size_nm, roi)
    run = BlockRun(
        str(Path(volume.path).resolve()), tuple(volume.voxel_size_nm), grid, chunk_zyx, str(out),  # type: ignore[arg-type]
        str(work_folder(out)), tap, model,
    )  # fmt: skip
    run = replace(run, overlap=resources is not None)
    description = _description(volume, run, model_attrs)
    _prepare(run, volume, description, overwrite=overwrite, resume=resume)
    report = progress or (lambda phase, done, total: None)
    boxes = list(chunk_boxes(grid.shape_zyx, chunk_zyx))
    run = replace(run, window=_window(client, run, boxes, report))
    results, computed = _predict_all(client, run, boxes, report, resources)
    counts = [r.n_labels for r in results]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    sizes = np.concatenate([np.zeros(1, dtype=np.int64), *(r.sizes for r in results)])
    chunk_grid = tuple(math.ceil(s / c) for s, c in zip(grid.shape_zyx, chunk_zyx, strict=True))
    image_pyramid = _pyramid(client, run, "", "mean", [])  # runs on beside the envelope's steps
    pairs = _pairs_all(client, run, offsets.reshape(chunk_grid))
    keep, n_kept = kept_labels(sizes, pairs, tap.min_component_voxels, keep_largest=tap.keep_largest)
    kept_voxels, envelope = _envelope_all(client, run, boxes, offsets, keep, report)
    _wait(client, [*image_pyramid, *_pyramid(client, run, "labels/envelope", "nearest", envelope)], "pyramid", _silent)
    report("post-processing", 1, 1)
    every = _per_slice(results, boxes, grid.shape_zyx[0], "every")
    some = _per_slice(results, boxes, grid.shape_zyx[0], "some")
    uncertainty = disagreement(every, some).tolist()
    root = zarr.open_group(str(out), mode="r+")
    root.attrs["etchacell"] = _output_attrs(volume, grid, tap, run.window, uncertainty, model_attrs)
    shutil.rmtree(run.work, ignore_errors=True)
    return VolumePrediction(
        out=out, grid=grid, n_chunks=len(boxes), voted_voxels=int(sizes.sum()), envelope_voxels=kept_voxels,
        n_components_kept=n_kept, uncertainty=uncertainty, intensity_window=run.window,
        seconds=time.perf_counter() - started, chunks_computed=computed,
    )  # fmt: skip


def _per_slice(
    results: Sequence[ChunkResult], boxes: Sequence[tuple[Shape3, Shape3]], depth: int, name: str
) -> NDArray[np.int64]:
    """A chunk's per-slice counts placed at its z range and summed over chunks."""
    total = np.zeros(depth, dtype=np.int64)
    for result, (start, stop) in zip(results, boxes, strict=True):
        total[start[0] : stop[0]] += getattr(result, name)
    return total


def _description(volume: LazyVolume, run: BlockRun, model_attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a resumed run must match: the source, the grid, the chunks, TAP and the model."""
    tap = {k: list(v) if isinstance(v, tuple) else v for k, v in run.tap.__dict__.items() if k != "batch_size"}
    return {
        "format": RUN_FORMAT,
        "source": run.source,
        "voxel_size_nm": list(run.voxel_size_nm),
        "region": run.grid.region.as_dict(),
        "shape_zyx": list(run.grid.shape_zyx),
        "chunk_zyx": list(run.chunk_zyx),
        "tap": tap,
        "model": {k: str(v) for k, v in dict(model_attrs or {}).items()},
    }


def _prepare(run: BlockRun, volume: LazyVolume, description: dict[str, Any], *, overwrite: bool, resume: bool) -> None:
    """A new run's output, scratch and description; or, with ``resume``, an interrupted run's,
    checked to be the same run."""
    out, work = Path(run.out), Path(run.work)
    manifest = work / MANIFEST
    if resume and manifest.is_file():
        recorded = json.loads(manifest.read_text())
        if recorded != description:
            changed = sorted(k for k in description if recorded.get(k) != description[k])
            differs = ", ".join(changed)
            raise PredictError(f"{out}: the interrupted run differs in {differs}; start anew with --overwrite")
        return
    if resume and not overwrite:
        raise PredictError(f"{out}: no interrupted run to resume (no {manifest.name} in {work})")
    shutil.rmtree(work, ignore_errors=True)
    root = create_volume(out, volume.name, overwrite=overwrite or resume)
    image = create_multiscale(
        root, run.grid.shape_zyx, run.grid.voxel_size_nm, np.uint8, name=volume.name, method="mean",
        chunks=run.chunk_zyx,
    )  # fmt: skip
    _check_alignment(image, run.chunk_zyx)
    create_label(root, "envelope", run.grid.shape_zyx, run.grid.voxel_size_nm, np.uint8, chunks=run.chunk_zyx)
    scratch = zarr.open_group(str(work / "scratch.zarr"), mode="w", zarr_format=2)
    _scratch_array(scratch, "labels", run.grid.shape_zyx, run.chunk_zyx, np.uint32)
    _scratch_array(
        scratch, "resampled", run.grid.shape_zyx, scratch_chunks(run.chunk_zyx), np.float32, compressors=None
    )
    _record(manifest, lambda p: p.write_text(json.dumps(description, sort_keys=True)))


def _window(
    client: Client, run: BlockRun, boxes: Sequence[tuple[Shape3, Shape3]], report: Progress
) -> tuple[float, float]:
    """Step 1: every chunk resampled on the cluster, and the intensity window of the region counted
    there in two passes (the module docstring); a resumed run reads the window it recorded."""
    saved = Path(run.work) / "window.json"
    count = not saved.is_file()
    rows = window_rows(run.grid)
    futures = [
        _submit(client, f"resample-{i}", resample_task, run, i, start, stop, rows, count)
        for i, (start, stop) in enumerate(boxes)
    ]
    coarse = merged(c for c in _wait(client, futures, "resampling", report) if c is not None)
    _fault_point("tap:resampled")
    if not count:
        low, high = json.loads(saved.read_text())
        return float(low), float(high)
    bins = needed_bins(coarse, WINDOW_PERCENTILES)
    per_task = _per_task(client, len(boxes))
    fine = [
        _submit(client, f"window-{i}", window_fine_task, run, boxes[i : i + per_task], rows, bins)
        for i in range(0, len(boxes), per_task)
    ] if bins else []  # fmt: skip
    low, high = percentiles(coarse, merged(_wait(client, fine, "window", _silent)), WINDOW_PERCENTILES)
    window = (float(low), float(high))
    _record(saved, lambda p: p.write_text(json.dumps(list(window))))
    return window


def _predict_all(
    client: Client,
    run: BlockRun,
    boxes: Sequence[tuple[Shape3, Shape3]],
    report: Progress,
    resources: dict[str, float] | None,
) -> tuple[list[ChunkResult], int]:
    """Step 2: every chunk not yet recorded predicted on the cluster; the results in chunk order
    and how many chunks this run predicted."""
    done = {i for i in range(len(boxes)) if run.marker("predict", i, ".npz").exists()}
    futures = {
        i: _submit(client, f"predict-{i}", predict_task, run, i, start, stop, resources=resources)
        for i, (start, stop) in enumerate(boxes)
        if i not in done
    }
    results = {i: _read_chunk_result(i, run.marker("predict", i, ".npz")) for i in done}
    for n, result in enumerate(_as_completed(client, list(futures.values()), "predicting", report, len(done)), 1):
        results[result.index] = result
        _fault_point(f"tap:collected:{n}")
    return [results[i] for i in range(len(boxes))], len(futures)


def borders_task(run: BlockRun, borders: Sequence[tuple[int, int]], offsets: NDArray[np.int64]) -> NDArray[np.int64]:
    """Step 3's pairs of labels touching across some of the chunk borders (global ids)."""
    labels = run.labels
    found = [np.zeros((0, 2), dtype=np.int64)]
    found += [border_pairs(labels, axis, border, run.chunk_zyx, offsets) for axis, border in borders]
    return np.concatenate(found)


def _pairs_all(client: Client, run: BlockRun, offsets: NDArray[np.int64]) -> NDArray[np.int64]:
    """Step 3: the borders shared among the workers, a few per task; the pairs of all of them."""
    borders = chunk_borders(run.grid.shape_zyx, run.chunk_zyx)
    per_task = _per_task(client, len(borders))
    shared = client.scatter(offsets, broadcast=True)
    futures = [
        _submit(client, f"borders-{i}", borders_task, run, borders[i : i + per_task], shared)
        for i in range(0, len(borders), per_task)
    ]
    return np.concatenate([np.zeros((0, 2), dtype=np.int64), *_wait(client, futures, "borders", _silent)])


def _per_task(client: Client, items: int) -> int:
    """How many of ``items`` small pieces one task takes: about four tasks a worker thread."""
    return max(1, math.ceil(items / (4 * max(1, len(client.nthreads())))))


def _silent(phase: str, done: int, total: int) -> None:
    return None


def _envelope_all(
    client: Client,
    run: BlockRun,
    boxes: Sequence[tuple[Shape3, Shape3]],
    offsets: NDArray[np.int64],
    keep: NDArray[np.bool_],
    report: Progress,
) -> tuple[int, list[Future[Any]]]:
    """Step 3: the kept components written chunk by chunk; their voxel count, and the tasks (the
    envelope's pyramid follows them)."""
    shared = client.scatter(keep, broadcast=True)
    futures = [
        _submit(client, f"envelope-{i}", envelope_task, run, i, start, stop, int(offsets[i]), shared)
        for i, (start, stop) in enumerate(boxes)
    ]
    return int(sum(_wait(client, futures, "post-processing", report))), futures


def _pyramid(client: Client, run: BlockRun, image: str, method: str, after: Sequence[Future[Any]]) -> list[Future[Any]]:
    """Step 4 for one image: each coarser level's tasks, submitted at once, each level's after the
    level below (Dask orders them: no round trip through this process between levels), the first
    after ``after``; the tasks of every level."""
    levels = len(list(zarr.open_group(os.path.join(run.out, image), mode="r").array_keys()))
    below: list[Future[Any]] = list(after)
    tasks: list[Future[Any]] = []
    for level in range(1, levels):
        depth, height, width = run.level(image, level).shape
        boxes = list(chunk_boxes((depth, height, width), run.chunk_zyx))
        name = f"pyramid-{image or 'image'}-{level}"
        below = [
            _submit(client, f"{name}-{i}", pyramid_task, run, image, method, level, start, stop, below)
            for i, (start, stop) in enumerate(boxes)
        ]
        tasks += below
    return tasks


def _submit(
    client: Client, name: str, fn: Callable[..., Any], *args: Any, resources: dict[str, float] | None = None
) -> Future[Any]:
    """One task, named for the dashboard (the name, then a token: a rerun never meets old results)."""
    return client.submit(fn, *args, key=f"{name}-{uuid.uuid4().hex[:8]}", pure=False, resources=resources)


def _wait(client: Client, futures: Sequence[Future[Any]], phase: str, report: Progress) -> list[Any]:
    """Every future's result (a task's error raised here), progress reported as they finish."""
    results = list(_as_completed(client, futures, phase, report, 0))
    return results


def _as_completed(
    client: Client, futures: Sequence[Future[Any]], phase: str, report: Progress, already: int
) -> Iterable[Any]:
    from distributed import as_completed

    total = already + len(futures)
    if not futures:
        report(phase, already, total)
        return
    for done, future in enumerate(as_completed(futures), already + 1):
        yield future.result()
        report(phase, done, total)
