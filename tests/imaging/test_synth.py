"""Synthetic SBF-SEM volumes: reproducible to the byte, truth consistent with itself and the image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from numpy.typing import NDArray
from scipy import ndimage
from skimage.measure import perimeter

from etchacell_loop.imaging.omezarr import read_etchacell_attrs
from etchacell_loop.imaging.synth_cells import ORGANELLE_KINDS, draw_volume
from etchacell_loop.imaging.synth_volume import SynthReport, SynthSpec, generate_volume
from etchacell_loop.imaging.volume import open_volume

SPEC = SynthSpec(shape=(16, 256, 256), seed=7)
MITOTIC_SPEC = SynthSpec(shape=(12, 192, 384), cells=2, seed=3, mitotic=True)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthReport]:
    path = tmp_path_factory.mktemp("synth") / "hela.zarr"
    return path, generate_volume(path, SPEC)


@pytest.fixture(scope="module")
def mitotic_volume(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthReport]:
    path = tmp_path_factory.mktemp("synth") / "mitosis.zarr"
    return path, generate_volume(path, MITOTIC_SPEC)


def level0(path: Path, name: str = "") -> NDArray[Any]:
    """Level 0 of the image, or of the label image ``name``."""
    return np.asarray(zarr.open_array(str(path / (f"labels/{name}/0" if name else "0")), mode="r")[:])


def attrs(path: Path) -> Any:
    return json.loads((path / ".zattrs").read_text())


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_the_same_seed_gives_the_same_bytes_and_another_seed_another_volume(
    volume: tuple[Path, SynthReport], tmp_path: Path
) -> None:
    path, _ = volume
    again = tmp_path / "hela.zarr"
    generate_volume(again, SPEC)
    assert files_of(again) == files_of(path)
    other = tmp_path / "other.zarr"
    generate_volume(other, SynthSpec(shape=SPEC.shape, seed=SPEC.seed + 1))
    assert not np.array_equal(level0(other), level0(path))
    assert not np.array_equal(level0(other, "nucleus"), level0(path, "nucleus"))


def test_the_envelope_band_is_seven_pixels_wide_on_every_nucleus_boundary(volume: tuple[Path, SynthReport]) -> None:
    path, _ = volume
    nucleus, envelope = level0(path, "nucleus") > 0, level0(path, "envelope").astype(bool)
    assert envelope.any()
    for z in range(nucleus.shape[0]):
        if not nucleus[z].any():
            assert not envelope[z].any()
            continue
        # the boundary: nucleus pixels with a 4-neighbour outside, and outside pixels next to one
        inner_edge = nucleus[z] & ~ndimage.binary_erosion(nucleus[z], border_value=1)
        outer_edge = ~nucleus[z] & ndimage.binary_dilation(nucleus[z])
        assert envelope[z][inner_edge | outer_edge].all()
        to_boundary = ndimage.distance_transform_edt(~(inner_edge | outer_edge))
        assert to_boundary[envelope[z]].max() <= 3.5
        if nucleus[z].sum() > 5000:  # the band's area over the outline's length is its width
            assert 6.0 < envelope[z].sum() / perimeter(nucleus[z]) < 8.0  # type: ignore[no-untyped-call]


def test_the_nucleolus_lies_inside_its_own_nucleus(volume: tuple[Path, SynthReport]) -> None:
    path, _ = volume
    nucleus, nucleolus = level0(path, "nucleus"), level0(path, "nucleolus")
    assert nucleolus.any()
    assert np.array_equal(nucleus[nucleolus > 0], nucleolus[nucleolus > 0])
    envelope = level0(path, "envelope").astype(bool)
    assert not (envelope & (nucleolus > 0)).any()


def test_every_roi_holds_its_whole_nucleus(volume: tuple[Path, SynthReport]) -> None:
    path, report = volume
    nucleus = level0(path, "nucleus")
    with open_volume(path) as opened:
        rois = list(opened.rois)
    assert [r.name for r in rois] == [f"cell{k:02d}" for k in range(1, len(rois) + 1)]
    assert {r.nucleus_label for r in rois} == set(np.unique(nucleus)) - {0}
    for roi in rois:
        assert roi.x >= 0 and roi.y >= 0 and roi.z >= 0
        assert roi.z + roi.depth <= SPEC.shape[0] and roi.y + roi.height <= SPEC.shape[1]
        assert roi.x + roi.width <= SPEC.shape[2]
        inside = np.zeros(nucleus.shape, bool)
        inside[roi.z : roi.z + roi.depth, roi.y : roi.y + roi.height, roi.x : roi.x + roi.width] = True
        assert not ((nucleus == roi.nucleus_label) & ~inside).any()
        assert roi.width * roi.height * roi.depth < nucleus.size  # a box round the nucleus, not everything
    assert tuple(rois) == report.rois


def test_slices_near_the_caps_show_several_islands(volume: tuple[Path, SynthReport]) -> None:
    path, _ = volume
    nucleus = level0(path, "nucleus")
    islands = [ndimage.label(nucleus[z] == 1)[1] for z in range(nucleus.shape[0])]
    middle = nucleus.shape[0] // 2
    assert islands[middle] == 1
    assert max(islands[:middle]) >= 2 and max(islands[middle:]) >= 2


def test_the_envelope_is_darker_than_nucleoplasm_and_resin(volume: tuple[Path, SynthReport]) -> None:
    path, report = volume
    image = level0(path).astype(np.float64)
    model = draw_volume(SPEC.seed, SPEC.shape, SPEC.voxel_size_nm, SPEC.cells, SPEC.mitotic)
    envelope, nucleoplasm, resin = [], [], []
    for z in range(SPEC.shape[0]):
        if z in report.blank_slices:
            continue
        geometry = model.slice_geometry(z)
        membrane = geometry.envelope & (np.abs(geometry.nucleus_distance_px - 0.25) < 2.5)
        envelope.append(image[z][membrane])
        deep = (geometry.nucleus_distance_px > 20) & (geometry.nucleolus == 0)
        nucleoplasm.append(image[z][deep])
        resin.append(image[z][geometry.cell == 0])
    envelope_mean = np.concatenate(envelope).mean()
    assert envelope_mean < np.concatenate(nucleoplasm).mean() - 15
    assert envelope_mean < np.concatenate(resin).mean() - 40


def test_organelles_are_labelled_with_their_class_and_stay_out_of_the_nucleus(
    volume: tuple[Path, SynthReport],
) -> None:
    path, report = volume
    organelles, nucleus = level0(path, "organelles"), level0(path, "nucleus")
    properties = attrs(path / "labels/organelles")["image-label"]["properties"]
    classes = {p["label-value"]: p["class"] for p in properties}
    present = set(np.unique(organelles)) - {0}
    assert present and present <= set(classes)
    assert len({classes[k] for k in present}) >= 3 and set(classes.values()) <= set(ORGANELLE_KINDS)
    assert sum(report.organelles.values()) == len(classes)
    assert not ((organelles > 0) & (nucleus > 0)).any()


def test_a_full_size_volume_has_every_kind_of_organelle_in_each_cell() -> None:
    model = draw_volume(1, (64, 1024, 1024))
    assert len(model.cells) == 3
    for cell in model.cells:
        kinds = {o.kind for o in model.organelles if o.cell_label == cell.label}
        assert kinds == set(ORGANELLE_KINDS)


def test_a_mitotic_cell_keeps_only_fragments_of_its_envelope(mitotic_volume: tuple[Path, SynthReport]) -> None:
    path, _ = mitotic_volume
    extras = read_etchacell_attrs(path)
    assert extras is not None and extras["kind"] == "synthetic-sbfsem"
    assert extras["mitotic_labels"] == [2]
    nucleus, envelope = level0(path, "nucleus"), level0(path, "envelope").astype(bool)
    covered = {}
    for label in (1, 2):
        edge = np.stack([(nucleus[z] == label) & ~ndimage.binary_erosion(nucleus[z] == label) for z in range(12)])
        covered[label] = envelope[edge].mean()
    assert covered[1] == 1.0
    assert 0.05 < covered[2] < 0.8
    assert not (level0(path, "nucleolus") == 2).any()


def test_a_volume_too_small_for_a_cell_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        draw_volume(0, (4, 16, 256))
    with pytest.raises(ValueError, match="at least one cell"):
        draw_volume(0, (4, 64, 64), cells=0)
