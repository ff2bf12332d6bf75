"""Tiny truth volumes in the project's OME-Zarr layout, and subjects cut from them, for tests.

Written with zarr itself (format 2, OME-NGFF 0.4 attributes), as the volume generator writes them:
an image pyramid of one level, ``labels/nucleus`` (an ellipsoid per region, plus a stranger nucleus
at the edge), ``labels/nucleolus`` (a small ball inside the first nucleus, labelled with its id),
``labels/organelles`` (a flat ellipse: a mitochondrion) and the ``etchacell`` root attributes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray
from PIL import Image

from etchacell_loop.subject_metadata import (
    CROP_XYWH_KEY,
    IMAGE_KEY,
    JPEG_QUALITY_KEY,
    SCALING_KEY,
    VOLUME_KEY,
    XY_RESOLUTION_KEY,
    Z_RESOLUTION_KEY,
    layout_metadata,
)

VOXEL_NM = (50.0, 10.0, 10.0)


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in level-0 voxels: centre (z, y, x) and semi-axes (z, y, x)."""

    centre: tuple[float, float, float]
    axes: tuple[float, float, float]

    def mask(self, shape: tuple[int, int, int]) -> NDArray[np.bool_]:
        z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
        terms = [((c - m) / a) ** 2 for c, m, a in zip((z, y, x), self.centre, self.axes, strict=True)]
        return np.asarray(terms[0] + terms[1] + terms[2] <= 1.0)


NUCLEUS = Ellipsoid((6.0, 100.0, 100.0), (9.0, 60.0, 48.0))
NUCLEOLUS = Ellipsoid((6.0, 95.0, 105.0), (4.0, 14.0, 12.0))
STRANGER = Ellipsoid((6.0, 100.0, 195.0), (8.0, 40.0, 30.0))  # another cell's nucleus at the edge
MITOCHONDRION = Ellipsoid((6.0, 170.0, 150.0), (6.0, 8.0, 26.0))


def write_truth_volume(path: Path, shape: tuple[int, int, int] = (12, 220, 220)) -> dict[str, NDArray[Any]]:
    """Write the volume; return its level-0 label arrays by name (what the test expects back)."""
    nucleus = np.zeros(shape, np.uint16)
    nucleus[NUCLEUS.mask(shape)] = 1
    nucleus[STRANGER.mask(shape)] = 2
    nucleolus = np.where(NUCLEOLUS.mask(shape) & (nucleus == 1), np.uint16(1), np.uint16(0))
    organelles = np.where(MITOCHONDRION.mask(shape), np.uint16(7), np.uint16(0))
    envelope = np.zeros(shape, np.uint8)  # not read by the volunteers; present as the contract asks
    image = np.where(nucleus > 0, 90, 170).astype(np.uint8)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    _multiscale(root, "0", image, "image")
    root.attrs["etchacell"] = {
        "kind": "synthetic-sbfsem",
        "seed": 0,
        "voxel_size_nm": list(VOXEL_NM),
        "rois": [
            {"name": "cell01", "x": 40, "y": 30, "z": 0, "width": 140, "height": 150, "depth": 12, "nucleus_label": 1}
        ],
    }
    labels = root.create_group("labels")
    labels.attrs["labels"] = ["nucleus", "envelope", "nucleolus", "organelles"]
    arrays: dict[str, NDArray[Any]] = {
        "nucleus": nucleus,
        "envelope": envelope,
        "nucleolus": nucleolus,
        "organelles": organelles,
    }
    for name, data in arrays.items():
        group = labels.create_group(name)
        _multiscale(group, "0", data, name)
        group.attrs["image-label"] = {"version": "0.4"}
    labels["organelles"].attrs["image-label"] = {
        "version": "0.4",
        "properties": [{"label-value": 7, "class": "mitochondrion"}],
    }
    return arrays


def write_real_volume(path: Path, shape: tuple[int, int, int] = (2, 16, 16)) -> None:
    """An image without labels or ``etchacell`` attributes, as a facility's volume is."""
    _multiscale(zarr.open_group(str(path), mode="w", zarr_format=2), "0", np.zeros(shape, np.uint8), "image")


def _multiscale(group: zarr.Group, level: str, data: NDArray[Any], name: str) -> None:
    array = group.create_array(level, shape=data.shape, chunks=(1, 128, 128), dtype=data.dtype)
    array[...] = data
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": name,
            "axes": [
                {"name": "z", "type": "space", "unit": "nanometer"},
                {"name": "y", "type": "space", "unit": "nanometer"},
                {"name": "x", "type": "space", "unit": "nanometer"},
            ],
            "datasets": [{"path": level, "coordinateTransformations": [{"type": "scale", "scale": list(VOXEL_NM)}]}],
        }
    ]


def subject_metadata(
    volume: str, z: int, crop: tuple[int, int, int, int] = (40, 30, 140, 150), scaling: int = 2
) -> dict[str, str]:
    """A prepared subject's metadata: a five-frame flipbook around ``z`` over ``crop`` (x, y, w, h)."""
    frame_z = [min(max(z + offset, 0), 11) for offset in (-2, -1, 0, 1, 2)]
    images = {IMAGE_KEY.format(index=k): f"{volume}_z{fz:04d}.jpg" for k, fz in enumerate(frame_z)}
    return {
        **images,
        XY_RESOLUTION_KEY: "10",
        Z_RESOLUTION_KEY: "50",
        SCALING_KEY: str(scaling),
        JPEG_QUALITY_KEY: "90",
        **layout_metadata("cell01", 2, frame_z),
        VOLUME_KEY: volume,
        CROP_XYWH_KEY: ",".join(str(v) for v in crop),
    }


def subject_jpeg(path: Path, crop: tuple[int, int, int, int] = (40, 30, 140, 150), scaling: int = 2) -> Path:
    """A grey frame of the subject's natural size."""
    width, height = crop[2] // scaling, crop[3] // scaling
    Image.new("L", (width, height), 150).save(path, "JPEG", quality=90)
    return path


def jpeg_bytes(rgb: NDArray[np.uint8], quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()
