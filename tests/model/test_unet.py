from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from etchacell_loop.model.data import from_model_layout, to_model_layout  # noqa: E402
from etchacell_loop.model.unet import build_unet, compile_unet, dice_loss  # noqa: E402

from .support import tiny_preset  # noqa: E402


@pytest.mark.parametrize("architecture", ["unet-2.5d", "unet-3d"])
def test_both_architectures_map_patches_to_probabilities(architecture: str) -> None:
    preset = tiny_preset(architecture)
    model = build_unet(preset)
    batch = np.random.default_rng(0).random((3, *preset.patch_zyx)).astype(np.float32)
    out = from_model_layout(np.asarray(model.predict_on_batch(to_model_layout(batch, architecture))), architecture)
    assert out.shape == batch.shape
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_dice_loss_is_zero_for_a_perfect_prediction_and_grows_with_error() -> None:
    loss = dice_loss(1.0)
    truth = np.zeros((2, 8, 8, 4), np.float32)
    truth[:, 2:6, 3, :] = 1.0
    perfect = float(keras.ops.convert_to_numpy(loss(truth, truth)))
    shifted = float(keras.ops.convert_to_numpy(loss(truth, np.roll(truth, 1, axis=1))))
    wrong = float(keras.ops.convert_to_numpy(loss(truth, np.roll(truth, 3, axis=2))))
    assert perfect == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < shifted < wrong <= 1.0


@pytest.mark.parametrize("architecture", ["unet-2.5d", "unet-3d"])
def test_batch_normalisation_is_in_the_graph_and_learns_statistics(architecture: str) -> None:
    preset = tiny_preset(architecture)
    model = compile_unet(build_unet(preset), preset)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 2 * (2 * preset.depth + 1)  # two per block: depth down, bottom, depth up
    before = [keras.ops.convert_to_numpy(layer.moving_mean) for layer in norms]
    rng = np.random.default_rng(1)
    x = rng.random((4, *preset.patch_zyx)).astype(np.float32) + 2.0
    y = (rng.random((4, *preset.patch_zyx)) > 0.9).astype(np.float32)
    model.train_on_batch(to_model_layout(x, architecture), to_model_layout(y, architecture))
    after = [keras.ops.convert_to_numpy(layer.moving_mean) for layer in norms]
    assert all(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    convs = [layer for layer in model.layers if layer.name.endswith(("_conv1", "_conv2"))]
    assert convs and not any(layer.use_bias for layer in convs)
