"""Consensus methods: the volunteers' fills of one slice → a vote map and an area.

Each method is one function with the :class:`ConsensusMethod` signature, registered by name in
:data:`METHODS` and picked by ``consensus.method`` in the configuration:

``cria``
    The paper's rule: the fraction of drawers covering each pixel, kept where it reaches
    ``agreement_fraction``. Every drawer counts the same (weights are used when given).
``cria-robust``
    Real crowds trace the nucleolus, a mitochondrion or scribbles; on a slice where fewer than half
    of the votes cover the nucleus a plain vote collapses. This method first finds the drawing that
    agrees best with all the others (the weighted IoU *medoid*), keeps the drawings that overlap it
    (IoU ≥ ``gate_iou``), and votes among those, each weighted by its volunteer's pooled reliability.
``staple``
    STAPLE (Warfield et al. 2004): expectation-maximisation of each drawer's sensitivity and
    specificity and of the hidden true area, with each volunteer's pooled record across other
    slices as prior counts, so a prolific volunteer's habitual error is known before they draw.

The confidence map is what the method thresholds: the (weighted) fraction of drawers for the vote
methods, the posterior probability of "inside the nucleus" for STAPLE.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from etchacell_loop.cria.raster import Mask, Patch
from etchacell_loop.cria.reliability import ReliabilityParams, VolunteerRecord, reliability_weight

FloatMap = NDArray[np.float32]
_T = TypeVar("_T", bound=np.generic)


@dataclass(frozen=True)
class MethodParams:
    """The methods' parameters, declared as data beside them."""

    agreement_fraction: float = 0.5
    denominator: str = "drawers"  # or "classifications": abstainers count as "not here"
    gate_iou: float = 0.5  # cria-robust: overlap with the medoid needed to take part in the vote
    gate_stride_px: int = 4  # cria-robust: IoUs measured on every 4th pixel (16x less work, same answer)
    staple_max_iterations: int = 30
    staple_tolerance: float = 1e-3
    staple_prior_slices: float = 5.0  # at most this many slices' worth of a volunteer's record as prior
    staple_stride_px: int = 4  # EM on every 4th pixel, the final posterior on every pixel
    reliability: ReliabilityParams = field(default_factory=ReliabilityParams)


@dataclass(frozen=True, eq=False)
class Ballot:
    """One drawer's fill on the slice and what is known of them from other slices. ``scale``
    multiplies the drawer's vote weight in the vote methods (a correction that keeps the machine's
    outline counts less than one that redraws it: :mod:`etchacell_loop.cria.correction`); STAPLE,
    which estimates each drawer's reliability itself, does not use it."""

    fill: Patch
    record: VolunteerRecord | None = None
    scale: float = 1.0


@dataclass(frozen=True, eq=False)
class Vote:
    """A method's answer over the slice's region: confidence (0..1), area, and which drawers it used."""

    confidence: FloatMap
    area: Mask
    included: tuple[bool, ...]
    previous_area: Mask | None = None  # the area without the left-out drawing, when one was named


