"""Write a synthetic Etch a Cell classification export, with its truth, as large as the paper's.

Usage:
    .venv/bin/python bench/make_synthetic_export.py --subjects 4241 --classifications 104612 \\
        --out /tmp/synth/export.csv [--fem-fraction 0.5] [--prolific 3] [--mix careful=1] [--seed 0]

Beside the CSV it writes ``truth/<subject_id>.png`` (each subject's own slice's nucleus, 0/255) and
``truth.json`` (every subject's region and slices, every volunteer's behaviour). The rows depend only on
the options and ``--seed``, not on ``--workers``. Prints what it wrote: rows, size, seconds.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from etchacell_loop.simulation.crowd import CrowdMix
from etchacell_loop.simulation.export import ExportSpec, write_synthetic_export


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=4241, help="subjects (one per slice)")
    parser.add_argument("--classifications", type=int, default=104_612, help="classifications in all")
    parser.add_argument("--out", type=Path, default=Path("/tmp/synth/export.csv"), help="the CSV to write")
    parser.add_argument("--fem-fraction", type=float, default=0.5, help="share from the new front end (latest)")
    parser.add_argument("--prolific", type=int, default=None, help="prolific volunteers (default: 3)")
    parser.add_argument("--prolific-share", type=float, default=None, help="their share of all classifications")
    parser.add_argument("--mix", default=None, help="ordinary crowd, e.g. careful=1 or careful=0.7,sloppy=0.3")
    parser.add_argument("--slices-per-roi", type=int, default=160, help="slices per region (one nucleus)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (one region each)")
    return parser.parse_args()


def _mix(args: argparse.Namespace) -> CrowdMix:
    """``--mix`` alone gives a crowd without prolific volunteers; ``--prolific`` adds them to any mix."""
    mix = CrowdMix.parse(args.mix) if args.mix else CrowdMix()
    if args.prolific is not None or args.prolific_share is not None:
        count = args.prolific if args.prolific is not None else len(mix.prolific_behaviours) or 3
        mix = mix.with_prolific(count, args.prolific_share)
    return mix


def main() -> None:
    args = _arguments()
    spec = ExportSpec(
        n_subjects=args.subjects,
        n_classifications=args.classifications,
        mix=_mix(args),
        fem_fraction=args.fem_fraction,
        slices_per_roi=args.slices_per_roi,
    )
    start = time.perf_counter()
    result = write_synthetic_export(spec, args.out, np.random.default_rng(args.seed), workers=args.workers)
    seconds = time.perf_counter() - start
    print(f"wrote {result.csv_path}: {result.rows} rows, {result.bytes / 1e6:.1f} MB in {seconds:.1f} s")
    print(
        f"  {result.subjects} subjects in {result.rois} regions, {result.volunteers} volunteers, "
        f"{result.fem_rows} rows from the new front end, {result.empty_rows} empty, "
        f"{result.prolific_rows} from prolific volunteers, {result.mean_points:.0f} points per drawn row"
    )
    print(f"  truth: {result.truth_dir}/<subject_id>.png and {result.manifest_path}")


if __name__ == "__main__":
    main()
