"""What a correction subject shows: the raw subject's slice, the model's outline, and its metadata.

A correction subject shows the same crop of the same slice as the raw subject of that slice, with
the same metadata keys, so the aggregate job places its marks exactly as it places tracings, and the
corrected consensus lies on the same pixels as the volunteer consensus. Two ways to show the model's
outline (``#outline``):

- ``marks``: the raw subject's flipbook as it is; the outline goes to Caesar as editable
  ``machineLearnt`` marks on the target frame (:mod:`etchacell_loop.loop.machine_marks`);
- ``overlay``: two frames, the slice and the slice with the outline burnt in (magenta, 3 px), for
  workflows without Caesar data fetching.

A *monitoring* subject (:func:`monitoring_upload`) is the raw subject of a monitoring slice again, for
the tracing workflow: traced from scratch by other volunteers, it checks the correction.

Prediction and subject live on different grids: the prediction covers the ROI box at source pixels,
the subject its crop (``#crop_xywh``, usually wider) shrunk by ``Scaling factor``. The area is moved
onto the crop and area-averaged as the frames were (a BOX filter), then thresholded at one half.

Pure functions over arrays and records, except :func:`build_overlay`, which writes one file.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

from etchacell_loop.db.models import SubjectKind
from etchacell_loop.imaging.manifest import write_atomic
from etchacell_loop.imaging.subjects import crop_of, subject_size_px
from etchacell_loop.panoptes.gateway import UPLOAD_KEY
from etchacell_loop.panoptes.upload import PRIORITY_KEY, FrameFile, SubjectUpload
from etchacell_loop.simulation.correction import OVERLAY_RGB
from etchacell_loop.subject_metadata import IMAGE_KEY, SCALING_KEY, layout_metadata

KIND_KEY = "#kind"
PREDICTION_KIND = "prediction"
MODEL_VERSION_KEY = "#model_version"
OUTLINE_KEY = "#outline"
OUTLINE_MARKS = "marks"
OUTLINE_OVERLAY = "overlay"
OVERLAY_WIDTH_PX = 3
OVERLAY_JPEG_QUALITY = 90
CORRECTIONS_DIR = "corrections"
MONITORING_KEY = "#monitoring"  # on a monitoring subject: the model version whose corrections it checks
MONITORING_SUFFIX = "monitoring"

Mask = NDArray[np.bool_]


class CorrectionSubjectError(ValueError):
    """A raw subject a correction subject cannot be made from; the message is one line."""


@dataclass(frozen=True)
class SubjectGeometry:
    """Where a subject's pixels lie in the source: crop (level-0 x, y, w, h), source pixels per
    subject pixel, and the image's size (width, height)."""

    crop_xywh: tuple[int, int, int, int]
    scale: float
    size_wh: tuple[int, int]

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> SubjectGeometry:
        crop = crop_of(metadata)
        try:
            scale = float(metadata[SCALING_KEY])
        except (KeyError, TypeError, ValueError):
            scale = 0.0
        if crop is None or not scale > 0:
            raise CorrectionSubjectError("its metadata lacks a usable #crop_xywh or Scaling factor")
        return cls(crop, scale, subject_size_px(crop[2], crop[3], scale))


@dataclass(frozen=True)
class RawSubject:
    """The raw subject of a slice, as a correction subject is made from it."""

    upload_key: str
    roi_id: int
    slice_index: int
    frames: tuple[int, ...]
    target_frame: int
    frame_dir: Path  # the folder of its frame files
    metadata: Mapping[str, Any]

    def frame_files(self) -> tuple[Path, ...]:
        """The raw flipbook's JPEGs, in frame order (named by its ``Image k`` keys)."""
        names = [self.metadata.get(IMAGE_KEY.format(index=k)) for k in range(len(self.frames))]
        if not all(isinstance(name, str) and name for name in names):
            raise CorrectionSubjectError(f"{self.upload_key}: its metadata does not name every frame file")
        return tuple(self.frame_dir / str(name) for name in names)


def area_on_subject(
    area: Mask, region_xy_px: tuple[int, int], geometry: SubjectGeometry, size_wh: tuple[int, int] | None = None
) -> Mask:
    """A predicted area over the region whose corner is ``region_xy_px`` (source pixels) → the
    same area at the subject's pixels (or at ``size_wh``, e.g. a consensus mask's size)."""
    x, y, width, height = geometry.crop_xywh
    canvas = np.zeros((height, width), dtype=np.float32)
    dx, dy = region_xy_px[0] - x, region_xy_px[1] - y
    top, left = max(dy, 0), max(dx, 0)
    bottom, right = min(dy + area.shape[0], height), min(dx + area.shape[1], width)
    if bottom > top and right > left:
        canvas[top:bottom, left:right] = area[top - dy : bottom - dy, left - dx : right - dx]
    target = size_wh or geometry.size_wh
    shrunk = Image.fromarray(canvas).resize(target, Image.Resampling.BOX)
    return np.asarray(shrunk) >= 0.5


