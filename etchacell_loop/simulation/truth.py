"""What a prepared subject really shows: its frames' truth, cut from the volume's OME-Zarr labels.

A subject made by ``etchacell subjects prepare`` names its volume (``#volume``), its region (``#roi``),
the slice each frame shows (``#frame_slices``, z in the volume) and the crop it shows (``#crop_xywh``,
level-0 source pixels), shown ``Scaling factor`` times smaller. Subject pixel (u, v) of frame k shows
source pixel (x + u·s, y + v·s) of slice ``#frame_slices[k]``, so the truth is sampled at exactly those
points and lines up with what volunteers see, pixel for pixel.

What counts as what, for simulated volunteers:
- the nucleus is the label of the region's own nucleus (``nucleus_label`` of the ROI in the volume's
  ``etchacell`` attributes); its nucleolus is the nucleolus label with the same id;
- every other nucleus that reaches into the crop is a *confuser*: it joins the organelles, so a
  volunteer who traces "another organelle" may trace it, exactly as a real volunteer who outlines the
  wrong nucleus does; nobody traces it as the target;
- organelles are kept largest first, at most ``max_confusers`` (a real slice holds hundreds of
  vesicles; a volunteer only ever mistakes the conspicuous ones for the nucleus).

The labels follow the project's OME-Zarr contract (``labels/nucleus``, ``labels/nucleolus``,
``labels/organelles``, multiscale, level ``0`` at full resolution) and are read lazily through
:mod:`etchacell_loop.imaging.volume`: only the crop's box of each frame's slice is read. A volume
without labels is a real volume: it has no truth, and saying so is a :class:`TruthError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from etchacell_loop.imaging.volume import LazyVolume, VolumeError, open_label, open_volume, volume_name
from etchacell_loop.simulation.shapes import SliceTruth
from etchacell_loop.subject_metadata import (
    CROP_XYWH_KEY,
    FRAME_SLICES_KEY,
    ROI_KEY,
    SCALING_KEY,
    VOLUME_KEY,
    subject_layout,
)

CROP_KEY = CROP_XYWH_KEY
OPTIONAL_LABELS = ("nucleolus", "organelles")
MIN_CONFUSER_AREA_PX = 20  # organelles smaller than this on the subject image are not worth mistaking


class TruthError(ValueError):
    """A subject or a volume that cannot give truth (one line saying why)."""


@dataclass(frozen=True, eq=False)
class VolumeTruth:
    """A volume's truth labels (level 0, read lazily) and the nucleus label of each region."""

    name: str
    nucleus: LazyVolume
    nucleolus: LazyVolume | None
    organelles: LazyVolume | None
    roi_nucleus_labels: Mapping[str, int]


@dataclass(frozen=True)
class SubjectCrop:
    """Where a subject's images come from: the volume, the region, each frame's z and the crop."""

    volume: str
    roi: str
    frame_slices: tuple[int, ...]
    x_px: int
    y_px: int
    width_px: int
    height_px: int
    scaling_factor: float

    @property
    def subject_shape_px(self) -> tuple[int, int]:
        """(rows, columns) of the subject image: the crop resized by 1/``scaling_factor``."""
        return (
            max(1, round(self.height_px / self.scaling_factor)),
            max(1, round(self.width_px / self.scaling_factor)),
        )


def open_volume_truth(path: Path) -> VolumeTruth:
    """The truth labels beside a volume's image (``path`` is the ``.zarr`` folder), read lazily."""
    try:
        image = open_volume(path)
        if "nucleus" not in image.labels:
            raise TruthError(f"{path}: no labels/nucleus (a volume without truth)")
        optional = {
            name: open_label(path, name) if name in image.labels else None for name in ("nucleolus", "organelles")
        }
        nucleus = open_label(path, "nucleus")
    except VolumeError as exc:
        raise TruthError(str(exc)) from None
    rois = {roi.name: roi.nucleus_label for roi in image.rois if roi.nucleus_label is not None}
    return VolumeTruth(
        name=volume_name(path),
        nucleus=nucleus,
        nucleolus=optional["nucleolus"],
        organelles=optional["organelles"],
        roi_nucleus_labels=rois,
    )


