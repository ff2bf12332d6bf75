"""Tri-axis prediction (TAP, paper sections 2.6 and 4.11-4.12), on any ``predict_fn``.

The volume is isotropic at the model's voxel size, so any of its three axes can serve as the
slicing axis: the model sees the volume as z-slices, then as y-slices, then as x-slices, and each
view's probabilities are thresholded (``threshold``, 0.5) into one vote per axis. The paper keeps
the voxels all three axes call envelope, and so does this module's default, rule ``all``. The
seed code differs: ``src/ml/model_predict.py`` kept the voxels *any* axis called envelope (a
logical OR), which is rule ``any``; ``majority`` (two of three) sits between.

Sliding windows: each view is covered by windows of the preset's ``patch_zyx`` (in the view's axes)
overlapping by ``overlap``; a window's output is blended into the result with a raised-cosine weight
that is highest in its centre (where a U-Net sees the most context) and positive everywhere, so
every voxel is a weighted mean of the windows that cover it. Windows sit on one grid per view over
the *whole* volume, whatever part is being computed: a chunk of a large volume
(:func:`predict_axis_region` with a core box and a halo read around it) gets exactly the values the
whole volume in memory would — the chunked path in :mod:`etchacell_loop.model.predict` relies on it.
Axes shorter than the patch are padded by mirroring (``symmetric``) and cropped back. (The seed kept
each window's centre, its outer quarter cropped, where this project blends.)

Keeping the model fed (:func:`predict_regions`): the paper's TAP of its whole volume took 48 minutes
on a V100 (section 2.6). Here the model runs on the caller's thread while three helper threads read
and transpose the next region's halo, cut and stack the next batch, and blend finished batches in
order, so an accelerator does not wait for the CPU between batches, regions or chunks; the results
are those of a plain loop, bit for bit. Each view's halo is transposed once (slicing axis first),
so windows are plain slices and outputs need no moving back. Batches hold ``batch_size`` windows of
one region; ``None`` picks :data:`DEFAULT_BATCH_SIZE` on a CPU and :data:`ACCELERATOR_BATCH_SIZE`
when the Keras backend in use computes on an accelerator (:func:`resolve_batch_size`), decided where
the prediction runs, not where it is requested.

Post-processing (paper section 4.12): connected components smaller than ``min_component_voxels``
(10,000 at 50 nm in the paper) are removed and, with ``keep_largest``, only the largest is kept:
the paper's way to isolate an ROI's target nucleus from pieces of its neighbours. (The seed's
prediction pipeline applies only the 10,000-voxel minimum; its largest-component function is not
called there.) Components are fully connected (:data:`COMPONENT_CONNECTIVITY`: 26 neighbours,
sharing a face, an edge or a corner), as the seed labelled them (``src/connected_components.py``:
``skimage.measure.label`` at its default, full connectivity). It matters: a 70 nm envelope at 50 nm
voxels is a band one or two voxels wide whose voxels often meet only at an edge or a corner, so
counted face to face (6 neighbours) one nuclear envelope falls into many pieces (thousands, none
near 10,000 voxels, where the band is one voxel wide) and post-processing removes much or all of it.

``keep_largest`` is off in :class:`TapParams`: whether a volume is one ROI is for the caller to say
(``etchacell predict`` turns it on with ``--roi``, the loop's per-ROI prediction batches with
``correction.keep_largest``, :func:`etchacell_loop.model.predict.predict_volume` without explicit
parameters for an ROI), and on a whole volume, where every nucleus is wanted, it would keep one.

Per-slice *uncertainty* is the axes' disagreement: ``1 - |voxels all axes call envelope| / |voxels
any axis calls envelope|`` per z slice (0 where no axis sees envelope).
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

Float = NDArray[np.float32]
Binary = NDArray[np.bool_]
PredictFn = Callable[[Float], Float]
Shape3 = tuple[int, int, int]
# Reads the box [start, stop) of the (isotropic, normalised) volume; stop never exceeds the shape.
BoxReader = Callable[[Shape3, Shape3], Float]
TapRule = Literal["all", "majority", "any"]

TAP_RULES: tuple[str, ...] = get_args(TapRule)
TRI_AXES = (0, 1, 2)
DEFAULT_OVERLAP = 0.25
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_COMPONENT_VOXELS = 10_000
DEFAULT_BATCH_SIZE = 8  # windows per model call on a CPU
ACCELERATOR_BATCH_SIZE = 32  # on an accelerator: enough windows per call to fill it
BLENDS_IN_FLIGHT = 2  # batch outputs that may wait for blending (each up to batch_size windows)
STAGES = ("read", "cut", "blend")  # the pipeline's threads beside the model (see predict_regions)
COMPONENT_CONNECTIVITY = ndimage.generate_binary_structure(3, 3)
"""Voxels are in one component when they share a face, an edge or a corner (26 neighbours), as in
the seed's ``skimage.measure.label``: the one-voxel envelope band is often joined only diagonally."""


