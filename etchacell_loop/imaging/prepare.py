"""Prepare the subjects of a volume's ROIs: frame JPEGs under ``DIR/frames`` and ``DIR/manifest.jsonl``.

Why this shape. Neighbouring subjects share planes (slice z is frame 2 of its own subject and a
side frame of four others), so frames are made per (ROI, plane), once, and every subject showing
that plane points at the same file. A frame's file name carries the digest of its recipe (volume,
crop, plane, size, contrast window, JPEG quality): a file that exists under that name is the frame
wanted, so a re-run — or a run resuming after a kill — skips it without reading the volume, and a
changed recipe makes a new file instead of silently reusing a stale one. Files are written
atomically, so a killed run never leaves half a JPEG behind a good name.

Memory: one crop of one slice at a time (plus the contrast sample), whatever the volume's size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from etchacell_loop.imaging.manifest import (
    FRAMES_DIR,
    ManifestEntry,
    VolumeRecord,
    merged,
    read_manifest,
    write_atomic,
    write_manifest,
)
from etchacell_loop.imaging.subjects import (
    ContrastWindow,
    Flipbook,
    SubjectFormat,
    contrast_window,
    crop_around,
    crop_xywh,
    frame_file_name,
    frame_recipe,
    jpeg_bytes,
    offsets_in_slices,
    plan_flipbook,
    render_frame,
    sample_slices,
    sample_stride,
    scaling_factor,
    subject_metadata,
    subject_size_px,
    upload_key,
)
from etchacell_loop.imaging.volume import LazyVolume, RoiBox, VolumeError

Progress = Callable[[int, int], None]  # (planes done, planes in this run)


@dataclass
class RoiReport:
    """What preparing one ROI did."""

    name: str
    box: RoiBox
    subjects: int = 0
    planes: int = 0
    frames_written: int = 0
    frames_reused: int = 0
    scale: float = 1.0
    size_wh: tuple[int, int] = (0, 0)
    window: ContrastWindow = field(default_factory=lambda: ContrastWindow(0.0, 255.0))


@dataclass
class PrepareReport:
    """What one prepare run did; ``manifest_written`` is ``False`` when the manifest was already right."""

    out_dir: Path
    rois: list[RoiReport] = field(default_factory=list)
    manifest_written: bool = False
    subjects_in_manifest: int = 0


@dataclass(frozen=True)
class _RoiPlan:
    """One ROI's subjects and the planes they need, decided before any frame is made."""

    roi: RoiBox
    crop: RoiBox  # the region shown: the ROI widened to the crop size (:func:`crop_around`)
    scale: float
    size_wh: tuple[int, int]
    window: ContrastWindow
    flipbooks: tuple[Flipbook, ...]
    planes: tuple[int, ...]


def prepare_subjects(
    volume: LazyVolume,
    rois: Sequence[RoiBox],
    out_dir: Path,
    fmt: SubjectFormat,
    progress: Progress | None = None,
    relative_root: Path | None = None,
) -> PrepareReport:
    """Make (or reuse) every frame of every subject of ``rois`` and record them in the manifest.

    ROIs are clipped to the volume first. Safe to re-run and to resume after a kill: frames
    already on disk are reused, and the manifest is rewritten only when its content changes.
    The manifest names frames relative to ``out_dir``, and the volume relative to it when the volume
    lies under ``relative_root`` (default: ``out_dir``), so a folder holding both can be moved whole
    (:mod:`etchacell_loop.imaging.manifest`).
    """
    plans = [_plan_roi(volume, roi, fmt) for roi in checked_rois(volume, rois)]
    total = sum(len(plan.planes) for plan in plans)
    report = PrepareReport(out_dir)
    record = _volume_record(volume)
    entries: list[ManifestEntry] = []
    done = 0
    for plan in plans:
        roi_report = RoiReport(plan.roi.name, plan.roi, len(plan.flipbooks), len(plan.planes))
        roi_report.scale, roi_report.size_wh, roi_report.window = plan.scale, plan.size_wh, plan.window
        files: dict[int, str] = {}
        for z in plan.planes:
            files[z], written = _ensure_frame(volume, plan, z, out_dir, fmt.jpeg_quality)
            roi_report.frames_written += written
            roi_report.frames_reused += not written
            done += 1
            if progress is not None:
                progress(done, total)
        entries.extend(_entry(record, plan, flipbook, files, fmt.jpeg_quality) for flipbook in plan.flipbooks)
        report.rois.append(roi_report)
    all_entries = merged(read_manifest(out_dir), entries)
    report.manifest_written = write_manifest(out_dir, all_entries, relative_root)
    report.subjects_in_manifest = len(all_entries)
    return report


