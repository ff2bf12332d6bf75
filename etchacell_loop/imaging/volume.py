"""EM volumes opened lazily: TIFF stacks, folders of TIFF slices and OME-Zarr images.

Why lazy: facility volumes are often far larger than memory (the paper's is 518 slices of
8192 x 8192). Every format is opened as a zarr array over its files — ``tifffile``'s ``aszarr``
for TIFF, zarr itself for OME-Zarr — so reading one region of one slice touches only the chunks
(or TIFF pages) it covers.

Conventions: axes are (z, y, x), sizes in voxels of level 0, voxel sizes in nanometres. A voxel
size comes from the file (the NGFF scale, ImageJ calibration) unless the caller insists on one;
files that say nothing fall back to the caller's configured value. Volumes written by the
synthetic generator also carry their ROIs (``etchacell`` root attribute) and ground-truth label
images (``labels/<name>``); real volumes have neither, and readers cope.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tifffile
import zarr
from numpy.typing import NDArray

VoxelSizeNm = tuple[float, float, float]  # (z, y, x)

TIFF_SUFFIXES = frozenset({".tif", ".tiff", ".btf", ".tf8", ".tf2"})
ZARR_MARKERS = (".zattrs", ".zgroup", "zarr.json")
NGFF_ATTRS_KEY = "ome"  # NGFF 0.5 nests its attributes under "ome"; 0.4 keeps them at the top
ETCHACELL_ATTRS_KEY = "etchacell"
LEADING_AXES = frozenset({"c", "t"})  # tolerated before z, y, x when of size 1

# Length units of NGFF axes and ImageJ calibration, in nanometres.
_UNIT_NM = {
    "angstrom": 0.1,
    "nanometer": 1.0,
    "nm": 1.0,
    "micrometer": 1e3,
    "micron": 1e3,
    "um": 1e3,
    "µm": 1e3,
    "\u03bcm": 1e3,
    "\\u00b5m": 1e3,
    "millimeter": 1e6,
    "mm": 1e6,
    "centimeter": 1e7,
    "cm": 1e7,
    "meter": 1e9,
    "m": 1e9,
}


class VolumeError(ValueError):
    """A volume that cannot be read as asked; the message is one line naming the path and the problem."""


@dataclass(frozen=True)
class RoiBox:
    """A box around one nucleus, in level-0 voxels: ``x, y, z`` its corner, then its size."""

    name: str
    x: int
    y: int
    z: int
    width: int
    height: int
    depth: int
    nucleus_label: int | None = None  # the nucleus' id in ``labels/nucleus``, when the volume has truth

    def clipped(self, shape_zyx: Sequence[int]) -> RoiBox:
        """The part of the box inside a volume of ``shape_zyx``; an error when nothing is left."""
        z0, y0, x0 = max(self.z, 0), max(self.y, 0), max(self.x, 0)
        z1 = min(self.z + self.depth, shape_zyx[0])
        y1 = min(self.y + self.height, shape_zyx[1])
        x1 = min(self.x + self.width, shape_zyx[2])
        if z1 <= z0 or y1 <= y0 or x1 <= x0:
            shape = "x".join(str(n) for n in shape_zyx)
            raise VolumeError(f"ROI {self.name!r} lies outside the volume (z, y, x shape {shape})")
        return RoiBox(self.name, x0, y0, z0, x1 - x0, y1 - y0, z1 - z0, self.nucleus_label)

    def as_dict(self) -> dict[str, Any]:
        box: dict[str, Any] = {"name": self.name, "x": self.x, "y": self.y, "z": self.z}
        box.update(width=self.width, height=self.height, depth=self.depth)
        if self.nucleus_label is not None:
            box["nucleus_label"] = self.nucleus_label
        return box


class Volume(Protocol):
    """What subject preparation needs from a volume: its geometry and region reads of one slice."""

    @property
    def name(self) -> str: ...

    @property
    def shape_zyx(self) -> tuple[int, int, int]: ...

    @property
    def voxel_size_nm(self) -> VoxelSizeNm: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def read(self, z: int, y: slice, x: slice) -> NDArray[Any]: ...


@dataclass(frozen=True)
class LazyVolume:
    """A volume (or label image) backed by a zarr array; nothing is read until :meth:`read`.

    ``voxel_size_source`` says where the voxel size came from: ``ngff``, ``imagej``, ``option``
    (the caller insisted) or ``default`` (configuration: the file said nothing). Close it (or use
    it as a context manager) to release TIFF file handles.
    """

    name: str
    path: Path
    format: str  # "tiff", "tiff-folder" or "ome-zarr"
    shape_zyx: tuple[int, int, int]
    voxel_size_nm: VoxelSizeNm
    voxel_size_source: str
    dtype: np.dtype[Any]
    rois: tuple[RoiBox, ...] = ()
    labels: tuple[str, ...] = ()  # label images under ``labels/`` (OME-Zarr only)
    _array: Any = field(default=None, repr=False, compare=False)
    _leading: tuple[int, ...] = field(default=(), repr=False, compare=False)
    _close: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def read(self, z: int, y: slice, x: slice) -> NDArray[Any]:
        """One region of slice ``z`` as a 2-D array (only the chunks it covers are read)."""
        if not 0 <= z < self.shape_zyx[0]:
            raise VolumeError(f"{self.path}: slice {z} is outside 0..{self.shape_zyx[0] - 1}")
        return np.asarray(self._array[(*self._leading, z, y, x)])

    def read_box(self, z: slice, y: slice, x: slice) -> NDArray[Any]:
        """A (z, y, x) box as a 3-D array, read in one go: each stored chunk is decoded once, not
        once per slice it holds (a volume stored 8 slices deep read slice by slice decodes each
        chunk 8 times)."""
        start, stop, _ = z.indices(self.shape_zyx[0])
        if not 0 <= start <= stop <= self.shape_zyx[0]:
            raise VolumeError(f"{self.path}: slices {start}..{stop - 1} are outside 0..{self.shape_zyx[0] - 1}")
        return np.asarray(self._array[(*self._leading, z, y, x)])

    def close(self) -> None:
        if self._close is not None:
            self._close()

    def __enter__(self) -> LazyVolume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def volume_name(path: Path) -> str:
    """The volume's short name: the file or folder name without its format suffixes
    (``hela.zarr``, ``hela.ome.zarr``, ``hela.ome.tif`` and ``hela/`` are all ``hela``)."""
    name = path.name
    for suffix in (".zarr", *sorted(TIFF_SUFFIXES)):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.removesuffix(".ome") or path.name


def parse_voxel_size_nm(text: str) -> VoxelSizeNm:
    """``"50,10,10"`` → (50.0, 10.0, 10.0): z, y, x in nanometres, each positive."""
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise VolumeError(f"voxel size {text!r} is not Z,Y,X: three positive numbers in nm (e.g. 50,10,10)")
    return values[0], values[1], values[2]


def open_volume(
    path: Path, *, voxel_size_nm: VoxelSizeNm | None = None, fallback_voxel_size_nm: VoxelSizeNm | None = None
) -> LazyVolume:
    """Open a TIFF stack (multi-page or BigTIFF), a folder of single-slice TIFFs (natural order)
    or an OME-Zarr image (NGFF 0.4 / zarr v2 or 0.5 / zarr v3; level 0) without reading it.

    ``voxel_size_nm`` overrides what the file says; ``fallback_voxel_size_nm`` is used when the
    file says nothing. Errors are :class:`VolumeError` with one line naming the path.
    """
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    if _is_zarr(path):
        opened = _open_ome_zarr(path)
    elif path.is_file() and path.suffix.lower() in TIFF_SUFFIXES:
        opened = _open_tiff_file(path)
    elif path.is_dir() and _tiff_files(path):
        opened = _open_tiff_folder(path)
    else:
        raise VolumeError(f"{path}: unknown volume format (expected a TIFF stack, a folder of TIFFs or an OME-Zarr)")
    return _finish(path, opened, voxel_size_nm, fallback_voxel_size_nm)


def open_label(path: Path, name: str) -> LazyVolume:
    """The label image ``labels/<name>`` of an OME-Zarr volume (level 0), opened lazily; its voxel
    size is its own NGFF scale, else the image's."""
    if not path.exists():
        raise VolumeError(f"{path}: no such file or folder")
    if not _is_zarr(path):
        raise VolumeError(f"{path}: only OME-Zarr volumes carry label images")
    image = _open_ome_zarr(path)
    if name not in image.labels:
        known = ", ".join(image.labels) or "none"
        raise VolumeError(f"{path}: no label image {name!r} (labels: {known})")
    label_path = path / "labels" / name
    try:
        group = zarr.open_group(label_path, mode="r")
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise VolumeError(f"{label_path}: not a readable zarr group ({_first_line(exc)})") from None
    return _finish(label_path, _open_ngff_group(label_path, group), None, image.voxel_size_nm)


