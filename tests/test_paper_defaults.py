"""The paper's settings, pinned: every test here fails when a default the method depends on changes.

Spiers et al. 2021 (Traffic 22:240): §4.4 subjects (2000 px crops shown at 1000 x 1000, JPEG 90 %),
§4.6 flipbook (±250 and ±500 nm) and the fixed retirement limit of 30, §2.4/§4.8 CRIA (the area where
half or more of the drawers agree), §4.9 the U-Net (patch 12 x 256 x 256, 32 start filters, dropout 0.3,
Adam at 5e-4, batch normalisation, smoothed Dice; 70 nm envelope at 50 nm voxels), §2.6/§4.11 TAP
(envelope where *all* three axes agree), §4.12 post-processing (components under 10,000 voxels removed,
the largest kept per ROI; scikit-image's labelling, full connectivity). A change of one of these is a
change of method: it must be made here too, on purpose.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from etchacell_loop.config import (
    ConsensusSettings,
    CorrectionSettings,
    ImagingSettings,
    RetirementSettings,
    Settings,
)
from etchacell_loop.cria.consensus import CriaParams, Drawing, slice_consensus
from etchacell_loop.imaging.subjects import (
    SubjectFormat,
    contrast_window,
    jpeg_bytes,
    render_frame,
    scaling_factor,
    subject_size_px,
)
from etchacell_loop.model import tap
from etchacell_loop.model.evaluation import DEFAULT_ENVELOPE_WIDTH_NM
from etchacell_loop.model.presets import get_preset
from etchacell_loop.retirement import FixedCount

PAPER_PATCH = (12, 256, 256)


def test_subjects_are_1000_px_jpegs_at_quality_90_of_2000_px_crops() -> None:
    imaging, fmt = ImagingSettings(), SubjectFormat()
    assert (imaging.crop_size_px, imaging.subject_size_px, imaging.jpeg_quality) == (2000, 1000, 90)
    assert (fmt.crop_size_px, fmt.subject_size_px, fmt.jpeg_quality) == (2000, 1000, 90)
    assert SubjectFormat.from_settings(imaging) == fmt
    assert (imaging.pixel_size_xy_nm, imaging.pixel_size_z_nm) == (10.0, 50.0)  # the paper's SBF-SEM voxel


def test_the_flipbook_shows_250_and_500_nm_either_side() -> None:
    assert ImagingSettings().flipbook_offsets_nm == (-500.0, -250.0, 0.0, 250.0, 500.0)
    assert SubjectFormat().flipbook_offsets_nm == (-500.0, -250.0, 0.0, 250.0, 500.0)


def test_the_paper_retired_at_a_fixed_30_classifications() -> None:
    assert RetirementSettings().max_classifications == 30
    assert FixedCount().count == 30


def test_cria_keeps_the_area_where_half_or_more_of_the_drawers_agree() -> None:
    consensus = ConsensusSettings()
    assert (consensus.agreement_fraction, consensus.denominator, consensus.envelope_width_nm) == (0.5, "drawers", 70.0)
    params = CriaParams.from_settings(consensus, pixel_size_nm=10.0)
    assert (params.agreement_fraction, params.denominator, params.envelope_width_nm) == (0.5, "drawers", 70.0)
    # Behaviour on the defaults: of four drawers, two draw a big square and two a small one inside
    # it; the small square has 4 of 4 votes, the rest of the big one 2 of 4: exactly half, kept.
    big = np.array([[50, 50], [350, 50], [350, 350], [50, 350]], dtype=np.float64)
    small = np.array([[150, 150], [250, 150], [250, 250], [150, 250]], dtype=np.float64)
    drawings = [Drawing(f"v{i}", i, (shape,)) for i, shape in enumerate([big, big, small, small])]
    result = slice_consensus(drawings, 4, (400, 400), CriaParams(pixel_size_nm=10.0))
    assert result.area[100, 100] and result.area[200, 200]
    # One more volunteer without the big square: 2 of 5 is under half, and the big square goes.
    fewer = slice_consensus([*drawings, Drawing("v4", 4, (small,))], 5, (400, 400), CriaParams(pixel_size_nm=10.0))
    assert not fewer.area[100, 100] and fewer.area[200, 200]


def test_the_unet_is_the_papers() -> None:
    paper = get_preset("paper")
    assert paper.patch_zyx == PAPER_PATCH
    assert (paper.start_filters, paper.dropout, paper.learning_rate, paper.batch_norm) == (32, 0.3, 5e-4, True)
    assert (paper.voxel_size_nm, paper.envelope_width_nm) == (50.0, 70.0)
    assert (paper.epochs, paper.steps_per_epoch, paper.batch_size) == (100, 100, 12)  # the seed's schedule
    assert Settings().training.preset in {"small", "paper"}


def test_the_unet_compiles_with_adam_at_the_papers_rate_and_a_dice_loss() -> None:
    import keras

    from etchacell_loop.model.unet import build_unet, compile_unet

    paper = get_preset("paper")
    model = compile_unet(build_unet(paper), paper)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == np.float32(5e-4)
    assert model.input_shape[1:4] == PAPER_PATCH or model.input_shape[1:3] == PAPER_PATCH[1:]
    dropouts = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert dropouts and set(dropouts) == {0.3}
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_tap_keeps_what_all_three_axes_call_envelope() -> None:
    params = tap.TapParams(patch_zyx=PAPER_PATCH)
    assert (params.rule, params.axes, params.threshold) == ("all", (0, 1, 2), 0.5)
    assert CorrectionSettings().tap_rule == "all"
    votes = [np.array([[[True, True, False]]]), np.array([[[True, False, False]]]), np.array([[[True, True, True]]])]
    assert tap.combine_votes(votes, params.rule).tolist() == [[[True, False, False]]]


def test_post_processing_removes_pieces_under_10000_voxels_fully_connected_and_keeps_each_rois_largest() -> None:
    params = tap.TapParams(patch_zyx=PAPER_PATCH)
    assert params.min_component_voxels == tap.DEFAULT_MIN_COMPONENT_VOXELS == 10_000
    correction = CorrectionSettings()
    assert correction.min_component_voxels is None  # None: the paper's 10,000
    assert correction.keep_largest is True  # the loop predicts ROIs: the target nucleus is kept (§4.12)
    np.testing.assert_array_equal(tap.COMPONENT_CONNECTIVITY, ndimage.generate_binary_structure(3, 3))
    # Behaviour on the defaults: a diagonal staircase of 10,000 voxels is one piece; 9,999 are not kept.
    staircase = np.zeros((2, 5002, 5002), dtype=bool)
    for k in range(5000):
        staircase[k % 2, k, k] = True
        staircase[k % 2, k + 1, k] = True
    assert staircase.sum() == 10_000
    kept = tap.remove_small_components(staircase, params.min_component_voxels)
    assert kept.sum() == 10_000
    staircase[0, 0, 0] = False
    assert not tap.remove_small_components(staircase, params.min_component_voxels).any()


def test_the_envelope_is_70_nm_wide_everywhere_it_is_drawn_or_scored() -> None:
    assert DEFAULT_ENVELOPE_WIDTH_NM == 70.0
    assert ConsensusSettings().envelope_width_nm == 70.0
    assert {get_preset(name).envelope_width_nm for name in ("paper", "paper-3d", "small", "small-3d")} == {70.0}


def test_a_subject_frame_made_with_the_defaults_is_a_1000_px_quality_90_jpeg() -> None:
    fmt = SubjectFormat()
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 65535, (fmt.crop_size_px, fmt.crop_size_px), dtype=np.uint16)
    size = subject_size_px(fmt.crop_size_px, fmt.crop_size_px, scaling_factor(fmt.crop_size_px, fmt.crop_size_px, fmt))
    plane = render_frame(crop, contrast_window([crop], fmt.low_percentile, fmt.high_percentile), size)
    data = jpeg_bytes(plane, fmt.jpeg_quality)
    with Image.open(io.BytesIO(data)) as written:
        assert written.format == "JPEG" and written.size == (1000, 1000)
        reference = io.BytesIO()
        Image.fromarray(plane).save(reference, "JPEG", quality=90)
        with Image.open(reference) as q90:
            # the quantisation tables a quality of 90 gives (PIL's JpegImageFile attribute)
            assert getattr(written, "quantization") == getattr(q90, "quantization")  # noqa: B009
