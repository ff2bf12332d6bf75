"""Classifications of flipbook subjects → the drawings of each slice.

A mark on frame k belongs to the slice that frame shows (``subject_metadata.SubjectLayout``), so a
5-frame subject feeds up to five slices, and one slice gathers drawings from every subject whose
frames show it. Marks on a frame whose slice the metadata does not name are counted as *unplaced*,
never mixed into the subject's own slice.

One volunteer counts once per slice: if they drew on the same slice from two subjects, the drawing
made on the subject whose target it is wins, then the latest.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from etchacell_loop.annotations import FrameSize, Tracing
from etchacell_loop.cria.consensus import Drawing
from etchacell_loop.cria.joining import Points
from etchacell_loop.subject_metadata import SliceKey, SubjectLayout

Size = tuple[int, int]  # (height, width) in pixels


@dataclass(frozen=True)
class Placement:
    """One classification's strokes by slice, each slice's grid size where known, and the frames
    whose marks could not be placed."""

    strokes: Mapping[SliceKey, tuple[Points, ...]]
    sizes: Mapping[SliceKey, Size]
    unplaced_frames: tuple[int, ...] = ()
    own_size: Size | None = None  # the size of the subject's target frame, drawn on or not

    @property
    def unplaced_marks(self) -> int:
        return len(self.unplaced_frames)


def place_tracings(
    tracings: Iterable[Tracing], layout: SubjectLayout, frame_sizes: Mapping[int, FrameSize]
) -> Placement:
    """Route every tracing to the slice its frame shows."""
    strokes: dict[SliceKey, list[Points]] = defaultdict(list)
    sizes: dict[SliceKey, Size] = {}
    own = frame_sizes.get(layout.target_frame)
    unplaced: list[int] = []
    for tracing in tracings:
        key = layout.slice_of(tracing.frame)
        if key is None:
            unplaced.append(tracing.frame)
            continue
        strokes[key].append(np.column_stack([tracing.x_px, tracing.y_px]))
        size = frame_sizes.get(tracing.frame)
        if size is not None:
            sizes[key] = (round(size.height_px), round(size.width_px))
    own_size = (round(own.height_px), round(own.width_px)) if own is not None else None
    return Placement({k: tuple(v) for k, v in strokes.items()}, sizes, tuple(unplaced), own_size)


@dataclass
class _Contribution:
    on_target: bool
    classification_id: int
    strokes: tuple[Points, ...]
    size: Size | None


@dataclass
class SliceDrawings:
    """Everything one slice's consensus needs."""

    key: SliceKey
    shape: Size
    drawings: list[Drawing]
    n_classifications: int  # volunteers who were shown the slice: its subjects' classifiers and every drawer
    subject_ids: tuple[int, ...]  # those subjects


@dataclass
class SliceAssembler:
    """Collects placements classification by classification, then hands out each slice's drawings."""

    fallback_size: Size | None = None
    _contributions: dict[SliceKey, dict[str, _Contribution]] = field(default_factory=lambda: defaultdict(dict))
    _shown: dict[SliceKey, set[str]] = field(default_factory=lambda: defaultdict(set))
    _subjects: dict[SliceKey, set[int]] = field(default_factory=lambda: defaultdict(set))
    _own_sizes: dict[SliceKey, Counter[Size]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, volunteer: str, classification_id: int, layout: SubjectLayout, placement: Placement) -> None:
        """Record one classification of the subject ``layout`` describes."""
        own = layout.own_slice
        self._shown[own].add(volunteer)
        self._subjects[own].add(layout.subject_id)
        if placement.own_size is not None:
            self._own_sizes[own][placement.own_size] += 1
        for key, strokes in placement.strokes.items():
            new = _Contribution(key == own, classification_id, strokes, placement.sizes.get(key))
            old = self._contributions[key].get(volunteer)
            if old is None or (new.on_target, new.classification_id) > (old.on_target, old.classification_id):
                self._contributions[key][volunteer] = new

    def slices(self) -> list[SliceKey]:
        """Every slice that is some subject's own slice (slices reached only through other frames
        have no subject to report them under)."""
        return sorted(self._shown)

    def orphan_drawings(self) -> int:
        """Drawings on slices no subject in this batch shows as its own."""
        return sum(len(v) for k, v in self._contributions.items() if k not in self._shown)

    def drawings(self, key: SliceKey) -> SliceDrawings | None:
        """The slice's drawings in one grid, oldest first; None when no size is known for it."""
        contributions = self._contributions.get(key, {})
        own_sizes = self._own_sizes.get(key)
        shape = (
            (own_sizes.most_common(1)[0][0] if own_sizes else None)
            or _slice_shape(list(contributions.values()))
            or self.fallback_size
        )
        if shape is None:
            return None
        drawings = [
            Drawing(volunteer, c.classification_id, _rescaled(c.strokes, c.size, shape))
            for volunteer, c in sorted(contributions.items(), key=lambda item: item[1].classification_id)
        ]
        shown = len(self._shown.get(key, set()) | set(contributions))
        return SliceDrawings(key, shape, drawings, shown, tuple(sorted(self._subjects[key])))


def _slice_shape(contributions: Sequence[_Contribution]) -> Size | None:
    """The grid most drawings on the slice were made in, when its subjects' frames name none."""
    sizes = Counter(c.size for c in contributions if c.size is not None)
    return sizes.most_common(1)[0][0] if sizes else None


def _rescaled(strokes: tuple[Points, ...], size: Size | None, shape: Size) -> tuple[Points, ...]:
    if size is None or size == shape:
        return strokes
    scale = np.array([shape[1] / size[1], shape[0] / size[0]])
    return tuple(s * scale for s in strokes)
