"""How good a predicted nuclear envelope is: the figures of the paper's Table 1 (section 4.10).

All functions take binary volumes (z, y, x) — ``True``/non-zero = envelope — on the same grid, with
``pixel_size_nm`` the in-plane pixel size of that grid (the model's voxel, 50 nm in the paper).

* **Precision, recall, F-measure** are voxel-wise over the whole volume: the coincidence of
  predicted and true envelope voxels. A lone 0/0 (nothing predicted, nothing true) counts as full
  agreement, 1.0; a 0/x as 0.0.
* **AHD** (average Hausdorff distance) is the paper's formula
  ``AHD(G, P) = 1/|G| · Σ_{g ∈ G} min_{p ∈ P} d(g, p)``, directed from the truth G to the
  prediction P: how far, on average, a true envelope pixel is from the nearest predicted one. It is
  measured slice by slice (distances within a z slice, as volunteers and the paper draw the
  envelope) and pooled over every true pixel of every slice, so a slice weighs by its envelope.
  The *symmetric* AHD is the mean of both directions, ``(AHD(G, P) + AHD(P, G)) / 2``, which also
  punishes envelope predicted where there is none.
* **Empty slices are counted, not skipped.** When a slice has envelope on one side and none on the
  other, every pixel of the non-empty side is given the *cap* distance — the slice's diagonal, the
  farthest any pixel could be from a prediction in that slice. The seed code averaged the two
  directions per slice and skipped slices where either side was empty, so a model that missed a
  whole slice scored as if that slice did not exist; here a miss costs the most a slice can cost.
  A volume with no true envelope at all has a directed AHD of 0 (nothing was missed); its false
  positives still show in the symmetric AHD and in precision.
* **Area F-measure** is the F-measure of the nucleus *area* (the envelope with its holes filled) on
  one slice near the centre of the cell, as the paper reports for comparison with area-based work.

Every figure is a sum over slices, so :class:`Table1Accumulator` takes a volume one slice at a time:
a region at the source resolution (2000 x 2000 px x 150 slices per paper ROI) never has to be held
whole. :func:`evaluate_volumes` is the accumulator over a volume in memory; the two agree exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

Binary = NDArray[np.bool_]


@dataclass(frozen=True)
class Overlap:
    """Voxel-wise agreement of two binary volumes."""

    precision: float
    recall: float
    f_measure: float


@dataclass(frozen=True)
class Table1:
    """One row of the paper's Table 1, plus the symmetric AHD and what the area F was measured on."""

    f_measure: float
    recall: float
    precision: float
    ahd_px: float
    ahd_nm: float
    ahd_symmetric_px: float
    ahd_symmetric_nm: float
    area_f_measure: float | None  # None when no slice has a closed nucleus to fill
    central_slice: int | None
    n_slices: int
    pixel_size_nm: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_binary(volume: NDArray[Any]) -> Binary:
    """Non-zero voxels as ``True``: label images store the envelope as 1 or 255."""
    return np.asarray(np.asarray(volume) != 0, dtype=bool)


def _ratio(numerator: int, denominator: int, *, both_empty: float) -> float:
    if denominator == 0:
        return both_empty if numerator == 0 else 0.0
    return numerator / denominator


def overlap_scores(pred: NDArray[Any], ref: NDArray[Any]) -> Overlap:
    """Precision, recall and F-measure of ``pred`` against ``ref``, voxel by voxel."""
    p, r = _same_shape(pred, ref)
    true_pos = int(np.count_nonzero(p & r))
    n_pred, n_ref = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    both_empty = 1.0 if n_pred == 0 and n_ref == 0 else 0.0
    precision = _ratio(true_pos, n_pred, both_empty=both_empty)
    recall = _ratio(true_pos, n_ref, both_empty=both_empty)
    f_measure = _ratio(2 * true_pos, n_pred + n_ref, both_empty=both_empty)
    return Overlap(precision=precision, recall=recall, f_measure=f_measure)


def slice_cap_px(shape_yx: tuple[int, ...]) -> float:
    """The distance given to a pixel whose slice has nothing on the other side: the diagonal."""
    return math.hypot(shape_yx[-2], shape_yx[-1])


def directed_distance_sums(source: NDArray[Any], target: NDArray[Any]) -> tuple[float, int]:
    """Σ over the ``source`` pixels of the in-slice distance (px) to the nearest ``target`` pixel,
    and the number of source pixels; a slice with source but no target pixels adds the cap each."""
    s, t = _same_shape(source, target)
    total, count = 0.0, 0
    for src, tgt in zip(s, t, strict=True):
        slice_total, n_src = slice_distance_sum(src, tgt)
        total += slice_total
        count += n_src
    return total, count


