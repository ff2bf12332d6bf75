"""Consensus methods on crowds where a plain vote fails, pooled records, and the fast paths."""

from __future__ import annotations

import numpy as np
import pytest

from etchacell_loop.config import ConsensusSettings
from etchacell_loop.cria.consensus import CriaParams, Drawing, dice, slice_consensus
from etchacell_loop.cria.methods import (
    METHODS,
    Ballot,
    consensus_method,
    region_of,
    weighted_count,
    weighted_fill_count,
)
from etchacell_loop.cria.raster import empty_patch, fill_patch
from etchacell_loop.cria.reliability import ReliabilityParams, VolunteerRecord, is_flagged, reliability_weight

SHAPE = (400, 400)
YY, XX = np.mgrid[: SHAPE[0], : SHAPE[1]]
NUCLEUS = (XX - 200) ** 2 + (YY - 200) ** 2 <= 100**2


def circle(cx: float, cy: float, r: float, n: int = 360) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])


def crowd(rng: np.random.Generator, nucleus: int, nucleolus: int, mitochondrion: int) -> list[Drawing]:
    """Drawers of the nucleus (r 100), the nucleolus inside it (r 30) and a mitochondrion outside."""
    drawings: list[Drawing] = []
    for kind, count, (cx, cy, r) in (
        ("n", nucleus, (200, 200, 100)),
        ("o", nucleolus, (180, 190, 30)),
        ("m", mitochondrion, (340, 60, 25)),
    ):
        for i in range(count):
            outline = circle(cx + rng.normal(0, 2), cy + rng.normal(0, 2), r + rng.normal(0, 2))
            drawings.append(Drawing(f"{kind}{i}", len(drawings), (outline,)))
    return drawings


def test_methods_are_registered_by_name() -> None:
    assert set(METHODS) == {"cria", "cria-robust", "staple"}
    with pytest.raises(KeyError, match="known: cria, cria-robust, staple"):
        consensus_method("majority")


def test_configuration_names_every_registered_method() -> None:
    allowed = ConsensusSettings.model_fields["method"].annotation.__args__  # type: ignore[union-attr]
    assert set(allowed) == set(METHODS)


def test_plain_vote_collapses_when_fewer_than_half_cover_the_nucleus_and_the_robust_methods_do_not() -> None:
    drawings = crowd(np.random.default_rng(0), nucleus=4, nucleolus=3, mitochondrion=3)
    plain = slice_consensus(drawings, 10, SHAPE, CriaParams(method="cria"))
    assert dice(plain.area, NUCLEUS) < 0.3  # only the nucleolus has 7 of 10 votes
    for method in ("cria-robust", "staple"):
        result = slice_consensus(drawings, 10, SHAPE, CriaParams(method=method))
        assert dice(result.area, NUCLEUS) > 0.97, method
    robust = slice_consensus(drawings, 10, SHAPE, CriaParams(method="cria-robust"))
    assert [o.volunteer for o in robust.outcomes if o.included] == ["n0", "n1", "n2", "n3"]
    assert robust.n_flagged == 6


def test_pooled_records_settle_a_tie_against_habitual_nucleolus_tracers() -> None:
    drawings = crowd(np.random.default_rng(1), nucleus=3, nucleolus=3, mitochondrion=0)
    habitual = VolunteerRecord(slices=300, dice_sum=300 * 0.15, tp=1000, fn=9000, fp=0, tn=90000)
    records = {f"o{i}": habitual for i in range(3)}
    weighted = slice_consensus(drawings, 6, SHAPE, CriaParams(method="cria-robust"), records)
    assert dice(weighted.area, NUCLEUS) > 0.97
    assert all(not o.included for o in weighted.outcomes if o.volunteer.startswith("o"))


def test_staple_needs_no_records_for_nested_errors() -> None:
    drawings = crowd(np.random.default_rng(2), nucleus=3, nucleolus=3, mitochondrion=0)
    result = slice_consensus(drawings, 6, SHAPE, CriaParams(method="staple"))
    assert dice(result.area, NUCLEUS) > 0.97
    assert float(result.confidence.min()) >= 0.0 and float(result.confidence.max()) <= 1.0


