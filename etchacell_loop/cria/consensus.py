"""One slice's tracings → its consensus. The one place where volunteers' lines become a mask.

For every drawer on the slice: join their strokes into loops (``joining``), fill the loops even-odd
(``raster``); then the configured method (``methods``) votes, the area's outline becomes the
envelope band, and each drawer's agreement with the result is measured so it can be pooled across
slices (``reliability``).

The denominator of the vote is the number of volunteers who drew on the slice (as the seed code
does): a volunteer who drew nothing on it has said nothing about where its envelope is, and counting
them would erase real nuclei on slices many volunteers skipped. ``denominator="classifications"``
counts every classification instead, for comparison with the paper's wording.

*Stability* is the Dice between this consensus and the consensus without the latest drawing: the
retirement policy asks whether one more volunteer still changes the answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray

from etchacell_loop.cria.joining import Points, join_greedy, join_min_total
from etchacell_loop.cria.methods import Ballot, MethodParams, Region, consensus_method, region_of
from etchacell_loop.cria.raster import Mask, Patch, fill_patch
from etchacell_loop.cria.reliability import ReliabilityParams, VolunteerRecord

if TYPE_CHECKING:  # settings only annotate: the model and the GPU worker import this without pydantic
    from etchacell_loop.config import ConsensusSettings

_T = TypeVar("_T", bound=np.generic)
Denominator = Literal["drawers", "classifications"]
JoinRule = Literal["greedy", "min-total"]
JOIN_RULES: Mapping[str, Callable[[Sequence[Points]], list[Points]]] = {
    "greedy": join_greedy,
    "min-total": join_min_total,
}


@dataclass(frozen=True)
class CriaParams:
    """Everything that decides a slice's consensus, declared as data (picked by configuration)."""

    method: str = "cria"
    join_rule: JoinRule = "greedy"
    agreement_fraction: float = 0.5
    denominator: Denominator = "drawers"
    envelope_width_nm: float = 70.0
    pixel_size_nm: float = 10.0  # of the grid the tracings are in
    methods: MethodParams = field(default_factory=MethodParams)

    @classmethod
    def from_settings(cls, settings: ConsensusSettings, pixel_size_nm: float) -> CriaParams:
        """The parameters the ``consensus`` section of the configuration names."""
        reliability = replace(
            ReliabilityParams(), flag_below_dice=settings.flag_below_dice, flag_min_slices=settings.flag_min_slices
        )
        return cls(
            method=settings.method,
            join_rule=settings.join_rule,
            agreement_fraction=settings.agreement_fraction,
            denominator=settings.denominator,
            envelope_width_nm=settings.envelope_width_nm,
            pixel_size_nm=pixel_size_nm,
            methods=MethodParams(gate_iou=settings.gate_iou, reliability=reliability),
        )

    def method_params(self) -> MethodParams:
        return replace(self.methods, agreement_fraction=self.agreement_fraction, denominator=self.denominator)


@dataclass(frozen=True, eq=False)
class Drawing:
    """One volunteer's strokes on one slice, in the slice's pixels (x, y)."""

    volunteer: str
    classification_id: int
    strokes: tuple[Points, ...]


@dataclass(frozen=True)
class DrawerOutcome:
    """How one drawing fared: used by the method or not, and its agreement with the consensus
    (pixel counts over the slice's region, for pooling into a :class:`VolunteerRecord`)."""

    volunteer: str
    classification_id: int
    included: bool
    dice: float
    tp: int
    fn: int
    fp: int
    tn: int

    def record(self) -> VolunteerRecord:
        return VolunteerRecord(1, self.dice, self.tp, self.fn, self.fp, self.tn)


@dataclass(frozen=True, eq=False)
class Consensus:
    """One slice's consensus: area (bool), envelope band (bool), confidence (0..1) over ``region``
    (zero outside it), the drawers' outcomes and the stability against the consensus without the
    latest drawing. The confidence is kept over the region only: at full size it would be 4 MB of
    float32 per slice that only the written image (8-bit, :meth:`confidence_u8`) ever reads."""

    area: Mask
    band: Mask
    region_confidence: NDArray[np.float32]
    region: Region
    n_volunteers: int
    n_classifications: int
    outcomes: tuple[DrawerOutcome, ...] = ()
    stability: float | None = None
    method: str = "cria"

    @property
    def confidence(self) -> NDArray[np.float32]:
        """The confidence (0..1) at the slice's full size."""
        return _paste(self.region_confidence, self.region, self.area.shape)

    def confidence_u8(self) -> NDArray[np.uint8]:
        """The confidence as 0..255 (rounded) at full size, quantised over the region only."""
        scaled = (self.region_confidence * np.float32(255) + np.float32(0.5)).astype(np.uint8)
        return _paste(scaled, self.region, self.area.shape)

    @property
    def area_px(self) -> int:
        return int(np.count_nonzero(self.area))

    @property
    def n_flagged(self) -> int:
        """Drawings the method left out or that agree with the consensus less than half (Dice < 0.5)."""
        return sum(1 for o in self.outcomes if not o.included or o.dice < 0.5)


def slice_consensus(
    drawings: Sequence[Drawing],
    n_classifications: int,
    shape: tuple[int, int],
    params: CriaParams,
    records: Mapping[str, VolunteerRecord] | None = None,
    with_stability: bool = True,
) -> Consensus:
    """The consensus of one slice from its drawings (in classification order: the last one is the
    latest), given how many classifications showed the slice (drawers and abstainers)."""
    join = JOIN_RULES[params.join_rule]
    fills = [fill_patch(join(list(d.strokes)), shape) for d in drawings]
    ballots = [Ballot(fill, (records or {}).get(d.volunteer)) for d, fill in zip(drawings, fills, strict=True)]
    return consensus_of_ballots(drawings, ballots, n_classifications, shape, params, with_stability)


