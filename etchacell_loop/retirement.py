"""When has a subject had enough classifications? Stopping rules, registered by name.

The paper retired every subject after 30 classifications. Most slices settle far sooner: once one
more volunteer no longer changes the consensus, more volunteers only cost their time. A stopping
rule looks at a subject's history — after each classification, how many there are and how stable
the consensus was (Dice with the consensus without the latest drawing, see
``cria.consensus.Consensus.stability``) — and says retire or wait, and why.

Rules are picked by ``retirement.policy``; their parameters come from the ``retirement`` section.
Pure functions over records: no database, no network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from etchacell_loop.config import RetirementSettings


@dataclass(frozen=True)
class Update:
    """The state of a subject's consensus after one more classification."""

    classifications: int
    stability: float | None  # None while fewer than two volunteers drew


@dataclass(frozen=True)
class Decision:
    retire: bool
    reason: str  # "stable", "limit", or why not yet


class StoppingRule:
    """Decides, from a subject's updates so far (oldest first), whether to retire it."""

    name = "abstract"

    def decide(self, updates: Sequence[Update]) -> Decision:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class FixedCount(StoppingRule):
    """The paper's rule: retire after ``count`` classifications, whatever they say."""

    count: int = 30
    name = "fixed-count"

    def decide(self, updates: Sequence[Update]) -> Decision:
        seen = updates[-1].classifications if updates else 0
        if seen >= self.count:
            return Decision(True, "limit")
        return Decision(False, f"{seen} of {self.count} classifications")


@dataclass(frozen=True)
class StableConsensus(StoppingRule):
    """Retire once the consensus has stopped changing: ``stable_checks`` updates in a row with
    stability ≥ ``stability_dice``, after at least ``min_classifications``; always at
    ``max_classifications`` (a slice the crowd cannot agree on should not absorb volunteers for ever).
    """

    min_classifications: int = 8
    max_classifications: int = 30
    stability_dice: float = 0.95
    stable_checks: int = 2
    name = "stable-consensus"

    def decide(self, updates: Sequence[Update]) -> Decision:
        seen = updates[-1].classifications if updates else 0
        if seen >= self.max_classifications:
            return Decision(True, "limit")
        if seen < self.min_classifications:
            return Decision(False, f"{seen} of at least {self.min_classifications} classifications")
        recent = updates[-self.stable_checks :]
        stable = len(recent) == self.stable_checks and all(
            u.stability is not None and u.stability >= self.stability_dice for u in recent
        )
        if stable:
            return Decision(True, "stable")
        last = recent[-1].stability if recent else None
        shown = "n/a" if last is None else f"{last:.3f}"
        return Decision(
            False, f"not stable yet (last stability {shown}, need {self.stability_dice} x{self.stable_checks})"
        )


RULES: Mapping[str, Callable[[RetirementSettings], StoppingRule]] = {
    "stable-consensus": lambda s: StableConsensus(
        s.min_classifications, s.max_classifications, s.stability_dice, s.stable_checks
    ),
    "fixed-count": lambda s: FixedCount(s.max_classifications),
}


def stopping_rule(settings: RetirementSettings) -> StoppingRule:
    """The rule ``retirement.policy`` names, with its parameters from the same section."""
    try:
        factory = RULES[settings.policy]
    except KeyError:
        raise KeyError(f"unknown retirement policy {settings.policy!r}; known: {', '.join(sorted(RULES))}") from None
    return factory(settings)