@dataclass(frozen=True)
class Region:
    """The bounding box of a slice's fills: no method needs to look outside it."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.bottom - self.top, self.right - self.left

    def stack(self, ballots: Sequence[Ballot], step: int = 1) -> Mask:
        """The fills as one (drawers, height, width) boolean array over the region, on every
        ``step``-th row and column of it (a coarse stack costs ``step``² less to build and use)."""
        height, width = -(-self.shape[0] // step), -(-self.shape[1] // step)
        stack = np.zeros((len(ballots), height, width), dtype=np.bool_)
        for index, ballot in enumerate(ballots):
            fill = ballot.fill
            if not fill.mask.size:
                continue
            top, left = fill.top - self.top, fill.left - self.left
            first_row, first_col = -top % step, -left % step  # the fill's first row and column on the grid
            sampled = fill.mask[first_row::step, first_col::step]
            row, col = (top + first_row) // step, (left + first_col) // step
            stack[index, row : row + sampled.shape[0], col : col + sampled.shape[1]] = sampled
        return stack

    def within(self, outer: Region) -> tuple[slice, slice]:
        """Where this region lies inside ``outer``, as array slices."""
        return (
            slice(self.top - outer.top, self.bottom - outer.top),
            slice(self.left - outer.left, self.right - outer.left),
        )


def region_of(ballots: Sequence[Ballot]) -> Region:
    fills = [b.fill for b in ballots if b.fill.mask.size]
    if not fills:
        return Region(0, 0, 0, 0)
    return Region(
        min(f.top for f in fills), min(f.left for f in fills), max(f.bottom for f in fills), max(f.right for f in fills)
    )


ConsensusMethod = Callable[[Sequence[Ballot], float, Region, MethodParams, int | None], Vote]
"""(ballots, number of classifications that drew nothing on the slice, region, params, leave_out) →
vote. With ``leave_out`` (a ballot's index) the vote also carries the area the method gives without
that ballot: the stability of a consensus, which vote methods get by subtraction, not a second vote."""


def plain_vote(
    ballots: Sequence[Ballot], n_abstaining: float, region: Region, params: MethodParams, leave_out: int | None = None
) -> Vote:
    """The paper's CRIA vote (weighted by reliability only when records are given)."""
    weights = np.array([_weight(b, params) for b in ballots], dtype=np.float32)
    members = np.ones(len(ballots), np.bool_)
    return _weighted_vote(ballots, region, weights, members, n_abstaining, params, leave_out)


def robust_vote(
    ballots: Sequence[Ballot], n_abstaining: float, region: Region, params: MethodParams, leave_out: int | None = None
) -> Vote:
    """Vote among the drawings that overlap the medoid drawing, weighted by pooled reliability.
    The gate looks at a coarse stack; the vote counts only the members, over their own box."""
    weights = np.array([_weight(b, params) for b in ballots], dtype=np.float32)
    coarse = region.stack(ballots, max(1, params.gate_stride_px))
    iou = _gate_iou(coarse)  # once: the gate without the left-out drawing reads its submatrix
    members = _medoid_cluster(iou, weights, params)
    chosen_index = np.flatnonzero(members)
    chosen = [ballots[int(i)] for i in chosen_index]
    inner = region_of(chosen)
    within_chosen: int | None = None
    recount = False
    if leave_out is not None:
        rest = np.ones(len(ballots), np.bool_)
        rest[leave_out] = False
        members_without = np.zeros(len(ballots), np.bool_)
        members_without[rest] = _medoid_cluster(iou[np.ix_(rest, rest)], weights[rest], params)
        expected = members & rest
        recount = not np.array_equal(members_without, expected)  # the gate itself moved: vote again
        if members[leave_out] and not recount:
            within_chosen = int(np.searchsorted(chosen_index, leave_out))
    vote = _weighted_vote(
        chosen, inner, weights[members], np.ones(len(chosen), np.bool_), n_abstaining, params, within_chosen
    )
    confidence, area = _place(vote.confidence, inner, region), _place(vote.area, inner, region)
    previous: Mask | None = None
    if leave_out is not None:
        if recount:
            others = [b for i, b in enumerate(ballots) if i != leave_out]
            previous = _place(
                robust_vote(others, n_abstaining, region_of(others), params).area, region_of(others), region
            )
        elif vote.previous_area is not None:
            previous = _place(vote.previous_area, inner, region)
        else:
            previous = area  # the left-out drawing had no say
    return Vote(confidence, area, tuple(bool(m) for m in members), previous)


def staple(
    ballots: Sequence[Ballot], n_abstaining: float, region: Region, params: MethodParams, leave_out: int | None = None
) -> Vote:
    """STAPLE with pooled records as prior counts; abstainers say nothing about where the area is.
    (Sums by ``einsum``, not BLAS: see :func:`pairwise_iou`.) Its stability is a second estimation."""
    vote = _staple(ballots, region, params)
    if leave_out is None:
        return vote
    others = [b for i, b in enumerate(ballots) if i != leave_out]
    inner = region_of(others)
    previous = _place(_staple(others, inner, params).area, inner, region)
    return Vote(vote.confidence, vote.area, vote.included, previous)


def _staple(ballots: Sequence[Ballot], region: Region, params: MethodParams) -> Vote:
    stack = region.stack(ballots)
    if not len(ballots) or not stack.size:
        return _empty_vote(region, len(ballots))
    sample = region.stack(ballots, max(1, params.staple_stride_px)).reshape(len(ballots), -1).astype(np.float32)
    posterior = sample.mean(axis=0)  # start from the plain vote
    prior_p, prior_q, strength = _staple_priors(ballots, params)
    p, q = prior_p.copy(), prior_q.copy()
    for _ in range(params.staple_max_iterations):
        inside, outside = float(posterior.sum()), float((1 - posterior).sum())
        k_in, k_out = strength * max(inside, 1.0), strength * max(outside, 1.0)
        p = (np.einsum("nm,m->n", sample, posterior) + prior_p * k_in) / (inside + k_in)
        q = (np.einsum("nm,m->n", 1 - sample, 1 - posterior) + prior_q * k_out) / (outside + k_out)
        p, q = np.clip(p, 1e-4, 1 - 1e-4), np.clip(q, 1e-4, 1 - 1e-4)
        updated = _staple_posterior(sample, p, q, _prior_fraction(posterior))
        change = float(np.abs(updated - posterior).max())
        posterior = updated
        if change < params.staple_tolerance:
            break
    confidence = _staple_full_posterior(stack, p, q, _prior_fraction(posterior))
    return Vote(confidence, confidence >= 0.5, tuple(bool(x) for x in (p > 1 - q)))


METHODS: Mapping[str, ConsensusMethod] = {"cria": plain_vote, "cria-robust": robust_vote, "staple": staple}


def consensus_method(name: str) -> ConsensusMethod:
    """The method registered as ``name``; the error lists the known names."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown consensus method {name!r}; known: {', '.join(sorted(METHODS))}") from None


def _weight(ballot: Ballot, params: MethodParams) -> float:
    base = reliability_weight(ballot.record, params.reliability) if ballot.record is not None else 1.0
    return base * ballot.scale


def _weighted_vote(
    ballots: Sequence[Ballot],
    region: Region,
    weights: NDArray[np.float32],
    members: NDArray[np.bool_],
    n_abstaining: float,
    params: MethodParams,
    leave_out: int | None = None,
) -> Vote:
    """The vote over ``region``, counted fill by fill (see :func:`weighted_fill_count`)."""
    chosen = weights * members
    total = float(chosen.sum())
    if params.denominator == "classifications":
        total += n_abstaining
    shape = region.shape
    included = tuple(bool(m) for m in members)
    if total <= 0 or not len(ballots) or not shape[0] * shape[1]:
        empty = np.zeros(shape, np.bool_)
        return Vote(np.zeros(shape, np.float32), empty, included, empty if leave_out is not None else None)
    height = weighted_fill_count([b.fill for b in ballots], chosen, region)
    area = height >= np.float32(params.agreement_fraction * total - 1e-6)
    previous = None
    if leave_out is not None:
        left = float(chosen[leave_out])
        left_fill = region.stack([ballots[leave_out]])[0] if left else None
        rest_height = height - np.float32(_quantised(left)) * left_fill if left_fill is not None else height
        rest_total = total - left
        previous = rest_height >= np.float32(params.agreement_fraction * rest_total - 1e-6) if rest_total > 0 else None
        previous = previous if previous is not None else np.zeros(shape, np.bool_)
    return Vote(height / np.float32(total), area, included, previous)


def _quantised(weight: float) -> float:
    """A weight as :func:`weighted_count` counts it."""
    return round(weight * WEIGHT_STEPS) / WEIGHT_STEPS


def _place(values: NDArray[_T], inner: Region, region: Region) -> NDArray[_T]:
    """A map over ``inner`` placed in a map over the enclosing ``region`` (zero elsewhere)."""
    placed = np.zeros(region.shape, dtype=values.dtype)
    if values.size:
        rows, cols = inner.within(region)
        placed[rows, cols] = values
    return placed


WEIGHT_STEPS = 64  # weights are counted in 1/64ths: exact enough, and integer sums are fast


def weighted_count(stack: Mask, weights: NDArray[np.float32]) -> FloatMap:
    """Σ weight x fill per pixel. Equal weights are a plain count (a vectorised byte sum); other
    weights are summed in integer 1/64ths, several times faster than a float tensor product."""
    used = weights > 0
    if not used.any():
        return np.zeros(stack.shape[1:], np.float32)
    if np.all(weights[used] == weights[used][0]):
        chosen = stack if used.all() else stack[used]
        count_type = np.uint8 if len(chosen) < 256 else np.uint32
        count = np.add.reduce(chosen.view(np.uint8), axis=0, dtype=count_type)
        return np.asarray(count, np.float32) * np.float32(_quantised(float(weights[used][0])))
    steps = np.rint(weights * WEIGHT_STEPS).astype(np.uint32)
    sum_type = np.uint16 if int(steps.sum()) < 2**16 else np.uint32
    height = np.zeros(stack.shape[1:], dtype=sum_type)
    for fill, step in zip(stack, steps, strict=True):
        if step:
            height += fill.view(np.uint8) * sum_type(step)
    return np.asarray(height, np.float32) / np.float32(WEIGHT_STEPS)


def weighted_fill_count(fills: Sequence[Patch], weights: NDArray[np.float32], region: Region) -> FloatMap:
    """:func:`weighted_count` of the fills' stack over ``region`` (which holds every fill), the same
    numbers without building the stack: each fill is added over its own patch only. A stack is
    drawers x region, mostly empty, and filling it and summing it cost more than the vote itself."""
    used = weights > 0
    if not used.any():
        return np.zeros(region.shape, np.float32)
    if np.all(weights[used] == weights[used][0]):
        count = np.zeros(region.shape, np.uint8 if int(used.sum()) < 256 else np.uint32)
        for fill, use in zip(fills, used, strict=True):
            if use and fill.mask.size:
                count[_window(fill, region)] += fill.mask.view(np.uint8)
        return np.asarray(count, np.float32) * np.float32(_quantised(float(weights[used][0])))
    steps = np.rint(weights * WEIGHT_STEPS).astype(np.uint32)
    sum_type = np.uint16 if int(steps.sum()) < 2**16 else np.uint32
    height = np.zeros(region.shape, dtype=sum_type)
    for fill, step in zip(fills, steps, strict=True):
        if step and fill.mask.size:
            height[_window(fill, region)] += fill.mask.view(np.uint8) * sum_type(step)
    return np.asarray(height, np.float32) / np.float32(WEIGHT_STEPS)


def _window(fill: Patch, region: Region) -> tuple[slice, slice]:
    """Where a fill's patch lies in a region that holds it."""
    top, left = fill.top - region.top, fill.left - region.left
    return slice(top, top + fill.mask.shape[0]), slice(left, left + fill.mask.shape[1])


def _gate_iou(coarse: Mask) -> NDArray[np.float32]:
    """The IoU of every pair of drawings on a coarse stack of their fills, zero on the diagonal (a
    drawing's agreement with itself says nothing); with two drawings or fewer no gate is needed."""
    n = len(coarse)
    if n <= 2:
        return np.zeros((n, n), np.float32)
    iou = pairwise_iou(coarse.reshape(n, -1))
    np.fill_diagonal(iou, 0.0)
    return iou


def _medoid_cluster(iou: NDArray[np.float32], weights: NDArray[np.float32], params: MethodParams) -> NDArray[np.bool_]:
    """The drawings whose IoU with the medoid reaches ``gate_iou`` (the medoid included), from the
    drawings' :func:`_gate_iou` matrix."""
    n = len(iou)
    if n <= 2:
        return np.ones(n, np.bool_)
    score = (iou * weights[None, :]).sum(axis=1)
    medoid = int(np.argmax(score))
    members = iou[medoid] >= params.gate_iou
    members[medoid] = True
    return np.asarray(members, dtype=np.bool_)


def pairwise_iou(masks: Mask) -> NDArray[np.float32]:
    """IoU of every pair of flattened masks, by popcounts of packed bits.

    Not a float matrix product: the product is small, and a multithreaded BLAS on a busy machine
    can spend a hundred times longer spinning than computing."""
    packed = np.packbits(masks, axis=1)
    n = len(packed)
    intersection = np.zeros((n, n), np.float32)
    for i in range(n):
        counts = np.bitwise_count(packed[i] & packed[i:]).sum(axis=1, dtype=np.int64)
        intersection[i, i:] = counts
        intersection[i:, i] = counts
    areas = np.diag(intersection).copy()
    union = areas[:, None] + areas[None, :] - intersection
    return np.asarray(np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0), np.float32)


