"""The U-Net of the paper (section 4.9), in 2.5-D as its code ran it and in true 3-D.

2.5-D: the patch's z slices are the input channels of a 2-D U-Net, which outputs one sigmoid
channel per input slice (12 in, 12 out in the paper), so every slice's envelope is predicted from
its neighbours above and below. 3-D: Conv3D throughout on (z, y, x, 1) patches; z is pooled only
while the patch is deep enough (:func:`etchacell_loop.model.presets.z_pooling`), y and x at every level.

Both are built the same way: ``depth`` encoder levels of two conv, batch-norm, ReLU blocks each
followed by a 2x pooling, a bottom level of the same blocks with dropout, and a decoder that
upsamples, concatenates the skip connection of its level and applies two blocks again; a 1x1
convolution with a sigmoid gives the envelope probability. Batch normalisation sits between the
convolution and the ReLU, and is in the graph (the seed code built the layer and then discarded
its output); convolutions followed by it carry no bias (the norm's offset does that job).

Backend-agnostic Keras 3 only: the same model trains under TensorFlow, JAX or PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import layers, ops

from etchacell_loop.model.presets import ModelPreset, z_pooling

Tensor = Any  # a Keras tensor; Keras ships no type information
# Moving statistics forget at 0.9 per step (PyTorch's default) rather than Keras' 0.99: a short run
# of a few hundred steps must end with statistics of the trained weights, or validation and
# prediction (which use them) see a model that was never trained.
BN_MOMENTUM = 0.9


def input_shape(preset: ModelPreset) -> tuple[int, ...]:
    """The model's input shape without the batch axis."""
    pz, py, px = preset.patch_zyx
    return (py, px, pz) if preset.architecture == "unet-2.5d" else (pz, py, px, 1)


def build_unet(preset: ModelPreset) -> keras.Model:
    """The U-Net ``preset`` describes, not compiled (see :func:`compile_unet`)."""
    three_d = preset.architecture == "unet-3d"
    inputs = keras.Input(shape=input_shape(preset), name="patch")
    pools = z_pooling(preset.patch_zyx[0], preset.depth) if three_d else (1,) * preset.depth
    x, skips = inputs, []
    for level in range(preset.depth):
        x = _conv_pair(x, preset.start_filters * 2**level, preset, f"down{level}")
        skips.append(x)
        x = _pool(x, pools[level], three_d, f"down{level}_pool")
    x = _conv_pair(x, preset.start_filters * 2**preset.depth, preset, "bottom")
    if preset.dropout > 0:
        x = layers.Dropout(preset.dropout, name="bottom_dropout")(x)
    for level in reversed(range(preset.depth)):
        x = _upsample(x, pools[level], three_d, f"up{level}_upsample")
        x = layers.Concatenate(name=f"up{level}_skip")([x, skips[level]])
        x = _conv_pair(x, preset.start_filters * 2**level, preset, f"up{level}")
    channels = 1 if three_d else preset.patch_zyx[0]
    conv = layers.Conv3D if three_d else layers.Conv2D
    # float32 even under mixed precision: the Dice loss sums over a whole batch of probabilities.
    outputs = conv(channels, 1, activation="sigmoid", dtype="float32", name="envelope")(x)
    return keras.Model(inputs, outputs, name=f"unet_{preset.name}")


def _conv_pair(x: Tensor, filters: int, preset: ModelPreset, name: str) -> Tensor:
    for index in (1, 2):
        x = _conv(x, filters, preset, f"{name}_conv{index}")
        if preset.batch_norm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{index}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{index}")(x)
    return x


def _conv(x: Tensor, filters: int, preset: ModelPreset, name: str) -> Tensor:
    conv = layers.Conv3D if preset.architecture == "unet-3d" else layers.Conv2D
    return conv(filters, 3, padding="same", use_bias=not preset.batch_norm, kernel_initializer="he_normal", name=name)(
        x
    )


def _pool(x: Tensor, z_factor: int, three_d: bool, name: str) -> Tensor:
    if three_d:
        return layers.MaxPooling3D((z_factor, 2, 2), name=name)(x)
    return layers.MaxPooling2D(2, name=name)(x)


def _upsample(x: Tensor, z_factor: int, three_d: bool, name: str) -> Tensor:
    if three_d:
        return layers.UpSampling3D((z_factor, 2, 2), name=name)(x)
    return layers.UpSampling2D(2, name=name)(x)


def dice_loss(smooth: float) -> Callable[[Tensor, Tensor], Tensor]:
    """``1 - smoothed Dice``, the paper's loss: Dice = (2·Σ t·p + s) / (Σ t + Σ p + s) over the
    whole batch (a patch without envelope then still says something through its false positives;
    ``smooth`` keeps an empty batch from dividing by zero and rewards predicting nothing there)."""

    def loss(y_true: Tensor, y_pred: Tensor) -> Tensor:
        truth = ops.cast(y_true, y_pred.dtype)
        overlap = ops.sum(truth * y_pred)
        return 1.0 - (2.0 * overlap + smooth) / (ops.sum(truth) + ops.sum(y_pred) + smooth)

    loss.__name__ = "dice_loss"
    return loss


def compile_unet(model: keras.Model, preset: ModelPreset) -> keras.Model:
    """``model`` compiled as the paper trains it: Adam at the preset's rate, smoothed Dice loss."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=preset.learning_rate), loss=dice_loss(preset.dice_smooth)
    )
    return model