class TapError(ValueError):
    """Parameters TAP cannot work with; the message is one line."""


@dataclass(frozen=True)
class TapParams:
    """How a volume is predicted and post-processed; declared as data so runs can record it.

    ``keep_largest`` defaults to off because these parameters do not know whether the volume is one
    ROI (the paper keeps the largest component there) or a whole volume of many nuclei; the callers
    that do know set it (see the module docstring). ``batch_size`` is the windows per model call;
    ``None`` (the default) sizes it for the machine that predicts (:func:`resolve_batch_size`).
    """

    patch_zyx: Shape3
    axes: tuple[int, ...] = TRI_AXES
    rule: TapRule = "all"
    threshold: float = DEFAULT_THRESHOLD
    overlap: float = DEFAULT_OVERLAP
    batch_size: int | None = None
    min_component_voxels: int = DEFAULT_MIN_COMPONENT_VOXELS
    keep_largest: bool = False

    def __post_init__(self) -> None:
        problem = _params_problem(self)
        if problem is not None:
            raise TapError(problem)


def _params_problem(params: TapParams) -> str | None:
    checks = (
        (len(params.patch_zyx) == 3 and all(n >= 1 for n in params.patch_zyx), "patch must be 3 positive sizes"),
        (len(params.axes) >= 1 and set(params.axes) <= set(TRI_AXES), "axes must be some of 0, 1, 2"),
        (len(set(params.axes)) == len(params.axes), "axes must not repeat"),
        (params.rule in TAP_RULES, f"rule must be one of {', '.join(TAP_RULES)}, not {params.rule!r}"),
        (0.0 <= params.overlap < 1.0, f"overlap must be in [0, 1), not {params.overlap}"),
        (0.0 < params.threshold < 1.0, f"threshold must be in (0, 1), not {params.threshold}"),
        (params.batch_size is None or params.batch_size >= 1, "batch size must be at least 1"),
        (params.min_component_voxels >= 0, "minimum component size must not be negative"),
    )
    return next((message for ok, message in checks if not ok), None)


@dataclass(frozen=True)
class TapResult:
    """A predicted volume: mean probability over the axes, the envelope after post-processing, the
    envelope before it (the rule's vote alone) and the per-z-slice uncertainty."""

    probability: Float
    envelope: Binary
    voted: Binary
    uncertainty: Float


# --- sliding windows -----------------------------------------------------------------------------


def window_starts(length: int, patch: int, step: int) -> list[int]:
    """Starts of windows ``patch`` long covering ``0 … length``: every ``step``, the last flush with
    the end; a single window at 0 when the axis is no longer than the patch."""
    if length <= patch:
        return [0]
    return [*range(0, length - patch, step), length - patch]


def window_step(patch: int, overlap: float) -> int:
    """The stride that makes consecutive windows share ``overlap`` of their length."""
    return max(1, round(patch * (1.0 - overlap)))


