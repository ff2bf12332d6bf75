"""The subject manifest: one JSON line per prepared subject, the hand-over from prepare to upload.

Why a file: preparation reads volumes (a workstation with the data), upload talks to Panoptes and
the database (possibly elsewhere, later). Each line is self-contained — the volume it came from,
the ROI box, the slice, which plane every frame shows, the frame files and the subject metadata —
so a folder can be moved, checked or uploaded on its own.

Paths in the file are relative to the manifest's folder wherever they can be: the frames always
(they are made inside it), the volume when it lies under the folder given as ``relative_root``
(the manifest's own folder unless the caller names a wider one, e.g. a work folder holding both
the volume and the subjects). A volume elsewhere — an operator's volume on a shared disk — keeps
its absolute path, which stays right wherever the folder goes. :func:`read_manifest` resolves
relative paths against the folder, so readers (upload, the database's volume row) always see
absolute volume paths, wherever the folder has been copied to.

Written atomically (a temporary file renamed over the old one), and only when its content
changes: a killed run leaves the previous manifest whole, and a repeated run touches nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
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
    """One prepared subject. ``frames`` are paths relative to the manifest's folder; ``volume.path``
    is absolute once read (:func:`read_manifest`), relative or not in the file."""

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


def portable_path(path: str, directory: Path, relative_root: Path | None = None) -> str:
    """``path`` as the manifest in ``directory`` writes it: relative to ``directory`` (``..`` steps
    allowed) when it lies under ``relative_root`` (default: ``directory`` itself), else absolute.
    A relative ``path`` is taken as already written so and returned unchanged."""
    if not Path(path).is_absolute():
        return path
    base = directory.resolve()
    root = (relative_root if relative_root is not None else directory).resolve()
    target = Path(path).resolve()
    if not target.is_relative_to(root) or not base.is_relative_to(root):
        return str(target)
    return Path(os.path.relpath(target, base)).as_posix()


def resolved_path(path: str, directory: Path) -> str:
    """A path read from the manifest in ``directory`` as an absolute path: relative ones are taken
    from the folder the manifest is in now, not the one it was written in."""
    if Path(path).is_absolute():
        return path
    return str((directory / path).resolve())


def with_volume_path(entry: ManifestEntry, path: str) -> ManifestEntry:
    """``entry`` naming its volume by ``path``: the one thing that differs between file and reader."""
    return replace(entry, volume=replace(entry.volume, path=path))


def read_manifest(directory: Path) -> list[ManifestEntry]:
    """Every entry of ``directory``'s manifest, in file order; empty when there is none yet.
    Volume paths come back absolute (see the module docstring); frames stay relative to ``directory``."""
    path = manifest_path(directory)
    if not path.exists():
        return []
    entries = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry = ManifestEntry.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                raise ManifestError(
                    f"{path} line {number}: not a subject entry ({type(exc).__name__}: {exc})"
                ) from None
            entries.append(with_volume_path(entry, resolved_path(entry.volume.path, directory)))
    return entries


def merged(existing: Iterable[ManifestEntry], fresh: Iterable[ManifestEntry]) -> list[ManifestEntry]:
    """The existing entries with ``fresh`` ones replacing those of the same key, new keys appended:
    preparing a second ROI into a folder keeps the first ROI's subjects."""
    by_key = {entry.upload_key: entry for entry in existing}
    by_key.update((entry.upload_key, entry) for entry in fresh)
    return list(by_key.values())


def write_manifest(directory: Path, entries: Sequence[ManifestEntry], relative_root: Path | None = None) -> bool:
    """Write the manifest atomically; ``False`` (nothing written) when it already says exactly this.
    Volume paths under ``relative_root`` (default: ``directory``) are written relative to ``directory``."""
    portable = (with_volume_path(e, portable_path(e.volume.path, directory, relative_root)) for e in entries)
    text = "".join(json.dumps(entry.to_json(), sort_keys=True) + "\n" for entry in portable)
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
