"""A volunteer correcting the model's envelope outline: keep what is right, redraw what is wrong.

The correction workflow shows volunteers the model's outline, either as editable marks pre-loaded
from a Caesar ``machineLearnt`` reduction or burnt into the image as a magenta overlay (the fallback
subjects: frame 1 is the slice with the outline drawn in RGB(255, 0, 255), 3 px wide). Where the
machine marks come from is kept apart from how a volunteer judges them:

- :func:`correct_marks` (pure): machine marks + the frame's truth + a volunteer → the marks the
  volunteer submits. A mark that follows the true envelope closely is kept as it is (with its
  ``markId``, as the classifier keeps an untouched pre-loaded mark); a mark that strays is deleted
  and that part of the envelope redrawn by hand; a mark nowhere near the envelope (on the nucleolus,
  a mitochondrion) is deleted; envelope islands no mark covers are drawn. How strictly a volunteer
  judges and how much they fix is their *corrector* behaviour (:class:`Corrector`, drawn from a
  :class:`CorrectorMix`): careful correctors fix everything, partial fixers some of it, accept-anything
  volunteers submit whatever the machine drew, over-correctors delete it all and trace from scratch,
  empty submitters delete it all and submit nothing. Without one, the tracing behaviour decides
  (:data:`HABITS`).
- :func:`marks_from_overlay`: the machine's outline read back from an overlay image.

All randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from etchacell_loop.simulation.crowd import Behaviour, SimStroke, Volunteer, trace
from etchacell_loop.simulation.shapes import Mask, SliceTruth, outlines, signed_area

FloatArray = NDArray[np.float64]
OVERLAY_RGB = (255, 0, 255)
OVERLAY_WIDTH_PX = 3.0


@dataclass(frozen=True, eq=False)
class MachineMark:
    """One pre-drawn line in subject pixels, with the id the classifier gives it."""

    mark_id: str | None
    frame: int
    x_px: FloatArray
    y_px: FloatArray


@dataclass(frozen=True, eq=False)
class SubmittedMark:
    """A line the volunteer submits: a kept machine mark (its id kept) or their own (``mark_id`` None)."""

    stroke: SimStroke
    mark_id: str | None = None

    @property
    def kept(self) -> bool:
        return self.mark_id is not None


@dataclass(frozen=True)
class CorrectionHabit:
    """How one kind of volunteer corrects: a mark whose points lie within ``tolerance_px`` of the
    envelope (90th percentile) is right; one with a median over ``off_structure_px`` is on something
    else. Wrong marks are fixed with ``fix_probability``, missing islands drawn with ``add_probability``;
    ``accept_all`` submits the machine's marks untouched."""

    tolerance_px: float = 3.0
    off_structure_px: float = 12.0
    fix_probability: float = 1.0
    add_probability: float = 1.0
    accept_all: bool = False


_THOROUGH = CorrectionHabit()
_HASTY = CorrectionHabit(tolerance_px=7.0, off_structure_px=20.0, fix_probability=0.5, add_probability=0.5)
_ACCEPTING = CorrectionHabit(accept_all=True)

HABITS: Mapping[Behaviour, CorrectionHabit] = {
    Behaviour.CAREFUL: _THOROUGH,
    Behaviour.OFFSET: _THOROUGH,
    Behaviour.WRONG_FRAME: _THOROUGH,
    Behaviour.SLOPPY: _HASTY,
    Behaviour.PARTIAL: _HASTY,
    Behaviour.EMPTY: _ACCEPTING,
    Behaviour.NUCLEOLUS: _ACCEPTING,
    Behaviour.FALSE_POSITIVE: _ACCEPTING,
    Behaviour.GRAFFITI: _ACCEPTING,
}


class Corrector(enum.StrEnum):
    """How a volunteer treats a machine outline they are asked to correct."""

    CAREFUL = "careful"  # keeps what is right, redraws what strays, draws what is missing
    PARTIAL = "partial"  # judges loosely and fixes about half of what is wrong
    ACCEPT = "accept"  # submits whatever the machine drew
    REDRAW = "redraw"  # over-corrector: deletes every mark and traces the envelope from scratch
    EMPTY = "empty"  # deletes every mark and submits nothing


CORRECTOR_HABITS: Mapping[Corrector, CorrectionHabit] = {
    Corrector.CAREFUL: _THOROUGH,
    Corrector.PARTIAL: _HASTY,
    Corrector.ACCEPT: _ACCEPTING,
}