def view_patch(patch_zyx: Shape3, axis: int) -> Shape3:
    """The patch in the volume's own axes when ``axis`` is the slicing axis: the patch's z goes
    along ``axis`` and its y, x along the two other axes in order (as ``np.moveaxis`` views it)."""
    others = [a for a in TRI_AXES if a != axis]
    shape = [0, 0, 0]
    shape[axis], shape[others[0]], shape[others[1]] = patch_zyx
    return shape[0], shape[1], shape[2]


def blend_weights(patch_zyx: Shape3) -> Float:
    """A separable raised cosine, ``0.5 - 0.5 cos(2π (i + ½) / n)`` per axis: highest in the middle
    and positive everywhere, so each voxel's blend is a true weighted mean."""
    profiles = [0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(n) + 0.5) / n) for n in patch_zyx]
    return np.asarray(
        profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :], dtype=np.float32
    )


def view_order(axis: int) -> Shape3:
    """The volume's axes in view order: the slicing axis first, the two others after it in order
    (the order ``np.moveaxis(volume, axis, 0)`` shows them in)."""
    others = [a for a in TRI_AXES if a != axis]
    return axis, others[0], others[1]


@functools.lru_cache(maxsize=16)
def view_weights(patch_zyx: Shape3, axis: int) -> Float:
    """:func:`blend_weights` of the view's patch, moved into view axes (read-only, shared by every
    region of the view): the very values the volume's-axes weights hold, so the blend is unchanged
    to the last bit, and made once per view instead of once per region."""
    weights = np.ascontiguousarray(np.moveaxis(blend_weights(view_patch(patch_zyx, axis)), axis, 0))
    weights.setflags(write=False)
    return weights


def accelerator_batch_size() -> int:
    """Windows per batch when :attr:`TapParams.batch_size` is ``None``: :data:`DEFAULT_BATCH_SIZE`
    on a CPU, :data:`ACCELERATOR_BATCH_SIZE` when the Keras backend computes on an accelerator
    (:func:`etchacell_loop.model.backend.accelerator_present`).

    Keras is consulted only when this process has already imported it: otherwise ``predict_fn``
    cannot be a Keras model, and importing a deep-learning stack into the daemon or a numpy-only
    caller just to size batches would cost seconds and memory for nothing.
    """
    if "keras" not in sys.modules:
        return DEFAULT_BATCH_SIZE
    from etchacell_loop.model.backend import accelerator_present

    return ACCELERATOR_BATCH_SIZE if accelerator_present() else DEFAULT_BATCH_SIZE


def resolve_batch_size(batch_size: int | None) -> int:
    """``batch_size`` as given, or the automatic size (:func:`accelerator_batch_size`) for ``None``."""
    return accelerator_batch_size() if batch_size is None else batch_size


# --- one region of one view, and the pipeline that predicts a sequence of them ---------------------

Box3 = tuple[slice, slice, slice]


@dataclass(frozen=True)
class AxisRegion:
    """One view of one box: the core ``[core_start, core_stop)`` of a volume of ``shape_zyx`` (read
    through ``read``), predicted with ``axis`` as the slicing axis."""

    read: BoxReader
    shape_zyx: Shape3
    core_start: Shape3
    core_stop: Shape3
    axis: int