@dataclass(frozen=True)
class _Opened:
    """What each format reader found, before the voxel size is settled."""

    format: str
    array: Any
    leading: tuple[int, ...]
    shape_zyx: tuple[int, int, int]
    voxel_size_nm: VoxelSizeNm | None
    voxel_source: str
    rois: tuple[RoiBox, ...] = ()
    labels: tuple[str, ...] = ()
    close: Callable[[], None] | None = None


def _finish(path: Path, opened: _Opened, override: VoxelSizeNm | None, fallback: VoxelSizeNm | None) -> LazyVolume:
    if override is not None:
        voxel, source = override, "option"
    elif opened.voxel_size_nm is not None:
        voxel, source = opened.voxel_size_nm, opened.voxel_source
    elif fallback is not None:
        voxel, source = fallback, "default"
    else:
        if opened.close is not None:
            opened.close()
        raise VolumeError(f"{path}: the file does not say its voxel size; give one (Z,Y,X in nm)")
    return LazyVolume(
        name=volume_name(path),
        path=path,
        format=opened.format,
        shape_zyx=opened.shape_zyx,
        voxel_size_nm=(float(voxel[0]), float(voxel[1]), float(voxel[2])),
        voxel_size_source=source,
        dtype=np.dtype(opened.array.dtype),
        rois=opened.rois,
        labels=opened.labels,
        _array=opened.array,
        _leading=opened.leading,
        _close=opened.close,
    )


