"""Exact percentiles of float32 values held in parts (a volume's chunks, on different workers).

The TAP's intensity window is the 1st and 99th percentile of a region's resampled values
(:func:`etchacell_loop.model.predict.intensity_window`, ``np.percentile``'s default linear method).
Gathering the values in one process to sort them is a serial step that grows with the region: for
the paper's volume it meant resampling 67 million voxels of evenly spaced slices and partitioning
them in the driving process before any chunk could be predicted. Here each part is counted where
it lies, in two passes over a 2 x 16-bit split of its sortable keys, and only counts travel:

1. :func:`coarse_counts`: each part's values counted by the high 16 bits of their key;
   :func:`needed_bins` finds, in the sum, the bins holding the order statistics the percentiles
   interpolate between (at most two per percentile).
2. :func:`fine_counts`: each part's values in those bins counted by their whole key;
   :func:`percentiles` reads the order statistics off the sums and interpolates.

The result equals ``np.percentile(all_values, q)`` bit for bit: the same ranks (Hyndman and Fan's
method 7, numpy's ``linear``) and the same interpolation arithmetic, including numpy's switch to
interpolating from the upper value when the weight is at least one half. A NaN anywhere gives NaN
for every percentile, as numpy does. Functions over arrays; the counts are small (sparse, a few
kilobytes a part) and picklable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

LOW_BITS = 16
LOW_MASK = (1 << LOW_BITS) - 1
BINS = 1 << (32 - LOW_BITS)


@dataclass(frozen=True)
class Counts:
    """Values counted by key (sparse: the keys present, ascending, and how many of each) and the
    NaNs apart."""

    keys: NDArray[np.int64]
    counts: NDArray[np.int64]
    nans: int = 0

    @property
    def total(self) -> int:
        return int(self.counts.sum())


def sortable_keys(values: NDArray[np.float32]) -> NDArray[np.uint32]:
    """Each float32's bits as an unsigned key in the floats' order (negative values' bits flipped,
    positive values' sign bit set): sorting keys sorts values. NaNs are left out by the callers."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    negative = (bits >> np.uint32(31)).astype(bool)
    return np.where(negative, ~bits, bits | np.uint32(0x8000_0000))


def value_of_key(key: int) -> np.float32:
    """The float32 whose :func:`sortable_keys` key is ``key``."""
    bits = np.uint32(key & 0x7FFF_FFFF) if key & 0x8000_0000 else ~np.uint32(key)
    return np.float32(np.array([bits], dtype=np.uint32).view(np.float32)[0])


def _sparse(keys: NDArray[np.integer], minlength: int, nans: int) -> Counts:
    dense = np.bincount(keys, minlength=minlength)
    present = np.flatnonzero(dense)
    return Counts(present.astype(np.int64), dense[present].astype(np.int64), nans)


def _finite_keys(values: NDArray[np.float32]) -> tuple[NDArray[np.uint32], int]:
    flat = np.asarray(values, dtype=np.float32).ravel()
    nan = np.isnan(flat)
    nans = int(np.count_nonzero(nan))
    return sortable_keys(flat[~nan] if nans else flat), nans


def coarse_counts(values: NDArray[np.float32]) -> Counts:
    """Pass 1 on one part: its values counted by the high bits of their keys."""
    keys, nans = _finite_keys(values)
    return _sparse(keys >> np.uint32(LOW_BITS), BINS, nans)


def merged(parts: Iterable[Counts]) -> Counts:
    """The counts of all ``parts`` together."""
    parts = list(parts)
    if not parts:
        return Counts(np.zeros(0, np.int64), np.zeros(0, np.int64))
    keys = np.concatenate([p.keys for p in parts])
    counts = np.concatenate([p.counts for p in parts])
    unique, where = np.unique(keys, return_inverse=True)
    summed = np.zeros(len(unique), dtype=np.int64)
    np.add.at(summed, where, counts)
    return Counts(unique, summed, sum(p.nans for p in parts))


@dataclass(frozen=True)
class Ranks:
    """What ``np.percentile(a, q)`` (linear) reads from ``a`` sorted: for each percentile the ranks
    of the two values it interpolates between and the weight of the upper one."""

    previous: NDArray[np.intp]
    next: NDArray[np.intp]
    gamma: NDArray[np.float64]


def linear_ranks(n: int, q_percent: Sequence[float]) -> Ranks:
    """The ranks and weights numpy's ``linear`` method uses for ``n`` values (its arithmetic, in
    its order: numpy/lib/_function_base_impl.py, ``_QuantileMethods["linear"]``, ``_get_indexes``)."""
    quantiles = np.true_divide(np.asarray(q_percent, dtype=np.float64), 100)
    if not np.all((quantiles >= 0.0) & (quantiles <= 1.0)):
        raise ValueError("percentiles must be in the range [0, 100]")
    virtual = (n - 1) * quantiles
    previous = np.floor(virtual)
    following = previous + 1
    above = virtual >= n - 1
    previous[above] = n - 1
    following[above] = n - 1
    below = virtual < 0
    previous[below] = 0
    following[below] = 0
    gamma = np.asarray(virtual - previous, dtype=np.float64)
    return Ranks(previous.astype(np.intp), following.astype(np.intp), gamma)


def _locate(counts: Counts, rank: int) -> tuple[int, int]:
    """The key holding the ``rank``-th value (0-based, ascending) and the value's rank among that
    key's values."""
    cumulative = np.cumsum(counts.counts)
    at = int(np.searchsorted(cumulative, rank, side="right"))
    before = int(cumulative[at - 1]) if at else 0
    return int(counts.keys[at]), rank - before


def needed_bins(coarse: Counts, q_percent: Sequence[float]) -> tuple[int, ...]:
    """After pass 1: the coarse bins pass 2 must count in full (none when there is nothing to
    find: no values, or a NaN among them)."""
    n = coarse.total
    if n == 0 or coarse.nans:
        return ()
    ranks = linear_ranks(n, q_percent)
    return tuple(sorted({_locate(coarse, int(r))[0] for r in (*ranks.previous, *ranks.next)}))


def fine_counts(values: NDArray[np.float32], bins: Sequence[int]) -> Counts:
    """Pass 2 on one part: its values whose coarse bin is one of ``bins``, counted by whole key."""
    if not bins:
        return Counts(np.zeros(0, np.int64), np.zeros(0, np.int64))
    keys, _ = _finite_keys(values)
    wanted = np.zeros(BINS, dtype=bool)
    wanted[list(bins)] = True
    chosen = keys[wanted[keys >> np.uint32(LOW_BITS)]]
    unique, counts = np.unique(chosen, return_counts=True)
    return Counts(unique.astype(np.int64), counts.astype(np.int64))


def percentiles(coarse: Counts, fine: Counts, q_percent: Sequence[float]) -> NDArray[np.float64]:
    """The percentiles from both passes' merged counts: ``np.percentile(all_values, q_percent)``."""
    n = coarse.total
    if n == 0:
        raise ValueError("no values to take percentiles of")
    if coarse.nans:
        return np.full(len(q_percent), np.nan)
    ranks = linear_ranks(n, q_percent)
    low = np.array([_order_statistic(coarse, fine, int(r)) for r in ranks.previous], dtype=np.float32)
    high = np.array([_order_statistic(coarse, fine, int(r)) for r in ranks.next], dtype=np.float32)
    return _lerp(low, high, ranks.gamma)


def _order_statistic(coarse: Counts, fine: Counts, rank: int) -> np.float32:
    """The ``rank``-th smallest value, from its coarse bin's whole-key counts."""
    bin_, within = _locate(coarse, rank)
    in_bin = (fine.keys >> LOW_BITS) == bin_
    key, _ = _locate(Counts(fine.keys[in_bin], fine.counts[in_bin]), within)
    return value_of_key(key)


def _lerp(a: NDArray[np.float32], b: NDArray[np.float32], t: NDArray[np.float64]) -> NDArray[np.float64]:
    """numpy's ``_lerp``, operation for operation (its dtypes: float32 bounds, float64 weights)."""
    difference = b - a
    result = np.add(a, difference * t)
    np.subtract(b, difference * (1 - t), out=result, where=t >= 0.5, casting="unsafe", dtype=result.dtype)
    return np.asarray(result)


def percentiles_of_parts(parts: Sequence[NDArray[np.float32]], q_percent: Sequence[float]) -> NDArray[np.float64]:
    """Both passes over parts held here: what the cluster's tasks and this process do between them."""
    coarse = merged(coarse_counts(p) for p in parts)
    bins = needed_bins(coarse, q_percent)
    fine = merged(fine_counts(p, bins) for p in parts)
    return percentiles(coarse, fine, q_percent)
