"""A predicted envelope against a reference, from files: what ``etchacell evaluate`` computes.

Both sides are binary volumes: an OME-Zarr's label image (``labels/envelope`` by default — a
prediction written by :mod:`etchacell_loop.model.predict`, or a synthetic volume's truth) or, when
it has no such label, the image itself; TIFF stacks are read as images. Non-zero is envelope.

The two must lie on one grid. When they already have the same shape they are compared as they are.
A prediction made by ``etchacell predict`` records where it lies in its source (``offset_zyx_px``,
``factor_zyx``); a reference on the source's finer grid (e.g. the synthetic truth at 10 x 10 x 50 nm
against a 50 nm prediction) is then brought onto the prediction's grid the way training targets are
made: per slice, its envelope is filled and shrunk by the band's outer half (``n // 2`` pixels of
an ``n``-pixel band, as :func:`etchacell_loop.cria.consensus.envelope_band` draws it) to give back
the nucleus area, the area is block-averaged and re-binarised at one half, and the band is drawn
again ``envelope_width_nm`` wide at the coarser pixel size. Downsampling the thin band itself would
break it into dashes or thicken it, and either would distort precision and recall.

Volumes are read whole (the reference only over the prediction's region): evaluation is per ROI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from scipy import ndimage

from etchacell_loop.cria.consensus import envelope_band
from etchacell_loop.imaging.volume import LazyVolume, VolumeError, open_label, open_volume
from etchacell_loop.model.metrics import Binary, Table1, as_binary, evaluate_volumes, nucleus_area
from etchacell_loop.model.predict import block_mean

DEFAULT_LABEL = "envelope"
DEFAULT_ENVELOPE_WIDTH_NM = 70.0
UNKNOWN_VOXEL_NM = (1.0, 1.0, 1.0)  # placeholder for files that say nothing; never reported


class EvaluationError(ValueError):
    """Two volumes that cannot be compared; the message is one line."""


@dataclass(frozen=True)
class BinarySource:
    """One side of a comparison, still lazy: the volume, whether its voxel size is known, and the
    placement a prediction records (``None`` for anything else)."""

    volume: LazyVolume
    voxel_known: bool
    placement: Mapping[str, Any] | None

    def read(self) -> Binary:
        z, y, x = self.volume.shape_zyx
        return as_binary(np.stack([self.volume.read(k, slice(0, y), slice(0, x)) for k in range(z)]))


def open_binary(path: Path, label: str = DEFAULT_LABEL) -> BinarySource:
    """``path``'s label image ``label`` when it has one, else the image itself."""
    volume = open_volume(path, fallback_voxel_size_nm=UNKNOWN_VOXEL_NM)
    if label in volume.labels:
        volume.close()
        volume = open_label(path, label)
    return BinarySource(volume, volume.voxel_size_source != "default", _placement(path, volume))


def _placement(path: Path, volume: LazyVolume) -> Mapping[str, Any] | None:
    if volume.format != "ome-zarr":
        return None
    extras = dict(zarr.open_group(str(path), mode="r").attrs).get("etchacell")
    if isinstance(extras, Mapping) and extras.get("kind") == "prediction":
        return extras
    return None


def reference_on_grid(
    reference: BinarySource, placement: Mapping[str, Any], shape_zyx: tuple[int, ...], envelope_width_nm: float
) -> Binary:
    """The reference's envelope over a prediction's region, on the prediction's grid (see the
    module docstring)."""
    try:
        offset = [int(v) for v in placement["offset_zyx_px"]]
        factor = (int(placement["factor_zyx"][0]), int(placement["factor_zyx"][1]), int(placement["factor_zyx"][2]))
        voxel_nm = float(placement["voxel_size_nm"][1])
    except (KeyError, TypeError, ValueError, IndexError):
        raise EvaluationError("the prediction's placement attributes are unreadable") from None
    hi = [min(offset[d] + shape_zyx[d] * factor[d], reference.volume.shape_zyx[d]) for d in range(3)]
    if any(hi[d] <= offset[d] for d in range(3)):
        raise EvaluationError("the prediction's region lies outside the reference volume")
    width_px = envelope_width_nm / voxel_nm
    outer_half = max(1, round(envelope_width_nm * factor[1] / voxel_nm)) // 2
    out = np.zeros(shape_zyx, dtype=bool)
    for k in range(shape_zyx[0]):
        z = offset[0] + k * factor[0]
        if z >= hi[0]:
            break
        area = _shrink(
            nucleus_area(reference.volume.read(z, slice(offset[1], hi[1]), slice(offset[2], hi[2]))), outer_half
        )
        coarse = block_mean(area[np.newaxis].astype(np.float32), (1, factor[1], factor[2]))[0] >= 0.5
        out[k, : coarse.shape[0], : coarse.shape[1]] = envelope_band(coarse, width_px)
    return out


def _shrink(area: Binary, radius_px: int) -> Binary:
    """``area`` eroded by a disk of ``radius_px`` (nothing to do for 0)."""
    if radius_px < 1:
        return area
    yy, xx = np.mgrid[-radius_px : radius_px + 1, -radius_px : radius_px + 1]
    disk = yy * yy + xx * xx <= radius_px * radius_px
    return np.asarray(ndimage.binary_erosion(area, structure=disk), dtype=bool)


def evaluate_paths(
    pred_path: Path,
    ref_path: Path,
    *,
    label: str = DEFAULT_LABEL,
    pixel_size_nm: float | None = None,
    envelope_width_nm: float = DEFAULT_ENVELOPE_WIDTH_NM,
    central_slice: int | None = None,
) -> Table1:
    """Table 1 for the prediction at ``pred_path`` against the reference at ``ref_path``."""
    pred, ref = open_binary(pred_path, label), open_binary(ref_path, label)
    try:
        pred_array = pred.read()
        if pred.volume.shape_zyx == ref.volume.shape_zyx:
            ref_array = ref.read()
        elif pred.placement is not None:
            ref_array = reference_on_grid(ref, pred.placement, pred_array.shape, envelope_width_nm)
        else:
            raise EvaluationError(
                f"{pred_path} (shape {pred.volume.shape_zyx}) and {ref_path} (shape {ref.volume.shape_zyx}) "
                "are not on one grid, and the prediction does not say where it lies"
            )
        size = pixel_size_nm or _pixel_size(pred, pred_path)
        return evaluate_volumes(pred_array, ref_array, pixel_size_nm=size, central_slice=central_slice)
    except (ValueError, VolumeError) as exc:
        raise EvaluationError(str(exc)) from None
    finally:
        pred.volume.close()
        ref.volume.close()


def _pixel_size(pred: BinarySource, path: Path) -> float:
    if not pred.voxel_known:
        raise EvaluationError(f"{path} does not say its pixel size; give --pixel-size-nm")
    y_nm, x_nm = pred.volume.voxel_size_nm[1:]
    if abs(y_nm - x_nm) > 1e-6 * max(y_nm, x_nm):
        raise EvaluationError(f"{path}: pixels are not square ({y_nm} x {x_nm} nm); give --pixel-size-nm")
    return float(y_nm)
