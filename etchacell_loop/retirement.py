"""When has a subject had enough classifications? Stopping rules, registered by name.

The paper retired every subject after 30 classifications (§4.6) and its discussion suggests retiring
a slice "once an acceptable segmentation quality has been achieved". Most slices settle far sooner:
once more volunteers no longer change the consensus, more volunteers only cost their time.

A stopping rule reads a subject's *checks*, oldest first: each time the retire job judged a new
consensus of the subject's slice it recorded one :class:`Update`. What a check compares:

- ``check_dice``: the Dice between the consensus judged now and the consensus judged at the
  subject's previous check. This is what sees change: a crowd that arrives in a burst and moves the
  consensus elsewhere (eight tracings of one outline, then ten of another) leaves every consensus
  perfectly stable against itself, but the two checks disagree.
- ``stability``: the consensus's own stability, the Dice with itself without the latest drawing
  (``cria.consensus.Consensus.stability``). Required as well when known: two checks can agree while
  the answer sits on a knife edge (a tied vote that the latest drawing decided); then one more
  volunteer may still flip it, and the check does not count.
- ``new_classifications``: how many of the subject's own classifications (of that subject, in its
  own workflow, as Panoptes counts toward its retirement limit) arrived since the previous check.
  Only a check with at least one counts toward "stable": a check caused by neighbouring flipbooks'
  marks on the slice, with nothing new from this subject's own volunteers, says nothing about
  whether its volunteers still disagree.

Rules are picked by ``retirement.policy``; their parameters come from the ``retirement`` section.
Pure functions over records: no database, no files, no network (the retire job measures and counts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from etchacell_loop.config import RetirementSettings


@dataclass(frozen=True)
class Update:
    """One check of a subject's consensus.

    ``classifications``: the subject's own classifications the judged consensus accounts for;
    ``stability``: the consensus's Dice with itself without its latest drawing (None while fewer
    than two volunteers drew); ``check_dice``: Dice with the consensus judged at the previous check
    (None at the first check, or when it could not be measured); ``new_classifications``: the
    subject's own classifications since the previous check.
    """

    classifications: int
    stability: float | None
    check_dice: float | None = None
    new_classifications: int = 0


@dataclass(frozen=True)
class Decision:
    retire: bool
    reason: str  # "stable", "limit", or why not yet


class StoppingRule:
    """Decides, from a subject's checks so far (oldest first), whether to retire it."""

    name = "abstract"

    def decide(self, updates: Sequence[Update]) -> Decision:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class FixedCount(StoppingRule):
    """The paper's rule: retire after ``count`` of the subject's own classifications, whatever they say."""

    count: int = 30
    name = "fixed-count"

    def decide(self, updates: Sequence[Update]) -> Decision:
        seen = updates[-1].classifications if updates else 0
        if seen >= self.count:
            return Decision(True, "limit")
        return Decision(False, f"{seen} of {self.count} classifications")


@dataclass(frozen=True)
class StableConsensus(StoppingRule):
    """Retire once the consensus has stopped changing between checks: ``stable_checks`` counting
    checks in a row (see :meth:`stable_streak`), after at least ``min_classifications`` of the
    subject's own classifications; always at ``max_classifications`` of them (a slice the crowd
    cannot agree on should not absorb volunteers for ever).
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
        streak = self.stable_streak(updates)
        if streak >= self.stable_checks:
            return Decision(True, "stable")
        last = updates[-1]
        return Decision(
            False,
            f"not stable yet (Dice with the previous check {_shown(last.check_dice)}, own stability "
            f"{_shown(last.stability)}, {last.new_classifications} new; {streak} of {self.stable_checks} "
            f"checks at Dice >= {self.stability_dice})",
        )

    def agrees(self, update: Update) -> bool:
        """The check's consensus matches the previous check's, and (when known) its latest drawing
        does not decide it."""
        if update.check_dice is None or update.check_dice < self.stability_dice:
            return False
        return update.stability is None or update.stability >= self.stability_dice

    def stable_streak(self, updates: Sequence[Update]) -> int:
        """Counting checks in a row, back from the latest: an agreeing check with new classifications
        of the subject counts one; an agreeing check without any neither counts nor breaks the run;
        any check that does not agree ends it."""
        streak = 0
        for update in reversed(updates):
            if not self.agrees(update):
                break
            if update.new_classifications > 0:
                streak += 1
        return streak


RULES: Mapping[str, Callable[[RetirementSettings], StoppingRule]] = {
    "stable-consensus": lambda s: StableConsensus(
        s.min_classifications, s.max_classifications, s.stability_dice, s.stable_checks
    ),
    "fixed-count": lambda s: FixedCount(s.max_classifications),
}


def stopping_rule(settings: RetirementSettings, corrections: bool = False) -> StoppingRule:
    """The rule ``retirement.policy`` names, with its parameters from the same section. For
    correction subjects (``corrections``) the stable-consensus rule starts at ``min_corrections``:
    a machine outline that the first volunteers keep, or change the same way, needs fewer checks
    than a slice traced from nothing (``bench/bench_corrections.py`` measures the quality kept)."""
    try:
        factory = RULES[settings.policy]
    except KeyError:
        raise KeyError(f"unknown retirement policy {settings.policy!r}; known: {', '.join(sorted(RULES))}") from None
    rule = factory(settings)
    if corrections and isinstance(rule, StableConsensus):
        return replace(rule, min_classifications=min(settings.min_corrections, rule.max_classifications))
    return rule


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