# --- OME-Zarr ------------------------------------------------------------------------------------


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in ZARR_MARKERS)


def _open_ome_zarr(path: Path) -> _Opened:
    try:
        group = zarr.open_group(path, mode="r")
    except (FileNotFoundError, ValueError, TypeError) as exc:
        raise VolumeError(f"{path}: not a readable zarr group ({_first_line(exc)})") from None
    opened = _open_ngff_group(path, group)
    attrs = dict(group.attrs)
    labels_attrs = _labels_of(group)
    return _Opened(
        format=opened.format,
        array=opened.array,
        leading=opened.leading,
        shape_zyx=opened.shape_zyx,
        voxel_size_nm=opened.voxel_size_nm,
        voxel_source=opened.voxel_source,
        rois=read_rois(attrs.get(ETCHACELL_ATTRS_KEY)),
        labels=labels_attrs,
    )


def _ngff_attrs(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    nested = attrs.get(NGFF_ATTRS_KEY)
    return nested if isinstance(nested, Mapping) else attrs


def _open_ngff_group(path: Path, group: Any) -> _Opened:
    multiscales = _ngff_attrs(dict(group.attrs)).get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], Mapping):
        raise VolumeError(f"{path}: not an OME-Zarr image (no multiscales attribute)")
    multiscale = multiscales[0]
    axes = _axis_names_and_units(path, multiscale.get("axes"))
    datasets = multiscale.get("datasets")
    if not isinstance(datasets, list) or not datasets or "path" not in datasets[0]:
        raise VolumeError(f"{path}: multiscales has no datasets")
    level0 = datasets[0]
    try:
        array = group[str(level0["path"])]
    except KeyError:
        raise VolumeError(f"{path}: dataset {level0['path']!r} is missing") from None
    names = [name for name, _ in axes] if axes else _default_axes(len(array.shape))
    leading, shape = _spatial_shape(path, names, tuple(int(n) for n in array.shape))
    scale = _ngff_scale(level0, multiscale, len(array.shape))
    voxel = _ngff_voxel_nm(names, [unit for _, unit in axes] if axes else None, scale)
    return _Opened("ome-zarr", array, leading, shape, voxel, "ngff")


