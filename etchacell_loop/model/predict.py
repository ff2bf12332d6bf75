"""Whole-volume prediction: a volume (or one ROI of it) far larger than memory → OME-Zarr.

Steps, each bounded in memory by one chunk (``chunk_zyx`` model voxels plus its halo):

1. **Resample** the source lazily to the model's isotropic voxel (e.g. 10 x 10 x 50 nm → 50 nm):
   each model voxel is the mean of its block of source voxels — an integer factor per axis,
   ``round(model voxel / source voxel)``, never upsampling (the effective voxel size is recorded).
   Blocks cut by the volume's or ROI's end are completed by repeating the edge. Integer sources are
   summed exactly in integers; a factor of one is a plain conversion. (The seed resized with PIL's
   bicubic filter; a block mean depends on its block alone, so a chunk resamples exactly as the
   whole region would.)
2. **Normalise** with one intensity window for the whole region: the 1st-99th percentile of the
   resampled region (of evenly spaced slices of it when it is large), the same arithmetic as
   :func:`etchacell_loop.model.data.normalise_intensity`, which training applies per stack. One
   window per predicted region, not per chunk, so a chunk border never shows as a contrast step.
   (The seed standardised each patch by its own mean and standard deviation.) The window is found
   first, so the region goes to a temporary zarr already normalised (float32, uncompressed): the
   three views and the overlapping chunks read it, not the (25x larger) source, and normalise
   nothing again.
3. **Predict** chunk by chunk with :mod:`etchacell_loop.model.tap`: every window touching a chunk is
   predicted from the halo around it on the whole region's window grid, so chunks join seamlessly
   and equal an in-memory run. Windows near chunk borders are predicted once per chunk they touch:
   larger chunks waste less (about ``(chunk + patch) / chunk`` per axis) but need more memory. All
   views of all chunks go through one pipeline that reads, cuts and blends beside the model, and
   each chunk's votes, image and labels are made on a thread of their own beside the next chunk's
   prediction, so an accelerator is not left waiting for the CPU (the paper's TAP of its whole
   volume took 48 minutes, section 2.6).
4. **Remove small components after assembling**, exactly: each chunk's voted envelope is labelled
   (fully connected, :data:`~etchacell_loop.model.tap.COMPONENT_CONNECTIVITY`, as in memory) into
   a temporary label array with globally unique ids; labels that are neighbours across a chunk
   border, face to face or only through an edge or a corner, are merged (a graph of touching pairs,
   solved with ``scipy.sparse.csgraph``); sizes are summed per merged component; a last pass keeps
   the components of at least ``min_component_voxels`` (and, with ``keep_largest``, only the
   largest of them). A nuclear envelope spanning many chunks is judged by its whole size, never by
   its piece in one chunk, and the result equals the in-memory
   :func:`~etchacell_loop.model.tap.tri_axis_predict` voxel for voxel.

The output is an OME-Zarr at the model voxel size, covering the region: the image is the mean
probability over the axes as uint8 0-255, ``labels/envelope`` the post-processed TAP envelope
(uint8 0/1). Its ``etchacell`` root attribute says where it lies in the source (``offset_zyx_px`` in
level-0 source voxels, ``factor_zyx``), how it was made, and the per-slice uncertainty.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray
from scipy import sparse
from scipy.sparse import csgraph

from etchacell_loop.imaging.omezarr import (
    ZSTD,
    MultiscaleWriter,
    create_label,
    create_multiscale,
    create_volume,
    downsample_2x,
)
from etchacell_loop.imaging.volume import LazyVolume, RoiBox
from etchacell_loop.model.presets import ModelPreset
from etchacell_loop.model.tap import (
    COMPONENT_CONNECTIVITY,
    AxisRegion,
    Binary,
    Float,
    PredictFn,
    Shape3,
    TapParams,
    agreement_counts,
    combine_votes,
    disagreement,
    label_components,
    predict_regions,
    resolve_batch_size,
    vote,
)

DEFAULT_CHUNK_ZYX: Shape3 = (64, 256, 256)
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.0
WINDOW_SAMPLE_VOXELS = 1 << 26  # above this, the intensity window comes from evenly spaced slices
SCRATCH_CHUNK_ZYX: Shape3 = (16, 128, 128)  # the normalised scratch's chunks, where they divide the chunk
PROBABILITY_MAX = 255
MAX_LABEL = np.iinfo(np.uint32).max

Progress = Callable[[str, int, int], None]  # (phase, done, total)


class PredictError(ValueError):
    """A volume, ROI or setting prediction cannot work with; the message is one line."""


@dataclass(frozen=True)
class PredictionGrid:
    """The model grid over a source region: the region (level-0 voxels), the integer factor from
    source to model voxels per axis, the grid's shape and its (effective) voxel size."""

    region: RoiBox
    factor_zyx: Shape3
    shape_zyx: Shape3
    voxel_size_nm: tuple[float, float, float]

    def source_box(self, start: Shape3, stop: Shape3) -> tuple[Shape3, Shape3]:
        """The source voxels (level 0, absolute) under the model box ``[start, stop)``."""
        origin = (self.region.z, self.region.y, self.region.x)
        end = (self.region.z + self.region.depth, self.region.y + self.region.height, self.region.x + self.region.width)
        lo = tuple(origin[d] + start[d] * self.factor_zyx[d] for d in range(3))
        hi = tuple(min(origin[d] + stop[d] * self.factor_zyx[d], end[d]) for d in range(3))
        return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])


