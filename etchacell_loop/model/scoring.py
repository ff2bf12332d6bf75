"""A model scored as it is deployed: whole held-out ROIs, TAP with the loop's rule and clean-up, Table 1
at the source resolution.

Why: promotion decides which model volunteers will correct, so it must judge what is deployed. A
network's figures on validation tiles, along z only and before any clean-up, say little about what
the prediction batches send out (three axes combined by ``correction.tap_rule``, components under
``correction.min_component_voxels`` removed, each ROI's largest kept). Here every validation and test
ROI is predicted with :func:`etchacell_loop.model.predict.predict_volume` exactly as a prediction
batch is, and scored with :mod:`etchacell_loop.model.evaluation` in the paper's terms (§2.5, Table 1):

* against the **consensus** of the ROI's labelled slices, at the source resolution (primary), and on
  the model grid (secondary, names prefixed ``grid_``);
* against the **ground truth** when the volume has it (a synthetic volume's ``labels/envelope``,
  only the ROI's own nucleus), likewise;
* and the **consensus itself against the truth** (names prefixed ``consensus_`` under the truth):
  the ceiling of a model trained on consensus.

Figures pool the ROIs of a split the way each is defined: F-measure, recall and precision over all
their voxels, the AHDs over all reference (or predicted) pixels, the area F-measure as the mean of
each ROI's central slice. No database here: the worker (:mod:`etchacell_loop.loop.train_job`) builds
the cases from its training set and stores the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from etchacell_loop.imaging.volume import RoiBox, VolumeError, open_volume
from etchacell_loop.model.data import LabelledSlice
from etchacell_loop.model.evaluation import (
    DEFAULT_LABEL,
    PredictionOnSource,
    band_on_grid,
    consensus_band_slices,
    truth_band_slices,
)
from etchacell_loop.model.metrics import Binary, Table1, Table1Accumulator, as_binary
from etchacell_loop.model.predict import predict_volume
from etchacell_loop.model.presets import ModelPreset
from etchacell_loop.model.tap import PredictFn, TapParams

CONSENSUS, TRUTH = "consensus", "truth"
GRID_PREFIX = "grid_"  # the same prediction scored on the model grid (secondary)
CEILING_PREFIX = "consensus_"  # the consensus scored against the truth (under TRUTH)
FIGURES = ("f_measure", "recall", "precision", "ahd_px", "ahd_nm", "ahd_symmetric_px", "ahd_symmetric_nm")
GRID_FIGURES = ("f_measure", "recall", "precision", "ahd_px", "ahd_nm")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RoiCase:
    """One held-out ROI: its split, its volume (and voxel size, as the database records it) and the
    consensus of its labelled slices."""

    split: str
    volume_path: Path
    voxel_size_nm: tuple[float, float, float] | None
    roi: RoiBox
    consensus: tuple[LabelledSlice, ...]

    @property
    def key(self) -> str:
        return f"{self.split}/{self.roi.name}"


@dataclass
class RoiScores:
    """One ROI's accumulators: (reference, grid?) → sums; the ceiling under ``consensus_vs_truth``."""

    case: RoiCase
    source: dict[str, Table1Accumulator] = field(default_factory=dict)
    grid: dict[str, Table1Accumulator] = field(default_factory=dict)
    consensus_vs_truth: Table1Accumulator | None = None


def cases_from_slices(
    slices: Sequence[LabelledSlice], voxel_sizes: Mapping[str, tuple[float, float, float]] | None = None
) -> list[RoiCase]:
    """One case per validation or test ROI among ``slices`` (grouped by volume and ROI name)."""
    grouped: dict[tuple[str, str], list[LabelledSlice]] = {}
    for record in slices:
        if record.split in ("validation", "test"):
            grouped.setdefault((record.volume_path, record.roi.name), []).append(record)
    cases = []
    for (volume_path, _), records in sorted(grouped.items()):
        first = records[0]
        voxel = (voxel_sizes or {}).get(volume_path)
        cases.append(RoiCase(first.split, Path(volume_path), voxel, first.roi, tuple(records)))
    return cases


