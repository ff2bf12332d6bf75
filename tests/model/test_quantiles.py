"""Exact percentiles from counts of parts: equal to ``np.percentile`` of all the values, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from etchacell_loop.model.quantiles import (
    coarse_counts,
    fine_counts,
    merged,
    needed_bins,
    percentiles,
    percentiles_of_parts,
    sortable_keys,
    value_of_key,
)


def _values(rng: np.random.Generator, kind: int, n: int) -> np.ndarray:
    """Samples of the kinds a window meets and the edges of float32: spread, discrete block means,
    constant, tiny of both signs, few values with many ties."""
    if kind == 0:
        values = rng.normal(0.0, 1.0, n)
    elif kind == 1:
        values = rng.integers(0, 1021, n) / 4  # means of 2 x 2 uint8 voxels
    elif kind == 2:
        values = np.full(n, rng.normal())
    elif kind == 3:
        values = rng.normal(0.0, 1e-30, n)
    else:
        values = rng.integers(-3, 3, n).astype(float)
    return values.astype(np.float32)


@pytest.mark.parametrize("kind", range(5))
def test_percentiles_of_parts_equal_numpys_of_the_whole(kind: int) -> None:
    rng = np.random.default_rng(kind)
    for trial in range(300):
        n = int(rng.choice([1, 2, 3, 5, 17, 100, 1000, 20_000]))
        values = _values(rng, kind, n)
        parts = np.split(values, np.sort(rng.integers(0, n + 1, int(rng.integers(0, 6)))))  # empty parts too
        q = [1.0, 99.0] if trial % 2 else list(rng.uniform(0.0, 100.0, 3))
        expected = np.percentile(values, q)
        found = percentiles_of_parts(parts, q)
        assert found.dtype == expected.dtype
        assert np.array_equal(found, expected), (n, q, found - expected)


def test_the_window_of_a_resampled_region_in_64_chunks() -> None:
    """The size the prediction meets: 64 chunks of a 16 million voxel region."""
    values = (np.random.default_rng(3).integers(0, 1021, 1 << 24) / 4).astype(np.float32)
    assert np.array_equal(percentiles_of_parts(np.split(values, 64), [1.0, 99.0]), np.percentile(values, [1.0, 99.0]))


def test_a_nan_anywhere_gives_nan_as_numpy_does() -> None:
    values = np.arange(10, dtype=np.float32)
    values[4] = np.nan
    assert np.isnan(np.percentile(values, [1.0, 99.0])).all()
    assert np.isnan(percentiles_of_parts([values[:3], values[3:]], [1.0, 99.0])).all()


def test_keys_sort_as_the_values_do_and_give_them_back() -> None:
    values = np.array([-np.inf, -3.5, -1e-38, -0.0, 0.0, 1e-45, 2.0, 7.25, np.inf], dtype=np.float32)
    keys = sortable_keys(values)
    assert np.all(np.diff(keys.astype(np.int64)) > 0)
    assert [value_of_key(int(k)).tobytes() for k in keys] == [v.tobytes() for v in values]


def test_only_the_bins_the_percentiles_fall_in_are_counted_in_full() -> None:
    """Pass 2 carries little: at most two bins a percentile, a few values each here."""
    parts = [(np.random.default_rng(i).integers(0, 1021, 50_000) / 4).astype(np.float32) for i in range(4)]
    coarse = merged(coarse_counts(p) for p in parts)
    bins = needed_bins(coarse, [1.0, 99.0])
    assert 1 <= len(bins) <= 4
    fine = merged(fine_counts(p, bins) for p in parts)
    assert len(fine.keys) <= 4 * 2  # each coarse bin holds a few of the 1021 values here
    assert np.array_equal(percentiles(coarse, fine, [1.0, 99.0]), np.percentile(np.concatenate(parts), [1.0, 99.0]))


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="range"):
        percentiles_of_parts([np.ones(3, np.float32)], [101.0])
    with pytest.raises(ValueError, match="no values"):
        percentiles_of_parts([np.zeros(0, np.float32)], [1.0])