@dataclass(frozen=True)
class VolumePrediction:
    """What a prediction run wrote and measured."""

    out: Path
    grid: PredictionGrid
    n_chunks: int
    voted_voxels: int
    envelope_voxels: int
    n_components_kept: int
    uncertainty: list[float]
    intensity_window: tuple[float, float]
    seconds: float
    chunks_computed: int | None = None  # predicted by this run (a resumed run skips those already done)


# --- the model grid and resampling -----------------------------------------------------------------


def resampling_factors(source_voxel_nm: Sequence[float], model_voxel_nm: float) -> Shape3:
    """Source voxels per model voxel along z, y, x: ``round(model / source)``, at least 1."""
    factors = [max(1, round(model_voxel_nm / float(size))) for size in source_voxel_nm]
    return factors[0], factors[1], factors[2]


def prediction_grid(volume: LazyVolume, model_voxel_nm: float, roi: RoiBox | None = None) -> PredictionGrid:
    """The model grid over ``roi`` (clipped to the volume) or over the whole volume."""
    z, y, x = volume.shape_zyx
    region = (roi or RoiBox("volume", 0, 0, 0, x, y, z)).clipped(volume.shape_zyx)
    factor = resampling_factors(volume.voxel_size_nm, model_voxel_nm)
    size = (region.depth, region.height, region.width)
    shape = tuple(math.ceil(size[d] / factor[d]) for d in range(3))
    voxel = tuple(volume.voxel_size_nm[d] * factor[d] for d in range(3))
    return PredictionGrid(region, factor, (shape[0], shape[1], shape[2]), (voxel[0], voxel[1], voxel[2]))


