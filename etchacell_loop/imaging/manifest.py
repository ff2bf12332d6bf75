"""The subject manifest: one JSON line per prepared subject, the hand-over from prepare to upload.

Why a file: preparation reads volumes (a workstation with the data), upload talks to Panoptes and
the database (possibly elsewhere, later). Each line is self-contained — the volume it came from,
the ROI box, the slice, which plane every frame shows, the frame files (relative to the folder)
and the subject metadata — so a folder can be moved, checked or uploaded on its own.

Written atomically (a temporary file renamed over the old one), and only when its content
changes: a killed run leaves the previous manifest whole, and a repeated run touches nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etchacell_loop.imaging.volume import RoiBox

MANIFEST_NAME = "manifest.jsonl"
FRAMES_DIR = "frames"


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class VolumeRecord:
    """The volume a subject was cut from, as the database's ``volume`` row will hold it."""

    name: str
    path: str
    format: str
    shape_zyx: tuple[int, int, int]
    voxel_size_nm: tuple[float, float, float]
    dtype: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class ManifestEntry:
    """One prepared subject. ``frames`` are paths relative to the manifest's folder."""

    upload_key: str
    volume: VolumeRecord
    roi: RoiBox
    z: int
    frame_z: tuple[int, ...]
    target_frame: int
    frames: tuple[str, ...]
    metadata: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "upload_key": self.upload_key,
            "volume": {
                "name": self.volume.name,
                "path": self.volume.path,
                "format": self.volume.format,
                "shape_zyx": list(self.volume.shape_zyx),
                "voxel_size_nm": list(self.volume.voxel_size_nm),
                "dtype": self.volume.dtype,
                "labels": list(self.volume.labels),
            },
            "roi": self.roi.as_dict(),
            "z": self.z,
            "frame_z": list(self.frame_z),
            "target_frame": self.target_frame,
            "frames": list(self.frames),
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> ManifestEntry:
        volume, roi = item["volume"], item["roi"]
        shape, voxel = volume["shape_zyx"], volume["voxel_size_nm"]
        label = roi.get("nucleus_label")
        return cls(
            upload_key=str(item["upload_key"]),
            volume=VolumeRecord(
                name=str(volume["name"]),
                path=str(volume["path"]),
                format=str(volume["format"]),
                shape_zyx=(int(shape[0]), int(shape[1]), int(shape[2])),
                voxel_size_nm=(float(voxel[0]), float(voxel[1]), float(voxel[2])),
                dtype=str(volume["dtype"]),
                labels=tuple(str(name) for name in volume.get("labels", ())),
            ),
            roi=RoiBox(
                str(roi["name"]),
                int(roi["x"]),
                int(roi["y"]),
                int(roi["z"]),
                int(roi["width"]),
                int(roi["height"]),
                int(roi["depth"]),
                int(label) if label is not None else None,
            ),
            z=int(item["z"]),
            frame_z=tuple(int(z) for z in item["frame_z"]),
            target_frame=int(item["target_frame"]),
            frames=tuple(str(path) for path in item["frames"]),
            metadata={str(k): str(v) for k, v in item["metadata"].items()},
        )


def manifest_path(directory: Path) -> Path:
    return directory / MANIFEST_NAME


def read_manifest(directory: Path) -> list[ManifestEntry]:
    """Every entry of ``directory``'s manifest, in file order; empty when there is none yet."""
    path = manifest_path(directory)
    if not path.exists():
        return []
    entries = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entries.append(ManifestEntry.from_json(json.loads(line)))
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                raise ManifestError(
                    f"{path} line {number}: not a subject entry ({type(exc).__name__}: {exc})"
                ) from None
    return entries


def merged(existing: Iterable[ManifestEntry], fresh: Iterable[ManifestEntry]) -> list[ManifestEntry]:
    """The existing entries with ``fresh`` ones replacing those of the same key, new keys appended:
    preparing a second ROI into a folder keeps the first ROI's subjects."""
    by_key = {entry.upload_key: entry for entry in existing}
    by_key.update((entry.upload_key, entry) for entry in fresh)
    return list(by_key.values())


def write_manifest(directory: Path, entries: Sequence[ManifestEntry]) -> bool:
    """Write the manifest atomically; ``False`` (nothing written) when it already says exactly this."""
    text = "".join(json.dumps(entry.to_json(), sort_keys=True) + "\n" for entry in entries)
    path = manifest_path(directory)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    write_atomic(path, text.encode("utf-8"))
    return True


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers (and a later run) see all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
