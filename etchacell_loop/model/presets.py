"""Named model configurations: the paper's U-Net and smaller ones that train on a laptop CPU.

A preset is everything that decides what a training run builds and how it learns, declared as data
so a training run, its model version and its artefact can all say exactly what they were. The
"paper" preset is the configuration of Spiers et al. 2021 (section 4.9: 2.5-D input of 12 slices of
256 x 256 at 50 nm isotropic voxels, 32 start filters, dropout 0.3, batch normalisation, Adam at
5e-4, smoothed Dice loss, a 70 nm envelope); "paper-3d" is the same at true 3-D; "small" and
"small-3d" keep the design at a size that trains in a minute or two on a CPU (tests, demos).

No Keras here: the daemon reads presets without the ``ml`` extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

Architecture = Literal["unet-2.5d", "unet-3d"]
ARCHITECTURES: tuple[Architecture, ...] = ("unet-2.5d", "unet-3d")
Z_POOL_MIN_SLICES = 4  # the 3-D U-Net halves z only while at least this many slices remain to halve


class PresetError(ValueError):
    """An unknown preset name or an inconsistent preset; the message is one line."""


@dataclass(frozen=True)
class ModelPreset:
    """What to build and how to train it.

    ``patch_zyx`` is the model's input patch in model voxels (``voxel_size_nm`` in every axis);
    in y and x it must be divisible by ``2 ** depth`` (one halving per level). ``envelope_patch_fraction``
    is the share of training patches centred on envelope (the rest are anywhere), so a model sees
    the thin band often enough; ``validation_patches`` caps the fixed validation tiles per epoch.
    """

    name: str
    architecture: Architecture
    patch_zyx: tuple[int, int, int]
    start_filters: int
    depth: int
    dropout: float
    batch_norm: bool
    learning_rate: float
    dice_smooth: float
    voxel_size_nm: float
    envelope_width_nm: float
    epochs: int
    steps_per_epoch: int
    batch_size: int
    plateau_factor: float = 0.75
    plateau_patience: int = 4
    envelope_patch_fraction: float = 2.0 / 3.0
    validation_patches: int = 64
    zoom_augmentation: bool = False  # see data.AugmentParams: zoom thins a 1-2 px band

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise PresetError(f"preset {self.name!r}: {problem}")

    @property
    def envelope_width_px(self) -> float:
        """The envelope band's width in model voxels (70 nm at 50 nm: 1.4, drawn 1 px wide)."""
        return self.envelope_width_nm / self.voxel_size_nm

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (stored beside a trained model and in its model version row)."""
        data = asdict(self)
        data["patch_zyx"] = list(self.patch_zyx)
        return data


def preset_from_dict(data: Mapping[str, Any]) -> ModelPreset:
    """The preset a stored mapping describes (from :meth:`ModelPreset.as_dict`); unknown keys are
    an error, missing optional ones take their defaults."""
    known = {f.name for f in fields(ModelPreset)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PresetError(f"stored preset has unknown keys: {', '.join(unknown)}")
    values = dict(data)
    try:
        patch = values["patch_zyx"]
        values["patch_zyx"] = (int(patch[0]), int(patch[1]), int(patch[2]))
        return ModelPreset(**values)
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise PresetError(f"stored preset is incomplete or malformed ({exc})") from None


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; a one-line error listing the known names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise PresetError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})") from None


def with_batch_size(preset: ModelPreset, batch_size: int) -> ModelPreset:
    """``preset`` trained with batches of ``batch_size`` patches, its learning dynamics kept.

    A larger batch lets an accelerator do more per step; the preset's learning rate is scaled by the
    square root of the batch ratio — the scaling rule for Adam (Malladi et al. 2022, "On the SDEs and
    scaling rules for adaptive gradient algorithms"; the linear rule is SGD's) — and its steps per
    epoch by the inverse ratio, so an epoch still shows the model as many patches and the plateau
    schedule keeps its meaning. The same batch size returns the preset unchanged.
    """
    if batch_size < 1:
        raise PresetError(f"batch size must be at least 1, not {batch_size}")
    if batch_size == preset.batch_size:
        return preset
    ratio = batch_size / preset.batch_size
    return replace(
        preset,
        batch_size=batch_size,
        learning_rate=preset.learning_rate * ratio**0.5,
        steps_per_epoch=max(1, round(preset.steps_per_epoch / ratio)),
    )


def z_pooling(patch_z: int, depth: int) -> tuple[int, ...]:
    """The z factor (2 or 1) of each of the 3-D U-Net's ``depth`` poolings.

    SBF-SEM stacks are shallow next to their width, and a 12-slice patch halved four times would
    be gone. z is halved while at least :data:`Z_POOL_MIN_SLICES` slices remain and their number is
    even; below that only y and x are pooled, so the deepest levels still see several slices.
    """
    factors = []
    size = patch_z
    for _ in range(depth):
        if size >= Z_POOL_MIN_SLICES and size % 2 == 0:
            factors.append(2)
            size //= 2
        else:
            factors.append(1)
    return tuple(factors)


def _problem(preset: ModelPreset) -> str | None:
    checks: list[tuple[bool, str]] = [
        (preset.architecture in ARCHITECTURES, f"architecture must be one of {', '.join(ARCHITECTURES)}"),
        (len(preset.patch_zyx) == 3 and all(n >= 1 for n in preset.patch_zyx), "patch_zyx must be 3 positive sizes"),
        (preset.depth >= 1, "depth must be at least 1"),
        (
            all(n % (2**preset.depth) == 0 for n in preset.patch_zyx[1:]),
            f"patch y and x must be divisible by 2**depth = {2**preset.depth}",
        ),
        (preset.start_filters >= 1, "start_filters must be positive"),
        (0.0 <= preset.dropout < 1.0, "dropout must be in [0, 1)"),
        (preset.learning_rate > 0 and preset.dice_smooth >= 0, "learning_rate must be > 0 and dice_smooth >= 0"),
        (preset.voxel_size_nm > 0 and preset.envelope_width_nm > 0, "voxel and envelope sizes must be positive"),
        (min(preset.epochs, preset.steps_per_epoch, preset.batch_size) >= 1, "epochs, steps, batch must be >= 1"),
        (0.0 < preset.plateau_factor < 1.0 and preset.plateau_patience >= 0, "plateau factor must be in (0, 1)"),
        (0.0 <= preset.envelope_patch_fraction <= 1.0, "envelope_patch_fraction must be in [0, 1]"),
        (preset.validation_patches >= 1, "validation_patches must be positive"),
    ]
    return next((message for ok, message in checks if not ok), None)


_PAPER = ModelPreset(
    name="paper",
    architecture="unet-2.5d",
    patch_zyx=(12, 256, 256),
    start_filters=32,
    depth=4,
    dropout=0.3,
    batch_norm=True,
    learning_rate=5e-4,
    dice_smooth=1.0,
    voxel_size_nm=50.0,
    envelope_width_nm=70.0,
    epochs=100,
    steps_per_epoch=100,
    batch_size=12,
)

_SMALL = ModelPreset(
    name="small",
    architecture="unet-2.5d",
    patch_zyx=(8, 64, 64),
    start_filters=8,
    depth=3,
    dropout=0.3,
    batch_norm=True,
    learning_rate=1e-3,
    dice_smooth=1.0,
    voxel_size_nm=50.0,
    envelope_width_nm=70.0,
    epochs=20,
    steps_per_epoch=20,
    batch_size=8,
    validation_patches=32,
)

PRESETS: Mapping[str, ModelPreset] = {
    "paper": _PAPER,
    # True 3-D at the paper's field of view; 3-D activations are 12x larger, hence the smaller batch.
    "paper-3d": replace(_PAPER, name="paper-3d", architecture="unet-3d", batch_size=2),
    "small": _SMALL,
    "small-3d": replace(_SMALL, name="small-3d", architecture="unet-3d", batch_size=4),
}