def slice_distance_sum(source: Binary, target: Binary) -> tuple[float, int]:
    """One slice's share of :func:`directed_distance_sums`.

    The distance transform runs over the bounding box of both sides only: every target pixel lies
    inside it, so the nearest one of each source pixel is found there too (exact, and a nucleus is a
    small part of a 2000 x 2000 slice). The cap stays the whole slice's diagonal."""
    n_src = int(np.count_nonzero(source))
    if n_src == 0:
        return 0.0, 0
    if not target.any():
        return slice_cap_px(source.shape) * n_src, n_src
    box = _bounding_box(source | target)
    distance = ndimage.distance_transform_edt(~target[box])
    return float(np.sum(distance[source[box]], dtype=np.float64)), n_src


def _bounding_box(mask: Binary) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def average_hausdorff_px(ref: NDArray[Any], pred: NDArray[Any]) -> float:
    """The paper's directed AHD(G, P) in pixels: mean distance from true to nearest predicted pixel."""
    total, count = directed_distance_sums(ref, pred)
    return total / count if count else 0.0


def symmetric_average_hausdorff_px(ref: NDArray[Any], pred: NDArray[Any]) -> float:
    """``(AHD(G, P) + AHD(P, G)) / 2`` in pixels: misses and false envelope both count."""
    return (average_hausdorff_px(ref, pred) + average_hausdorff_px(pred, ref)) / 2


def nucleus_area(envelope_slice: NDArray[Any]) -> Binary:
    """The area a closed envelope encloses (with the envelope itself), by filling its holes."""
    return np.asarray(ndimage.binary_fill_holes(as_binary(envelope_slice)), dtype=bool)


def central_slice_of(ref: NDArray[Any]) -> int | None:
    """The slice nearest the middle of the truth's z extent whose envelope encloses an area beyond
    the band itself — the paper's "qualified single slice near the centre of the cell"."""
    r = as_binary(ref)
    occupied = np.flatnonzero(r.reshape(r.shape[0], -1).any(axis=1))
    if occupied.size == 0:
        return None
    middle = (occupied[0] + occupied[-1]) / 2
    for z in sorted(occupied.tolist(), key=lambda k: (abs(k - middle), k)):
        if np.count_nonzero(nucleus_area(r[z])) > np.count_nonzero(r[z]):
            return int(z)
    return None


def area_f_measure(pred_slice: NDArray[Any], ref_slice: NDArray[Any]) -> float:
    """F-measure of the filled nucleus areas of one slice."""
    pred_area = nucleus_area(pred_slice)[np.newaxis]
    ref_area = nucleus_area(ref_slice)[np.newaxis]
    return overlap_scores(pred_area, ref_area).f_measure


def evaluate_volumes(
    pred: NDArray[Any], ref: NDArray[Any], *, pixel_size_nm: float, central_slice: int | None = None
) -> Table1:
    """Every Table 1 figure of ``pred`` against ``ref`` (binary (z, y, x) volumes on one grid).

    ``central_slice`` picks the slice for the area F-measure; by default :func:`central_slice_of`.
    """
    p, r = _same_shape(pred, ref)
    if central_slice is not None and not 0 <= central_slice < r.shape[0]:
        raise ValueError(f"central slice {central_slice} is outside 0..{r.shape[0] - 1}")
    accumulator = Table1Accumulator(pixel_size_nm)
    for z in range(r.shape[0]):
        accumulator.add(z, p[z], r[z], area_slice=central_slice is None)
    if central_slice is None:
        return accumulator.table()
    area = area_f_measure(p[central_slice], r[central_slice])
    return replace(accumulator.table(), area_f_measure=area, central_slice=central_slice)


