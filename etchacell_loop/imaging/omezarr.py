"""OME-Zarr volumes: an OME-NGFF 0.4 multiscale image with its labels, written block by block.

Layout (zarr format 2, ``/``-separated chunk keys, as NGFF 0.4 readers expect)::

    OUT.zarr/            .zattrs: multiscales (axes z, y, x in nanometres), and "etchacell" extras
      0/ 1/ 2/ …         the image pyramid: uint8, halved in y and x per level, z never downsampled
      labels/            .zattrs: {"labels": [names]}
        nucleus/0/ 1/ …  each label image is a multiscale of its own with an "image-label" attribute

A volume is written in z-blocks: :meth:`MultiscaleWriter.write_block` takes a block of level-0
slices and writes it and every coarser level made from it (means for images, every other pixel for
labels, so no label value is invented), so a volume never has to sit in memory, let alone twice.
Blocks are the chunks' depth, so each chunk is written once.

Volumes made elsewhere have no "etchacell" extras and no labels; the readers here then say so
(``None``, an empty list) and the voxel size comes from the level-0 scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from numpy.typing import NDArray

NGFF_VERSION = "0.4"
ETCHACELL_KEY = "etchacell"
DEFAULT_CHUNKS = (8, 256, 256)
ZSTD: dict[str, Any] = {"id": "zstd", "level": 3}  # deterministic, single-threaded: same bytes every run
AXES = tuple({"name": name, "type": "space", "unit": "nanometer"} for name in ("z", "y", "x"))

Downsampling = Literal["mean", "nearest"]


class OmeZarrError(ValueError):
    """A path that is not an OME-Zarr volume this project can read."""


def pyramid_shapes(
    shape: tuple[int, int, int], min_size_px: int = 64, max_levels: int = 6
) -> list[tuple[int, int, int]]:
    """Level shapes: y and x halved (rounding up) while the next level keeps both at least
    ``min_size_px``; z is never downsampled (slices are 5x thicker than pixels are wide)."""
    z, y, x = shape
    shapes = [shape]
    while len(shapes) < max_levels:
        y, x = math.ceil(y / 2), math.ceil(x / 2)
        if min(y, x) < min_size_px:
            break
        shapes.append((z, y, x))
    return shapes


def multiscales_attrs(name: str, voxel_size_nm: Sequence[float], levels: int) -> list[dict[str, Any]]:
    """The NGFF 0.4 ``multiscales`` entry: axes in nanometres and a scale per level."""
    z_nm, y_nm, x_nm = (float(v) for v in voxel_size_nm)
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": [{"type": "scale", "scale": [z_nm, y_nm * 2**level, x_nm * 2**level]}],
        }
        for level in range(levels)
    ]
    return [{"version": NGFF_VERSION, "name": name, "axes": list(AXES), "datasets": datasets, "type": "mean"}]


def downsample_2x(block: NDArray[Any], method: Downsampling) -> NDArray[Any]:
    """Halve y and x of a (z, y, x) block (odd sizes round up): the mean of each 2 x 2 for images,
    the top-left pixel for labels (a mean would invent label values)."""
    if method == "nearest":
        return np.ascontiguousarray(block[:, ::2, ::2])
    z, y, x = block.shape
    padded = np.pad(block, ((0, 0), (0, y % 2), (0, x % 2)), mode="edge").astype(np.float32)
    means = padded.reshape(z, (y + 1) // 2, 2, (x + 1) // 2, 2).mean(axis=(2, 4))
    if np.issubdtype(block.dtype, np.integer):
        means = np.rint(means)
    return np.asarray(means.astype(block.dtype))


@dataclass(frozen=True, eq=False)
class MultiscaleWriter:
    """The arrays of one multiscale image, written a z-block at a time."""

    arrays: tuple[zarr.Array[Any], ...]
    method: Downsampling

    def write_block(self, z_start: int, block: NDArray[Any]) -> None:
        """Write level-0 slices ``z_start …`` and every coarser level made from them."""
        level_block = block
        for array in self.arrays:
            level_block = level_block[:, : array.shape[1], : array.shape[2]]
            array[z_start : z_start + block.shape[0]] = level_block
            level_block = downsample_2x(level_block, self.method)


def create_volume(path: Path, name: str, overwrite: bool = False) -> zarr.Group:
    """A new, empty OME-Zarr root group; an existing ``path`` is an error unless ``overwrite``."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (use --overwrite to replace it)")
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.attrs["name"] = name
    return root


def create_multiscale(
    group: zarr.Group,
    shape: tuple[int, int, int],
    voxel_size_nm: Sequence[float],
    dtype: type[np.generic] | np.dtype[Any],
    *,
    name: str,
    method: Downsampling,
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
    extra_attrs: Mapping[str, Any] | None = None,
) -> MultiscaleWriter:
    """The arrays of a multiscale image in ``group`` (levels per :func:`pyramid_shapes`) and its
    ``multiscales`` attribute; ``extra_attrs`` go beside it (``image-label`` for labels)."""
    shapes = pyramid_shapes(shape)
    arrays = tuple(
        group.create_array(
            str(level),
            shape=level_shape,
            chunks=tuple(min(c, s) for c, s in zip(chunks, level_shape, strict=True)),
            dtype=dtype,
            compressors=ZSTD,
            fill_value=0,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        for level, level_shape in enumerate(shapes)
    )
    group.attrs.update({"multiscales": multiscales_attrs(name, voxel_size_nm, len(shapes)), **(extra_attrs or {})})
    return MultiscaleWriter(arrays, method)


def create_label(
    root: zarr.Group,
    name: str,
    shape: tuple[int, int, int],
    voxel_size_nm: Sequence[float],
    dtype: type[np.generic],
    properties: Sequence[Mapping[str, Any]] = (),
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
) -> MultiscaleWriter:
    """A label image ``labels/<name>`` (registered in ``labels/.zattrs``), with ``properties`` (one
    mapping per label value) in its ``image-label`` attribute."""
    labels = root.require_group("labels")
    registered = labels.attrs.get("labels", [])
    names = [str(n) for n in registered] if isinstance(registered, list) else []
    if name not in names:
        labels.attrs["labels"] = [*names, name]
    image_label: dict[str, Any] = {"version": NGFF_VERSION, "source": {"image": "../../"}}
    if properties:
        image_label["properties"] = [dict(p) for p in properties]
    return create_multiscale(
        labels.require_group(name),
        shape,
        voxel_size_nm,
        dtype,
        name=name,
        method="nearest",
        chunks=chunks,
        extra_attrs={"image-label": image_label},
    )


def read_etchacell_attrs(path: Path) -> dict[str, Any] | None:
    """The volume's "etchacell" extras (synthetic volumes), or None for volumes made elsewhere.
    Reading images, voxel sizes and ROIs is :mod:`etchacell_loop.imaging.volume`'s job; this is for
    the extras only it does not interpret (blank slices, mitotic labels)."""
    if not path.exists():
        raise OmeZarrError(f"{path}: no such volume")
    try:
        root = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise OmeZarrError(f"{path}: not a zarr group ({exc})") from None
    extras = root.attrs.get(ETCHACELL_KEY)
    return dict(extras) if isinstance(extras, Mapping) else None
