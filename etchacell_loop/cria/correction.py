"""Volunteers' corrections of a machine outline → a consensus that cannot lock in the machine's mistakes.

A correction subject shows the model's outline, pre-loaded as editable marks (the new front end) or
burnt into the image (the fallback). Pre-drawn marks anchor volunteers: some accept whatever they are
shown, so a plain majority over corrections rewards accepting. In ``make demo`` before this rule,
8 of 14 correctors kept the model's three small fragments of a plainly visible nucleus, outvoted the
6 who traced it whole, and the fragments became training data.

A correction is therefore read as *evidence about the machine outline*, not as a vote to average
blindly (the rule, with the measurements behind its defaults, is in ``docs/corrections.md``):

1. **Kept or edited.** A drawing whose filled area has Dice ≥ ``agree_dice`` with the machine's is a
   *kept* outline (an untouched pre-loaded mark, or the overlay traced over as it was). Anything
   else is an *edit*. A volunteer who drew nothing where the machine drew something deleted it:
   on a correction subject that is an edit too, a vote for "no envelope here".
2. **Kept and deleted count less.** A kept outline carries ``kept_weight`` of a vote (default ½):
   agreeing costs a volunteer nothing, and a careful corrector and an accept-anything volunteer
   submit the same thing when the machine is right. An empty submission is a vote for "not here"
   of ``deleted_weight`` (default ½), for the same reason: deleting everything costs nothing too,
   and an empty submitter and a careful volunteer who deletes a false outline submit the same
   thing (counted whole, two empty submissions erased right outlines that two volunteers kept:
   ``bench_corrections.py``). Edits count fully. With ½, volunteers who show the envelope is
   elsewhere win a pixel while they are more than a third of the correctors.
3. **A changed outline needs backers.** When the result differs from the machine outline
   (Dice < ``agree_dice``), at least ``min_edits`` volunteers must have edited it, else the slice
   is *disputed*: its consensus is kept for the record but is not training data, and the slice
   waits for more classifications. One volunteer's redraw does not overrule the model; one
   volunteer's acceptance does not confirm it against others.
4. **A kept outline must not be contested.** When the result *is* the machine outline but at least
   ``min_edits`` volunteers agree with each other on something else — they drew the same other
   outline (Dice ≥ ``agree_dice`` with each other, as a kept outline with the machine's), or all
   deleted it — and they carry at least the keepers' weight, the slice is *disputed* too. This is
   the machine's fragments of a nucleus: every volunteer who traces the whole nucleus also covers
   the fragments, so the pixel vote can keep the fragments while the coherent tracers of the
   nucleus are too few for its rest (in ``bench_corrections.py`` such slices entered training at a
   Dice of 0.04 with the truth). Waiting brings more volunteers: more keepers settle a right
   outline, more tracers change a wrong one. Scattered scribbles agree on nothing and do not
   contest.

The verdict's states: ``confirmed`` (the consensus is the machine outline, as volunteers kept it),
``corrected`` (volunteers changed it, enough of them), ``disputed`` (changed by too few, or kept
against a coherent group of dissenters).

Pure functions over masks; the aggregate job supplies the machine's area at the subject's pixels.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from etchacell_loop.cria.consensus import (
    JOIN_RULES,
    Consensus,
    CriaParams,
    Drawing,
    consensus_of_ballots,
    dice,
)
from etchacell_loop.cria.methods import Ballot
from etchacell_loop.cria.raster import Mask, Patch, fill_patch
from etchacell_loop.cria.reliability import VolunteerRecord


class CorrectionState(enum.StrEnum):
    """What volunteers made of a machine outline on one slice."""

    CONFIRMED = "confirmed"  # the consensus is the machine outline
    CORRECTED = "corrected"  # changed, by at least ``min_edits`` volunteers
    DISPUTED = "disputed"  # changed by fewer, or kept against enough who agree on another: not training data

    @property
    def usable(self) -> bool:
        """Whether a consensus in this state may become training data."""
        return self is not CorrectionState.DISPUTED


@dataclass(frozen=True)
class CorrectionRule:
    """The rule's parameters (``consensus.correction_*`` in the configuration)."""

    kept_weight: float = 0.5
    agree_dice: float = 0.9
    min_edits: int = 2
    deleted_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.kept_weight <= 1.0:
            raise ValueError("kept_weight must be in (0, 1]")
        if not 0.0 < self.deleted_weight <= 1.0:
            raise ValueError("deleted_weight must be in (0, 1]")
        if not 0.0 < self.agree_dice <= 1.0:
            raise ValueError("agree_dice must be in (0, 1]")
        if self.min_edits < 1:
            raise ValueError("min_edits must be at least 1")


@dataclass(frozen=True)
class CorrectionVerdict:
    """The verdict on one slice's corrections, with the counts it rests on."""

    state: CorrectionState
    n_kept: int  # drawings that kept the machine outline
    n_edited: int  # drawings that changed it
    n_deleted: int  # classifications that drew nothing where the machine drew something
    machine_dice: float  # Dice between the consensus and the machine outline
    n_contesting: int = 0  # dissenters who agree with each other on an outline other than the machine's

    @property
    def usable(self) -> bool:
        return self.state.usable

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "kept": self.n_kept,
            "edited": self.n_edited,
            "deleted": self.n_deleted,
            "machine_dice": round(self.machine_dice, 4),
            "contesting": self.n_contesting,
        }


