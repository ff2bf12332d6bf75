"""Subject planning and images: ROI specs, flipbooks, geometry, contrast, JPEG quality, metadata."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from etchacell_loop.imaging.subjects import (
    ContrastWindow,
    Flipbook,
    RoiSpecError,
    SubjectFormat,
    contrast_window,
    crop_around,
    crop_of,
    crop_xywh,
    jpeg_bytes,
    offsets_in_slices,
    parse_roi_spec,
    plan_flipbook,
    render_frame,
    sample_slices,
    scaling_factor,
    subject_metadata,
    subject_size_px,
    upload_key,
)
from etchacell_loop.imaging.volume import RoiBox
from etchacell_loop.subject_metadata import SliceKey, subject_layout

# The baseline luminance quantization table of the JPEG standard (ITU T.81, Annex K, table K.1).
ANNEX_K_LUMINANCE = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip


def test_roi_specs_parse_and_bad_ones_say_why() -> None:
    assert parse_roi_spec("cell01:1656,6756,329:2000,2000,150") == RoiBox("cell01", 1656, 6756, 329, 2000, 2000, 150)
    for bad, reason in [
        ("cell01", "NAME:X,Y,Z:W,H,D"),
        ("cell01:1,2:3,4,5", "X,Y,Z"),
        ("cell01:1,2,3:4,5,x", "W,H,D"),
        ("cell01:1,2,3:0,5,5", "at least 1"),
        ("cell01:-1,2,3:4,5,5", "must not be negative"),
        ("a/b:1,2,3:4,5,6", "NAME:X,Y,Z:W,H,D"),
    ]:
        with pytest.raises(RoiSpecError, match=reason) as caught:
            parse_roi_spec(bad)
        assert bad in str(caught.value)


def test_flipbook_offsets_follow_the_z_voxel_size() -> None:
    paper = (-500.0, -250.0, 0.0, 250.0, 500.0)
    assert offsets_in_slices(paper, 50.0) == (-10, -5, 0, 5, 10)
    assert offsets_in_slices(paper, 100.0) == (-5, -3, 0, 3, 5)  # 2.5 rounds away from zero, both sides
    assert offsets_in_slices(paper, 1000.0) == (-1, 0, 0, 0, 1)


def test_flipbooks_are_clamped_at_the_volume_ends_with_the_target_in_the_middle() -> None:
    offsets = (-10, -5, 0, 5, 10)
    assert plan_flipbook(50, offsets, depth_z=100) == Flipbook((40, 45, 50, 55, 60), 2)
    low = plan_flipbook(3, offsets, depth_z=100)
    assert low.frame_z == (0, 0, 3, 8, 13) and low.z == 3 and low.target_frame == 2
    assert plan_flipbook(97, offsets, depth_z=100).frame_z == (87, 92, 97, 99, 99)
    with pytest.raises(ValueError, match="outside"):
        plan_flipbook(100, offsets, depth_z=100)


def test_scaling_keeps_the_paper_ratio_and_the_aspect_of_large_rois() -> None:
    paper = SubjectFormat()
    assert scaling_factor(2000, 2000, paper) == 2.0
    assert subject_size_px(2000, 2000, 2.0) == (1000, 1000)
    assert scaling_factor(600, 300, paper) == 2.0 and subject_size_px(600, 300, 2.0) == (300, 150)
    wide = scaling_factor(3000, 1500, paper)
    assert wide == 3.0 and subject_size_px(3000, 1500, wide) == (1000, 500)


@pytest.mark.parametrize(("scale", "marker_xy"), [(2, (37, 18)), (4, (8, 52)), (1, (59, 3))])
def test_a_bright_marker_lands_at_its_subject_pixel(scale: int, marker_xy: tuple[int, int]) -> None:
    """Source pixel (x, y) of the crop is subject pixel (x // s, y // s): the volunteers' marks map back."""
    crop = np.full((64, 80), 100, dtype=np.uint16)
    x, y = marker_xy
    crop[y, x] = 60000
    size = subject_size_px(80, 64, scale)
    frame = render_frame(crop, ContrastWindow(100.0, 100.0 + 60000 / scale**2), size)
    assert frame.shape == (64 // scale, 80 // scale)
    row, column = (int(i) for i in np.unravel_index(np.argmax(frame), frame.shape))
    assert (column, row) == (x // scale, y // scale)
    assert frame[row, column] == 255 and np.count_nonzero(frame) == 1  # area mean: 1/s² of the marker


def test_contrast_window_is_a_percentile_stretch_of_all_samples() -> None:
    dim = np.arange(0, 1000, dtype=np.uint16).reshape(10, 100)
    bright = dim + 1000
    window = contrast_window([dim, bright], 0.0, 100.0)
    assert (window.low, window.high) == (0.0, 1999.0)
    assert window.apply(np.array([[0, 499.75, 1999, 5000]])).tolist() == [[0, 64, 255, 255]]
    assert sample_slices(RoiBox("r", 0, 0, 10, 5, 5, 100), 5) == [10, 35, 60, 84, 109]
    assert sample_slices(RoiBox("r", 0, 0, 10, 5, 5, 3), 16) == [10, 11, 12]


def _luminance_table(image_bytes: bytes) -> list[int]:
    with Image.open(io.BytesIO(image_bytes)) as image:
        assert isinstance(image, JpegImageFile)
        return sorted(image.quantization[0])


@pytest.mark.parametrize("quality", [90, 75])
def test_jpeg_quality_sets_the_standard_scaled_tables(quality: int) -> None:
    """libjpeg's quality scaling of the Annex K table (quality q ≥ 50: factor 200 - 2q percent)."""
    frame = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    factor = 200 - 2 * quality
    expected = sorted(min(255, max(1, (value * factor + 50) // 100)) for value in ANNEX_K_LUMINANCE)
    assert _luminance_table(jpeg_bytes(frame, quality)) == expected
    sizes = [len(jpeg_bytes(frame, q)) for q in (50, 75, 90, 100)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4


def test_metadata_has_the_notebook_keys_and_round_trips_through_subject_layout() -> None:
    flipbook = Flipbook((0, 0, 3, 8, 13), 2)
    names = [f"cell01-z{z:04d}.jpg" for z in flipbook.frame_z]
    metadata = subject_metadata(
        volume="hela", roi="cell01", flipbook=flipbook, frame_names=names, voxel_size_nm=(50.0, 10.0, 10.0),
        scale=2.0, crop=(1656, 6756, 2000, 2000), jpeg_quality=90,
    )  # fmt: skip
    assert all(isinstance(value, str) for value in metadata.values())
    assert [metadata[f"Image {k}"] for k in range(5)] == names
    assert metadata["Raw XY resolution (nm)"] == "10" and metadata["Raw Z resolution (nm)"] == "50"
    assert metadata["Scaling factor"] == "2" and metadata["jpeg quality (%)"] == "90"
    assert metadata["#volume"] == "hela" and crop_of(metadata) == (1656, 6756, 2000, 2000)
    layout = subject_layout(4242, metadata)
    assert layout.problems == ()
    assert layout.own_slice == SliceKey("cell01", 3) and layout.target_frame == 2
    assert [layout.slice_of(k) for k in range(5)] == [SliceKey("cell01", z) for z in (0, 0, 3, 8, 13)]
    assert layout.pixel_size_nm == 20.0
    assert upload_key("hela", "cell01", 3) == "hela/cell01/z0003"


@pytest.mark.parametrize(
    ("roi", "expected_xywh"),
    [
        (RoiBox("mid", x=900, y=950, z=0, width=200, height=100, depth=1), (0, 0, 2000, 2000)),  # shifted inside
        (RoiBox("c", x=2900, y=2950, z=0, width=200, height=100, depth=1), (2000, 2000, 2000, 2000)),
        (RoiBox("wide", x=100, y=1000, z=0, width=2500, height=300, depth=1), (100, 150, 2500, 2000)),
        (RoiBox("edge", x=3800, y=10, z=0, width=150, height=50, depth=1), (2000, 0, 2000, 2000)),
    ],
)
def test_the_crop_is_the_roi_widened_to_the_crop_size_inside_the_volume(
    roi: RoiBox, expected_xywh: tuple[int, int, int, int]
) -> None:
    crop = crop_around(roi, 2000, (5, 4000, 4000))
    assert crop_xywh(crop) == expected_xywh
    assert (crop.z, crop.depth, crop.name) == (roi.z, roi.depth, roi.name)
    assert crop.x <= roi.x and crop.y <= roi.y  # the ROI stays inside what is shown
    assert crop.x + crop.width >= roi.x + roi.width and crop.y + crop.height >= roi.y + roi.height


def test_a_volume_smaller_than_the_crop_size_is_shown_whole() -> None:
    crop = crop_around(RoiBox("small", x=10, y=20, z=0, width=30, height=40, depth=2), 2000, (3, 100, 120))
    assert crop_xywh(crop) == (0, 0, 120, 100)