def outline_overlay(gray: NDArray[np.uint8], area: Mask, width_px: int = OVERLAY_WIDTH_PX) -> NDArray[np.uint8]:
    """The slice as RGB with the area's outline drawn over it in magenta, ``width_px`` wide."""
    if gray.shape != area.shape:
        raise CorrectionSubjectError(f"outline of shape {area.shape} on an image of shape {gray.shape}")
    edge = area & ~ndimage.binary_erosion(area, border_value=0)
    line = ndimage.binary_dilation(edge, iterations=max(width_px // 2, 0)) if width_px > 1 else edge
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[line] = OVERLAY_RGB
    return rgb


def build_overlay(raw_target: Path, area: Mask, out: Path) -> Path:
    """Write the outline frame of a fallback subject (once: the name says what it shows)."""
    if not out.is_file():
        with Image.open(raw_target) as image:
            gray = np.asarray(image.convert("L"))
        buffer = io.BytesIO()
        Image.fromarray(outline_overlay(gray, area)).save(buffer, format="JPEG", quality=OVERLAY_JPEG_QUALITY)
        write_atomic(out, buffer.getvalue())
    return out


def overlay_uri(version: str, roi_id: int, slice_index: int) -> str:
    """Where a fallback subject's outline frame lives, relative to the data directory."""
    return f"{CORRECTIONS_DIR}/{version}/roi{roi_id}-z{slice_index:05d}-outline.jpg"


def correction_upload_key(raw_upload_key: str, version: str) -> str:
    """One correction subject per slice and model version."""
    return f"{raw_upload_key}/{version}"


def correction_upload(
    raw: RawSubject,
    version: str,
    model_version_id: int,
    priority: float,
    outline: str,
    overlay: Path | None = None,
) -> SubjectUpload:
    """The correction subject of ``raw``'s slice: its flipbook (``marks``) or its slice and the
    outline frame (``overlay``), with the raw metadata's keys and the prediction's own."""
    metadata = {key: value for key, value in raw.metadata.items() if key not in (UPLOAD_KEY, PRIORITY_KEY)}
    metadata.update({KIND_KEY: PREDICTION_KIND, MODEL_VERSION_KEY: version, OUTLINE_KEY: outline})
    files = raw.frame_files()
    if outline == OUTLINE_MARKS:
        frames, target, paths = raw.frames, raw.target_frame, files
    elif outline == OUTLINE_OVERLAY and overlay is not None:
        frames, target, paths = (raw.slice_index, raw.slice_index), 0, (files[raw.target_frame], overlay)
        metadata = _two_frame_metadata(metadata, paths, raw.slice_index)
    else:
        raise CorrectionSubjectError(f"{raw.upload_key}: outline {outline!r} needs marks, or an overlay file")
    return SubjectUpload(
        upload_key=correction_upload_key(raw.upload_key, version),
        roi_id=raw.roi_id,
        slice_index=raw.slice_index,
        frames=tuple(frames),
        target_frame=target,
        files=tuple(FrameFile(path) for path in paths),
        metadata=metadata,
        priority=priority,
        kind=SubjectKind.PREDICTION,
        model_version_id=model_version_id,
    )


def monitoring_upload_key(raw_upload_key: str, version: str) -> str:
    """One monitoring subject per slice and model version, beside its correction subject's key."""
    return f"{raw_upload_key}/{version}/{MONITORING_SUFFIX}"


def monitoring_upload(raw: RawSubject, version: str) -> SubjectUpload:
    """The monitoring subject of ``raw``'s slice: an ordinary raw tracing subject (the same flipbook,
    frames and metadata), so volunteers who trace it from scratch cannot tell it from any other and
    its consensus is the slice's volunteer consensus. ``#monitoring`` (hidden) says which version's
    corrections it checks; no ``#kind``, so nothing treats it as a correction subject."""
    metadata = {key: value for key, value in raw.metadata.items() if key not in (UPLOAD_KEY, PRIORITY_KEY, KIND_KEY)}
    metadata[MONITORING_KEY] = version
    return SubjectUpload(
        upload_key=monitoring_upload_key(raw.upload_key, version),
        roi_id=raw.roi_id,
        slice_index=raw.slice_index,
        frames=raw.frames,
        target_frame=raw.target_frame,
        files=tuple(FrameFile(path) for path in raw.frame_files()),
        metadata=metadata,
        kind=SubjectKind.RAW,
    )


def _two_frame_metadata(metadata: dict[str, Any], paths: Sequence[Path], slice_index: int) -> dict[str, Any]:
    """The raw keys with the frame list of a two-frame subject: both frames show the slice."""
    kept = {key: value for key, value in metadata.items() if not _is_image_key(key)}
    roi = str(metadata.get("#roi", ""))
    kept.update(layout_metadata(roi, 0, [slice_index, slice_index]))
    kept.update({IMAGE_KEY.format(index=k): path.name for k, path in enumerate(paths)})
    return kept


def _is_image_key(key: str) -> bool:
    head, _, index = key.rpartition(" ")
    return head == IMAGE_KEY.split(" ")[0] and index.isdigit()