@dataclass
class Table1Accumulator:
    """Table 1, summed slice by slice (see the module docstring); slices may come in any order and
    from several regions (``add`` them with distinct indices) and the figures are pooled over all.

    For the area F-measure it keeps, per slice whose reference envelope encloses an area (the only
    slices :func:`central_slice_of` can pick), that slice's area F; :meth:`table` then picks the
    central one of the reference's extent, as :func:`evaluate_volumes` does.
    """

    pixel_size_nm: float
    true_positive: int = 0
    predicted: int = 0
    reference: int = 0
    ref_to_pred: float = 0.0  # Σ distances from reference pixels to the prediction
    pred_to_ref: float = 0.0
    occupied: list[int] = field(default_factory=list)  # slices with reference envelope
    area_f: dict[int, float] = field(default_factory=dict)  # slices whose reference encloses an area
    n_slices: int = 0

    def __post_init__(self) -> None:
        if not self.pixel_size_nm > 0:
            raise ValueError(f"pixel size must be positive, not {self.pixel_size_nm}")

    def add(self, index: int, pred: NDArray[Any], ref: NDArray[Any], *, area_slice: bool = True) -> None:
        """One slice of both sides (2-D, same shape); ``area_slice`` False skips the area figure
        (a caller that has fixed the central slice need not fill every other one)."""
        p, r = as_binary(pred), as_binary(ref)
        if p.shape != r.shape or p.ndim != 2:
            raise ValueError(f"slices differ in shape or are not 2-D: {p.shape} and {r.shape}")
        self.n_slices += 1
        self.true_positive += int(np.count_nonzero(p & r))
        self.predicted += int(np.count_nonzero(p))
        self.reference += int(np.count_nonzero(r))
        self.ref_to_pred += slice_distance_sum(r, p)[0]
        self.pred_to_ref += slice_distance_sum(p, r)[0]
        if not r.any():
            return
        self.occupied.append(index)
        if not area_slice:
            return
        ref_area = nucleus_area(r)
        if np.count_nonzero(ref_area) > np.count_nonzero(r):
            pred_area = nucleus_area(p)
            self.area_f[index] = overlap_scores(pred_area[np.newaxis], ref_area[np.newaxis]).f_measure

    def merge(self, other: Table1Accumulator) -> None:
        """Pool ``other`` (another region, scored the same way) into this one; its slice indices
        must not repeat this one's."""
        self.true_positive += other.true_positive
        self.predicted += other.predicted
        self.reference += other.reference
        self.ref_to_pred += other.ref_to_pred
        self.pred_to_ref += other.pred_to_ref
        self.occupied.extend(other.occupied)
        self.area_f.update(other.area_f)
        self.n_slices += other.n_slices

    def central_slice(self) -> int | None:
        """The qualifying slice nearest the middle of the reference's extent (:func:`central_slice_of`)."""
        if not self.occupied or not self.area_f:
            return None
        middle = (min(self.occupied) + max(self.occupied)) / 2
        return min(self.area_f, key=lambda k: (abs(k - middle), k))

    def table(self, central_slice: int | None = None) -> Table1:
        """The figures so far; ``central_slice`` (already added) overrides the automatic choice."""
        both_empty = 1.0 if self.predicted == 0 and self.reference == 0 else 0.0
        precision = _ratio(self.true_positive, self.predicted, both_empty=both_empty)
        recall = _ratio(self.true_positive, self.reference, both_empty=both_empty)
        f_measure = _ratio(2 * self.true_positive, self.predicted + self.reference, both_empty=both_empty)
        ahd = self.ref_to_pred / self.reference if self.reference else 0.0
        reverse = self.pred_to_ref / self.predicted if self.predicted else 0.0
        ahd_sym = (ahd + reverse) / 2
        z = central_slice if central_slice is not None else self.central_slice()
        return Table1(
            f_measure=f_measure,
            recall=recall,
            precision=precision,
            ahd_px=ahd,
            ahd_nm=ahd * self.pixel_size_nm,
            ahd_symmetric_px=ahd_sym,
            ahd_symmetric_nm=ahd_sym * self.pixel_size_nm,
            area_f_measure=self.area_f.get(z) if z is not None else None,
            central_slice=z,
            n_slices=self.n_slices,
            pixel_size_nm=float(self.pixel_size_nm),
        )


TABLE1_COLUMNS = (
    ("F-measure", "f_measure"),
    ("Recall", "recall"),
    ("Precision", "precision"),
    ("AHD (pixels)", "ahd_px"),
    ("AHD (nm)", "ahd_nm"),
    ("F-measure area (single slice)", "area_f_measure"),
    ("Symmetric AHD (pixels)", "ahd_symmetric_px"),
    ("Symmetric AHD (nm)", "ahd_symmetric_nm"),
)


def render_table1(rows: Mapping[str, Table1]) -> str:
    """A plain-text table in the paper's Table 1 layout: one row per method (or ROI), the paper's
    columns in its order, then the symmetric AHD; three decimals, "-" where a figure is missing."""
    header = ["Method", *(title for title, _ in TABLE1_COLUMNS)]
    body = [[name, *(_cell(getattr(row, key)) for _, key in TABLE1_COLUMNS)] for name, row in rows.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [_line(header, widths), "  ".join("-" * w for w in widths), *(_line(line, widths) for line in body)]
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _line(cells: list[str], widths: list[int]) -> str:
    first = cells[0].ljust(widths[0])
    rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
    return "  ".join([first, *rest]).rstrip()


def _same_shape(a: NDArray[Any], b: NDArray[Any]) -> tuple[Binary, Binary]:
    left, right = as_binary(a), as_binary(b)
    if left.shape != right.shape:
        raise ValueError(f"volumes differ in shape: {left.shape} and {right.shape}")
    if left.ndim != 3:
        raise ValueError(f"expected (z, y, x) volumes, got {left.ndim} dimensions")
    return left, right