def score_rois(
    cases: Sequence[RoiCase],
    predict_fn: PredictFn,
    preset: ModelPreset,
    tap: TapParams,
    work_dir: Path,
    *,
    progress: Progress | None = None,
) -> list[RoiScores]:
    """Predict and score every case (see the module docstring); predictions go under ``work_dir``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    scores = []
    for case in cases:
        if progress is not None:
            progress(case.key)
        out = work_dir / f"{case.split}-{case.roi.name}.zarr"
        with open_volume(case.volume_path, voxel_size_nm=case.voxel_size_nm) as volume:
            predict_volume(volume, predict_fn, preset, out, params=tap, roi=case.roi, overwrite=True)
        scores.append(score_prediction(case, out, envelope_width_nm=preset.envelope_width_nm))
    return scores


def score_prediction(case: RoiCase, prediction_path: Path, *, envelope_width_nm: float) -> RoiScores:
    """One written prediction of ``case`` against its consensus and, where there is one, the truth."""
    prediction = PredictionOnSource.open(prediction_path)
    try:
        pixel_nm = prediction.pixel_size_nm
        region = prediction.placement.region
        scores = RoiScores(case)
        bands = dict(
            consensus_band_slices(case.consensus, region, envelope_width_nm=envelope_width_nm, source_pixel_nm=pixel_nm)
        )
        _score(scores, CONSENSUS, prediction, iter(sorted(bands.items())), pixel_nm)
        nucleus = _nucleus_label(case)
        if _has_truth(case.volume_path):
            truth = truth_band_slices(case.volume_path, region, nucleus_label=nucleus)
            _score(scores, TRUTH, prediction, truth, pixel_nm)
            ceiling = Table1Accumulator(pixel_nm)
            labelled = truth_band_slices(case.volume_path, region, nucleus_label=nucleus, slices=sorted(bands))
            for z, band in labelled:
                ceiling.add(z, bands[z], band)
            scores.consensus_vs_truth = ceiling
        return scores
    finally:
        prediction.close()


def _score(
    scores: RoiScores,
    reference: str,
    prediction: PredictionOnSource,
    bands: Iterator[tuple[int, Binary]],
    pixel_nm: float,
) -> None:
    """Add each reference band and the prediction's slice, at the source and on the model grid."""
    place = prediction.placement
    source = scores.source.setdefault(reference, Table1Accumulator(pixel_nm))
    grid = scores.grid.setdefault(reference, Table1Accumulator(float(place.model_voxel_nm[1])))
    shape_yx = (prediction.label.shape_zyx[1], prediction.label.shape_zyx[2])
    factor_yx = (place.factor_zyx[1], place.factor_zyx[2])
    for z, band in bands:
        source.add(z, prediction.slice(z), band)
        offset = z - place.offset_zyx[0]
        if offset % place.factor_zyx[0] == 0 and 0 <= offset // place.factor_zyx[0] < prediction.label.shape_zyx[0]:
            k = offset // place.factor_zyx[0]
            plane = as_binary(prediction.label.read(k, slice(None), slice(None)))
            grid.add(k, plane, band_on_grid(band, factor_yx, shape_yx))


def _has_truth(volume_path: Path) -> bool:
    try:
        with open_volume(volume_path) as volume:
            return DEFAULT_LABEL in volume.labels
    except (VolumeError, ValueError):
        return False


def _nucleus_label(case: RoiCase) -> int | None:
    """The ROI's nucleus in the truth's ``labels/nucleus``: the case's own, else the ROI of that
    name the volume records."""
    if case.roi.nucleus_label is not None:
        return case.roi.nucleus_label
    try:
        with open_volume(case.volume_path) as volume:
            named = {roi.name: roi.nucleus_label for roi in volume.rois}
    except (VolumeError, ValueError):
        return None
    return named.get(case.roi.name)


# --- figures ---------------------------------------------------------------------------------------


def pooled(accumulators: Sequence[Table1Accumulator]) -> Table1 | None:
    """One Table 1 over several ROIs (see the module docstring); ``None`` when there is none."""
    if not accumulators:
        return None
    total = Table1Accumulator(accumulators[0].pixel_size_nm)
    for accumulator in accumulators:
        total.merge(_renumbered(accumulator))
    areas = [a.table().area_f_measure for a in accumulators]
    known = [a for a in areas if a is not None]
    table = total.table()
    return Table1(
        **{**table.as_dict(), "area_f_measure": float(np.mean(known)) if known else None, "central_slice": None}
    )


def _renumbered(accumulator: Table1Accumulator) -> Table1Accumulator:
    """A copy without slice indices: pooled ROIs' slices must not be taken for one ROI's."""
    copy = Table1Accumulator(accumulator.pixel_size_nm)
    copy.merge(accumulator)
    copy.occupied, copy.area_f = [], {}
    return copy


def metric_table(scores: Sequence[RoiScores]) -> dict[str, dict[str, dict[str, float]]]:
    """split → reference → figure, for the registry (``model_metric`` rows)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for split in sorted({s.case.split for s in scores}):
        of_split = [s for s in scores if s.case.split == split]
        for reference in (CONSENSUS, TRUTH):
            figures = _figures(
                pooled([s.source[reference] for s in of_split if reference in s.source]),
                pooled([s.grid[reference] for s in of_split if reference in s.grid]),
            )
            if reference == TRUTH:
                ceiling = pooled([s.consensus_vs_truth for s in of_split if s.consensus_vs_truth is not None])
                if ceiling is not None:
                    figures |= {CEILING_PREFIX + name: float(getattr(ceiling, name)) for name in FIGURES}
            if figures:
                figures["rois"] = float(sum(reference in s.source for s in of_split))
                table.setdefault(split, {})[reference] = figures
    return table


def _figures(source: Table1 | None, grid: Table1 | None) -> dict[str, float]:
    figures: dict[str, float] = {}
    if source is not None:
        figures |= {name: float(getattr(source, name)) for name in FIGURES}
        if source.area_f_measure is not None:
            figures["area_f_measure"] = float(source.area_f_measure)
    if grid is not None:
        figures |= {GRID_PREFIX + name: float(getattr(grid, name)) for name in GRID_FIGURES}
    return figures


def tables_by_roi(scores: Sequence[RoiScores]) -> dict[str, Table1]:
    """Per ROI, for reports: ``"<split>/<roi> vs consensus"`` etc., at the source resolution."""
    rows: dict[str, Table1] = {}
    for s in scores:
        for reference, accumulator in s.source.items():
            rows[f"{s.case.key} vs {reference}"] = accumulator.table()
        if s.consensus_vs_truth is not None:
            rows[f"{s.case.key} consensus vs truth"] = s.consensus_vs_truth.table()
    return rows
