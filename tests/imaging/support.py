"""Small volumes written the way real tools write them: ImageJ TIFF stacks, TIFF folders, OME-Zarr."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tifffile
import zarr
from numpy.typing import NDArray


def write_imagej_tiff(path: Path, volume: NDArray[Any], voxel_size_nm: Sequence[float] | None = None) -> Path:
    """A multi-page ImageJ hyperstack, calibrated in micrometres when a voxel size is given."""
    if voxel_size_nm is None:
        tifffile.imwrite(path, volume, photometric="minisblack")
        return path
    z_nm, y_nm, x_nm = voxel_size_nm
    tifffile.imwrite(
        path,
        volume,
        imagej=True,
        resolution=(1000.0 / x_nm, 1000.0 / y_nm),
        metadata={"spacing": z_nm / 1000.0, "unit": "um", "axes": "ZYX"},
    )
    return path


def write_tiff_folder(folder: Path, volume: NDArray[Any], pattern: str = "slice_{z}.tif") -> Path:
    """One single-page TIFF per slice, numbered without zero padding (so only a natural sort gets it right)."""
    folder.mkdir(parents=True, exist_ok=True)
    for z, plane in enumerate(volume):
        tifffile.imwrite(folder / pattern.format(z=z), plane, photometric="minisblack")
    return folder


def write_ome_zarr(
    path: Path,
    volume: NDArray[Any],
    *,
    version: str = "0.4",
    scale: Sequence[float] = (50.0, 10.0, 10.0),
    unit: str = "nanometer",
    chunks: Sequence[int] | None = None,
    leading_axes: Sequence[str] = (),
    etchacell: Mapping[str, Any] | None = None,
    labels: Mapping[str, NDArray[Any]] | None = None,
) -> Path:
    """An OME-NGFF image (0.4 in zarr v2, 0.5 in zarr v3) with one level, optional leading size-1
    axes, the generator's ``etchacell`` attribute and label images under ``labels/``."""
    root = zarr.open_group(path, mode="w", zarr_format=2 if version == "0.4" else 3)
    data = volume if volume.ndim == 3 + len(leading_axes) else volume.reshape((1,) * len(leading_axes) + volume.shape)
    _write_image(root, data, version, scale, unit, chunks, leading_axes)
    if etchacell is not None:
        root.attrs["etchacell"] = dict(etchacell)
    if labels:
        group = root.create_group("labels")
        _set_ngff(group, {"labels": list(labels)}, version)
        for name, label in labels.items():
            image = group.create_group(name)
            _write_image(image, label, version, scale, unit, chunks, ())
            attrs: dict[str, Any] = dict(image.attrs)
            ngff: dict[str, Any] = attrs.get("ome", attrs)
            _set_ngff(image, {**ngff, "image-label": {"version": version}}, version)
    return path


def _write_image(
    group: Any,
    data: NDArray[Any],
    version: str,
    scale: Sequence[float],
    unit: str,
    chunks: Sequence[int] | None,
    leading_axes: Sequence[str],
) -> None:
    array_chunks = tuple(chunks) if chunks is not None else (1, *data.shape[-2:])
    array_chunks = (1,) * (data.ndim - len(array_chunks)) + array_chunks
    array = group.create_array("0", shape=data.shape, chunks=array_chunks, dtype=data.dtype)
    array[...] = data
    axes = [{"name": name, "type": "channel" if name == "c" else "time"} for name in leading_axes]
    axes += [{"name": name, "type": "space", "unit": unit} for name in ("z", "y", "x")]
    full_scale = [1.0] * len(leading_axes) + list(scale)
    multiscale = {
        "version": version,
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": full_scale}]}],
    }
    _set_ngff(group, {"multiscales": [multiscale]}, version)


def _set_ngff(group: Any, attrs: Mapping[str, Any], version: str) -> None:
    if version == "0.4":
        group.attrs.update(dict(attrs))
    else:
        group.attrs["ome"] = {"version": version, **{k: v for k, v in attrs.items() if k != "version"}}
