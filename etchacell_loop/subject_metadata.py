"""What a subject's metadata says about the slices its frames show.

A flipbook subject shows one slice (its *target*) and, on the other frames, the planes above and
below. Marks on frame k belong to the slice that frame shows, so the consensus of a slice can draw on
several subjects. The subject pipeline writes the keys below; subjects made elsewhere (single images,
most exports in the wild) carry none of the hidden ones, and then a subject is its own slice, shown
on frame 0, and marks on its other frames cannot be placed.

Keys a project owner recognises (shown to volunteers) follow the Etch a Cell upload notebook;
hidden keys start with ``#`` (Panoptes does not show them).

Pure functions over mappings: no database, no network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from etchacell_loop import jsontext

IMAGE_KEY = "Image {index}"  # "Image 0" … "Image 4": the frames' file names, in frame order
XY_RESOLUTION_KEY = "Raw XY resolution (nm)"
Z_RESOLUTION_KEY = "Raw Z resolution (nm)"
SCALING_KEY = "Scaling factor"  # source pixels per subject pixel (2 for 2000 px crops shown at 1000)
JPEG_QUALITY_KEY = "jpeg quality (%)"
ROI_KEY = "#roi"  # the region (one nucleus) the subject was cut from
SLICE_KEY = "#slice"  # z index of the target slice in the source volume
TARGET_FRAME_KEY = "#target_frame"  # which frame shows the target slice
FRAME_SLICES_KEY = "#frame_slices"  # z index each frame shows, in frame order
VOLUME_KEY = "#volume"  # the source volume's name (its file or folder stem: "hela" for hela.zarr)
CROP_XYWH_KEY = "#crop_xywh"  # "x,y,w,h": the crop, in level-0 source pixels, the subject image shows


@dataclass(frozen=True, order=True)
class SliceKey:
    """One slice of one region: where consensus is kept. ``roi`` is the region's name, or
    ``subject:<id>`` for a subject whose metadata names no region (it is then its own slice)."""

    roi: str
    z: int

    def __str__(self) -> str:
        return f"{self.roi}@z{self.z}"


@dataclass(frozen=True)
class SubjectLayout:
    """Which slice each frame of one subject shows, as far as its metadata says."""

    subject_id: int
    target_frame: int
    own_slice: SliceKey
    frame_slices: tuple[SliceKey, ...] | None = None  # None: only the target frame can be placed
    scaling_factor: float | None = None  # source pixels per subject pixel
    source_pixel_nm: float | None = None  # "Raw XY resolution (nm)"
    problems: tuple[str, ...] = ()  # metadata that was present but unreadable

    def slice_of(self, frame: int) -> SliceKey | None:
        """The slice frame ``frame`` shows, or None when the metadata does not say."""
        if self.frame_slices is not None and 0 <= frame < len(self.frame_slices):
            return self.frame_slices[frame]
        return self.own_slice if frame == self.target_frame else None

    @property
    def pixel_size_nm(self) -> float | None:
        """The size of one subject pixel in the source volume, when the metadata says both parts."""
        if self.source_pixel_nm is None or self.scaling_factor is None:
            return None
        return self.source_pixel_nm * self.scaling_factor


def subject_layout(subject_id: int, metadata: Mapping[str, Any]) -> SubjectLayout:
    """Read a subject's layout from its metadata; what is missing or unreadable falls back to
    "the subject is its own slice on frame 0", with the reason kept in ``problems``."""
    problems: list[str] = []
    roi = metadata.get(ROI_KEY)
    roi_name = str(roi).strip() if roi not in (None, "") else ""
    target = _integer(metadata.get(TARGET_FRAME_KEY), TARGET_FRAME_KEY, problems)
    z = _integer(metadata.get(SLICE_KEY), SLICE_KEY, problems)
    frame_z = _integer_list(metadata.get(FRAME_SLICES_KEY), problems)
    scaling = _positive_float(metadata.get(SCALING_KEY), SCALING_KEY, problems)
    source_nm = _positive_float(metadata.get(XY_RESOLUTION_KEY), XY_RESOLUTION_KEY, problems)
    target_frame = target if target is not None and target >= 0 else 0
    if frame_z is not None and not 0 <= target_frame < len(frame_z):
        problems.append(f"{TARGET_FRAME_KEY} {target_frame} is outside {FRAME_SLICES_KEY} ({len(frame_z)} frames)")
        frame_z = None
    if frame_z is not None and z is not None and frame_z[target_frame] != z:
        problems.append(f"{SLICE_KEY} {z} disagrees with {FRAME_SLICES_KEY}[{target_frame}] = {frame_z[target_frame]}")
        frame_z = None
    if not roi_name or (z is None and frame_z is None):
        alone = SliceKey(f"subject:{subject_id}", 0)
        return SubjectLayout(subject_id, target_frame, alone, None, scaling, source_nm, tuple(problems))
    own_z = z if z is not None else frame_z[target_frame]  # type: ignore[index]
    frames = tuple(SliceKey(roi_name, value) for value in frame_z) if frame_z is not None else None
    own = SliceKey(roi_name, own_z)
    return SubjectLayout(subject_id, target_frame, own, frames, scaling, source_nm, tuple(problems))


def layout_metadata(
    roi: str, target_frame: int, frame_z: Sequence[int], scaling_factor: float | None = None
) -> dict[str, str]:
    """The hidden keys that :func:`subject_layout` reads, as Panoptes stores metadata (strings)."""
    metadata = {
        ROI_KEY: roi,
        SLICE_KEY: str(int(frame_z[target_frame])),
        TARGET_FRAME_KEY: str(int(target_frame)),
        FRAME_SLICES_KEY: ",".join(str(int(z)) for z in frame_z),
    }
    if scaling_factor is not None:
        metadata[SCALING_KEY] = f"{scaling_factor:g}"
    return metadata


def export_subject_metadata(subject_data: str | Mapping[str, Any], subject_id: int) -> dict[str, Any]:
    """One subject's metadata from an export's ``subject_data`` column (``{"<id>": {…}}``);
    empty when the column is missing or unreadable (the subject then is its own slice)."""
    try:
        data = jsontext.loads(subject_data) if isinstance(subject_data, str) else subject_data
    except ValueError:
        return {}
    if not isinstance(data, Mapping):
        return {}
    entry = data.get(str(subject_id))
    return {k: v for k, v in entry.items() if k != "retired"} if isinstance(entry, Mapping) else {}


def _integer(value: Any, key: str, problems: list[str]) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        problems.append(f"{key} {value!r} is not a number")
        return None
    if not number.is_integer():
        problems.append(f"{key} {value!r} is not a whole number")
        return None
    return int(number)


def _integer_list(value: Any, problems: list[str]) -> list[int] | None:
    if value is None or value == "":
        return None
    items: Any = value
    if isinstance(value, str):
        text = value.strip()
        items = _json_or_none(text) if text.startswith("[") else text.split(",")
    if not isinstance(items, list | tuple):
        problems.append(f"{FRAME_SLICES_KEY} {value!r} is not a list")
        return None
    numbers = [_integer(item, FRAME_SLICES_KEY, problems) for item in items]
    if not numbers or any(n is None for n in numbers):
        return None
    return [n for n in numbers if n is not None]


def _positive_float(value: Any, key: str, problems: list[str]) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        problems.append(f"{key} {value!r} is not a number")
        return None
    if not number > 0:
        problems.append(f"{key} {value!r} is not positive")
        return None
    return number


def _json_or_none(text: str) -> Any:
    try:
        return jsontext.loads(text)
    except ValueError:
        return None
