"""A synthetic volume made again is the same volume: its truth digest says so, whatever made it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import zarr

from etchacell_loop.imaging.synth_volume import SynthSpec, generate_volume, truth_digest

SPEC = SynthSpec(shape=(10, 192, 256), cells=2, seed=5)


def file_digests(path: Path) -> dict[str, str]:
    return {
        file.relative_to(path).as_posix(): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


def test_the_same_spec_made_again_elsewhere_has_the_same_digest_and_another_seed_not(tmp_path: Path) -> None:
    first, again = tmp_path / "here" / "synth.zarr", tmp_path / "there" / "synth.zarr"
    generate_volume(first, SPEC)
    generate_volume(again, SPEC)
    digest = truth_digest(first)
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64
    assert truth_digest(again) == digest
    other = tmp_path / "other" / "synth.zarr"
    generate_volume(other, SynthSpec(shape=SPEC.shape, cells=SPEC.cells, seed=SPEC.seed + 1))
    assert truth_digest(other) != digest


def test_one_changed_envelope_voxel_changes_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "synth.zarr"
    generate_volume(path, SPEC)
    digest = truth_digest(path)
    envelope = zarr.open_array(str(path / "labels" / "envelope" / "0"), mode="r+")
    z, y, x = (int(v) for v in np.argwhere(np.asarray(envelope[:]) == 1)[0])
    envelope[z, y, x] = 0
    assert truth_digest(path) != digest


def test_the_digest_is_over_values_not_the_stored_bytes(tmp_path: Path) -> None:
    """A copy stored with another compressor (another zarr or codec version) is the same truth."""
    path = tmp_path / "synth.zarr"
    generate_volume(path, SPEC)
    digest = truth_digest(path)
    for name in ("nucleus", "envelope"):
        store = path / "labels" / name / "0"
        values = np.asarray(zarr.open_array(str(store), mode="r")[:])
        before = file_digests(store)
        rewritten = zarr.create_array(
            str(store), shape=values.shape, dtype=values.dtype, chunks=(4, 64, 64), zarr_format=2, overwrite=True
        )
        rewritten[:] = values
        assert file_digests(store) != before
    assert truth_digest(path) == digest


def test_workers_render_the_same_files(tmp_path: Path) -> None:
    alone, shared = tmp_path / "alone" / "synth.zarr", tmp_path / "shared" / "synth.zarr"
    generate_volume(alone, SPEC)
    report = generate_volume(shared, SPEC, workers=2)
    assert report.cells == 2 and len(report.rois) == 2
    assert file_digests(shared) == file_digests(alone)