def checked_rois(volume: LazyVolume, rois: Sequence[RoiBox]) -> list[RoiBox]:
    """The ROIs clipped to the volume, after checking that each has a name of its own that can name
    a folder; :class:`VolumeError` otherwise (callers check before any work starts)."""
    names = [roi.name for roi in rois]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise VolumeError(f"ROI name(s) {', '.join(repeated)} given more than once")
    for name in names:
        if not name or "/" in name or name.startswith("."):
            raise VolumeError(f"ROI name {name!r} cannot name a folder (no '/', not starting with '.')")
    return [roi.clipped(volume.shape_zyx) for roi in rois]


def _plan_roi(volume: LazyVolume, roi: RoiBox, fmt: SubjectFormat) -> _RoiPlan:
    crop = crop_around(roi, fmt.crop_size_px, volume.shape_zyx)
    scale = scaling_factor(crop.width, crop.height, fmt)
    offsets = offsets_in_slices(fmt.flipbook_offsets_nm, volume.voxel_size_nm[0])
    flipbooks = tuple(plan_flipbook(z, offsets, volume.shape_zyx[0]) for z in range(roi.z, roi.z + roi.depth))
    planes = tuple(sorted({z for flipbook in flipbooks for z in flipbook.frame_z}))
    window = _roi_window(volume, crop, fmt)
    return _RoiPlan(roi, crop, scale, subject_size_px(crop.width, crop.height, scale), window, flipbooks, planes)


def _roi_window(volume: LazyVolume, roi: RoiBox, fmt: SubjectFormat) -> ContrastWindow:
    """The ROI's contrast window, measured on a regular grid of a few of its slices."""
    step = sample_stride(roi.width, roi.height, fmt.sample_pixels)
    rows, columns = slice(roi.y, roi.y + roi.height), slice(roi.x, roi.x + roi.width)
    samples = [volume.read(z, rows, columns)[::step, ::step] for z in sample_slices(roi, fmt.sample_slices)]
    return contrast_window(samples, fmt.low_percentile, fmt.high_percentile)


def _read_crop(volume: LazyVolume, roi: RoiBox, z: int) -> NDArray[Any]:
    return volume.read(z, slice(roi.y, roi.y + roi.height), slice(roi.x, roi.x + roi.width))


def _ensure_frame(volume: LazyVolume, plan: _RoiPlan, z: int, out_dir: Path, quality: int) -> tuple[str, bool]:
    """The frame of plane ``z`` (relative path), and whether it had to be written now."""
    recipe = frame_recipe(volume.name, volume.shape_zyx, crop_xywh(plan.crop), z, plan.size_wh, plan.window, quality)
    relative = Path(FRAMES_DIR) / volume.name / plan.roi.name / frame_file_name(plan.roi.name, z, recipe)
    target = out_dir / relative
    if target.is_file():
        return relative.as_posix(), False
    frame = render_frame(_read_crop(volume, plan.crop, z), plan.window, plan.size_wh)
    write_atomic(target, jpeg_bytes(frame, quality))
    return relative.as_posix(), True


def _entry(
    record: VolumeRecord, plan: _RoiPlan, flipbook: Flipbook, files: dict[int, str], quality: int
) -> ManifestEntry:
    frames = tuple(files[z] for z in flipbook.frame_z)
    metadata = subject_metadata(
        volume=record.name,
        roi=plan.roi.name,
        flipbook=flipbook,
        frame_names=[Path(path).name for path in frames],
        voxel_size_nm=record.voxel_size_nm,
        scale=plan.scale,
        crop=crop_xywh(plan.crop),
        jpeg_quality=quality,
    )
    return ManifestEntry(
        upload_key=upload_key(record.name, plan.roi.name, flipbook.z),
        volume=record,
        roi=plan.roi,
        z=flipbook.z,
        frame_z=flipbook.frame_z,
        target_frame=flipbook.target_frame,
        frames=frames,
        metadata=metadata,
    )


def _volume_record(volume: LazyVolume) -> VolumeRecord:
    return VolumeRecord(
        name=volume.name,
        path=str(volume.path.resolve()),
        format=volume.format,
        shape_zyx=volume.shape_zyx,
        voxel_size_nm=volume.voxel_size_nm,
        dtype=str(np.dtype(volume.dtype)),
        labels=volume.labels,
    )
