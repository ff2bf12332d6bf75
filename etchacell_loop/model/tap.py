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

import itertools
from collections.abc import Callable, Sequence
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
DEFAULT_BATCH_SIZE = 8
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
    that do know set it (see the module docstring).
    """

    patch_zyx: Shape3
    axes: tuple[int, ...] = TRI_AXES
    rule: TapRule = "all"
    threshold: float = DEFAULT_THRESHOLD
    overlap: float = DEFAULT_OVERLAP
    batch_size: int = DEFAULT_BATCH_SIZE
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
        (params.batch_size >= 1, "batch size must be at least 1"),
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
    """
    patch = view_patch(params.patch_zyx, axis)
    per_axis = [
        [
            s
            for s in window_starts(shape_zyx[d], patch[d], window_step(patch[d], params.overlap))
            if s < core_stop[d] and s + patch[d] > core_start[d]
        ]
        for d in TRI_AXES
    ]
    lo = (per_axis[0][0], per_axis[1][0], per_axis[2][0])
    hi = tuple(min(per_axis[d][-1] + patch[d], shape_zyx[d]) for d in TRI_AXES)
    halo = _mirror_to(read(lo, (hi[0], hi[1], hi[2])), [max(per_axis[d][-1] + patch[d] - lo[d], 0) for d in TRI_AXES])
    weights = blend_weights(patch)
    core_shape = tuple(core_stop[d] - core_start[d] for d in TRI_AXES)
    total = np.zeros(core_shape, dtype=np.float32)
    weight_sum = np.zeros(core_shape, dtype=np.float32)
    starts = list(itertools.product(*per_axis))
    for first in range(0, len(starts), params.batch_size):
        group = starts[first : first + params.batch_size]
        windows = [halo[tuple(slice(s[d] - lo[d], s[d] - lo[d] + patch[d]) for d in TRI_AXES)] for s in group]
        batch = np.stack([np.moveaxis(w, axis, 0) for w in windows]).astype(np.float32, copy=False)
        output = np.asarray(predict_fn(batch), dtype=np.float32)
        if output.shape != batch.shape:
            raise TapError(f"the model returned shape {output.shape} for a batch of shape {batch.shape}")
        for start, predicted in zip(group, output, strict=True):
            _accumulate(total, weight_sum, np.moveaxis(predicted, 0, axis), weights, start, core_start, core_stop)
    return np.asarray(total / weight_sum, dtype=np.float32)


def _mirror_to(block: Float, size: Sequence[int]) -> Float:
    """Pad ``block`` at its far ends by mirroring up to ``size`` (only where the volume is shorter
    than a patch, so the block reaches the volume's end there)."""
    pads = [(0, max(size[d] - block.shape[d], 0)) for d in TRI_AXES]
    if not any(after for _, after in pads):
        return block
    return np.asarray(np.pad(block, pads, mode="symmetric"), dtype=np.float32)


def _accumulate(
    total: Float,
    weight_sum: Float,
    predicted: Float,
    weights: Float,
    start: Sequence[int],
    core_start: Shape3,
    core_stop: Shape3,
) -> None:
    """Add one window's weighted output to the part of the core it overlaps."""
    src, dst = [], []
    for d in TRI_AXES:
        lo, hi = max(start[d], core_start[d]), min(start[d] + predicted.shape[d], core_stop[d])
        src.append(slice(lo - start[d], hi - start[d]))
        dst.append(slice(lo - core_start[d], hi - core_start[d]))
    w = weights[tuple(src)]
    total[tuple(dst)] += w * predicted[tuple(src)]
    weight_sum[tuple(dst)] += w


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
    return [predict_axis_region(read, shape, (0, 0, 0), shape, predict_fn, params, axis) for axis in params.axes]


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
