"""Stopping rules: retire once the consensus has stopped changing, within bounds."""

from __future__ import annotations

import pytest

from etchacell_loop.config import RetirementSettings
from etchacell_loop.retirement import RULES, FixedCount, StableConsensus, Update, stopping_rule


def history(*stabilities: float | None) -> list[Update]:
    return [Update(n, s) for n, s in enumerate(stabilities, start=1)]


def test_fixed_count_is_the_papers_rule() -> None:
    rule = FixedCount(30)
    assert not rule.decide(history(*[1.0] * 29)).retire
    assert rule.decide(history(*[0.1] * 30)).reason == "limit"


def test_stable_consensus_waits_for_the_minimum_then_for_stable_updates() -> None:
    rule = StableConsensus(min_classifications=4, max_classifications=10, stability_dice=0.95, stable_checks=2)
    assert not rule.decide(history(None, 0.99, 0.99)).retire  # below the minimum
    assert not rule.decide(history(None, 0.5, 0.8, 0.99)).retire  # one stable update is not enough
    decision = rule.decide(history(None, 0.5, 0.96, 0.99))
    assert decision.retire and decision.reason == "stable"
    unsettled = history(None, *[0.6, 0.97] * 4, 0.7)
    assert rule.decide(unsettled[:9]).retire is False
    assert rule.decide(unsettled).reason == "limit"


def test_empty_slices_retire_at_the_minimum() -> None:
    """Nobody drew: the empty consensus is perfectly stable (two empty masks agree)."""
    rule = StableConsensus(min_classifications=3, stable_checks=2)
    assert rule.decide(history(1.0, 1.0, 1.0)).retire


def test_rule_from_configuration() -> None:
    rule = stopping_rule(RetirementSettings(policy="fixed-count", max_classifications=12))
    assert isinstance(rule, FixedCount) and rule.count == 12
    stable = stopping_rule(RetirementSettings(min_classifications=5, stability_dice=0.9, stable_checks=3))
    assert isinstance(stable, StableConsensus) and stable.stable_checks == 3 and stable.stability_dice == 0.9
    allowed = RetirementSettings.model_fields["policy"].annotation.__args__  # type: ignore[union-attr]
    assert set(allowed) == set(RULES)
    with pytest.raises(ValueError, match="stable-consensus"):
        RetirementSettings(policy="sometimes")