def block_mean(block: NDArray[Any], factor_zyx: Shape3) -> Float:
    """Mean of each ``factor_zyx`` block; a partial block at the far end is completed by repeating
    the edge. The value of a block never depends on what was read with it: integer sources (EM is
    8 or 16 bit) are summed exactly in integers (:func:`_integer_block_sums`) and divided in float64,
    anything else is summed in float64; either way the float64 mean numpy would give, as float32.
    A factor of one is a plain conversion."""
    if tuple(factor_zyx) == (1, 1, 1):
        return np.asarray(block, dtype=np.float32)
    pads = [(0, -n % f) for n, f in zip(block.shape, factor_zyx, strict=True)]
    padded = np.pad(block, pads, mode="edge") if any(after for _, after in pads) else block
    sums = _integer_block_sums(padded, factor_zyx)
    if sums is not None:
        return np.asarray(np.divide(sums, math.prod(factor_zyx), dtype=np.float64), dtype=np.float32)
    z, y, x = padded.shape
    fz, fy, fx = factor_zyx
    blocks = padded.reshape(z // fz, fz, y // fy, fy, x // fx, fx)
    return np.asarray(blocks.mean(axis=(1, 3, 5), dtype=np.float64), dtype=np.float32)


def _integer_block_sums(block: NDArray[Any], factor_zyx: Shape3) -> NDArray[Any] | None:
    """Exact block sums of an integer ``block`` (its shape divisible by ``factor_zyx``), or None
    when it is not integer or a sum could leave float64's exact integers.

    Summed one axis at a time (x, then y, then z) by adding the ``factor`` strided slices of that
    axis, each step in the narrowest integer type that cannot overflow: five times faster than a
    float64 reduction over a six-dimensional reshape (0.09 s against 0.48 s for a 64 x 1280 x 1280
    uint8 block at factor 1 x 5 x 5), and equal to it, since the sums are exact either way.
    """
    if not np.issubdtype(block.dtype, np.integer):
        return None
    info = np.iinfo(block.dtype)
    if max(abs(int(info.max)), abs(int(info.min))) * math.prod(factor_zyx) >= 2**53:
        return None
    sums: NDArray[Any] = block
    count = 1
    for axis in (2, 1, 0):
        factor = factor_zyx[axis]
        if factor == 1:
            continue
        count *= factor
        step = _sum_dtype(info, count)
        total = np.array(_every(sums, axis, 0, factor), dtype=step)
        for offset in range(1, factor):
            total += _every(sums, axis, offset, factor)
        sums = total
    return sums


def _sum_dtype(info: np.iinfo[Any], count: int) -> type[np.integer[Any]]:
    """The narrowest integer type holding the sum of ``count`` values of the source's type."""
    low, high = int(info.min) * count, int(info.max) * count
    for candidate in (np.int16, np.int32, np.int64) if low < 0 else (np.uint16, np.uint32, np.uint64):
        bounds = np.iinfo(candidate)
        if bounds.min <= low and high <= bounds.max:
            return candidate
    return np.int64 if low < 0 else np.uint64  # not reached: the float64 guard comes first


def _every(array: NDArray[Any], axis: int, offset: int, step: int) -> NDArray[Any]:
    """Every ``step``-th plane of ``array`` along ``axis``, from ``offset`` (a view)."""
    index: list[slice] = [slice(None)] * array.ndim
    index[axis] = slice(offset, None, step)
    return array[tuple(index)]


def read_resampled(volume: LazyVolume, grid: PredictionGrid, start: Shape3, stop: Shape3) -> Float:
    """The model-grid box ``[start, stop)``, resampled from the source slices under it."""
    lo, hi = grid.source_box(start, stop)
    source = volume.read_box(slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    return block_mean(source, grid.factor_zyx)


def intensity_window(sample: NDArray[Any]) -> tuple[float, float]:
    """The 1st and 99th percentiles: the window mapped to [0, 1]."""
    low, high = np.percentile(np.asarray(sample, dtype=np.float32), [LOW_PERCENTILE, HIGH_PERCENTILE])
    return float(low), float(high)


def apply_window(values: NDArray[Any], window: tuple[float, float]) -> Float:
    """``values`` mapped linearly so the window spans [0, 1], clipped; a flat window maps to 0
    (the arithmetic of :func:`etchacell_loop.model.data.normalise_intensity`)."""
    low, high = window
    values = np.asarray(values, dtype=np.float32)
    span = float(high - low)
    if span <= 0:
        return np.zeros_like(values)
    scaled = (values - np.float32(low)) / np.float32(span)
    return np.asarray(np.clip(scaled, 0.0, 1.0), dtype=np.float32)


def chunk_boxes(shape_zyx: Shape3, chunk_zyx: Shape3) -> Iterator[tuple[Shape3, Shape3]]:
    """The chunks of a grid, z-major: ``(start, stop)`` boxes, the last of each axis cut short."""
    for z in range(0, shape_zyx[0], chunk_zyx[0]):
        for y in range(0, shape_zyx[1], chunk_zyx[1]):
            for x in range(0, shape_zyx[2], chunk_zyx[2]):
                stop = (min(z + chunk_zyx[0], shape_zyx[0]), min(y + chunk_zyx[1], shape_zyx[1]))
                yield (z, y, x), (stop[0], stop[1], min(x + chunk_zyx[2], shape_zyx[2]))


def _region(start: Shape3, stop: Shape3) -> tuple[slice, slice, slice]:
    return slice(start[0], stop[0]), slice(start[1], stop[1]), slice(start[2], stop[2])


# --- writing --------------------------------------------------------------------------------------


def write_region(writer: MultiscaleWriter, start: Shape3, block: NDArray[Any]) -> None:
    """Write a level-0 block at ``start`` and the matching region of every coarser level. The
    block's y, x start must be divisible by ``2 ** (levels - 1)`` so each level's region aligns."""
    z0, y0, x0 = start
    level_block = block
    for level, array in enumerate(writer.arrays):
        ly, lx = y0 >> level, x0 >> level
        if (ly << level, lx << level) != (y0, x0):
            raise PredictError(f"chunk start {start} does not align with pyramid level {level}")
        level_block = level_block[:, : array.shape[1] - ly, : array.shape[2] - lx]
        array[z0 : z0 + block.shape[0], ly : ly + level_block.shape[1], lx : lx + level_block.shape[2]] = level_block
        level_block = downsample_2x(level_block, writer.method)


def _scratch_array(
    root: zarr.Group, name: str, shape: Shape3, chunks: Shape3, dtype: Any, compressors: Any = ZSTD
) -> zarr.Array[Any]:
    return root.create_array(
        name, shape=shape, chunks=tuple(min(c, s) for c, s in zip(chunks, shape, strict=True)), dtype=dtype,
        compressors=compressors, fill_value=0,
    )  # fmt: skip


# --- components across chunks ----------------------------------------------------------------------


@dataclass
class _Labelled:
    """Labels written chunk by chunk, and every label's voxel count (index = label; 0 = none)."""

    array: zarr.Array[Any]
    sizes: list[NDArray[np.int64]]
    n_labels: int = 0

    def add(self, start: Shape3, stop: Shape3, mask: Binary) -> None:
        labels, n = label_components(mask)
        if self.n_labels + n > MAX_LABEL:
            raise PredictError("too many separate envelope pieces to label; raise the chunk size")
        labels = labels.astype(np.uint32)
        labels[labels > 0] += np.uint32(self.n_labels)
        self.array[_region(start, stop)] = labels
        self.sizes.append(np.bincount(labels.ravel(), minlength=self.n_labels + n + 1)[self.n_labels + 1 :])
        self.n_labels += n


def _touching_pairs(
    labels: zarr.Array[Any], chunk_zyx: Shape3, offsets: NDArray[np.int64] | None = None
) -> NDArray[np.int64]:
    """Pairs of labels that are neighbours (:data:`COMPONENT_CONNECTIVITY`) across a chunk border,
    the only place a component can have been cut, read a pair of planes at a time.

    Each label on the last plane before a border is paired with the labels on the first plane after
    it at the same position and, with full connectivity, at the eight positions around it (a step
    of one along either or both other axes): a band one voxel wide often crosses a border only
    along an edge or through a corner. Two neighbouring voxels in different chunks always lie on
    either side of some border, one step apart across it, so every cut is found.

    ``offsets`` (one per chunk, on the chunk grid) are added to each chunk's labels as they are
    read, for labels written chunk by chunk with local ids (``compute.tap_blocks``).
    """
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    for axis, border in chunk_borders(labels.shape, chunk_zyx):
        pairs.append(border_pairs(labels, axis, border, chunk_zyx, offsets))
    return np.concatenate(pairs)


def chunk_borders(shape_zyx: Sequence[int], chunk_zyx: Shape3) -> list[tuple[int, int]]:
    """Every border between chunks: (axis, index of the first plane after it)."""
    return [(axis, border) for axis in range(3) for border in range(chunk_zyx[axis], shape_zyx[axis], chunk_zyx[axis])]


def border_pairs(
    labels: zarr.Array[Any], axis: int, border: int, chunk_zyx: Shape3, offsets: NDArray[np.int64] | None = None
) -> NDArray[np.int64]:
    """The touching pairs across one border (see :func:`_touching_pairs`)."""
    before = _read_plane(labels, axis, border - 1, chunk_zyx, offsets)
    after = _read_plane(labels, axis, border, chunk_zyx, offsets)
    return _plane_pairs(before, after, _offsets_across(axis))


def _read_plane(
    labels: zarr.Array[Any], axis: int, index: int, chunk_zyx: Shape3, offsets: NDArray[np.int64] | None
) -> NDArray[Any]:
    """One plane of ``labels`` (2-D), made global with the chunks' ``offsets`` when given."""
    plane: NDArray[Any] = np.take(np.asarray(labels[_plane(axis, index)]), 0, axis=axis)
    if offsets is None:
        return plane
    grid = np.take(offsets, index // chunk_zyx[axis], axis=axis)
    others = [d for d in range(3) if d != axis]
    for position, d in enumerate(others):
        grid = np.repeat(grid, chunk_zyx[d], axis=position)
    grid = grid[: plane.shape[0], : plane.shape[1]]
    return np.where(plane > 0, plane.astype(np.int64) + grid, 0)


def _offsets_across(axis: int) -> list[tuple[int, int]]:
    """The steps, along the two other axes in order, from a voxel to its neighbours on the next
    plane along ``axis``: :data:`COMPONENT_CONNECTIVITY`'s slab ahead (all nine for 26-connectivity)."""
    ahead = np.take(COMPONENT_CONNECTIVITY, 2, axis=axis)
    rows, cols = np.nonzero(ahead)
    return [(int(r) - 1, int(c) - 1) for r, c in zip(rows, cols, strict=True)]


def _plane_pairs(before: NDArray[Any], after: NDArray[Any], offsets: Sequence[tuple[int, int]]) -> NDArray[np.int64]:
    """The distinct (label before, label after) of labelled voxels ``offsets`` apart on two planes."""
    rows, cols = np.nonzero(before)
    found = [np.zeros((0, 2), dtype=np.int64)]
    for d_row, d_col in offsets:
        r, c = rows + d_row, cols + d_col
        inside = (r >= 0) & (r < after.shape[0]) & (c >= 0) & (c < after.shape[1])
        other = after[r[inside], c[inside]]
        hit = other > 0
        found.append(np.stack([before[rows[inside][hit], cols[inside][hit]], other[hit]], axis=1).astype(np.int64))
    return np.unique(np.concatenate(found), axis=0)


def _plane(axis: int, index: int) -> tuple[slice, slice, slice]:
    box = [slice(None), slice(None), slice(None)]
    box[axis] = slice(index, index + 1)
    return box[0], box[1], box[2]


def kept_labels(
    sizes: NDArray[np.int64], pairs: NDArray[np.int64], min_voxels: int, *, keep_largest: bool
) -> tuple[NDArray[np.bool_], int]:
    """Which labels (index = label, 0 = background, sizes[0] ignored) belong to a merged component
    of at least ``min_voxels`` — or, with ``keep_largest``, to the largest such component — and
    how many merged components are kept."""
    n = sizes.size
    graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = csgraph.connected_components(graph, directed=False)
    component_sizes = np.bincount(component, weights=np.where(np.arange(n) > 0, sizes, 0))
    keep_component = component_sizes >= min_voxels
    keep_component[component[0]] = False
    if keep_largest and keep_component.any():
        largest = int(np.argmax(np.where(keep_component, component_sizes, -1)))
        keep_component[:] = False
        keep_component[largest] = True
    keep = keep_component[component]
    keep[0] = False
    return np.asarray(keep), int(np.unique(component[keep]).size)


# --- the whole run --------------------------------------------------------------------------------


def predict_volume(
    volume: LazyVolume,
    predict_fn: PredictFn,
    preset: ModelPreset,
    out: Path,
    *,
    params: TapParams | None = None,
    roi: RoiBox | None = None,
    chunk_zyx: Shape3 = DEFAULT_CHUNK_ZYX,
    overwrite: bool = False,
    model_attrs: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> VolumePrediction:
    """Predict ``volume`` (or its ``roi``) with TAP and write ``out`` (see the module docstring).

    ``params`` defaults to the paper's TAP with the preset's patch, keeping only the largest
    component when an ``roi`` is predicted (the paper's isolation of the ROI's nucleus) and every
    component of the minimum size over a whole volume; ``model_attrs`` (version, artefact) are
    recorded in the output's attributes.
    """
    started = time.perf_counter()
    tap = params or TapParams(patch_zyx=preset.patch_zyx, keep_largest=roi is not None)
    tap = replace(tap, batch_size=resolve_batch_size(tap.batch_size))  # recorded as used
    if tap.patch_zyx != preset.patch_zyx:
        raise PredictError(f"TAP patch {tap.patch_zyx} differs from the model's patch {preset.patch_zyx}")
    if len(chunk_zyx) != 3 or min(chunk_zyx) < 1:
        raise PredictError(f"chunk size {chunk_zyx} must be three positive sizes")
    grid = prediction_grid(volume, preset.voxel_size_nm, roi)
    report = _progress(progress)
    scratch_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        scratch = zarr.open_group(str(scratch_dir / "scratch.zarr"), mode="w", zarr_format=2)
        normalised, window = _resample_to(scratch, volume, grid, chunk_zyx, report)
        root = create_volume(out, volume.name, overwrite=overwrite)
        image = create_multiscale(
            root, grid.shape_zyx, grid.voxel_size_nm, np.uint8, name=volume.name, method="mean", chunks=chunk_zyx
        )
        _check_alignment(image, chunk_zyx)
        envelope = create_label(root, "envelope", grid.shape_zyx, grid.voxel_size_nm, np.uint8, chunks=chunk_zyx)
        labelled = _Labelled(_scratch_array(scratch, "labels", grid.shape_zyx, chunk_zyx, np.uint32), [])
        counts = _predict_chunks(normalised, grid, predict_fn, tap, chunk_zyx, image, labelled, report)
        sizes = np.concatenate([np.zeros(1, dtype=np.int64), *labelled.sizes])
        keep, n_kept = kept_labels(
            sizes, _touching_pairs(labelled.array, chunk_zyx), tap.min_component_voxels, keep_largest=tap.keep_largest
        )
        kept_voxels = _write_envelope(labelled.array, keep, grid.shape_zyx, chunk_zyx, envelope, report)
        uncertainty = disagreement(*counts).tolist()
        root.attrs["etchacell"] = _output_attrs(volume, grid, tap, window, uncertainty, model_attrs)
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
    return VolumePrediction(
        out=out,
        grid=grid,
        n_chunks=len(list(chunk_boxes(grid.shape_zyx, chunk_zyx))),
        voted_voxels=int(sizes.sum()),
        envelope_voxels=kept_voxels,
        n_components_kept=n_kept,
        uncertainty=uncertainty,
        intensity_window=window,
        seconds=time.perf_counter() - started,
    )


def _progress(progress: Progress | None) -> Progress:
    def ignore(phase: str, done: int, total: int) -> None:
        return None

    return progress or ignore


def _resample_to(
    scratch: zarr.Group, volume: LazyVolume, grid: PredictionGrid, chunk_zyx: Shape3, report: Progress
) -> tuple[zarr.Array[Any], tuple[float, float]]:
    """Pass 0: the intensity window, then the region resampled *and normalised* into the scratch.

    The window comes first so that the scratch holds what the model reads: float32, the values
    :func:`apply_window` gives (bit for bit those the window applied at reading gave before), and no
    halo is normalised again each time one of the three views reads it. A region of at most
    :data:`WINDOW_SAMPLE_VOXELS` is resampled into memory once and its window taken over all of it;
    a larger one's window comes from evenly spaced slices resampled from the source first (the
    slices and values the window always came from), then each chunk is resampled and written.

    The scratch is float32 and uncompressed, in chunks of at most :data:`SCRATCH_CHUNK_ZYX`: a
    halo then reads little beyond itself, and nothing is decompressed (zstd took 2.4 times as long
    to read a halo as the raw bytes, and longer still to write). It costs 4 bytes a model voxel of
    disk beside the output (5.6 GB for the paper's whole volume), removed at the end. Stored as
    uint8 it would read 2.5 times faster again, but the model would see its input quantised to
    1/255 of the window, and chunked runs would no longer equal the in-memory TAP exactly.
    """
    boxes = list(chunk_boxes(grid.shape_zyx, chunk_zyx))
    small = window_rows(grid) is None
    whole = _resample_in_memory(volume, grid, boxes, report) if small else None
    window = intensity_window(whole if whole is not None else _sampled_slices(volume, grid))
    normalised = _scratch_array(
        scratch, "resampled", grid.shape_zyx, scratch_chunks(chunk_zyx), np.float32, compressors=None
    )
    for done, (start, stop) in enumerate(boxes, 1):
        block = whole[_region(start, stop)] if whole is not None else read_resampled(volume, grid, start, stop)
        normalised[_region(start, stop)] = apply_window(block, window)
        if whole is None:
            report("resampling", done, len(boxes))
    return normalised, window


def _resample_in_memory(
    volume: LazyVolume, grid: PredictionGrid, boxes: Sequence[tuple[Shape3, Shape3]], report: Progress
) -> Float:
    """A small region resampled whole (at most :data:`WINDOW_SAMPLE_VOXELS` float32), chunk by chunk."""
    whole = np.empty(grid.shape_zyx, dtype=np.float32)
    for done, (start, stop) in enumerate(boxes, 1):
        whole[_region(start, stop)] = read_resampled(volume, grid, start, stop)
        report("resampling", done, len(boxes))
    return whole


def window_rows(grid: PredictionGrid) -> tuple[int, ...] | None:
    """The model slices the intensity window is taken over: None for all of a region of at most
    :data:`WINDOW_SAMPLE_VOXELS`, else evenly spaced slices holding about that many voxels."""
    z, y, x = grid.shape_zyx
    if z * y * x <= WINDOW_SAMPLE_VOXELS:
        return None
    n = max(1, min(z, WINDOW_SAMPLE_VOXELS // (y * x)))
    return tuple(int(k) for k in np.unique(np.linspace(0, z - 1, n).round().astype(int)))


def _sampled_slices(volume: LazyVolume, grid: PredictionGrid) -> Float:
    """The window's slices of a large region (:func:`window_rows`), resampled from the source."""
    _, y, x = grid.shape_zyx
    picks = window_rows(grid) or ()
    return np.concatenate([read_resampled(volume, grid, (k, 0, 0), (k + 1, y, x)) for k in picks])


def scratch_chunks(chunk_zyx: Shape3) -> Shape3:
    """The normalised scratch's chunks: :data:`SCRATCH_CHUNK_ZYX` where it divides the prediction
    chunk (so each chunk's write fills whole scratch chunks), else the prediction chunk itself."""
    sizes = [min(target, size) for target, size in zip(SCRATCH_CHUNK_ZYX, chunk_zyx, strict=True)]
    chosen = [small if size % small == 0 else size for small, size in zip(sizes, chunk_zyx, strict=True)]
    return chosen[0], chosen[1], chosen[2]


def _check_alignment(writer: MultiscaleWriter, chunk_zyx: Shape3) -> None:
    step = 2 ** (len(writer.arrays) - 1)
    if chunk_zyx[1] % step or chunk_zyx[2] % step:
        raise PredictError(f"chunk y, x sizes must be multiples of {step} for a {len(writer.arrays)}-level pyramid")


def _predict_chunks(
    normalised: zarr.Array[Any],
    grid: PredictionGrid,
    predict_fn: PredictFn,
    tap: TapParams,
    chunk_zyx: Shape3,
    image: MultiscaleWriter,
    labelled: _Labelled,
    report: Progress,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Pass 1: probabilities, votes and labelled voted envelope, chunk by chunk; returns the
    per-slice agreement counts for the uncertainty.

    Every view of every chunk goes through one :func:`~etchacell_loop.model.tap.predict_regions`
    pipeline, so the model is fed across chunk and view borders (the next halo is read and the next
    batch cut while it runs). Each finished chunk's post-processing (votes, counts, probability
    image, labels) runs on one thread of its own, in chunk order (label ids are handed out in that
    order), beside the next chunk's prediction; progress is reported here, as each chunk completes.
    """

    def read(start: Shape3, stop: Shape3) -> Float:
        return np.asarray(normalised[_region(start, stop)], dtype=np.float32)

    every = np.zeros(grid.shape_zyx[0], dtype=np.int64)
    some = np.zeros(grid.shape_zyx[0], dtype=np.int64)

    def finish(start: Shape3, stop: Shape3, probabilities: list[Float]) -> None:
        votes = vote(probabilities, tap.threshold)
        chunk_every, chunk_some = agreement_counts(votes)
        every[start[0] : stop[0]] += chunk_every
        some[start[0] : stop[0]] += chunk_some
        mean = np.mean(probabilities, axis=0)
        write_region(image, start, np.rint(mean * PROBABILITY_MAX).astype(np.uint8))
        labelled.add(start, stop, combine_votes(votes, tap.rule))

    boxes = list(chunk_boxes(grid.shape_zyx, chunk_zyx))
    regions = (AxisRegion(read, grid.shape_zyx, start, stop, axis) for start, stop in boxes for axis in tap.axes)
    with (
        closing(predict_regions(regions, predict_fn, tap)) as predicted,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict-post") as post,
    ):
        finishing: Future[None] | None = None
        for done, (start, stop) in enumerate(boxes):
            probabilities = [next(predicted) for _ in tap.axes]
            if finishing is not None:
                finishing.result()
                report("predicting", done, len(boxes))
            finishing = post.submit(finish, start, stop, probabilities)
        if finishing is not None:
            finishing.result()
            report("predicting", len(boxes), len(boxes))
    return every, some


def _write_envelope(
    labels: zarr.Array[Any],
    keep: NDArray[np.bool_],
    shape_zyx: Shape3,
    chunk_zyx: Shape3,
    envelope: MultiscaleWriter,
    report: Progress,
) -> int:
    """Pass 3: the kept components as the envelope label image; returns its voxel count."""
    kept = 0
    boxes = list(chunk_boxes(shape_zyx, chunk_zyx))
    for done, (start, stop) in enumerate(boxes, 1):
        mask = keep[np.asarray(labels[_region(start, stop)])]
        kept += int(np.count_nonzero(mask))
        write_region(envelope, start, mask.astype(np.uint8))
        report("post-processing", done, len(boxes))
    return kept


def _output_attrs(
    volume: LazyVolume,
    grid: PredictionGrid,
    tap: TapParams,
    window: tuple[float, float],
    uncertainty: list[float],
    model_attrs: Mapping[str, Any] | None,
) -> dict[str, Any]:
    tap_attrs = asdict(tap)
    tap_attrs["patch_zyx"] = list(tap.patch_zyx)
    tap_attrs["axes"] = list(tap.axes)
    return {
        "kind": "prediction",
        "source": str(volume.path),
        "volume": volume.name,
        "roi": grid.region.as_dict(),
        "offset_zyx_px": [grid.region.z, grid.region.y, grid.region.x],
        "factor_zyx": list(grid.factor_zyx),
        "source_voxel_size_nm": list(volume.voxel_size_nm),
        "voxel_size_nm": list(grid.voxel_size_nm),
        "intensity_window": list(window),
        "tap": tap_attrs,
        "model": dict(model_attrs or {}),
        "uncertainty": uncertainty,
    }
