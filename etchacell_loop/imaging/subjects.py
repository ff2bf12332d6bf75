"""From an ROI of a volume to the subjects volunteers see: planning and image functions.

The paper's recipe (section 4.4): a 3-D box around each nucleus, its 2000 x 2000 px XY crop shown
at 1000 x 1000 as JPEG quality 90, every slice the target of one subject, shown as the middle of
a five-frame flipbook of the planes 250 and 500 nm above and below (section 4.6).

Geometry. The crop is the ROI widened to a ``crop_size_px`` square around its centre and kept
inside the volume (:func:`crop_around`; an ROI larger than that is shown whole). A subject pixel
(u, v) shows source pixel (x + u * s, y + v * s) of the crop, where ``s`` is the scaling factor
(source pixels per subject pixel). ``s`` is ``crop_size_px / subject_size_px`` (2 in the paper:
every subject pixel is 20 nm at 10 nm voxels, whatever the ROI), raised for a crop wider than
``crop_size_px`` so that no side of a subject exceeds ``subject_size_px``; crops keep their
aspect ratio (a volume narrower than the crop size gives smaller subjects). Downsampling
averages areas (a BOX filter), so a subject pixel is the mean of the source pixels it covers.

Contrast. One percentile window per ROI, from a sample of its slices, maps every frame of every
subject of that ROI: a plane looks the same whichever subject shows it, and the flipbook does not
flicker.

Pure functions over arrays and records: reading and writing happen in :mod:`.prepare`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from etchacell_loop.imaging.volume import RoiBox, VoxelSizeNm
from etchacell_loop.subject_metadata import (
    CROP_XYWH_KEY,
    IMAGE_KEY,
    JPEG_QUALITY_KEY,
    VOLUME_KEY,
    XY_RESOLUTION_KEY,
    Z_RESOLUTION_KEY,
    layout_metadata,
)

if TYPE_CHECKING:  # settings only annotate: the model and the GPU worker import this without pydantic
    from etchacell_loop.config import ImagingSettings

RECIPE_VERSION = 1  # bump when the rendering changes, so frames written before are made again
_ROI_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<corner>[^:]+):(?P<size>[^:]+)$")


class RoiSpecError(ValueError):
    """An ROI given on the command line that cannot be read; the message says what is wrong."""


@dataclass(frozen=True)
class SubjectFormat:
    """How subjects look: the paper's values by default (``imaging`` settings)."""

    crop_size_px: int = 2000
    subject_size_px: int = 1000
    jpeg_quality: int = 90
    flipbook_offsets_nm: tuple[float, ...] = (-500.0, -250.0, 0.0, 250.0, 500.0)
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    sample_slices: int = 16  # slices of an ROI its contrast window is measured on
    sample_pixels: int = 1 << 20  # at most this many pixels per sampled slice (taken on a regular grid)

    @classmethod
    def from_settings(cls, settings: ImagingSettings) -> SubjectFormat:
        return cls(
            crop_size_px=settings.crop_size_px,
            subject_size_px=settings.subject_size_px,
            jpeg_quality=settings.jpeg_quality,
            flipbook_offsets_nm=tuple(settings.flipbook_offsets_nm),
        )


# --- ROIs and flipbooks --------------------------------------------------------------------------


def parse_roi_spec(text: str) -> RoiBox:
    """``NAME:X,Y,Z:W,H,D`` (level-0 voxels: corner, then size) → :class:`RoiBox`."""
    match = _ROI_SPEC.match(text.strip())
    if match is None:
        raise RoiSpecError(f"ROI {text!r} is not NAME:X,Y,Z:W,H,D (e.g. cell01:1656,6756,329:2000,2000,150)")
    corner = _integers(text, match["corner"], "X,Y,Z")
    size = _integers(text, match["size"], "W,H,D")
    if any(value < 0 for value in corner):
        raise RoiSpecError(f"ROI {text!r}: the corner X,Y,Z must not be negative")
    if any(value < 1 for value in size):
        raise RoiSpecError(f"ROI {text!r}: the size W,H,D must be at least 1 voxel each")
    return RoiBox(match["name"], corner[0], corner[1], corner[2], size[0], size[1], size[2])