def consensus_of_ballots(
    drawings: Sequence[Drawing],
    ballots: Sequence[Ballot],
    n_classifications: int,
    shape: tuple[int, int],
    params: CriaParams,
    with_stability: bool = True,
    abstaining_weight: float = 1.0,
) -> Consensus:
    """The vote, band, outcomes and stability for fills already made (re-voting with new records
    after pooling needs no second fill). Each classification without a drawing weighs
    ``abstaining_weight`` in a vote over classifications (corrections weigh an empty submission
    like a kept outline: :mod:`etchacell_loop.cria.correction`)."""
    method = consensus_method(params.method)
    method_params = params.method_params()
    n_abstaining = max(0, n_classifications - len(ballots)) * abstaining_weight
    region = region_of(ballots)
    latest = int(np.argmax([d.classification_id for d in drawings])) if with_stability and len(ballots) >= 2 else None
    vote = method(ballots, n_abstaining, region, method_params, latest)
    area = _paste(vote.area, region, shape)
    stability = dice(vote.area, vote.previous_area) if vote.previous_area is not None else None
    band = envelope_band(area, params.envelope_width_nm / params.pixel_size_nm)
    area_px = int(np.count_nonzero(vote.area))
    outcomes = tuple(
        _outcome(d, b, included, area, area_px, region)
        for d, b, included in zip(drawings, ballots, vote.included, strict=True)
    )
    return Consensus(
        area, band, vote.confidence, region, len(ballots), n_classifications, outcomes, stability, params.method
    )


def envelope_band(area: Mask, width_px: float) -> Mask:
    """The area's outline drawn ``width_px`` wide (70 nm → 7 px at 10 nm): ⌈n/2⌉ pixels inside the
    outline and ⌊n/2⌋ outside, so the band straddles the boundary the volunteers traced. Computed
    over the area's bounding box only (a nucleus is a fraction of the image)."""
    n = max(1, round(width_px))
    inside, outside = (n + 1) // 2, n // 2
    band = np.zeros_like(area)
    rows, cols = np.flatnonzero(area.any(axis=1)), np.flatnonzero(area.any(axis=0))
    if not rows.size:
        return band
    pad = inside + outside + 1
    top, left = rows[0] - pad, cols[0] - pad
    crop = np.zeros((rows[-1] - rows[0] + 1 + 2 * pad, cols[-1] - cols[0] + 1 + 2 * pad), dtype=np.bool_)
    crop[pad:-pad, pad:-pad] = area[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    inner = _erode(crop, inside)
    outer = ~_erode(~crop, outside) if outside else crop
    if outside:  # _erode leaves the crop's edge empty; the dilation does not reach it (pad > outside)
        outer[:outside], outer[-outside:], outer[:, :outside], outer[:, -outside:] = False, False, False, False
    ring = outer & ~inner
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(area.shape[0], top + crop.shape[0]), min(area.shape[1], left + crop.shape[1])
    band[y0:y1, x0:x1] = ring[y0 - top : y1 - top, x0 - left : x1 - left]
    return band


def _erode(mask: Mask, radius: int) -> Mask:
    """Binary erosion by a disk, as the AND of shifted copies. Each row of the disk is a run of
    offsets along x, so the mask is first eroded along x by every half-width a row needs (each from
    the one before: two ANDs), and the rows are then combined shifted along y: 2r + (2r + 1) array
    operations instead of one per disk pixel. For the few pixels of a band's radius this is many times
    faster than a general morphology routine; pixels within ``radius`` of the edge of ``mask`` come
    out empty (callers pad)."""
    height, width = mask.shape
    out = np.zeros_like(mask)
    if height <= 2 * radius or width <= 2 * radius:
        return out
    along_x = [mask[:, radius : width - radius]]  # along_x[w]: AND over x offsets -w..w
    for w in range(1, radius + 1):
        along_x.append(
            along_x[-1] & mask[:, radius - w : width - radius - w] & mask[:, radius + w : width - radius + w]
        )
    core = out[radius : height - radius, radius : width - radius]
    core[...] = True
    for dy in range(-radius, radius + 1):
        core &= along_x[math.isqrt(radius * radius - dy * dy)][radius + dy : height - radius + dy]
    return out


def dice(a: Mask, b: Mask) -> float:
    """Dice of two masks; two empty masks agree perfectly."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def _outcome(
    drawing: Drawing, ballot: Ballot, included: bool, area: Mask, area_px: int, region: Region
) -> DrawerOutcome:
    """``area_px`` is the area's pixel count, counted once for every drawer."""
    fill: Patch = ballot.fill
    tp = (
        int(np.count_nonzero(fill.mask & area[fill.top : fill.bottom, fill.left : fill.right])) if fill.mask.size else 0
    )
    fp = fill.area_px - tp
    fn = area_px - tp
    tn = max(0, region.shape[0] * region.shape[1] - tp - fp - fn)
    total = 2 * tp + fp + fn
    return DrawerOutcome(
        drawing.volunteer, drawing.classification_id, included, 1.0 if total == 0 else 2 * tp / total, tp, fn, fp, tn
    )


def _paste(values: NDArray[_T], region: Region, shape: tuple[int, ...]) -> NDArray[_T]:
    full = np.zeros(shape, dtype=values.dtype)
    if values.size:
        full[region.top : region.bottom, region.left : region.right] = values
    return full
