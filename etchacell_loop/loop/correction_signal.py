"""How much volunteers changed a model's predictions, as a signal about the promoted model.

Why: validation figures are measured on a few ROIs against consensus; the correction Dice (between a
prediction and the consensus of its volunteers' corrections) is the model's quality where it is used,
on slices nobody traced. A newly promoted version whose predictions volunteers change clearly more
than they changed its predecessor's is a regression the validation ROIs did not show. The loop does not
roll back on its own (a person decides: ``etchacell model rollback``); it raises the signal once per
version, as a warning event the dashboard and ``etchacell query recent_events`` show.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from sqlmodel import Session, col, select

from etchacell_loop.db.models import Event, EventLevel, ModelVersion, PredictionBatch, SlicePrediction
from etchacell_loop.model.registry import promotion_stack

REGRESSION_EVENT = "model.corrections_regressed"
MIN_CORRECTED_SLICES = 5  # fewer corrected slices than this say too little to compare
REGRESSION_MARGIN_DICE = 0.05


@dataclass(frozen=True)
class CorrectionRegression:
    """The promoted version's predictions were changed more than its predecessor's."""

    current: ModelVersion
    previous: ModelVersion
    current_median_dice: float
    previous_median_dice: float
    current_slices: int
    previous_slices: int

    def message(self) -> str:
        return (
            f"volunteers changed {self.current.version}'s predictions more than {self.previous.version}'s: median "
            f"Dice with their corrections {self.current_median_dice:.3f} ({self.current_slices} slices) against "
            f"{self.previous_median_dice:.3f} ({self.previous_slices} slices); consider `etchacell model rollback`"
        )


def correction_dice_by_version(session: Session) -> dict[int, list[float]]:
    """Model version id → the correction Dice of every one of its slices measured so far."""
    statement = (
        select(PredictionBatch.model_version_id, SlicePrediction.correction_dice)
        .join(SlicePrediction, col(SlicePrediction.batch_id) == col(PredictionBatch.id))
        .where(col(SlicePrediction.correction_dice).is_not(None))
    )
    found: dict[int, list[float]] = defaultdict(list)
    for version_id, value in session.exec(statement).all():
        if value is not None:
            found[version_id].append(float(value))
    return dict(found)


def correction_regression(
    session: Session, min_slices: int = MIN_CORRECTED_SLICES, margin_dice: float = REGRESSION_MARGIN_DICE
) -> CorrectionRegression | None:
    """The regression of the promoted version against the one promoted before it, if there is one:
    both with at least ``min_slices`` corrected slices, the current median Dice lower by more than
    ``margin_dice``."""
    stack = promotion_stack(session)
    if len(stack) < 2:
        return None
    dice = correction_dice_by_version(session)
    current_values, previous_values = dice.get(stack[-1], []), dice.get(stack[-2], [])
    if min(len(current_values), len(previous_values)) < min_slices:
        return None
    current_median, previous_median = statistics.median(current_values), statistics.median(previous_values)
    if current_median >= previous_median - margin_dice:
        return None
    current, previous = session.get(ModelVersion, stack[-1]), session.get(ModelVersion, stack[-2])
    if current is None or previous is None:
        return None
    return CorrectionRegression(
        current, previous, current_median, previous_median, len(current_values), len(previous_values)
    )


def raise_regression_signal(session: Session) -> str | None:
    """Write the warning event for the promoted version's regression, once per version; the message,
    or None when there is nothing (new) to say. The caller commits."""
    regression = correction_regression(session)
    if regression is None:
        return None
    said = session.exec(
        select(Event.id).where(Event.kind == REGRESSION_EVENT, Event.model_version_id == regression.current.id)
    ).first()
    if said is not None:
        return None
    message = regression.message()
    session.add(
        Event(
            level=EventLevel.WARNING,
            kind=REGRESSION_EVENT,
            message=message,
            model_version_id=regression.current.id,
            payload={
                "previous_version_id": regression.previous.id,
                "median_dice": round(regression.current_median_dice, 4),
                "previous_median_dice": round(regression.previous_median_dice, 4),
            },
        )
    )
    return message