def subject_crop(metadata: Mapping[str, Any]) -> SubjectCrop:
    """Read ``#volume``, ``#roi``, ``#frame_slices``, ``#crop_xywh`` and ``Scaling factor``."""
    layout = subject_layout(0, metadata)
    volume = str(metadata.get(VOLUME_KEY) or "").strip()
    roi = str(metadata.get(ROI_KEY) or "").strip()
    if not volume or not roi:
        raise TruthError(f"subject metadata lacks {VOLUME_KEY} or {ROI_KEY}")
    if layout.frame_slices is None:
        raise TruthError(f"subject metadata has no usable {FRAME_SLICES_KEY}: {'; '.join(layout.problems) or 'absent'}")
    try:
        x, y, w, h = (int(float(part)) for part in str(metadata.get(CROP_KEY, "")).split(","))
    except ValueError:
        raise TruthError(f"{CROP_KEY} {metadata.get(CROP_KEY)!r} is not 'x,y,w,h'") from None
    if w <= 0 or h <= 0:
        raise TruthError(f"{CROP_KEY} {metadata.get(CROP_KEY)!r} has no area")
    scaling = layout.scaling_factor
    if scaling is None:
        raise TruthError(f"subject metadata has no usable {SCALING_KEY!r}")
    frames = tuple(key.z for key in layout.frame_slices)
    return SubjectCrop(volume, roi, frames, x, y, w, h, scaling)


def subject_truth(
    volume: VolumeTruth, crop: SubjectCrop, shape_px: tuple[int, int] | None = None, max_confusers: int = 12
) -> list[SliceTruth]:
    """Each frame's truth at subject resolution; ``shape_px`` (rows, columns) is the image's natural
    size when known (it then wins over the size the crop implies)."""
    if crop.roi not in volume.roi_nucleus_labels:
        raise TruthError(f"volume {volume.name} has no region {crop.roi!r}")
    label = volume.roi_nucleus_labels[crop.roi]
    rows, cols = _sample_points(crop, shape_px or crop.subject_shape_px, volume.nucleus.shape_zyx)
    cache: dict[int, SliceTruth] = {}
    for z in crop.frame_slices:
        if z not in cache:
            cache[z] = _slice_truth(volume, z, rows, cols, label, max_confusers)
    return [cache[z] for z in crop.frame_slices]


def _sample_points(
    crop: SubjectCrop, shape_px: tuple[int, int], volume_shape: tuple[int, ...]
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Source rows and columns shown by each subject row and column (clipped to the volume)."""
    height, width = shape_px
    rows = np.floor(crop.y_px + np.arange(height) * crop.scaling_factor).astype(np.intp)
    cols = np.floor(crop.x_px + np.arange(width) * crop.scaling_factor).astype(np.intp)
    return np.clip(rows, 0, volume_shape[1] - 1), np.clip(cols, 0, volume_shape[2] - 1)


def _read_sampled(array: LazyVolume, z: int, rows: NDArray[np.intp], cols: NDArray[np.intp]) -> NDArray[Any]:
    """Only the crop's bounding box is read from the store, then sampled."""
    if not 0 <= z < array.shape_zyx[0]:
        raise TruthError(f"slice {z} is outside the volume (0..{array.shape_zyx[0] - 1})")
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    block = array.read(z, slice(r0, r1), slice(c0, c1))
    return block[np.ix_(rows - r0, cols - c0)]


def _slice_truth(
    volume: VolumeTruth, z: int, rows: NDArray[np.intp], cols: NDArray[np.intp], label: int, max_confusers: int
) -> SliceTruth:
    nuclei = _read_sampled(volume.nucleus, z, rows, cols)
    nucleus = nuclei == label
    if volume.nucleolus is not None:
        nucleolus = _read_sampled(volume.nucleolus, z, rows, cols) == label
    else:
        nucleolus = np.zeros_like(nucleus)
    confusers = [nuclei == other for other in np.unique(nuclei) if other not in (0, label)]
    if volume.organelles is not None:
        organelles = _read_sampled(volume.organelles, z, rows, cols)
        confusers += [organelles == k for k in np.unique(organelles) if k != 0]
    confusers = [m for m in confusers if int(m.sum()) >= MIN_CONFUSER_AREA_PX]
    confusers.sort(key=lambda m: -int(m.sum()))
    return SliceTruth(z=z, nucleus=nucleus, nucleolus=nucleolus, organelles=tuple(confusers[:max_confusers]))
