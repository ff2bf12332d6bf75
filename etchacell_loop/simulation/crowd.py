"""Synthetic volunteers who trace the nuclear envelope the ways real ones do, mistakes included.

Each volunteer keeps one behaviour (the kinds in the paper's Figure 2 and in live crowds) and a few
personal constants (how fast the mouse samples, how steady the hand, which side of the envelope an
offset volunteer follows). :func:`trace` turns a flipbook's truth into the strokes the volunteer's
mouse would record: float pixel coordinates about every 2 px along the path, clipped to the image.

:class:`CrowdMix` says who is in the crowd: the share of each behaviour among ordinary volunteers,
whose effort is heavy-tailed as on Zooniverse, and a few prolific volunteers who do a large share of
all classifications while repeating one mistake, the case that breaks naive averaging.
:func:`assign_crowd` decides who classifies each subject, never the same volunteer twice.

All randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter1d

from etchacell_loop.simulation.shapes import Points, SliceTruth, signed_area

FloatArray = NDArray[np.float64]


class Behaviour(enum.StrEnum):
    CAREFUL = "careful"  # follows the envelope within a pixel or two, one stroke per loop, closes it
    SLOPPY = "sloppy"  # smooth wobble of 5-10 px, overshoots or stops short of the start
    PARTIAL = "partial"  # several strokes with gaps, any direction; sometimes a chunk is missing
    OFFSET = "offset"  # follows the inner or outer membrane: a steady offset of 2-6 px
    NUCLEOLUS = "nucleolus"  # traces the nucleolus instead
    FALSE_POSITIVE = "false_positive"  # traces a mitochondrion or another organelle instead
    GRAFFITI = "graffiti"  # random scribbles
    EMPTY = "empty"  # presses Done without drawing
    WRONG_FRAME = "wrong_frame"  # traces the nucleus on a neighbouring flipbook frame (right for that frame)


_ENVELOPE_BEHAVIOURS = frozenset({Behaviour.CAREFUL, Behaviour.SLOPPY, Behaviour.PARTIAL, Behaviour.OFFSET})


@dataclass(frozen=True)
class Volunteer:
    """One volunteer: who they are on Zooniverse and how they trace.

    ``key`` is the export's ``user_name`` (``not-logged-in-<ip_token>`` when anonymous);
    ``offset_px`` is signed, positive outside the nucleus; ``direction`` is +1 or -1, the way round
    the volunteer habitually draws.
    """

    key: str
    behaviour: Behaviour
    user_id: int | None = None
    ip_token: str = "0" * 20
    spacing_px: float = 2.4
    jitter_px: float = 1.0
    wobble_px: float = 0.0
    offset_px: float = 0.0
    direction: int = 1
    min_island_area_px: float = 150.0
    prolific: bool = False

    @property
    def logged_in(self) -> bool:
        return self.user_id is not None


@dataclass(frozen=True, eq=False)
class SimStroke:
    """One recorded stroke: the flipbook frame it was drawn on and its points in natural pixels."""

    frame: int
    x_px: FloatArray
    y_px: FloatArray

    @property
    def n_points(self) -> int:
        return int(self.x_px.size)


def make_volunteer(
    key: str,
    behaviour: Behaviour,
    rng: np.random.Generator,
    *,
    user_id: int | None = None,
    ip_token: str = "0" * 20,
    prolific: bool = False,
) -> Volunteer:
    """A volunteer with personal constants drawn to suit the behaviour."""
    steady = behaviour in (Behaviour.CAREFUL, Behaviour.OFFSET, Behaviour.WRONG_FRAME)
    return Volunteer(
        key=key,
        behaviour=behaviour,
        user_id=user_id,
        ip_token=ip_token,
        spacing_px=rng.uniform(1.5, 2.5),
        jitter_px=rng.uniform(0.6, 1.4) if steady else rng.uniform(1.2, 2.5),
        wobble_px=rng.uniform(5.0, 10.0) if behaviour is Behaviour.SLOPPY else 0.0,
        offset_px=float(rng.choice([-1.0, 1.0])) * rng.uniform(2.0, 6.0) if behaviour is Behaviour.OFFSET else 0.0,
        direction=int(rng.choice([-1, 1])),
        min_island_area_px=rng.uniform(80, 200) if steady else rng.uniform(250, 600),
        prolific=prolific,
    )


def trace(
    volunteer: Volunteer, frames: Sequence[SliceTruth], target_frame: int, rng: np.random.Generator
) -> list[SimStroke]:
    """The strokes ``volunteer`` draws on a flipbook whose frame k shows ``frames[k]``, asked to trace
    the nucleus on ``target_frame``. Nothing is drawn where the behaviour finds nothing to trace."""
    behaviour = volunteer.behaviour
    truth = frames[target_frame]
    if behaviour is Behaviour.EMPTY:
        return []
    if behaviour is Behaviour.GRAFFITI:
        return _graffiti(volunteer, truth.shape_px, target_frame, rng)
    if behaviour is Behaviour.NUCLEOLUS:
        return _trace_loops(volunteer, truth.nucleolus_outlines, target_frame, truth.shape_px, rng)
    if behaviour is Behaviour.FALSE_POSITIVE:
        return _trace_organelles(volunteer, truth, target_frame, rng)
    if behaviour is Behaviour.WRONG_FRAME:
        frame = _neighbouring_frame(frames, target_frame, rng)
        steady = replace(volunteer, behaviour=Behaviour.CAREFUL)
        return _trace_loops(steady, frames[frame].nucleus_outlines, frame, truth.shape_px, rng)
    return _trace_loops(volunteer, truth.nucleus_outlines, target_frame, truth.shape_px, rng)


# --- the crowd ----------------------------------------------------------------------------------------


def paper_fractions() -> dict[Behaviour, float]:
    """Ordinary volunteers as in the paper's Figure 2: mostly fair tracings, a few of each bad kind."""
    return {
        Behaviour.CAREFUL: 0.30,
        Behaviour.SLOPPY: 0.20,
        Behaviour.PARTIAL: 0.15,
        Behaviour.OFFSET: 0.10,
        Behaviour.NUCLEOLUS: 0.05,
        Behaviour.FALSE_POSITIVE: 0.06,
        Behaviour.GRAFFITI: 0.04,
        Behaviour.EMPTY: 0.06,
        Behaviour.WRONG_FRAME: 0.04,
    }