def default_corrector_fractions() -> dict[Corrector, float]:
    """An assumed mix (no published figure gives one): most correctors fix what they see, one in
    seven accepts anything, some redraw everything, a few submit nothing."""
    return {
        Corrector.CAREFUL: 0.5,
        Corrector.PARTIAL: 0.2,
        Corrector.ACCEPT: 0.15,
        Corrector.REDRAW: 0.1,
        Corrector.EMPTY: 0.05,
    }


@dataclass(frozen=True)
class CorrectorMix:
    """The share of each corrector behaviour among volunteers (normalised)."""

    fractions: Mapping[Corrector, float] = field(default_factory=default_corrector_fractions)

    def __post_init__(self) -> None:
        if any(v < 0 for v in self.fractions.values()) or sum(self.fractions.values()) <= 0:
            raise ValueError("corrector fractions must be non-negative with a positive sum")

    @classmethod
    def parse(cls, text: str) -> CorrectorMix:
        """``accept=0.3,careful=0.7``: the given mix (names as in :class:`Corrector`)."""
        fractions: dict[Corrector, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            try:
                fractions[Corrector(name.strip())] = float(value) if value.strip() else 1.0
            except ValueError:
                known = ", ".join(c.value for c in Corrector)
                raise ValueError(f"bad corrector entry {item!r}: expected NAME=FRACTION with one of {known}") from None
        return cls(fractions)

    def with_accepting(self, share: float) -> CorrectorMix:
        """This mix with ``share`` accept-anything volunteers, the others scaled to fill the rest."""
        if not 0.0 <= share <= 1.0:
            raise ValueError("the accepting share is a fraction between 0 and 1")
        others = {c: v for c, v in self.fractions.items() if c is not Corrector.ACCEPT and v > 0}
        total = sum(others.values())
        scaled: dict[Corrector, float] = {c: (1.0 - share) * v / total for c, v in others.items()} if total > 0 else {}
        scaled[Corrector.ACCEPT] = share
        return CorrectorMix(scaled)

    def draw(self, rng: np.random.Generator) -> Corrector:
        """One volunteer's corrector behaviour."""
        kinds = [c for c, share in self.fractions.items() if share > 0]
        shares = np.array([self.fractions[c] for c in kinds], dtype=np.float64)
        return kinds[int(rng.choice(len(kinds), p=shares / shares.sum()))]


def correct_marks(
    machine: Sequence[MachineMark],
    truth: SliceTruth,
    volunteer: Volunteer,
    rng: np.random.Generator,
    frame: int = 0,
    corrector: Corrector | None = None,
) -> list[SubmittedMark]:
    """The marks ``volunteer`` submits on ``frame`` after judging the machine's marks against ``truth``,
    as their ``corrector`` behaviour does (without one: as their tracing behaviour's :data:`HABITS`)."""
    if corrector is Corrector.EMPTY:
        return []
    if corrector is Corrector.REDRAW:
        return [SubmittedMark(SimStroke(frame, s.x_px, s.y_px)) for s in trace(volunteer, [truth], 0, rng)]
    habit = CORRECTOR_HABITS[corrector] if corrector is not None else HABITS[volunteer.behaviour]
    if habit.accept_all:
        return [_keep(mark) for mark in machine]
    distance = envelope_distance_px(truth.nucleus)
    islands, n_islands = ndimage.label(truth.nucleus)
    nearest_island = _nearest_island_map(islands)
    submitted: list[SubmittedMark] = []
    covered: set[int] = set()
    redraw: set[int] = set()
    for mark in machine:
        near = _sample(distance, mark.x_px, mark.y_px)
        if near.size == 0 or float(np.median(near)) > habit.off_structure_px:
            continue  # on another structure: deleted
        nearest = _islands_along(nearest_island, mark)
        if float(np.percentile(near, 90)) <= habit.tolerance_px:
            submitted.append(_keep(mark))
            covered |= nearest
        elif rng.random() < habit.fix_probability:
            redraw |= nearest
        else:
            submitted.append(_keep(mark))  # wrong, but left as it was
            covered |= nearest
    missing = {k for k in range(1, n_islands + 1) if k not in covered and k not in redraw}
    redraw |= {k for k in sorted(missing) if rng.random() < habit.add_probability}
    if redraw:
        submitted += _redraw(volunteer, truth, islands, sorted(redraw), frame, rng)
    return submitted


def envelope_distance_px(nucleus: Mask) -> FloatArray:
    """Distance of every pixel to the nucleus boundary (inside and out); infinite without a nucleus."""
    if not nucleus.any():
        return np.full(nucleus.shape, np.inf)
    inside = ndimage.distance_transform_edt(nucleus)
    outside = ndimage.distance_transform_edt(~nucleus)
    return np.asarray(np.where(nucleus, inside, outside) - 0.5, dtype=np.float64)


def _sample(image: FloatArray, x_px: FloatArray, y_px: FloatArray) -> FloatArray:
    height, width = image.shape
    cols = np.clip(np.round(x_px).astype(np.intp), 0, width - 1)
    rows = np.clip(np.round(y_px).astype(np.intp), 0, height - 1)
    return np.asarray(image[rows, cols], dtype=np.float64)


def _nearest_island_map(islands: NDArray[np.int32]) -> NDArray[np.int32]:
    """For every pixel, the label of the nearest nucleus island (0 where there is none)."""
    if not islands.any():
        return islands
    _, (rows, cols) = ndimage.distance_transform_edt(islands == 0, return_indices=True)
    return np.asarray(islands[rows, cols])


def _islands_along(nearest_island: NDArray[np.int32], mark: MachineMark) -> set[int]:
    """The nucleus islands a mark runs along."""
    height, width = nearest_island.shape
    c = np.clip(np.round(mark.x_px).astype(np.intp), 0, width - 1)
    r = np.clip(np.round(mark.y_px).astype(np.intp), 0, height - 1)
    return {int(k) for k in np.unique(nearest_island[r, c]) if k}


def _keep(mark: MachineMark) -> SubmittedMark:
    return SubmittedMark(SimStroke(mark.frame, mark.x_px, mark.y_px), mark.mark_id)


def _redraw(
    volunteer: Volunteer,
    truth: SliceTruth,
    islands: NDArray[np.int32],
    labels: Sequence[int],
    frame: int,
    rng: np.random.Generator,
) -> list[SubmittedMark]:
    """The volunteer traces these islands of the envelope their own way (careful or not)."""
    region = np.isin(islands, labels)
    partial = SliceTruth(z=truth.z, nucleus=region, nucleolus=np.zeros_like(region), organelles=())
    hand = volunteer if volunteer.behaviour in (Behaviour.SLOPPY, Behaviour.PARTIAL) else _steady(volunteer)
    strokes = trace(hand, [partial], 0, rng)
    return [SubmittedMark(SimStroke(frame, s.x_px, s.y_px)) for s in strokes]


def _steady(volunteer: Volunteer) -> Volunteer:
    """A careful hand: an offset volunteer still follows their membrane, others trace the envelope."""
    behaviour = Behaviour.OFFSET if volunteer.behaviour is Behaviour.OFFSET else Behaviour.CAREFUL
    return replace(volunteer, behaviour=behaviour)


# --- the overlay route --------------------------------------------------------------------------------


def overlay_mask(rgb: NDArray[np.uint8]) -> Mask:
    """Pixels of the magenta outline in an RGB image, JPEG ringing allowed: strongly red and blue, little green."""
    image = rgb.astype(np.int16)
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    return np.asarray((red > 150) & (blue > 150) & (green < 110) & (np.minimum(red, blue) - green > 80))


def marks_from_overlay(
    rgb: NDArray[np.uint8], frame: int = 0, line_width_px: float = OVERLAY_WIDTH_PX, min_area_px: float = 30.0
) -> list[MachineMark]:
    """The machine's outline as closed loops along the middle of the drawn line, one mark per loop.

    The line is filled (each loop with what it encloses), then shrunk by half the line's width, so
    the loops run where the line's centre was. Marks carry no id: nothing was pre-loaded.
    """
    line = overlay_mask(rgb)
    line = ndimage.binary_closing(line, structure=np.ones((3, 3), bool))  # gaps left by compression
    filled = ndimage.binary_fill_holes(line)
    centre = ndimage.distance_transform_edt(filled) > line_width_px / 2.0
    marks: list[MachineMark] = []
    for loop in outlines(np.asarray(centre), min_area_px=min_area_px):
        if signed_area(loop) > 0:
            continue  # a hole in the filled region: not an outline the machine drew
        closed = np.vstack([loop, loop[:1]])
        marks.append(MachineMark(None, frame, closed[:, 0].copy(), closed[:, 1].copy()))
    return marks
