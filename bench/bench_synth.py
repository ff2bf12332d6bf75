"""Synthetic volume generation: seconds per gigavoxel and peak memory, on one core.

Generates each shape into a temporary folder exactly as ``etchacell synth volume`` does (geometry,
image formation, truth, OME-Zarr pyramid, zstd) and prints wall time, time per gigavoxel and the
process's peak resident memory. Memory should stay near one z-block of slices whatever the depth.

    .venv/bin/python bench/bench_synth.py [--shapes 64,1024,1024 128,1024,1024] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from etchacell_loop.imaging.synth_volume import SynthSpec, generate_volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["64,1024,1024"], help="volumes as Z,Y,X")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the budget says
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split(","))
        if len(shape) != 3:
            sys.exit(f"--shapes: {text!r} is not Z,Y,X")
        with tempfile.TemporaryDirectory() as folder:
            started, cpu = time.perf_counter(), time.process_time()
            report = generate_volume(
                Path(folder) / "bench.zarr", SynthSpec(shape=(shape[0], shape[1], shape[2]), seed=args.seed)
            )
            wall, used = time.perf_counter() - started, time.process_time() - cpu
            size_mb = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6
        voxels = shape[0] * shape[1] * shape[2]
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{text:>16}: {wall:6.1f} s wall, {used:6.1f} s CPU, {wall / voxels * 1e9:6.0f} s/Gvoxel, "
            f"{report.cells} cells, {sum(report.organelles.values())} organelles, {size_mb:.0f} MB on disk, "
            f"peak RSS so far {peak_mb:.0f} MB"
        )


if __name__ == "__main__":
    main()
