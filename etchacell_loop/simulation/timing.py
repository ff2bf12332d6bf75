"""How long a simulated volunteer takes: the ``started_at`` / ``finished_at`` their classification records.

Every real Zooniverse classification carries the browser's ``metadata.started_at`` and
``finished_at``; the loop reads volunteer effort from them (:mod:`etchacell_loop.effort`). Simulated
volunteers record times from this model, so the effort a correction saves is measured the same way
in a simulation as on a live project:

- **Tracing** from scratch: a look at the subject, then drawing along the outline at a hand's pace,
  ``look_s + drawn_px / trace_px_per_s``. A 370 px nucleus (2,300 px of outline at the subject's
  1000 px) takes about 45 s; a volunteer who finds nothing to trace spends only the look.
- **Correcting** a machine outline: a look, reading the outline shown (``shown_px / read_px_per_s``,
  far faster than drawing it), ``delete_s`` per mark deleted, and drawing what the volunteer drew
  themselves at the tracing pace. Accepting a right outline takes the look and the read (about 12 s
  for the same nucleus); redrawing everything costs as much as tracing, plus the read.
- Each volunteer works at their own pace: every duration is multiplied by the classification's
  ``pace``, drawn lognormal around 1 (``pace_sigma``), as volunteers' times spread on real projects.

The figures are assumptions stated here, not measurements from Etch a Cell (its exports carry the
times; read them with :mod:`etchacell_loop.effort` to calibrate). Pure functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class TimeModel:
    """The time model's parameters (see the module docstring)."""

    look_s: float = 6.0
    trace_px_per_s: float = 55.0
    read_px_per_s: float = 400.0
    delete_s: float = 1.5
    pace_sigma: float = 0.35

    def tracing_s(self, drawn_px: float, pace: float = 1.0) -> float:
        """Seconds to trace ``drawn_px`` of outline from scratch."""
        return pace * (self.look_s + drawn_px / self.trace_px_per_s)

    def correcting_s(self, shown_px: float, drawn_px: float, deleted: int, pace: float = 1.0) -> float:
        """Seconds to judge ``shown_px`` of machine outline, delete ``deleted`` marks and draw ``drawn_px``."""
        return pace * (
            self.look_s + shown_px / self.read_px_per_s + deleted * self.delete_s + drawn_px / self.trace_px_per_s
        )

    def pace(self, rng: np.random.Generator) -> float:
        """One classification's pace (one draw from ``rng``)."""
        return float(rng.lognormal(0.0, self.pace_sigma))


def path_length_px(paths: Iterable[tuple[NDArray[np.float64], NDArray[np.float64]]]) -> float:
    """Total length of polylines given as (x, y) arrays."""
    total = 0.0
    for x, y in paths:
        if len(x) >= 2:
            total += float(np.hypot(np.diff(x), np.diff(y)).sum())
    return total