def correction_state(payload: Mapping[str, Any] | None) -> CorrectionState | None:
    """The state stored in a consensus row's ``params`` (None for a volunteer consensus or an old row)."""
    found = (payload or {}).get("correction")
    if not isinstance(found, Mapping):
        return None
    try:
        return CorrectionState(str(found.get("state")))
    except ValueError:
        return None


def patch_dice(patch: Patch, machine: Mask) -> float:
    """Dice between a filled drawing (placed in the slice) and the machine's area at full size."""
    machine_px = int(np.count_nonzero(machine))
    if not patch.mask.size:
        return 1.0 if machine_px == 0 else 0.0
    window = machine[patch.top : patch.bottom, patch.left : patch.right]
    inside = patch.mask[: window.shape[0], : window.shape[1]]
    total = patch.area_px + machine_px
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(inside & window)) / total


def correction_consensus(
    drawings: Sequence[Drawing],
    n_deleted: int,
    machine: Mask,
    params: CriaParams,
    rule: CorrectionRule = CorrectionRule(),
    records: Mapping[str, VolunteerRecord] | None = None,
) -> tuple[Consensus, CorrectionVerdict]:
    """The consensus of a slice's corrections of ``machine`` (the model's area at the slice's pixels),
    and the verdict on it. ``n_deleted``: classifications of the slice's own correction subjects that
    drew nothing on it (a volunteer who was shown the outline of a neighbouring slice and drew nothing
    here said nothing about this one). Where the machine drew nothing, drawing nothing agrees with it."""
    shape = (int(machine.shape[0]), int(machine.shape[1]))
    join = JOIN_RULES[params.join_rule]
    fills = [fill_patch(join(list(d.strokes)), shape) for d in drawings]
    kept = [patch_dice(fill, machine) >= rule.agree_dice for fill in fills]
    ballots = [
        Ballot(fill, (records or {}).get(d.volunteer), rule.kept_weight if keeps else 1.0)
        for d, fill, keeps in zip(drawings, fills, kept, strict=True)
    ]
    deleted = max(0, n_deleted) if machine.any() else 0
    voting = correction_params(params, deleted)
    consensus = consensus_of_ballots(
        drawings, ballots, len(drawings) + deleted, shape, voting, abstaining_weight=rule.deleted_weight
    )
    contesting = contesting_count(
        [f for f, keeps in zip(fills, kept, strict=True) if not keeps], deleted, machine, rule
    )
    return consensus, judge(consensus.area, machine, sum(kept), len(kept) - sum(kept), deleted, rule, contesting)


def contesting_count(edits: Sequence[Patch], n_deleted: int, machine: Mask, rule: CorrectionRule) -> int:
    """The largest group of dissenters who agree with each other on an outline other than the
    machine's: the edits that match one edit as a kept outline matches the machine (Dice ≥
    ``agree_dice``), or the deletions (all saying "nothing here") where the machine drew something.
    Each edit already differs from the machine's outline, so any such group stands for another."""
    shape = (int(machine.shape[0]), int(machine.shape[1]))
    filled = [edit.paste(shape) for edit in edits]
    deleting = n_deleted if machine.any() else 0
    drawing = max((sum(1 for other in filled if dice(one, other) >= rule.agree_dice) for one in filled), default=0)
    return max(deleting, drawing)


def correction_params(params: CriaParams, n_deleted: int) -> CriaParams:
    """The vote corrections get: the plain weighted CRIA vote whatever method traced slices use
    (``cria-robust`` gates the vote around the medoid drawing, which, when many accept, is the
    machine's outline, and would leave out exactly those who redrew it; STAPLE ignores vote
    weights), counting deletions as "not here" when there are any."""
    denominator = "classifications" if n_deleted else params.denominator
    return replace(params, method="cria", denominator=denominator)


def rule_from_settings(
    kept_weight: float, agree_dice: float, min_edits: int, deleted_weight: float = 0.5
) -> CorrectionRule:
    """The rule the ``consensus.correction_*`` settings name."""
    return CorrectionRule(kept_weight, agree_dice, min_edits, deleted_weight)


def judge(
    area: Mask,
    machine: Mask,
    n_kept: int,
    n_edited: int,
    n_deleted: int,
    rule: CorrectionRule,
    n_contesting: int = 0,
) -> CorrectionVerdict:
    """Confirmed when the consensus is the machine outline and it is not contested (fewer than
    ``min_edits`` dissenters agree on another outline, or they weigh less than the keepers);
    corrected when it differs and at least ``min_edits`` volunteers changed it (drawing or
    deleting); disputed otherwise."""
    agreement = dice(area, machine)
    contested = n_contesting >= rule.min_edits and n_contesting >= rule.kept_weight * n_kept
    if agreement >= rule.agree_dice and not contested:
        state = CorrectionState.CONFIRMED
    elif agreement >= rule.agree_dice:
        state = CorrectionState.DISPUTED
    elif n_edited + n_deleted >= rule.min_edits:
        state = CorrectionState.CORRECTED
    else:
        state = CorrectionState.DISPUTED
    return CorrectionVerdict(state, n_kept, n_edited, n_deleted, agreement, n_contesting)