PROLIFIC_BEHAVIOURS = (Behaviour.NUCLEOLUS, Behaviour.FALSE_POSITIVE, Behaviour.OFFSET)


@dataclass(frozen=True)
class CrowdMix:
    """Who is in the crowd.

    ``fractions``: share of each behaviour among ordinary volunteers (normalised; zero or absent is
    none). ``prolific_behaviours``: one prolific volunteer per entry, repeating that behaviour;
    together they do ``prolific_share`` of all classifications, as far as a volunteer who never sees a
    subject twice can (each does at most one classification per subject). Ordinary volunteers do
    ``mean_classifications`` each on average, heavy-tailed; ``logged_in_fraction`` of them are signed in.
    """

    fractions: Mapping[Behaviour, float] = field(default_factory=paper_fractions)
    prolific_behaviours: tuple[Behaviour, ...] = PROLIFIC_BEHAVIOURS
    prolific_share: float = 0.08
    logged_in_fraction: float = 0.65
    mean_classifications: float = 6.0

    def __post_init__(self) -> None:
        if any(v < 0 for v in self.fractions.values()) or sum(self.fractions.values()) <= 0:
            raise ValueError("behaviour fractions must be non-negative with a positive sum")
        if not 0.0 <= self.prolific_share <= 1.0 or not 0.0 <= self.logged_in_fraction <= 1.0:
            raise ValueError("prolific_share and logged_in_fraction are fractions between 0 and 1")
        if self.prolific_share == 1.0 and not self.prolific_behaviours:
            raise ValueError("a crowd of prolific volunteers only needs prolific behaviours")

    @classmethod
    def only(cls, behaviour: Behaviour) -> CrowdMix:
        """A crowd that behaves one way, with no prolific volunteers (for tests and clean baselines)."""
        return cls(fractions={behaviour: 1.0}, prolific_behaviours=(), prolific_share=0.0)

    @classmethod
    def parse(cls, text: str) -> CrowdMix:
        """``careful=1`` or ``careful=0.6,sloppy=0.4``: the given ordinary mix, no prolific volunteers."""
        fractions: dict[Behaviour, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            try:
                fractions[Behaviour(name.strip())] = float(value) if value.strip() else 1.0
            except ValueError:
                known = ", ".join(b.value for b in Behaviour)
                raise ValueError(f"bad mix entry {item!r}: expected BEHAVIOUR=FRACTION with one of {known}") from None
        return cls(fractions=fractions, prolific_behaviours=(), prolific_share=0.0)

    def with_prolific(self, count: int, share: float | None = None) -> CrowdMix:
        """The same ordinary mix with ``count`` prolific volunteers, cycling through the usual mistakes."""
        behaviours = tuple(PROLIFIC_BEHAVIOURS[i % len(PROLIFIC_BEHAVIOURS)] for i in range(count))
        default_share = self.prolific_share if self.prolific_share > 0 else 0.1
        return replace(
            self, prolific_behaviours=behaviours, prolific_share=share if share is not None else default_share
        )


@dataclass(frozen=True, eq=False)
class Assignment:
    """Who classifies what: one entry per classification, in no particular order."""

    volunteers: tuple[Volunteer, ...]
    subject_index: NDArray[np.intp]
    volunteer_index: NDArray[np.intp]

    @property
    def n_classifications(self) -> int:
        return int(self.subject_index.size)


def spread_classifications(n_subjects: int, total: int, rng: np.random.Generator) -> NDArray[np.intp]:
    """How many classifications each subject gets: ``total`` spread as evenly as possible, the
    remainder on random subjects (a live project retires subjects at nearly equal counts)."""
    if n_subjects <= 0:
        raise ValueError("there must be at least one subject")
    counts = np.full(n_subjects, total // n_subjects, dtype=np.intp)
    counts[rng.permutation(n_subjects)[: total % n_subjects]] += 1
    return counts


def assign_crowd(mix: CrowdMix, counts: Sequence[int] | NDArray[np.intp], rng: np.random.Generator) -> Assignment:
    """Volunteers for ``counts[s]`` classifications of each subject s; nobody classifies a subject twice.

    Prolific volunteers pick their subjects first; ordinary volunteers then take the rest, the busiest
    first, each choosing distinct subjects weighted by how many classifications a subject still needs
    (so the last, one-off volunteers always find a subject they have not seen).
    """
    capacity = np.asarray(counts, dtype=np.intp).copy()
    volunteers: list[Volunteer] = []
    subjects: list[NDArray[np.intp]] = []
    owners: list[NDArray[np.intp]] = []
    names = _NameMaker(rng)
    for behaviour, quota in zip(
        mix.prolific_behaviours, _prolific_quotas(mix, int(capacity.sum()), capacity.size), strict=True
    ):
        chosen = _choose_subjects(capacity, quota, rng)
        index = len(volunteers)
        volunteers.append(names.volunteer(behaviour, logged_in=True, prolific=True))
        subjects.append(chosen)
        owners.append(np.full(chosen.size, index, dtype=np.intp))
    behaviours = [b for b, share in mix.fractions.items() if share > 0]
    shares = np.array([mix.fractions[b] for b in behaviours], dtype=np.float64)
    efforts = iter(_ordinary_efforts(mix, int(capacity.sum()), capacity.size, rng))
    while capacity.any():  # efforts run out early only if a busy volunteer found too few unseen subjects
        chosen = _choose_subjects(capacity, next(efforts, 1), rng)
        behaviour = behaviours[int(rng.choice(len(behaviours), p=shares / shares.sum()))]
        index = len(volunteers)
        volunteers.append(names.volunteer(behaviour, logged_in=rng.random() < mix.logged_in_fraction))
        subjects.append(chosen)
        owners.append(np.full(chosen.size, index, dtype=np.intp))
    empty = np.zeros(0, dtype=np.intp)
    return Assignment(
        tuple(volunteers),
        np.concatenate(subjects) if subjects else empty,
        np.concatenate(owners) if owners else empty,
    )


def _prolific_quotas(mix: CrowdMix, total: int, n_subjects: int) -> list[int]:
    """The prolific volunteers' shares, each about three quarters of the one before (effort on
    Zooniverse falls off steeply even among the most active). Nobody can do more than one
    classification per subject; what a capped volunteer cannot take passes to the others."""
    count = len(mix.prolific_behaviours)
    if count == 0:
        return []
    weights = 0.75 ** np.arange(count)
    quotas = weights / weights.sum() * mix.prolific_share * total
    for _ in range(count):
        capped = quotas >= n_subjects
        excess = float((quotas[capped] - n_subjects).sum())
        quotas[capped] = n_subjects
        if excess <= 0 or capped.all():
            break
        quotas[~capped] += excess * weights[~capped] / weights[~capped].sum()
    return [int(q) for q in np.round(np.minimum(quotas, n_subjects))]


def _ordinary_efforts(mix: CrowdMix, remaining: int, n_subjects: int, rng: np.random.Generator) -> list[int]:
    """Classifications per ordinary volunteer, lognormal (most do a handful, a few do hundreds),
    busiest first, summing to ``remaining``."""
    sigma = 1.1
    mu = math.log(max(mix.mean_classifications - 0.5, 0.6)) - sigma**2 / 2
    efforts: list[int] = []
    while remaining > 0:
        batch = np.minimum(1 + np.floor(rng.lognormal(mu, sigma, 1024)).astype(np.intp), n_subjects)
        for effort in batch:
            take = min(int(effort), remaining)
            efforts.append(take)
            remaining -= take
            if remaining == 0:
                break
    efforts.sort(reverse=True)
    return efforts


def _choose_subjects(capacity: NDArray[np.intp], wanted: int, rng: np.random.Generator) -> NDArray[np.intp]:
    """Up to ``wanted`` distinct subjects that still need classifications, drawn with weights equal to
    their remaining need (Gumbel top-k: weighted sampling without replacement in one pass)."""
    open_subjects = np.flatnonzero(capacity > 0)
    take = min(wanted, open_subjects.size)
    if take <= 0:
        return np.zeros(0, dtype=np.intp)
    keys = np.log(capacity[open_subjects]) + rng.gumbel(size=open_subjects.size)
    chosen = open_subjects[np.argpartition(-keys, take - 1)[:take]] if take < open_subjects.size else open_subjects
    capacity[chosen] -= 1
    return np.asarray(chosen, dtype=np.intp)


_NAME_HEADS = ("cell", "nucleo", "micro", "membrane", "organelle", "lumen", "crista", "vesicle", "golgi", "chroma")
_NAME_TAILS = ("fan", "watcher", "tracer", "hunter", "_explorer", "lover", "_bee", "scope", "_nerd", "sketcher")


@dataclass
class _NameMaker:
    """Unique user names, ids and IP tokens for the crowd being built (local to one assignment)."""

    rng: np.random.Generator
    used: set[str] = field(default_factory=set)
    next_user_id: int = 1_204_000

    def volunteer(self, behaviour: Behaviour, *, logged_in: bool, prolific: bool = False) -> Volunteer:
        token = self._token()
        if logged_in:
            self.next_user_id += int(self.rng.integers(1, 400))
            key, user_id = self._user_name(), self.next_user_id
        else:
            key, user_id = f"not-logged-in-{token}", None
        return make_volunteer(key, behaviour, self.rng, user_id=user_id, ip_token=token, prolific=prolific)

    def _token(self) -> str:
        while True:
            token = self.rng.bytes(10).hex()
            if token not in self.used:
                self.used.add(token)
                return token

    def _user_name(self) -> str:
        while True:
            head = _NAME_HEADS[int(self.rng.integers(len(_NAME_HEADS)))]
            tail = _NAME_TAILS[int(self.rng.integers(len(_NAME_TAILS)))]
            name = f"{head}{tail}{int(self.rng.integers(1, 10_000))}"
            if name not in self.used:
                self.used.add(name)
                return name


# --- tracing ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Path:
    """A closed outline resampled every pixel and lightly smoothed (as a hand would follow it), with
    its cumulative arc length (closing segment included) and unit normals pointing out of the region."""

    points: Points
    arc_px: FloatArray
    normals: Points

    @property
    def length_px(self) -> float:
        return float(self.arc_px[-1])


def _closed_path(loop: Points) -> _Path:
    closed = np.vstack([loop, loop[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    samples = np.arange(0.0, arc[-1], 1.0)
    points = np.column_stack([np.interp(samples, arc, closed[:, 0]), np.interp(samples, arc, closed[:, 1])])
    if len(points) >= 8:
        points = gaussian_filter1d(points, sigma=1.5, axis=0, mode="wrap")
    tangent = np.roll(points, -1, axis=0) - np.roll(points, 1, axis=0)
    tangent /= np.maximum(np.hypot(tangent[:, 0], tangent[:, 1]), 1e-9)[:, None]
    normals = np.column_stack([-tangent[:, 1], tangent[:, 0]])  # out of the region, as outlines() orients loops
    closed = np.vstack([points, points[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    return _Path(points, arc, normals)


def _smooth_noise(rng: np.random.Generator, n: int, correlation_samples: float) -> FloatArray:
    """Unit-variance noise correlated over about ``correlation_samples`` samples (a hand's drift)."""
    if correlation_samples < 1.0:
        return rng.standard_normal(n)
    pad = int(4 * correlation_samples) + 1
    raw = gaussian_filter1d(rng.standard_normal(n + 2 * pad), correlation_samples)
    return np.asarray(raw[pad : pad + n] * math.sqrt(2 * math.sqrt(math.pi) * correlation_samples))


def _walk(
    volunteer: Volunteer,
    path: _Path,
    start_px: float,
    length_px: float,
    direction: int,
    rng: np.random.Generator,
    wobble_correlation_px: float = 80.0,
) -> Points:
    """The mouse recording along ``length_px`` of the outline from ``start_px``: samples about every 2 px
    with the hand's speed varying, pushed off the outline by the volunteer's offset, wobble and jitter."""
    spacing = volunteer.spacing_px
    estimate = int(length_px / spacing * 1.5) + 4
    steps = spacing * np.exp(0.25 * _smooth_noise(rng, estimate, 6.0))
    travelled = np.concatenate([[0.0], np.cumsum(steps)])
    travelled = travelled[travelled <= length_px]
    arc = (start_px + direction * travelled) % path.length_px
    closed_points = np.vstack([path.points, path.points[:1]])
    closed_normals = np.vstack([path.normals, path.normals[:1]])
    x = np.interp(arc, path.arc_px, closed_points[:, 0])
    y = np.interp(arc, path.arc_px, closed_points[:, 1])
    nx = np.interp(arc, path.arc_px, closed_normals[:, 0])
    ny = np.interp(arc, path.arc_px, closed_normals[:, 1])
    n = arc.size
    push = volunteer.offset_px + 0.6 * volunteer.jitter_px * _smooth_noise(rng, n, 8.0 / spacing)
    if volunteer.wobble_px > 0:
        push = push + 0.6 * volunteer.wobble_px * _smooth_noise(rng, n, wobble_correlation_px / spacing)
    push = push + 0.25 * rng.standard_normal(n)
    return np.column_stack([x + push * nx, y + push * ny])


def _trace_loops(
    volunteer: Volunteer, loops: Sequence[Points], frame: int, shape_px: tuple[int, int], rng: np.random.Generator
) -> list[SimStroke]:
    """Every loop big enough for the volunteer to bother with, traced the volunteer's way."""
    strokes: list[SimStroke] = []
    for loop in loops:
        if abs(signed_area(loop)) < volunteer.min_island_area_px:
            continue
        path = _closed_path(loop)
        for points in _loop_strokes(volunteer, path, rng):
            if len(points) >= 2:
                strokes.append(_stroke(frame, points, shape_px))
    if volunteer.behaviour is Behaviour.PARTIAL:
        order = rng.permutation(len(strokes))
        strokes = [strokes[i] for i in order]
    return strokes


def _loop_strokes(volunteer: Volunteer, path: _Path, rng: np.random.Generator) -> list[Points]:
    length = path.length_px
    start = rng.uniform(0.0, length)
    if volunteer.behaviour is Behaviour.PARTIAL:
        return _partial_strokes(volunteer, path, start, rng)
    if volunteer.behaviour is Behaviour.SLOPPY:
        overshoot = max(rng.uniform(-40.0, 30.0), -0.15 * length)
        correlation = rng.uniform(40.0, 120.0)
        return [_walk(volunteer, path, start, length + overshoot, volunteer.direction, rng, correlation)]
    overshoot = rng.uniform(0.0, 6.0)
    return [_walk(volunteer, path, start, length + overshoot, volunteer.direction, rng)]


def _partial_strokes(volunteer: Volunteer, path: _Path, start_px: float, rng: np.random.Generator) -> list[Points]:
    """Two to four pieces with small gaps between them, each drawn either way round; sometimes one
    piece is left out (a chunk of the envelope missing, closed later only by a chord)."""
    length = path.length_px
    pieces = int(rng.integers(2, 5)) if length >= 300 else 1
    weights = rng.uniform(0.5, 1.5, pieces)
    bounds = start_px + np.concatenate([[0.0], np.cumsum(weights / weights.sum() * length)])
    skip = int(rng.integers(pieces)) if pieces >= 3 and rng.random() < 0.3 else -1
    strokes = []
    for index in range(pieces):
        gap = rng.uniform(4.0, 25.0)
        piece_length = bounds[index + 1] - bounds[index] - gap
        if index == skip or piece_length < 25 * volunteer.spacing_px:
            continue
        if rng.random() < 0.5:
            strokes.append(_walk(volunteer, path, bounds[index], piece_length, 1, rng))
        else:
            strokes.append(_walk(volunteer, path, bounds[index] + piece_length, piece_length, -1, rng))
    return strokes


def _trace_organelles(volunteer: Volunteer, truth: SliceTruth, frame: int, rng: np.random.Generator) -> list[SimStroke]:
    """One organelle, sometimes two: a mitochondrion mistaken for the nucleus."""
    candidates = [i for i, loops in enumerate(truth.organelle_outlines) if loops]
    if not candidates:
        return []
    count = 1 if rng.random() < 0.7 or len(candidates) == 1 else 2
    chosen = rng.choice(len(candidates), size=count, replace=False)
    careful = replace(volunteer, min_island_area_px=0.0)
    strokes: list[SimStroke] = []
    for index in chosen:
        strokes += _trace_loops(careful, truth.organelle_outlines[candidates[int(index)]], frame, truth.shape_px, rng)
    return strokes


def _neighbouring_frame(frames: Sequence[SliceTruth], target_frame: int, rng: np.random.Generator) -> int:
    """A frame other than the target that shows another slice with a nucleus; the adjacent frames
    (the planes 250 nm away) are the likeliest mistake. The target itself when there is none."""
    target_z = frames[target_frame].z
    candidates = [
        k for k, truth in enumerate(frames) if k != target_frame and truth.z != target_z and truth.nucleus_outlines
    ]
    if not candidates:
        return target_frame
    weights = np.array([3.0 if abs(k - target_frame) == 1 else 1.0 for k in candidates])
    return candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]


def _graffiti(volunteer: Volunteer, shape_px: tuple[int, int], frame: int, rng: np.random.Generator) -> list[SimStroke]:
    """One to three scribbles: a wandering pen whose heading turns slowly, so lines and loose curves."""
    height, width = shape_px
    strokes = []
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(40, 250))
        heading = rng.uniform(0, 2 * math.pi) + np.cumsum(0.08 * _smooth_noise(rng, n, 10.0))
        steps = volunteer.spacing_px * np.column_stack([np.cos(heading), np.sin(heading)])
        start = np.array([rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height])
        strokes.append(_stroke(frame, start + np.cumsum(steps, axis=0), shape_px))
    return strokes


def _stroke(frame: int, points: Points, shape_px: tuple[int, int]) -> SimStroke:
    height, width = shape_px
    x = np.clip(points[:, 0], 0.0, width - 1.0)
    y = np.clip(points[:, 1], 0.0, height - 1.0)
    return SimStroke(frame, np.ascontiguousarray(x), np.ascontiguousarray(y))