def _integers(spec: str, part: str, what: str) -> tuple[int, int, int]:
    try:
        values = [int(item) for item in part.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise RoiSpecError(f"ROI {spec!r}: {part!r} is not {what} (three whole numbers)")
    return values[0], values[1], values[2]


@dataclass(frozen=True)
class Flipbook:
    """The planes one subject shows: ``frame_z[k]`` is the volume z of frame k."""

    frame_z: tuple[int, ...]
    target_frame: int

    @property
    def z(self) -> int:
        """The target slice: the one volunteers trace."""
        return self.frame_z[self.target_frame]


def offsets_in_slices(offsets_nm: Sequence[float], z_voxel_nm: float) -> tuple[int, ...]:
    """Flipbook offsets in nm → in slices, rounded half away from zero (so ±offsets stay symmetric)."""
    if not z_voxel_nm > 0:
        raise ValueError(f"z voxel size must be positive, not {z_voxel_nm}")
    return tuple(int(math.copysign(math.floor(abs(offset) / z_voxel_nm + 0.5), offset)) for offset in offsets_nm)


def plan_flipbook(z: int, offsets_z: Sequence[int], depth_z: int) -> Flipbook:
    """The flipbook whose target is slice ``z``: one frame per offset, clamped to the volume's
    slices ``0 .. depth_z - 1`` (near an end the outer frames repeat the last plane). The target
    frame is the one with offset 0."""
    if not 0 <= z < depth_z:
        raise ValueError(f"slice {z} is outside the volume's 0..{depth_z - 1}")
    if 0 not in offsets_z:
        raise ValueError("flipbook offsets must include 0 (the target slice)")
    frames = tuple(min(max(z + offset, 0), depth_z - 1) for offset in offsets_z)
    return Flipbook(frames, list(offsets_z).index(0))


def upload_key(volume: str, roi: str, z: int) -> str:
    """The subject's idempotency key: one subject per volume, ROI and target slice."""
    return f"{volume}/{roi}/z{z:04d}"


# --- geometry ------------------------------------------------------------------------------------


def scaling_factor(width_px: int, height_px: int, fmt: SubjectFormat) -> float:
    """Source pixels per subject pixel for an ROI of this size (see the module docstring)."""
    nominal = fmt.crop_size_px / fmt.subject_size_px
    return max(nominal, max(width_px, height_px) / fmt.subject_size_px)


def subject_size_px(width_px: int, height_px: int, scale: float) -> tuple[int, int]:
    """(width, height) of the subject image of a crop this size: the crop divided by ``scale``."""
    return max(1, round(width_px / scale)), max(1, round(height_px / scale))


def crop_xywh(roi: RoiBox) -> tuple[int, int, int, int]:
    return roi.x, roi.y, roi.width, roi.height


def crop_around(roi: RoiBox, crop_size_px: int, shape_zyx: Sequence[int]) -> RoiBox:
    """The XY region a subject of ``roi`` shows: the ROI widened to a ``crop_size_px`` square around
    its centre, shifted (not shrunk) to stay inside the volume, and cut only where the volume is
    smaller than the square. A box around a nucleus is usually tight; volunteers, like the paper's,
    see the nucleus with the cytoplasm and neighbours around it. An ROI already larger than the
    square is shown whole. z and depth are the ROI's own."""
    width = min(max(roi.width, crop_size_px), shape_zyx[2])
    height = min(max(roi.height, crop_size_px), shape_zyx[1])
    x = _centred_start(roi.x, roi.width, width, shape_zyx[2])
    y = _centred_start(roi.y, roi.height, height, shape_zyx[1])
    return replace(roi, x=x, y=y, width=width, height=height)


def _centred_start(start: int, size: int, wanted: int, extent: int) -> int:
    """Where a span of ``wanted`` centred on ``[start, start + size)`` begins, kept inside ``[0, extent)``."""
    centred = start + size // 2 - wanted // 2
    return min(max(centred, 0), max(extent - wanted, 0))


# --- contrast ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContrastWindow:
    """Source intensities ``low`` → 0 and ``high`` → 255, linear between, clipped outside."""

    low: float
    high: float

    def apply(self, image: NDArray[Any]) -> NDArray[np.uint8]:
        span = self.high - self.low if self.high > self.low else 1.0
        scaled = (np.asarray(image, dtype=np.float32) - np.float32(self.low)) * np.float32(255.0 / span)
        clipped: NDArray[np.float32] = np.clip(np.rint(scaled), 0, 255)
        return clipped.astype(np.uint8)


def sample_slices(roi: RoiBox, count: int) -> list[int]:
    """Up to ``count`` slices spread evenly through the ROI (its first and last included)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    picks = np.linspace(roi.z, roi.z + roi.depth - 1, num=min(count, roi.depth))
    return sorted({round(float(z)) for z in picks})


def sample_stride(width_px: int, height_px: int, max_pixels: int) -> int:
    """The grid step that keeps a sampled slice under ``max_pixels`` pixels."""
    return max(1, math.ceil(math.sqrt(width_px * height_px / max_pixels)))


def contrast_window(samples: Sequence[NDArray[Any]], low_percentile: float, high_percentile: float) -> ContrastWindow:
    """The percentile window of all sampled pixels together (one mapping for the whole ROI)."""
    if not samples:
        raise ValueError("at least one sample is needed")
    if not 0 <= low_percentile < high_percentile <= 100:
        raise ValueError(f"percentiles {low_percentile}, {high_percentile} are not 0 ≤ low < high ≤ 100")
    pixels = np.concatenate([np.asarray(sample).ravel() for sample in samples])
    low, high = np.percentile(pixels, [low_percentile, high_percentile])
    return ContrastWindow(float(low), float(high))


# --- frames --------------------------------------------------------------------------------------


def render_frame(crop: NDArray[Any], window: ContrastWindow, size_wh: tuple[int, int]) -> NDArray[np.uint8]:
    """A crop (source intensities) → the subject frame: area-averaged to ``size_wh``, then windowed."""
    if crop.ndim != 2:
        raise ValueError(f"a crop is a 2-D slice region, not shape {crop.shape}")
    source = Image.fromarray(np.ascontiguousarray(crop, dtype=np.float32))
    if source.size != size_wh:
        source = source.resize(size_wh, Image.Resampling.BOX)
    return window.apply(np.asarray(source))


def jpeg_bytes(frame: NDArray[np.uint8], quality: int) -> bytes:
    """A grey-level JPEG at ``quality`` (the paper's 90: about 600 kB at 1000 x 1000)."""
    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def frame_recipe(
    volume: str, shape_zyx: Sequence[int], crop: tuple[int, int, int, int], z: int,
    size_wh: tuple[int, int], window: ContrastWindow, quality: int,
) -> str:  # fmt: skip
    """A digest of everything a frame's pixels depend on: equal recipes make identical files, so a
    frame already on disk under its recipe's name is never made again."""
    recipe = {
        "version": RECIPE_VERSION, "volume": volume, "shape_zyx": list(shape_zyx), "crop_xywh": list(crop), "z": z,
        "size_wh": list(size_wh), "window": [repr(window.low), repr(window.high)], "quality": quality,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def frame_file_name(roi: str, z: int, recipe: str) -> str:
    return f"{roi}-z{z:04d}-{recipe[:10]}.jpg"


# --- metadata ------------------------------------------------------------------------------------


def subject_metadata(
    *,
    volume: str,
    roi: str,
    flipbook: Flipbook,
    frame_names: Sequence[str],
    voxel_size_nm: VoxelSizeNm,
    scale: float,
    crop: tuple[int, int, int, int],
    jpeg_quality: int,
) -> dict[str, str]:
    """The metadata of one subject, as Panoptes stores it (strings): the visible keys of the Etch a
    Cell upload notebook and the hidden keys that place every frame in the volume."""
    if len(frame_names) != len(flipbook.frame_z):
        raise ValueError(f"{len(frame_names)} frame names for {len(flipbook.frame_z)} frames")
    metadata = {IMAGE_KEY.format(index=k): name for k, name in enumerate(frame_names)}
    metadata[XY_RESOLUTION_KEY] = f"{voxel_size_nm[2]:g}"
    metadata[Z_RESOLUTION_KEY] = f"{voxel_size_nm[0]:g}"
    metadata[JPEG_QUALITY_KEY] = str(jpeg_quality)
    metadata.update(layout_metadata(roi, flipbook.target_frame, flipbook.frame_z, scale))
    metadata[VOLUME_KEY] = volume
    metadata[CROP_XYWH_KEY] = ",".join(str(value) for value in crop)
    return metadata


def crop_of(metadata: Mapping[str, Any]) -> tuple[int, int, int, int] | None:
    """``#crop_xywh`` back as numbers; ``None`` when absent or unreadable."""
    try:
        values = [int(part) for part in str(metadata[CROP_XYWH_KEY]).split(",")]
    except (KeyError, ValueError):
        return None
    return (values[0], values[1], values[2], values[3]) if len(values) == 4 else None
