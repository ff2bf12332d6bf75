"""A model scored as it is deployed: whole ROIs, TAP on the defaults, Table 1 at the source resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from etchacell_loop.imaging.volume import RoiBox, open_label, open_volume
from etchacell_loop.model import scoring
from etchacell_loop.model.data import LabelledSlice
from etchacell_loop.model.evaluation import band_on_grid
from etchacell_loop.model.metrics import Table1Accumulator, evaluate_volumes
from etchacell_loop.model.tap import TapParams
from tests.imaging.support import write_ome_zarr

from .support import make_volume, tiny_preset, write_labelled_slices

FACTOR = 5  # 10 nm source pixels, 50 nm model voxels


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[LabelledSlice]]:
    """A synthetic volume whose consensus masks are its truth's nucleus areas (at 20 nm)."""
    root = tmp_path_factory.mktemp("scoring")
    volume = make_volume(root / "syn.zarr")
    splits = {"cell01": "train", "cell02": "validation", "cell03": "test"}
    return volume, write_labelled_slices(volume, root / "masks", splits)


def truth_as_prediction(volume_path: Path, roi: RoiBox, out: Path) -> Path:
    """A prediction of ``roi`` that is the truth's band made the way training targets are (area
    means of the 10 nm band at 50 nm): what a perfect model would write."""
    region = roi.clipped(open_volume(volume_path).shape_zyx)
    band = open_label(volume_path, "envelope")
    shape = (-(-region.height // FACTOR), -(-region.width // FACTOR))
    planes = []
    for z in range(region.z, region.z + region.depth):
        source = np.asarray(
            band.read(z, slice(region.y, region.y + region.height), slice(region.x, region.x + region.width))
        )
        planes.append(band_on_grid(source > 0, (FACTOR, FACTOR), shape))
    envelope = np.stack(planes).astype(np.uint8)
    attrs = {
        "kind": "prediction", "offset_zyx_px": [region.z, region.y, region.x], "factor_zyx": [1, FACTOR, FACTOR],
        "voxel_size_nm": [50.0, 50.0, 50.0], "source_voxel_size_nm": [50.0, 10.0, 10.0], "roi": region.as_dict(),
    }  # fmt: skip
    return write_ome_zarr(out, envelope * 255, scale=(50.0, 50.0, 50.0), etchacell=attrs, labels={"envelope": envelope})


def test_a_perfect_prediction_scores_near_the_ceiling(
    labelled: tuple[Path, list[LabelledSlice]], tmp_path: Path
) -> None:
    volume, records = labelled
    [case] = [c for c in scoring.cases_from_slices(records) if c.split == "test"]
    scores = scoring.score_prediction(
        case, truth_as_prediction(volume, case.roi, tmp_path / "p.zarr"), envelope_width_nm=70.0
    )
    vs_truth, vs_consensus = scores.source["truth"].table(), scores.source["consensus"].table()
    assert vs_truth.pixel_size_nm == 10.0 and scores.grid["truth"].table().pixel_size_nm == 50.0
    # On the model grid the prediction is the truth's own target; scaled back up it is as close to
    # the 70 nm band as 50 nm voxels allow (F 0.85 on the synthetic nuclei: the resolution's ceiling).
    assert scores.grid["truth"].table().f_measure == 1.0
    assert vs_truth.recall > 0.8 and vs_truth.f_measure > 0.8 and vs_truth.ahd_px < 0.5
    # The consensus here is the truth's area at 20 nm: itself a near-perfect reference.
    assert scores.consensus_vs_truth is not None and scores.consensus_vs_truth.table().f_measure > 0.85
    assert vs_consensus.f_measure > 0.7 and vs_consensus.n_slices == len(case.consensus)


def test_the_metric_table_pools_rois_and_names_every_figure(
    labelled: tuple[Path, list[LabelledSlice]], tmp_path: Path
) -> None:
    volume, records = labelled
    cases = [c for c in scoring.cases_from_slices(records)]
    assert sorted(c.split for c in cases) == ["test", "validation"]
    scores = [
        scoring.score_prediction(
            c, truth_as_prediction(volume, c.roi, tmp_path / f"{c.split}.zarr"), envelope_width_nm=70.0
        )
        for c in cases
    ]
    table = scoring.metric_table(scores)
    assert set(table) == {"validation", "test"}
    for split, score in zip(["test", "validation"], sorted(scores, key=lambda s: s.case.split), strict=True):
        figures = table[split]
        single = score.source["consensus"].table()
        assert figures["consensus"]["f_measure"] == pytest.approx(single.f_measure)
        assert figures["consensus"]["ahd_nm"] == pytest.approx(10 * figures["consensus"]["ahd_px"])
        assert figures["consensus"]["grid_f_measure"] == pytest.approx(score.grid["consensus"].table().f_measure)
        assert figures["truth"]["consensus_f_measure"] > 0.85 and figures["truth"]["rois"] == 1.0
        assert "area_f_measure" in figures["truth"]


def test_pooling_sums_voxels_and_averages_the_area_figure() -> None:
    a, b = np.zeros((1, 20, 20), bool), np.zeros((1, 20, 20), bool)
    a[0, 5:15, 5] = True
    b[0, 5:15, 5] = True
    b[0, 5:15, 6] = True  # b predicts twice the envelope
    first, second = Table1Accumulator(10.0), Table1Accumulator(10.0)
    first.add(3, a[0], a[0])
    second.add(3, b[0], a[0])
    pooled = scoring.pooled([first, second])
    assert pooled is not None
    both = evaluate_volumes(np.concatenate([a, b]), np.concatenate([a, a]), pixel_size_nm=10.0)
    assert pooled.f_measure == pytest.approx(both.f_measure)
    assert pooled.n_slices == 2 and pooled.central_slice is None
    assert scoring.pooled([]) is None


def test_the_deployed_path_predicts_every_held_out_roi_with_a_real_model(
    labelled: tuple[Path, list[LabelledSlice]], tmp_path: Path
) -> None:
    from etchacell_loop.model.keras_io import predict_fn_for
    from etchacell_loop.model.unet import build_unet, compile_unet

    _, records = labelled
    preset = tiny_preset()
    model = compile_unet(build_unet(preset), preset)
    tap = TapParams(patch_zyx=preset.patch_zyx)  # the paper's TAP: rule all, 10,000-voxel minimum
    seen: list[str] = []
    scores = scoring.score_rois(
        scoring.cases_from_slices(records), predict_fn_for(model, preset), preset, tap, tmp_path, progress=seen.append
    )
    assert seen == ["validation/cell02", "test/cell03"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test-cell03.zarr", "validation-cell02.zarr"]
    table = scoring.metric_table(scores)
    for split in ("test", "validation"):
        for name in ("f_measure", "ahd_px", "ahd_nm", "grid_f_measure"):
            assert 0.0 <= table[split]["consensus"][name] < 1e6
        assert table[split]["consensus"]["rois"] == 1.0
        assert 0.0 <= table[split]["truth"]["consensus_f_measure"] <= 1.0