@dataclass(frozen=True)
class RegionWindows:
    """Where one region's windows lie, worked out before anything is read (cheap arithmetic).

    The halo ``[read_start, read_stop)`` (volume axes) is read once and transposed once into *view
    axes* (the slicing axis first); everything here is in view axes, so each window is a plain slice
    of the halo (``cuts``) and the model's output needs no moving back. Where the volume is shorter
    than the patch (one window there, at 0), ``mirrors`` holds the indices that fold the patch's
    length into the halo's as ``numpy.pad(mode="symmetric")`` would, and that window is gathered
    straight into its batch: no mirrored copy of the halo is ever made. ``spans`` pair each window's
    part inside the core with its place there. Windows keep the order of the whole grid's z-major
    product in volume axes, so blending adds them in the same order and gets the same float32 sums.
    """

    region: AxisRegion
    read_start: Shape3
    read_stop: Shape3
    patch: Shape3
    cuts: tuple[Box3, ...]
    mirrors: tuple[NDArray[np.intp] | None, NDArray[np.intp] | None, NDArray[np.intp] | None]
    spans: tuple[tuple[Box3, Box3], ...]
    core_shape: Shape3
    weights: Float
    batch_size: int

    @property
    def batch_starts(self) -> range:
        """The index of each batch's first window."""
        return range(0, len(self.cuts), self.batch_size)


def region_windows(region: AxisRegion, params: TapParams, batch_size: int) -> RegionWindows:
    """The windows of the whole volume's grid for the region's view that touch its core."""
    axis, shape, start, stop = region.axis, region.shape_zyx, region.core_start, region.core_stop
    patch = view_patch(params.patch_zyx, axis)
    per_axis = [
        [
            s
            for s in window_starts(shape[d], patch[d], window_step(patch[d], params.overlap))
            if s < stop[d] and s + patch[d] > start[d]
        ]
        for d in TRI_AXES
    ]
    lo = (per_axis[0][0], per_axis[1][0], per_axis[2][0])
    order = view_order(axis)
    folds = [_mirrored(shape[d], patch[d]) if patch[d] > shape[d] else None for d in order]
    cuts: list[Box3] = []
    spans: list[tuple[Box3, Box3]] = []
    for window in itertools.product(*per_axis):
        bounds = [(window[d] - lo[d], window[d] - lo[d] + patch[d]) for d in order]
        cuts.append(_box([(0, None) if fold is not None else b for b, fold in zip(bounds, folds, strict=True)]))
        inside = [(max(window[d], start[d]), min(window[d] + patch[d], stop[d])) for d in order]
        src = _box([(a - window[d], b - window[d]) for d, (a, b) in zip(order, inside, strict=True)])
        dst = _box([(a - start[d], b - start[d]) for d, (a, b) in zip(order, inside, strict=True)])
        spans.append((src, dst))
    return RegionWindows(
        region=region,
        read_start=lo,
        read_stop=tuple_of(min(per_axis[d][-1] + patch[d], shape[d]) for d in TRI_AXES),
        patch=params.patch_zyx,
        cuts=tuple(cuts),
        mirrors=(folds[0], folds[1], folds[2]),
        spans=tuple(spans),
        core_shape=tuple_of(stop[d] - start[d] for d in order),
        weights=view_weights(params.patch_zyx, axis),
        batch_size=batch_size,
    )


def tuple_of(values: Iterable[int]) -> Shape3:
    """Three sizes as a :data:`Shape3`."""
    first, second, third = values
    return first, second, third


def _box(bounds: Sequence[tuple[int, int | None]]) -> Box3:
    return slice(*bounds[0]), slice(*bounds[1]), slice(*bounds[2])


def read_halo(windows: RegionWindows) -> Float:
    """The region's halo in view axes, C-contiguous: read and transposed once (no copy at all for
    the z view of a contiguous read). Mirroring, where needed, happens as windows are cut."""
    region = windows.region
    block = region.read(windows.read_start, windows.read_stop)
    return np.ascontiguousarray(np.moveaxis(block, region.axis, 0), dtype=np.float32)


def cut_batch(windows: RegionWindows, halo: Float, first: int) -> Float:
    """Windows ``first … first + batch_size`` of the region, stacked: (n, pz, py, px) float32,
    each copied once, straight into the batch (gathered through the mirror indices where the volume
    is shorter than the patch)."""
    cuts = windows.cuts[first : first + windows.batch_size]
    batch = np.empty((len(cuts), *windows.patch), dtype=np.float32)
    folds = [(d, fold) for d, fold in enumerate(windows.mirrors) if fold is not None]
    for out, cut in zip(batch, cuts, strict=True):
        window = halo[cut]
        if not folds:
            out[...] = window
            continue
        for d, fold in folds[:-1]:
            window = np.take(window, fold, axis=d)
        last, fold = folds[-1]
        np.take(window, fold, axis=last, out=out, mode="wrap")
    return batch


