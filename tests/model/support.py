"""A tiny synthetic training set, made the way the loop makes one: a generated volume, one subject
crop per ROI at scaling factor 2, and each slice's consensus mask (here: the truth's nucleus
area, area-averaged to subject resolution) as a 0/255 PNG."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from etchacell_loop.imaging.subjects import crop_around
from etchacell_loop.imaging.synth_volume import SynthSpec, generate_volume
from etchacell_loop.imaging.volume import open_label, open_volume
from etchacell_loop.model.data import LabelledSlice
from etchacell_loop.model.presets import ModelPreset, get_preset

SCALE = 2.0
CROP_PX = 128


def tiny_preset(architecture: str = "unet-2.5d") -> ModelPreset:
    """The small preset shrunk to seconds: 4 x 32 x 32 patches at 20 nm, 4 filters, depth 2."""
    base = get_preset("small" if architecture == "unet-2.5d" else "small-3d")
    return replace(
        base,
        name=f"tiny-{architecture}",
        patch_zyx=(4, 32, 32),
        start_filters=4,
        depth=2,
        voxel_size_nm=20.0,
        epochs=3,
        steps_per_epoch=4,
        batch_size=4,
        validation_patches=8,
        learning_rate=3e-2,
    )


def make_volume(path: Path) -> Path:
    generate_volume(path, SynthSpec(shape=(16, 256, 256), cells=3, seed=3))
    return path


def write_labelled_slices(volume_path: Path, masks_dir: Path, splits: dict[str, str]) -> list[LabelledSlice]:
    """One record per slice of every ROI, its mask written under ``masks_dir``."""
    volume = open_volume(volume_path)
    nucleus = open_label(volume_path, "nucleus")
    masks_dir.mkdir(parents=True, exist_ok=True)
    records: list[LabelledSlice] = []
    for roi in volume.rois:
        crop = crop_around(roi, CROP_PX, volume.shape_zyx)
        size = (round(crop.width / SCALE), round(crop.height / SCALE))
        for z in range(roi.z, roi.z + roi.depth):
            area = nucleus.read(z, slice(crop.y, crop.y + crop.height), slice(crop.x, crop.x + crop.width))
            fraction = Image.fromarray((area == roi.nucleus_label).astype(np.float32)).resize(
                size, Image.Resampling.BOX
            )
            mask = np.where(np.asarray(fraction) >= 0.5, 255, 0).astype(np.uint8)
            mask_path = masks_dir / f"{roi.name}-z{z:04d}.png"
            Image.fromarray(mask).save(mask_path)
            records.append(
                LabelledSlice(
                    volume_path=str(volume_path),
                    roi=roi,
                    z=z,
                    crop_xywh=(crop.x, crop.y, crop.width, crop.height),
                    scaling_factor=SCALE,
                    mask_path=str(mask_path),
                    split=splits.get(roi.name, "unassigned"),
                    consensus_id=len(records) + 1,
                )
            )
    return records
