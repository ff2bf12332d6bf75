"""Stopping rules: retire once the consensus has stopped changing between checks, within bounds."""

from __future__ import annotations

import pytest

from etchacell_loop.config import RetirementSettings
from etchacell_loop.retirement import RULES, FixedCount, StableConsensus, Update, stopping_rule


def checks(*dices: float | None, every: int = 1, stability: float | None = 1.0) -> list[Update]:
    """Checks ``every`` own classifications apart, each with its Dice against the previous check."""
    return [Update(every * n, stability, check_dice, every) for n, check_dice in enumerate(dices, start=1)]


def test_fixed_count_is_the_papers_rule_on_the_subjects_own_classifications() -> None:
    rule = FixedCount(30)
    assert not rule.decide(checks(*[1.0] * 29)).retire
    assert rule.decide(checks(*[0.1] * 30)).reason == "limit"
    assert not rule.decide([Update(29, 1.0, 1.0, 29)]).retire  # one check is enough to count
    assert rule.decide([Update(30, None, None, 30)]).retire
    assert not rule.decide([]).retire


def test_stable_consensus_waits_for_the_minimum_then_for_agreeing_checks() -> None:
    rule = StableConsensus(min_classifications=4, max_classifications=10, stability_dice=0.95, stable_checks=2)
    assert not rule.decide(checks(None, 0.99, 0.99)).retire  # below the minimum
    assert not rule.decide(checks(None, 0.5, 0.8, 0.99)).retire  # one agreeing check is not enough
    decision = rule.decide(checks(None, 0.5, 0.96, 0.99))
    assert decision.retire and decision.reason == "stable"
    unsettled = checks(None, *[0.6, 0.97] * 4, 0.7)
    assert rule.decide(unsettled[:9]).retire is False
    assert rule.decide(unsettled).reason == "limit"


def test_a_burst_that_moves_the_consensus_is_not_stable_however_stable_each_consensus_is() -> None:
    """Eight tracings of outline A, then ten of outline B together: each consensus is perfectly
    stable against itself without its latest drawing (1.0), but the two checks agree at Dice 0.199."""
    rule = StableConsensus(min_classifications=8, max_classifications=30, stability_dice=0.95, stable_checks=2)
    a_settles = [Update(6, 1.0, None, 6), Update(8, 1.0, 1.0, 2)]
    b_arrives = Update(18, 1.0, 0.199, 10)
    decision = rule.decide([*a_settles, b_arrives])
    assert not decision.retire and "0.199" in decision.reason
    b_again = Update(20, 1.0, 0.99, 2)  # B holds for one check: still one short
    assert not rule.decide([*a_settles, b_arrives, b_again]).retire
    b_holds = Update(22, 1.0, 0.98, 2)
    assert rule.decide([*a_settles, b_arrives, b_again, b_holds]).reason == "stable"


def test_a_check_without_new_classifications_of_the_subject_does_not_count() -> None:
    rule = StableConsensus(min_classifications=4, max_classifications=30, stability_dice=0.95, stable_checks=2)
    first = Update(4, 1.0, None, 4)
    neighbours_only = Update(4, 1.0, 0.99, 0)  # the slice changed through a neighbouring flipbook
    agreeing = Update(6, 1.0, 0.99, 2)
    assert not rule.decide([first, neighbours_only, neighbours_only]).retire
    assert not rule.decide([first, agreeing, neighbours_only]).retire  # neither counts nor breaks ...
    assert rule.decide([first, agreeing, neighbours_only, Update(7, 1.0, 0.97, 1)]).retire  # ... the run
    moved = Update(6, 1.0, 0.6, 0)  # a change with nothing new of its own still breaks the run
    assert not rule.decide([first, agreeing, moved, Update(7, 1.0, 0.97, 1)]).retire


def test_a_knife_edge_consensus_does_not_count_even_when_the_checks_agree() -> None:
    """The latest drawing decided the vote (own stability low): one more volunteer may flip it."""
    rule = StableConsensus(min_classifications=4, max_classifications=30, stability_dice=0.95, stable_checks=2)
    tied = [Update(4, 1.0, None, 4), Update(6, 0.4, 0.99, 2), Update(8, 0.5, 0.99, 2)]
    assert not rule.decide(tied).retire
    unknown = [Update(4, None, None, 4), Update(6, None, 0.99, 2), Update(8, None, 0.99, 2)]
    assert rule.decide(unknown).retire  # fewer than two drew: only the checks can say


def test_an_unmeasured_check_breaks_the_run() -> None:
    rule = StableConsensus(min_classifications=4, max_classifications=30, stability_dice=0.95, stable_checks=2)
    history = [Update(4, 1.0, None, 4), Update(6, 1.0, 0.99, 2), Update(8, 1.0, None, 2)]
    assert not rule.decide(history).retire
    assert rule.decide([*history, Update(9, 1.0, 0.99, 1), Update(10, 1.0, 0.99, 1)]).retire


def test_empty_slices_retire_at_the_minimum() -> None:
    """Nobody drew: two empty consensus masks agree perfectly, and nobody's drawing is latest."""
    rule = StableConsensus(min_classifications=3, stable_checks=2)
    assert rule.decide(checks(None, 1.0, 1.0, stability=None)).retire


def test_rule_from_configuration() -> None:
    rule = stopping_rule(RetirementSettings(policy="fixed-count", max_classifications=12))
    assert isinstance(rule, FixedCount) and rule.count == 12
    stable = stopping_rule(RetirementSettings(min_classifications=5, stability_dice=0.9, stable_checks=3))
    assert isinstance(stable, StableConsensus) and stable.stable_checks == 3 and stable.stability_dice == 0.9
    allowed = RetirementSettings.model_fields["policy"].annotation.__args__  # type: ignore[union-attr]
    assert set(allowed) == set(RULES)
    with pytest.raises(ValueError, match="stable-consensus"):
        RetirementSettings(policy="sometimes")
