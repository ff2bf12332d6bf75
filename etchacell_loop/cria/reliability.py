"""How far each volunteer agrees with the consensus, pooled across the slices they drew on.

One bad tracing says little; a volunteer who traces the nucleolus on three hundred subjects says a
lot. A :class:`VolunteerRecord` is the running sum of a volunteer's agreement with the consensus of
every slice they drew on (Dice, and the pixel counts STAPLE needs), so it can be kept in a database
row, added to as classifications arrive, and turned into a vote weight or a flag. The weight shrinks
towards a prior for volunteers seen on few slices, so a newcomer's single slip is not a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VolunteerRecord:
    """A volunteer's agreement with consensus, summed over ``slices`` slices (pixel counts in the
    slices' own pixels; ``tn`` counts the background near the tracings, not the whole image)."""

    slices: int = 0
    dice_sum: float = 0.0
    tp: int = 0
    fn: int = 0
    fp: int = 0
    tn: int = 0

    def __add__(self, other: VolunteerRecord) -> VolunteerRecord:
        return VolunteerRecord(
            self.slices + other.slices,
            self.dice_sum + other.dice_sum,
            self.tp + other.tp,
            self.fn + other.fn,
            self.fp + other.fp,
            self.tn + other.tn,
        )

    def __sub__(self, other: VolunteerRecord) -> VolunteerRecord:
        """This record without ``other`` (a volunteer's record elsewhere than on one slice)."""
        return VolunteerRecord(
            self.slices - other.slices,
            self.dice_sum - other.dice_sum,
            self.tp - other.tp,
            self.fn - other.fn,
            self.fp - other.fp,
            self.tn - other.tn,
        )

    @property
    def mean_dice(self) -> float:
        return self.dice_sum / self.slices if self.slices else float("nan")

    @property
    def sensitivity(self) -> float:
        """Of the consensus area, the fraction this volunteer covered (smoothed by one pixel each way)."""
        return (self.tp + 1) / (self.tp + self.fn + 2)

    @property
    def specificity(self) -> float:
        """Of the background near the tracings, the fraction this volunteer left empty."""
        return (self.tn + 1) / (self.tn + self.fp + 2)


@dataclass(frozen=True)
class ReliabilityParams:
    """How pooled agreement becomes a weight and a flag. Declared as data, chosen by configuration."""

    prior_dice: float = 0.8  # what a volunteer never seen before is assumed to reach
    prior_slices: float = 2.0  # how many slices' worth of evidence that assumption is worth
    flag_below_dice: float = 0.5  # pooled agreement under which a volunteer is flagged …
    flag_min_slices: int = 3  # … once seen on at least this many slices
    min_weight: float = 0.02  # a flagged volunteer still counts a little: weights are not verdicts


def shrunk_agreement(record: VolunteerRecord | None, params: ReliabilityParams = ReliabilityParams()) -> float:
    """Pooled mean Dice, shrunk towards ``prior_dice`` by ``prior_slices`` pseudo-slices."""
    slices, dice_sum = (record.slices, record.dice_sum) if record is not None else (0, 0.0)
    return (dice_sum + params.prior_dice * params.prior_slices) / (slices + params.prior_slices)


def reliability_weight(record: VolunteerRecord | None, params: ReliabilityParams = ReliabilityParams()) -> float:
    """A vote weight in (0, 1]: the shrunk agreement, never below ``min_weight``."""
    return max(params.min_weight, min(1.0, shrunk_agreement(record, params)))


def is_flagged(record: VolunteerRecord | None, params: ReliabilityParams = ReliabilityParams()) -> bool:
    """Flagged: seen often enough, and agreeing with consensus less than ``flag_below_dice``."""
    return (
        record is not None
        and record.slices >= params.flag_min_slices
        and shrunk_agreement(record, params) < params.flag_below_dice
    )