def _axis_names_and_units(path: Path, axes: Any) -> list[tuple[str, str | None]]:
    """NGFF ≥ 0.4 axes are objects; 0.3 had plain names; earlier versions had none (z, y, x assumed)."""
    if axes is None:
        return []
    if not isinstance(axes, list):
        raise VolumeError(f"{path}: multiscales axes is not a list")
    found: list[tuple[str, str | None]] = []
    for axis in axes:
        if isinstance(axis, str):
            found.append((axis.lower(), None))
        elif isinstance(axis, Mapping) and "name" in axis:
            unit = axis.get("unit")
            found.append((str(axis["name"]).lower(), str(unit) if unit else None))
        else:
            raise VolumeError(f"{path}: unreadable axis {axis!r}")
    return found


def _default_axes(ndim: int) -> list[str]:
    return ["t", "c", "z", "y", "x"][-ndim:] if ndim <= 5 else [f"a{i}" for i in range(ndim)]


def _spatial_shape(
    path: Path, names: Sequence[str], shape: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, int, int]]:
    """Index 0 into every leading c/t axis of size 1; what remains must be z, y, x."""
    if len(names) != len(shape):
        raise VolumeError(f"{path}: {len(names)} axes named for a {len(shape)}-D array")
    leading = len(names) - 3
    extra = list(zip(names[:leading], shape[:leading], strict=True)) if leading > 0 else []
    if (
        leading < 0
        or list(names[leading:]) != ["z", "y", "x"]
        or any(name not in LEADING_AXES or size != 1 for name, size in extra)
    ):
        described = ", ".join(f"{n}={s}" for n, s in zip(names, shape, strict=True))
        raise VolumeError(f"{path}: not a 3-D z, y, x image (axes {described})")
    z, y, x = shape[leading:]
    return (0,) * leading, (z, y, x)


def _ngff_scale(level0: Mapping[str, Any], multiscale: Mapping[str, Any], ndim: int) -> list[float] | None:
    """Level 0's scale, times the multiscale-wide scale when there is one."""
    scale = _scale_of(level0.get("coordinateTransformations"), ndim)
    overall = _scale_of(multiscale.get("coordinateTransformations"), ndim)
    if scale is None:
        return overall
    return [a * b for a, b in zip(scale, overall, strict=True)] if overall is not None else scale


def _scale_of(transforms: Any, ndim: int) -> list[float] | None:
    if not isinstance(transforms, list):
        return None
    for transform in transforms:
        if isinstance(transform, Mapping) and transform.get("type") == "scale":
            scale = transform.get("scale")
            if isinstance(scale, list) and len(scale) == ndim:
                return [float(value) for value in scale]
    return None


def _ngff_voxel_nm(
    names: Sequence[str], units: Sequence[str | None] | None, scale: list[float] | None
) -> VoxelSizeNm | None:
    """The z, y, x scale in nm; ``None`` when the scale is absent or its unit is not a length."""
    if scale is None:
        return None
    sizes: list[float] = []
    for axis in ("z", "y", "x"):
        index = list(names).index(axis)
        unit = units[index] if units is not None else None
        factor = _UNIT_NM.get(unit.lower()) if unit else None
        if factor is None or not scale[index] > 0:
            return None
        sizes.append(round(scale[index] * factor, 6))
    return sizes[0], sizes[1], sizes[2]


