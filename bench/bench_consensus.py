"""Consensus quality against known truth: the paper's vote, the robust vote and STAPLE, per crowd.

For each crowd, a synthetic export with truth is written (``etchacell_loop.simulation``), aggregated
with every consensus method by ``etchacell_loop.aggregate`` exactly as ``etchacell aggregate`` does,
and each subject's mask compared with the truth of its slice. Crowds:

``paper``   the mix of the paper's Figure 2 plus three prolific volunteers repeating one error each;
``hard``    half of the ordinary volunteers trace the wrong thing and the prolific ones do a third of
            the work: slices where fewer than half of the votes cover the nucleus are common;
``clean``   careful volunteers only (the ceiling).

    .venv/bin/python bench/bench_consensus.py [--subjects 160] [--classifications 25] [--crowds paper,hard]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from etchacell_loop.aggregate.run import AggregateOptions, aggregate_export
from etchacell_loop.cria.consensus import CriaParams
from etchacell_loop.cria.methods import METHODS
from etchacell_loop.simulation.crowd import Behaviour, CrowdMix, paper_fractions
from etchacell_loop.simulation.export import ExportSpec, write_synthetic_export

HARD_FRACTIONS = {
    Behaviour.CAREFUL: 0.2,
    Behaviour.SLOPPY: 0.1,
    Behaviour.PARTIAL: 0.1,
    Behaviour.OFFSET: 0.1,
    Behaviour.NUCLEOLUS: 0.15,
    Behaviour.FALSE_POSITIVE: 0.15,
    Behaviour.GRAFFITI: 0.1,
    Behaviour.EMPTY: 0.05,
    Behaviour.WRONG_FRAME: 0.05,
}
CROWDS = {
    "paper": CrowdMix(fractions=paper_fractions()),
    "hard": CrowdMix(fractions=HARD_FRACTIONS, prolific_share=0.33),
    "clean": CrowdMix.only(Behaviour.CAREFUL),
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def scores(out_dir: Path, truth_dir: Path) -> list[float]:
    """Dice of every subject's consensus with the truth of its slice."""
    with (out_dir / "summary.csv").open(newline="") as handle:
        subjects = [row["subject_id"] for row in csv.DictReader(handle)]
    result = []
    for subject in subjects:
        truth = np.asarray(Image.open(truth_dir / f"{subject}.png")) > 127
        mask = np.asarray(Image.open(out_dir / "masks" / f"{subject}.png")) > 127
        result.append(dice(mask, truth))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=160)
    parser.add_argument("--classifications", type=int, default=25, help="per subject")
    parser.add_argument("--crowds", default="paper,hard,clean")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    print(f"{'crowd':<7} {'method':<12} {'median Dice':>12} {'p10':>7} {'< 0.9':>7} {'seconds':>8}")
    with tempfile.TemporaryDirectory(prefix="bench-consensus-") as tmp:
        for crowd in args.crowds.split(","):
            spec = ExportSpec(
                n_subjects=args.subjects,
                n_classifications=args.subjects * args.classifications,
                mix=CROWDS[crowd],
                slices_per_roi=40,
            )
            export = write_synthetic_export(spec, Path(tmp) / crowd / "export.csv", np.random.default_rng(args.seed))
            for method in METHODS:
                out = Path(tmp) / crowd / method
                started = time.perf_counter()
                options = AggregateOptions(params=CriaParams(method=method), workers=args.workers)
                aggregate_export(export.csv_path, out, options)
                elapsed = time.perf_counter() - started
                values = scores(out, export.truth_dir)
                below = sum(v < 0.9 for v in values) / len(values)
                print(
                    f"{crowd:<7} {method:<12} {statistics.median(values):>12.4f}"
                    f" {float(np.percentile(values, 10)):>7.4f} {below:>7.1%} {elapsed:>8.1f}"
                )


if __name__ == "__main__":
    main()
