"""Subject preparation and upload speed: seconds per frame image and per subject, subjects per second.

Usage:
    .venv/bin/python bench/bench_subjects.py [--slices 30] [--size 2048] [--roi-size 2000] [--upload 60]

Writes an ImageJ TIFF stack (``--slices`` of ``--size`` x ``--size`` uint8, 10 x 10 x 50 nm, smooth
structure plus noise so JPEGs weigh what real ones do), prepares one ROI of ``--roi-size`` px and
all its slices with the paper's format (1000 px JPEG quality 90, 5-frame flipbooks), then prepares
it again (the cost of a re-run that finds everything done). Then starts ``etchacell sandbox serve``
and uploads the first ``--upload`` subjects of the manifest through ``etchacell subjects upload``
(real panoptes-client, fresh SQLite database), and once more (the re-run that finds them all there).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import NDArray
from scipy.ndimage import zoom
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.imaging.manifest import read_manifest, write_manifest
from etchacell_loop.imaging.prepare import PrepareReport, prepare_subjects
from etchacell_loop.imaging.subjects import SubjectFormat
from etchacell_loop.imaging.volume import RoiBox, open_volume
from etchacell_loop.sandbox.harness import running_sandbox


def write_volume(path: Path, slices: int, size: int, seed: int = 5) -> None:
    """Blurry blobs (upsampled noise) plus fine noise, one slice at a time."""
    rng = np.random.default_rng(seed)

    def planes() -> Iterator[NDArray[np.uint8]]:
        for _ in range(slices):
            coarse = rng.normal(128, 30, size=(size // 32, size // 32))
            plane = zoom(coarse, 32, order=1) + rng.normal(0, 12, size=(size, size))
            yield np.clip(plane, 0, 255).astype(np.uint8)

    tifffile.imwrite(
        path,
        planes(),
        shape=(slices, size, size),
        dtype=np.uint8,
        imagej=True,
        resolution=(100.0, 100.0),
        metadata={"spacing": 0.05, "unit": "um", "axes": "ZYX"},
    )


def timed_prepare(volume_path: Path, roi: RoiBox, out: Path) -> tuple[PrepareReport, float]:
    start = time.perf_counter()
    with open_volume(volume_path) as volume:
        report = prepare_subjects(volume, [roi], out, SubjectFormat())
    return report, time.perf_counter() - start


def bench_upload(out: Path, count: int, work: Path) -> None:
    subset = work / "upload"
    subset.mkdir()
    entries = read_manifest(out)[:count]
    os.symlink(out / "frames", subset / "frames")
    write_manifest(subset, entries)
    with running_sandbox(work / "sandbox") as sandbox:
        seeded = sandbox.seed()
        env = {
            "ETCHACELL_CONFIG": str(work / "empty.toml"),
            "ETCHACELL_DATABASE_URL": f"sqlite:///{work / 'bench.db'}",
            "ETCHACELL_PANOPTES__ENDPOINT": sandbox.url,
            "ETCHACELL_PANOPTES__CLIENT_ID": sandbox.client_id,
            "ETCHACELL_PANOPTES__CLIENT_SECRET": sandbox.client_secret,
            "ETCHACELL_PANOPTES__PROJECT_ID": str(seeded["project_id"]),
            "ETCHACELL_PANOPTES__SEGMENTATION_WORKFLOW_ID": str(seeded["segmentation_workflow_id"]),
        }
        (work / "empty.toml").write_text("")
        runner = CliRunner()
        assert runner.invoke(app, ["db", "upgrade"], env=env).exit_code == 0
        for label in ("upload", "re-run"):
            start = time.perf_counter()
            result = runner.invoke(app, ["subjects", "upload", str(subset), "--subject-set", "bench"], env=env)
            seconds = time.perf_counter() - start
            if result.exit_code != 0:
                raise SystemExit(f"upload failed ({result.exit_code}): {result.output}")
            print(f"{label:>8}: {len(entries)} subjects in {seconds:.2f} s = {len(entries) / seconds:.1f} subjects/s")
        inventory = sandbox.inventory(seeded["project_id"])
        print(f"          sandbox holds {len(inventory['subjects'])} subjects (expected {len(entries)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--roi-size", type=int, default=2000)
    parser.add_argument("--upload", type=int, default=60, help="subjects to upload (0: skip the upload part)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-subjects-") as folder:
        work = Path(folder)
        volume_path = work / "bench.tif"
        start = time.perf_counter()
        write_volume(volume_path, args.slices, args.size)
        print(f"volume: {args.slices} x {args.size} x {args.size} uint8 written in {time.perf_counter() - start:.1f} s")
        roi = RoiBox("cell", x=0, y=0, z=0, width=args.roi_size, height=args.roi_size, depth=args.slices)
        out = work / "subjects"
        report, seconds = timed_prepare(volume_path, roi, out)
        stats = report.rois[0]
        sizes = [p.stat().st_size for p in (out / "frames").rglob("*.jpg")]
        print(
            f"prepare: {stats.subjects} subjects, {stats.frames_written} frame images "
            f"({stats.size_wh[0]} x {stats.size_wh[1]}, mean {np.mean(sizes) / 1024:.0f} KiB) in {seconds:.2f} s: "
            f"{seconds / stats.frames_written * 1000:.0f} ms per frame image, "
            f"{seconds / stats.subjects * 1000:.0f} ms per subject"
        )
        again, seconds = timed_prepare(volume_path, roi, out)
        print(
            f" re-run: {again.rois[0].frames_written} frames written, manifest "
            f"{'rewritten' if again.manifest_written else 'unchanged'}, {seconds:.2f} s"
        )
        if args.upload:
            bench_upload(out, args.upload, work)


if __name__ == "__main__":
    main()