class RegionBlend:
    """The weighted sum of one region's window outputs and of their weights (view axes).

    Windows must be added in their order (float32 addition is not associative): the pipeline gives
    all of one region's batches to a single thread, in order. The product of weights and output
    goes to one buffer reused for every window rather than a new array each time.
    """

    def __init__(self, windows: RegionWindows) -> None:
        self.windows = windows
        self.total = np.zeros(windows.core_shape, dtype=np.float32)
        self.weight_sum = np.zeros(windows.core_shape, dtype=np.float32)
        self._product = np.empty(windows.weights.size, dtype=np.float32)

    def add(self, first: int, output: Float) -> None:
        """Blend the outputs of windows ``first, first + 1, …`` (one batch, in view axes)."""
        for index, predicted in enumerate(output, first):
            src, dst = self.windows.spans[index]
            weight = self.windows.weights[src]
            product = self._product[: weight.size].reshape(weight.shape)
            np.multiply(weight, predicted[src], out=product)
            total, weight_sum = self.total[dst], self.weight_sum[dst]
            np.add(total, product, out=total)
            np.add(weight_sum, weight, out=weight_sum)

    def result(self) -> Float:
        """The weighted mean over the core, in volume axes (C-contiguous)."""
        np.divide(self.total, self.weight_sum, out=self.total)
        return np.ascontiguousarray(np.moveaxis(self.total, 0, self.windows.region.axis))


@dataclass(frozen=True)
class _Batch:
    windows: RegionWindows
    halo: Future[Float]
    first: int

    @property
    def last(self) -> bool:
        return self.first + self.windows.batch_size >= len(self.windows.cuts)


def predict_regions(
    regions: Iterable[AxisRegion], predict_fn: PredictFn, params: TapParams
) -> Generator[Float, None, None]:
    """The probabilities of each region's core, in order, with the CPU's work done beside the model's.

    ``predict_fn`` runs on the caller's thread, one batch after another (the same batches, of
    ``params.batch_size`` windows of one region, as a plain loop makes). Around it, three threads of
    one worker each (numpy's copies and arithmetic release the GIL):

    * *reading*: the next region's halo (read, transposed) while this one is predicted;
    * *cutting*: the next batch's windows, sliced out (mirrored where the volume is shorter than the
      patch) and stacked, while the model runs on this one;
    * *blending*: the finished batches' outputs added into their region, strictly in order.

    So an accelerator is kept fed across region boundaries too, where a chunk's region may hold
    only one or two batches. Every region's result equals that of the plain sequential loop bit
    for bit: the same windows, the same batches, the same float32 operations in the same order.
    At most :data:`BLENDS_IN_FLIGHT` batch outputs wait for blending, which bounds memory.
    """
    batch_size = resolve_batch_size(params.batch_size)
    plans = (region_windows(region, params, batch_size) for region in regions)
    stages = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tap-{name}") for name in STAGES]
    try:
        yield from _pipeline(plans, predict_fn, stages[0], stages[1], stages[2])
    finally:
        for stage in stages:
            stage.shutdown(wait=True, cancel_futures=True)


def predict_regions_in_turn(
    regions: Iterable[AxisRegion], predict_fn: PredictFn, params: TapParams
) -> Generator[Float, None, None]:
    """:func:`predict_regions` as a plain loop on the caller's thread: the same batches and the same
    float32 operations in the same order, so the same values bit for bit. For a process that has
    one core to itself (a CPU worker of a cluster, where the parallelism is in the number of
    workers), the pipeline's threads would only contend for that core."""
    batch_size = resolve_batch_size(params.batch_size)
    for region in regions:
        windows = region_windows(region, params, batch_size)
        halo = read_halo(windows)
        blend = RegionBlend(windows)
        for first in windows.batch_starts:
            blend.add(first, _predicted(predict_fn, cut_batch(windows, halo, first)))
        yield blend.result()