def _staple_priors(
    ballots: Sequence[Ballot], params: MethodParams
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Prior sensitivity, specificity and their strength (in slices like this one) per drawer.

    A volunteer never seen before gets a weak prior of a fair tracer; a volunteer with a record gets
    their pooled rates, worth as many slices as they drew on (at most ``staple_prior_slices``).
    """
    p = np.full(len(ballots), 0.9, np.float32)
    q = np.full(len(ballots), 0.9, np.float32)
    strength = np.full(len(ballots), 0.1, np.float32)
    for index, ballot in enumerate(ballots):
        record = ballot.record
        if record is not None and record.slices:
            p[index], q[index] = record.sensitivity, record.specificity
            strength[index] = min(float(record.slices), params.staple_prior_slices)
    return p, q, strength


def _prior_fraction(posterior: NDArray[np.float32]) -> float:
    return float(np.clip(posterior.mean(), 1e-3, 1 - 1e-3))


def _staple_posterior(
    sample: NDArray[np.float32], p: NDArray[np.float32], q: NDArray[np.float32], prior: float
) -> NDArray[np.float32]:
    present = np.log(p) - np.log(1 - q)  # evidence for "inside" when the drawer filled the pixel
    absent = np.log(1 - p) - np.log(q)  # … and when they did not
    logit = np.log(prior / (1 - prior)) + absent.sum() + np.einsum("n,nm->m", present - absent, sample)
    return np.asarray(1 / (1 + np.exp(-np.clip(logit, -60, 60))), dtype=np.float32)


def _staple_full_posterior(stack: Mask, p: NDArray[np.float32], q: NDArray[np.float32], prior: float) -> FloatMap:
    """The posterior on every pixel, one fill at a time (no float copy of the whole stack)."""
    present = (np.log(p) - np.log(1 - q)).astype(np.float32)
    absent = (np.log(1 - p) - np.log(q)).astype(np.float32)
    logit = np.full(stack.shape[1:], np.log(prior / (1 - prior)) + float(absent.sum()), np.float32)
    for fill, gain in zip(stack, present - absent, strict=True):
        logit += fill * gain
    return np.asarray(1 / (1 + np.exp(-np.clip(logit, -60, 60))), dtype=np.float32)


def _empty_vote(region: Region, n: int) -> Vote:
    shape = region.shape
    return Vote(np.zeros(shape, np.float32), np.zeros(shape, np.bool_), (True,) * n)