def test_stability_is_dice_with_the_consensus_without_the_latest_drawing() -> None:
    rng = np.random.default_rng(3)
    steady = crowd(rng, nucleus=6, nucleolus=0, mitochondrion=0)
    assert slice_consensus(steady, 6, SHAPE, CriaParams()).stability == pytest.approx(1.0, abs=0.02)
    first, late = Drawing("first", 1, (circle(200, 200, 60),)), Drawing("late", 99, (circle(200, 200, 100),))
    shaken = slice_consensus([late, first], 2, SHAPE, CriaParams())  # half of two is enough: the union
    assert shaken.stability == pytest.approx(2 * 60**2 / (60**2 + 100**2), abs=0.02)
    assert slice_consensus(steady[:1], 1, SHAPE, CriaParams()).stability is None


def test_weighted_count_matches_a_float_sum() -> None:
    rng = np.random.default_rng(4)
    stack = rng.random((12, 40, 50)) < 0.4
    weights = rng.uniform(0.05, 1.0, 12).astype(np.float32)
    exact = np.tensordot(weights, stack.astype(np.float32), axes=1)
    assert np.abs(weighted_count(stack, weights) - exact).max() <= 12 / 128 + 1e-6
    equal = np.full(12, 0.5, np.float32)
    assert np.array_equal(weighted_count(stack, equal), stack.sum(axis=0) * np.float32(0.5))


@pytest.mark.parametrize("kind", ["equal", "unequal", "some zero", "all zero", "300 drawers"])
def test_counting_fill_by_fill_equals_counting_their_stack(kind: str) -> None:
    rng = np.random.default_rng(5)
    n = 300 if kind == "300 drawers" else 9
    centres, radii = rng.uniform(80, 320, (n, 2)), rng.uniform(5, 70, n)
    ballots = [Ballot(fill_patch([circle(x, y, r)], SHAPE)) for (x, y), r in zip(centres, radii, strict=True)]
    ballots.append(Ballot(empty_patch()))  # a drawing that fills nothing
    weights = rng.uniform(0.05, 1.0, n + 1).astype(np.float32)
    if kind in ("equal", "300 drawers"):
        weights[:] = 0.75
    elif kind == "some zero":
        weights[::3] = 0.0
    elif kind == "all zero":
        weights[:] = 0.0
    region = region_of(ballots)
    by_fill = weighted_fill_count([b.fill for b in ballots], weights, region)
    assert by_fill.dtype == np.float32 and by_fill.shape == region.shape
    assert np.array_equal(by_fill, weighted_count(region.stack(ballots), weights))


def test_reliability_weights_shrink_towards_the_prior_and_flag_habitual_errors() -> None:
    params = ReliabilityParams()
    newcomer_slip = VolunteerRecord(slices=1, dice_sum=0.05)
    habitual = VolunteerRecord(slices=50, dice_sum=50 * 0.1)
    good = VolunteerRecord(slices=50, dice_sum=50 * 0.95)
    assert reliability_weight(None, params) == pytest.approx(params.prior_dice)
    assert 0.5 < reliability_weight(newcomer_slip, params) < params.prior_dice
    assert reliability_weight(habitual, params) < 0.15 < 0.9 < reliability_weight(good, params)
    assert is_flagged(habitual, params) and not is_flagged(newcomer_slip, params) and not is_flagged(good, params)
    assert (good + habitual) - habitual == good


def test_a_coarse_stack_is_the_full_stack_sampled_on_the_regions_grid() -> None:
    rng = np.random.default_rng(6)
    centres, radii = rng.uniform(80, 320, (7, 2)), rng.uniform(10, 60, 7)
    ballots = [Ballot(fill_patch([circle(x, y, r)], SHAPE)) for (x, y), r in zip(centres, radii, strict=True)]
    region = region_of(ballots)
    full = region.stack(ballots)
    for step in (1, 2, 3, 4):
        assert np.array_equal(region.stack(ballots, step), full[:, ::step, ::step])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_stability_by_subtraction_equals_a_second_vote_without_the_latest(method: str) -> None:
    rng = np.random.default_rng(8)
    for nucleus, nucleolus, mitochondrion in ((5, 0, 0), (4, 3, 3), (2, 1, 0), (3, 0, 2)):
        drawings = crowd(rng, nucleus, nucleolus, mitochondrion)
        rng.shuffle(drawings)
        latest = max(drawings, key=lambda d: d.classification_id)
        params = CriaParams(method=method)
        stable = slice_consensus(drawings, len(drawings) + 2, SHAPE, params)
        without = slice_consensus([d for d in drawings if d is not latest], len(drawings) + 2, SHAPE, params)
        assert stable.stability == pytest.approx(dice(stable.area, without.area), abs=1e-9)