def _pipeline(
    plans: Iterator[RegionWindows],
    predict_fn: PredictFn,
    reader: ThreadPoolExecutor,
    cutter: ThreadPoolExecutor,
    blender: ThreadPoolExecutor,
) -> Iterator[Float]:
    batches = _batches(plans, reader)
    batch = next(batches, None)
    cut = cutter.submit(_cut, batch) if batch is not None else None
    adding: deque[Future[None]] = deque()
    finishing: deque[Future[Float]] = deque()
    blend: RegionBlend | None = None
    while batch is not None and cut is not None:
        stacked = cut.result()
        following = next(batches, None)
        if following is not None:
            cut = cutter.submit(_cut, following)
        output = _predicted(predict_fn, stacked)
        if blend is None or blend.windows is not batch.windows:
            blend = RegionBlend(batch.windows)
        while len(adding) >= BLENDS_IN_FLIGHT or (adding and adding[0].done()):
            adding.popleft().result()
        adding.append(blender.submit(blend.add, batch.first, output))
        if batch.last:
            finishing.append(blender.submit(blend.result))
        while finishing and finishing[0].done():
            yield finishing.popleft().result()
        batch = following
    while adding:
        adding.popleft().result()
    while finishing:
        yield finishing.popleft().result()


def _batches(plans: Iterator[RegionWindows], reader: ThreadPoolExecutor) -> Iterator[_Batch]:
    """Every batch of every region in order; each region's halo is submitted for reading when the
    previous region's batches start, so it is ready by the time its first batch is cut."""
    current = next(plans, None)
    halo = reader.submit(read_halo, current) if current is not None else None
    while current is not None and halo is not None:
        following = next(plans, None)
        following_halo = reader.submit(read_halo, following) if following is not None else None
        for first in current.batch_starts:
            yield _Batch(current, halo, first)
        current, halo = following, following_halo


def _cut(batch: _Batch) -> Float:
    return cut_batch(batch.windows, batch.halo.result(), batch.first)


def _predicted(predict_fn: PredictFn, batch: Float) -> Float:
    output = np.asarray(predict_fn(batch), dtype=np.float32)
    if output.shape != batch.shape:
        raise TapError(f"the model returned shape {output.shape} for a batch of shape {batch.shape}")
    return output


def predict_axis_region(
    read: BoxReader,
    shape_zyx: Shape3,
    core_start: Shape3,
    core_stop: Shape3,
    predict_fn: PredictFn,
    params: TapParams,
    axis: int,
) -> Float:
    """Probabilities over the core box ``[core_start, core_stop)`` with ``axis`` as the slicing axis.

    Every window of the whole volume's grid that touches the core is predicted (reading the halo
    around the core it needs) and blended, so the core gets the values a whole-volume run gives.
    One region of :func:`predict_regions`; give it many regions at once to keep a model fed.
    """
    region = AxisRegion(read, shape_zyx, core_start, core_stop, axis)
    (probability,) = predict_regions([region], predict_fn, params)
    return probability


def _mirrored(length: int, size: int) -> NDArray[np.intp]:
    """Indices ``0 … size - 1`` folded into ``0 … length - 1`` as ``numpy.pad(mode="symmetric")``
    folds them: ``0 1 … n-1 n-1 … 1 0 0 1 …``."""
    folded = np.arange(size) % (2 * length)
    return np.where(folded < length, folded, 2 * length - 1 - folded)


def array_reader(volume: NDArray[Any]) -> BoxReader:
    """A :data:`BoxReader` over an array in memory."""

    def read(start: Shape3, stop: Shape3) -> Float:
        box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        return np.asarray(volume[box], dtype=np.float32)

    return read