def _labels_of(group: Any) -> tuple[str, ...]:
    try:
        labels = group["labels"]
    except KeyError:
        return ()
    names = dict(labels.attrs).get("labels")
    return tuple(str(name) for name in names) if isinstance(names, list) else ()


def read_rois(attrs: Any) -> tuple[RoiBox, ...]:
    """The ROI list of a synthetic volume's ``etchacell`` attribute; empty when absent or unreadable."""
    if not isinstance(attrs, Mapping) or not isinstance(attrs.get("rois"), list):
        return ()
    rois = []
    for entry in attrs["rois"]:
        try:
            label = entry.get("nucleus_label")
            rois.append(
                RoiBox(
                    str(entry["name"]), int(entry["x"]), int(entry["y"]), int(entry["z"]),
                    int(entry["width"]), int(entry["height"]), int(entry["depth"]),
                    int(label) if label is not None else None,
                )
            )  # fmt: skip
        except (AttributeError, KeyError, TypeError, ValueError):
            continue
    return tuple(rois)


# --- TIFF ----------------------------------------------------------------------------------------


def _tiff_files(folder: Path) -> list[str]:
    files = [str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES]
    return list(tifffile.natural_sorted(files))


def _open_tiff_file(path: Path) -> _Opened:
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise VolumeError(f"{path}: not a readable TIFF ({_first_line(exc)})") from None
    try:
        series = tif.series[0]
        array = zarr.open_array(series.aszarr(), mode="r")
        leading, shape = _tiff_shape(path, str(series.axes), tuple(int(n) for n in series.shape))
        voxel = _imagej_voxel_nm(tif)
    except VolumeError:
        tif.close()
        raise
    return _Opened("tiff", array, leading, shape, voxel, "imagej", close=tif.close)


def _open_tiff_folder(folder: Path) -> _Opened:
    files = _tiff_files(folder)
    try:
        sequence = tifffile.TiffSequence(files, pattern=None)
        store = sequence.aszarr()
        array = zarr.open_array(store, mode="r")
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise VolumeError(f"{folder}: the TIFF slices cannot be read as one stack ({_first_line(exc)})") from None
    shape = tuple(int(n) for n in array.shape)
    if len(shape) != 3:
        raise VolumeError(f"{folder}: slices are not 2-D grey-level images (stack shape {shape})")
    with tifffile.TiffFile(files[0]) as first:
        voxel = _imagej_voxel_nm(first)
    return _Opened("tiff-folder", array, (), (shape[0], shape[1], shape[2]), voxel, "imagej", close=store.close)


def _tiff_shape(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, int, int]]:
    """Drop leading axes of size 1 (ImageJ writes T, C); three axes of pages, rows, columns remain."""
    leading = 0
    while len(shape) - leading > 3 and shape[leading] == 1:
        leading += 1
    rest = shape[leading:]
    if len(rest) != 3 or axes[leading:][-2:] != "YX" or "S" in axes[leading:]:
        described = ", ".join(f"{a}={n}" for a, n in zip(axes, shape, strict=False))
        raise VolumeError(f"{path}: not a 3-D grey-level stack (axes {described})")
    return (0,) * leading, (rest[0], rest[1], rest[2])


def _imagej_voxel_nm(tif: Any) -> VoxelSizeNm | None:
    """ImageJ calibration: XResolution/YResolution (pixels per unit) and ``spacing`` (z) in ``unit``."""
    meta = tif.imagej_metadata
    if not meta or "unit" not in meta:
        return None
    factor = _UNIT_NM.get(str(meta["unit"]).lower())
    spacing = meta.get("spacing")
    if factor is None or spacing is None:
        return None
    page = tif.pages.first
    sizes = []
    for tag in ("YResolution", "XResolution"):
        value = page.tags.get(tag)
        numerator, denominator = value.value if value is not None else (0, 1)
        if not numerator or not denominator:
            return None
        sizes.append(round(denominator / numerator * factor, 6))
    z_nm = round(float(spacing) * factor, 6)
    return (z_nm, sizes[0], sizes[1]) if z_nm > 0 else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