# --- combining and post-processing -----------------------------------------------------------------


def vote(probabilities: Sequence[Float], threshold: float) -> list[Binary]:
    """Each axis' envelope: voxels of probability at least ``threshold``."""
    return [np.asarray(p >= threshold) for p in probabilities]


def combine_votes(votes: Sequence[Binary], rule: TapRule) -> Binary:
    """The envelope the axes agree on: ``all`` of them, a strict ``majority``, or ``any``."""
    if rule not in TAP_RULES:
        raise TapError(f"rule must be one of {', '.join(TAP_RULES)}, not {rule!r}")
    count = np.sum(np.stack(votes), axis=0, dtype=np.int16)
    n = len(votes)
    if rule == "all":
        return np.asarray(count == n)
    if rule == "majority":
        return np.asarray(2 * count > n)
    return np.asarray(count >= 1)


def agreement_counts(votes: Sequence[Binary]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Per z slice: voxels every axis calls envelope, and voxels at least one does."""
    stacked = np.stack(votes)
    every = np.all(stacked, axis=0).sum(axis=(1, 2), dtype=np.int64)
    some = np.any(stacked, axis=0).sum(axis=(1, 2), dtype=np.int64)
    return every, some


def disagreement(every: NDArray[np.int64], some: NDArray[np.int64]) -> Float:
    """``1 - every / some`` per slice; 0 where no axis sees envelope (nothing to disagree on)."""
    share = np.divide(every, some, out=np.ones(every.shape, dtype=np.float64), where=some > 0)
    return np.asarray(1.0 - share, dtype=np.float32)


def label_components(mask: Binary) -> tuple[NDArray[np.int32], int]:
    """``mask``'s components under :data:`COMPONENT_CONNECTIVITY`, labelled 1 … n (0: background),
    and n; the one labelling that in-memory and chunked post-processing share."""
    labels, n = ndimage.label(mask, structure=COMPONENT_CONNECTIVITY)
    return np.asarray(labels, dtype=np.int32), int(n)


def remove_small_components(mask: Binary, min_voxels: int, *, keep_largest: bool = False) -> Binary:
    """``mask`` without its components (:data:`COMPONENT_CONNECTIVITY`) smaller than
    ``min_voxels``; with ``keep_largest``, only the largest component that is left (ties: the first
    found)."""
    labels, n = label_components(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    if keep_largest and keep.any():
        largest = int(np.argmax(np.where(keep, sizes, -1)))
        keep[:] = False
        keep[largest] = True
    return np.asarray(keep[labels])


def tri_axis_probabilities(volume: NDArray[Any], predict_fn: PredictFn, params: TapParams) -> list[Float]:
    """One probability volume per axis in ``params.axes``, for a volume held in memory."""
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise TapError(f"expected a non-empty (z, y, x) volume, got shape {volume.shape}")
    shape: Shape3 = (int(volume.shape[0]), int(volume.shape[1]), int(volume.shape[2]))
    read = array_reader(volume)
    regions = [AxisRegion(read, shape, (0, 0, 0), shape, axis) for axis in params.axes]
    return list(predict_regions(regions, predict_fn, params))


def tri_axis_predict(volume: NDArray[Any], predict_fn: PredictFn, params: TapParams) -> TapResult:
    """TAP of an isotropic, normalised (z, y, x) volume in memory: predict along each axis, vote,
    remove small components, and measure the axes' disagreement per slice."""
    probabilities = tri_axis_probabilities(volume, predict_fn, params)
    votes = vote(probabilities, params.threshold)
    voted = combine_votes(votes, params.rule)
    envelope = remove_small_components(voted, params.min_component_voxels, keep_largest=params.keep_largest)
    return TapResult(
        probability=np.asarray(np.mean(probabilities, axis=0), dtype=np.float32),
        envelope=envelope,
        voted=voted,
        uncertainty=disagreement(*agreement_counts(votes)),
    )
