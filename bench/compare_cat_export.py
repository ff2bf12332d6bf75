"""Our consensus masks beside Zooniverse's own consensus, on the real cat export.

Usage:
    .venv/bin/python bench/compare_cat_export.py [--workflow-version 13.19|all] [--methods cria ...]
                                                 [--worst 6] [--overlays DIR] [--json]

The fixtures hold a real classification export (workflow 28090, freehandLine and polygon marks) and
the output of panoptes-aggregation's ``polygon_reducer`` (``average_type: median``) on it. This script
aggregates the export with each of our methods (greedy joining), fills Zooniverse's consensus
outline(s) of frame 0 at the subject's natural size (from ``metadata.subject_dimensions``) with the
same scanline fill our consensus uses, and measures the IoU of the two masks per subject.

Why only one workflow version by default: the reductions were made with aggregation-for-caesar's
``cat_project_extractor_config.yaml``, which names ``workflow_version: '13.19'``; rows of other
versions never reached Zooniverse's reducer, so ours gets the same rows (``all`` uses every row).

How to read Zooniverse's reductions (``data.frame0.T0_toolIndex<i>_*`` columns, Python literals):
the reducer clusters each tool's outlines separately (tool 0 freehandLine, tool 1 polygon) with
DBSCAN on ``1 - IoU`` (eps 0.5, min_samples 2); ``cluster_labels`` has one label per outline drawn
with that tool (-1: in no cluster), ``clusters_count`` the size of each cluster, ``clusters_x/_y`` one
consensus outline per cluster. The median consensus is the cluster's medoid: the one volunteer
outline with the least total IoU distance to the others, closed, holes dropped, largest part kept.
Every stroke is closed on its own (an outline drawn in two strokes becomes two chord-closed polygons),
two strokes of one classification never share a cluster, and fewer than two similar outlines make no
cluster at all; our consensus joins a volunteer's strokes into loops and votes pixel by pixel.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from etchacell_loop.aggregate.run import AggregateOptions, aggregate_export
from etchacell_loop.cria.consensus import CriaParams
from etchacell_loop.cria.raster import fill_even_odd

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "zooniverse-exports"
EXPORT = FIXTURES / "cat-project-classifications.csv"
REDUCTIONS = FIXTURES / "polygon_reducer_reductions_median.csv"
REDUCED_VERSION = "13.19"  # the version in aggregation-for-caesar's cat_project_extractor_config.yaml
METHODS = ("cria", "cria-robust", "staple")
TARGET_MEDIAN_IOU = 0.9
TOOL_NAMES = {0: "freehand", 1: "polygon"}

Mask = NDArray[np.bool_]


@dataclass
class SubjectFacts:
    """What the export says about one subject (only the rows both aggregations read)."""

    subject_id: int
    classifications: int = 0
    rows_other_versions: int = 0
    empty: int = 0
    marks_by_tool: Counter[int] = field(default_factory=Counter)
    size: tuple[int, int] | None = None  # (width, height) of frame 0


@dataclass(frozen=True)
class Cluster:
    """One cluster of one tool's outlines and its consensus outline."""

    tool: int
    members: int
    outline: tuple[tuple[float, float], ...]
    agreement: float  # Zooniverse's "consensus": 1 - mean IoU distance inside the cluster


@dataclass(frozen=True)
class Reduction:
    """Zooniverse's answer for one subject, frame 0."""

    subject_id: int
    outlines_by_tool: Mapping[int, int]  # outlines the reducer saw per tool
    clusters: tuple[Cluster, ...]


@dataclass(frozen=True)
class MethodResult:
    """One of our methods against Zooniverse on one subject."""

    iou: float
    ours_px: int
    theirs_px: int
    ours_only_px: int
    theirs_only_px: int
    drawers: int
    used: int


@dataclass(frozen=True)
class Row:
    """One subject of the comparison."""

    subject_id: int
    classifications: int
    rows_other_versions: int
    empty: int
    freehand_marks: int
    polygon_marks: int
    clusters: int
    cluster_detail: str
    results: Mapping[str, MethodResult]

    def worst_iou(self) -> float:
        return min(r.iou for r in self.results.values())


# --- the export -------------------------------------------------------------------------------------------


def export_rows(export: Path) -> Iterator[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with export.open(newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


def keeps(row: Mapping[str, str], version: str | None) -> bool:
    return version is None or row["workflow_version"] == version


def write_rows_of_version(export: Path, target: Path, version: str | None) -> int:
    """A copy of the export with only the rows Zooniverse's reducer read (all rows if ``version`` is None)."""
    kept = 0
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer: csv.DictWriter[str] | None = None
        for row in export_rows(export):
            if writer is None:
                writer = csv.DictWriter(handle, fieldnames=list(row))
                writer.writeheader()
            if keeps(row, version):
                writer.writerow(row)
                kept += 1
    return kept


def frame0_size(metadata: Mapping[str, Any]) -> tuple[int, int] | None:
    dimensions = metadata.get("subject_dimensions") or []
    first = dimensions[0] if dimensions else None
    if not isinstance(first, dict) or not first.get("naturalWidth") or not first.get("naturalHeight"):
        return None
    return int(first["naturalWidth"]), int(first["naturalHeight"])


def drawing_marks(annotations: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for annotation in annotations:
        value = annotation.get("value")
        if isinstance(value, list):
            yield from (mark for mark in value if isinstance(mark, dict))


def read_facts(export: Path, version: str | None) -> dict[int, SubjectFacts]:
    """Per subject: rows read, rows of other versions left out, empty rows, marks per tool, frame-0 size."""
    facts: dict[int, SubjectFacts] = {}
    for row in export_rows(export):
        subject_id = int(row["subject_ids"].split(";")[0])
        subject = facts.setdefault(subject_id, SubjectFacts(subject_id))
        if not keeps(row, version):
            subject.rows_other_versions += 1
            continue
        subject.classifications += 1
        metadata = json.loads(row["metadata"])
        subject.size = subject.size or frame0_size(metadata)
        marks = [m for m in drawing_marks(json.loads(row["annotations"])) if m.get("frame", 0) == 0]
        subject.empty += not marks
        subject.marks_by_tool.update(int(m.get("toolIndex", m.get("tool", 0))) for m in marks)
    return facts


# --- Zooniverse's reductions ------------------------------------------------------------------------------


def literal(text: str) -> Any:
    """A ``data.*`` cell: a Python literal written by pandas, or empty when the tool had nothing."""
    return ast.literal_eval(text) if text.strip() else None


def tools_in(columns: Iterable[str]) -> list[int]:
    prefix = "data.frame0.T0_toolIndex"
    return sorted({int(c[len(prefix) :].split("_")[0]) for c in columns if c.startswith(prefix)})


def read_reductions(path: Path) -> dict[int, Reduction]:
    reductions: dict[int, Reduction] = {}
    for row in export_rows(path):
        outlines: dict[int, int] = {}
        clusters: list[Cluster] = []
        for tool in tools_in(row):
            key = f"data.frame0.T0_toolIndex{tool}"
            labels = literal(row[f"{key}_cluster_labels"]) or []
            outlines[tool] = len(labels)
            counts = literal(row[f"{key}_clusters_count"]) or []
            xs = literal(row[f"{key}_clusters_x"]) or []
            ys = literal(row[f"{key}_clusters_y"]) or []
            agreements = literal(row[f"{key}_consensus"]) or []
            for members, x, y, agreement in zip(counts, xs, ys, agreements, strict=True):
                clusters.append(Cluster(tool, int(members), tuple(zip(x, y, strict=True)), float(agreement)))
        subject_id = int(row["subject_id"])
        reductions[subject_id] = Reduction(subject_id, outlines, tuple(clusters))
    return reductions


def fill_outlines(outlines: Iterable[Sequence[tuple[float, float]]], size: tuple[int, int]) -> Mask:
    """The union of the outlines, each filled as our consensus fills a loop (pixel centres at integers)."""
    width, height = size
    mask = np.zeros((height, width), dtype=np.bool_)
    for outline in outlines:
        if len(outline) >= 3:
            mask |= fill_even_odd([np.asarray(outline, dtype=np.float64)], (height, width))
    return mask


# --- ours -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OurRun:
    masks: Path
    summary: Mapping[int, Mapping[str, str]]


def run_ours(export: Path, out_dir: Path, method: str) -> OurRun:
    options = AggregateOptions(params=CriaParams(method=method, join_rule="greedy"))
    aggregate_export(export, out_dir, options)
    with (out_dir / "summary.csv").open(newline="", encoding="utf-8") as handle:
        summary = {int(r["subject_id"]): r for r in csv.DictReader(handle)}
    return OurRun(out_dir / "masks", summary)


def our_mask(run: OurRun, subject_id: int, size: tuple[int, int]) -> Mask:
    path = run.masks / f"{subject_id}.png"
    if not path.is_file():
        return np.zeros((size[1], size[0]), dtype=np.bool_)
    return np.asarray(Image.open(path).convert("L"), dtype=np.uint8) > 127


def iou(ours: Mask, theirs: Mask) -> float:
    """Intersection over union; two empty masks agree perfectly (both say "nothing here")."""
    union = int(np.count_nonzero(ours | theirs))
    return 1.0 if union == 0 else int(np.count_nonzero(ours & theirs)) / union


def method_result(ours: Mask, theirs: Mask, summary: Mapping[str, str] | None) -> MethodResult:
    return MethodResult(
        iou=iou(ours, theirs),
        ours_px=int(np.count_nonzero(ours)),
        theirs_px=int(np.count_nonzero(theirs)),
        ours_only_px=int(np.count_nonzero(ours & ~theirs)),
        theirs_only_px=int(np.count_nonzero(theirs & ~ours)),
        drawers=int(summary["drawers"]) if summary else 0,
        used=int(summary["classifications_used"]) if summary else 0,
    )


def cluster_detail(reduction: Reduction) -> str:
    """E.g. "freehand 5 of 5 (0.73)": cluster members of the outlines drawn with that tool, and agreement."""
    parts = [
        f"{TOOL_NAMES.get(c.tool, c.tool)} {c.members} of {reduction.outlines_by_tool.get(c.tool, 0)} "
        f"({c.agreement:.2f})"
        for c in reduction.clusters
    ]
    unclustered = {
        t: n - sum(c.members for c in reduction.clusters if c.tool == t) for t, n in reduction.outlines_by_tool.items()
    }
    parts += [f"{n} {TOOL_NAMES.get(t, t)} unclustered" for t, n in unclustered.items() if n]
    return "; ".join(parts) or "nothing drawn"


def compare(
    facts: Mapping[int, SubjectFacts],
    reductions: Mapping[int, Reduction],
    runs: Mapping[str, OurRun],
    overlays: Path | None,
) -> list[Row]:
    rows = []
    for subject_id, subject in sorted(facts.items()):
        if subject.size is None or subject.classifications == 0:
            continue
        reduction = reductions.get(subject_id, Reduction(subject_id, {}, ()))
        theirs = fill_outlines((c.outline for c in reduction.clusters), subject.size)
        masks = {method: our_mask(run, subject_id, subject.size) for method, run in runs.items()}
        results = {m: method_result(masks[m], theirs, runs[m].summary.get(subject_id)) for m in runs}
        if overlays is not None:
            save_overlay(overlays / f"{subject_id}.png", masks, theirs)
        rows.append(
            Row(
                subject_id=subject_id,
                classifications=subject.classifications,
                rows_other_versions=subject.rows_other_versions,
                empty=subject.empty,
                freehand_marks=subject.marks_by_tool[0],
                polygon_marks=subject.marks_by_tool[1],
                clusters=len(reduction.clusters),
                cluster_detail=cluster_detail(reduction),
                results=results,
            )
        )
    return rows


def save_overlay(path: Path, ours: Mapping[str, Mask], theirs: Mask) -> None:
    """One panel per method: both (white), ours only (red), Zooniverse's only (blue)."""
    panels = []
    for mask in ours.values():
        rgb = np.zeros((*theirs.shape, 3), dtype=np.uint8)
        rgb[mask & theirs] = (230, 230, 230)
        rgb[mask & ~theirs] = (220, 40, 40)
        rgb[theirs & ~mask] = (40, 90, 230)
        rgb[:, -2:] = (90, 90, 90)
        panels.append(rgb)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(panels, axis=1)).save(path)


# --- output -----------------------------------------------------------------------------------------------


def single_cluster_medians(rows: Sequence[Row], methods: Sequence[str]) -> dict[str, float | None]:
    single = [r for r in rows if r.clusters == 1]
    return {m: statistics.median(r.results[m].iou for r in single) if single else None for m in methods}


def single_cluster_area_ratios(rows: Sequence[Row], methods: Sequence[str]) -> dict[str, float | None]:
    """Median of our area over theirs: above 1 when our majority vote is wider than their medoid outline."""
    single = [r for r in rows if r.clusters == 1 and next(iter(r.results.values())).theirs_px]
    return {
        m: statistics.median(r.results[m].ours_px / r.results[m].theirs_px for r in single) if single else None
        for m in methods
    }


def print_table(rows: Sequence[Row], methods: Sequence[str]) -> None:
    head = f"{'subject':>8} {'cls':>4} {'empty':>5} {'marks f/p':>9} {'zoo clusters':>12} " + " ".join(
        f"{m:>11}" for m in methods
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        ious = " ".join(f"{row.results[m].iou:>11.3f}" for m in methods)
        marks = f"{row.freehand_marks}/{row.polygon_marks}"
        print(f"{row.subject_id:>8} {row.classifications:>4} {row.empty:>5} {marks:>9} {row.clusters:>12} {ious}")


def print_summary(rows: Sequence[Row], methods: Sequence[str], version: str | None) -> None:
    single = sum(r.clusters == 1 for r in rows)
    medians = single_cluster_medians(rows, methods)
    print()
    rows_note = f"rows of workflow version {version}" if version else "all rows"
    print(f"{len(rows)} subjects ({rows_note}); Zooniverse found exactly one cluster on {single}.")
    for method, median in medians.items():
        verdict = "n/a" if median is None else ("meets" if median >= TARGET_MEDIAN_IOU else "below")
        shown = "n/a" if median is None else f"{median:.3f}"
        print(f"  median IoU, single-cluster subjects, {method:<11} {shown}  ({verdict} target {TARGET_MEDIAN_IOU})")
    ratios = single_cluster_area_ratios(rows, methods)
    print(
        "  median area ours/theirs, single-cluster subjects: "
        + ", ".join(f"{m} {v:.3f}" for m, v in ratios.items() if v is not None)
    )
    everyone = {m: statistics.median(r.results[m].iou for r in rows) for m in methods}
    print("  median IoU, all subjects:            " + ", ".join(f"{m} {v:.3f}" for m, v in everyone.items()))


def print_differences(rows: Sequence[Row], methods: Sequence[str], worst: int) -> None:
    if worst <= 0:
        return
    print()
    print(f"The {worst} subjects where the two differ most (lowest IoU over our methods):")
    for row in sorted(rows, key=Row.worst_iou)[:worst]:
        other = f", {row.rows_other_versions} row(s) of other versions left out" if row.rows_other_versions else ""
        print(
            f"\n  {row.subject_id}: {row.classifications} classifications ({row.empty} empty{other}); "
            f"marks {row.freehand_marks} freehand, {row.polygon_marks} polygon"
        )
        print(f"    Zooniverse: {row.clusters} cluster(s): {row.cluster_detail}")
        for method in methods:
            r = row.results[method]
            print(
                f"    {method:<11} IoU {r.iou:.3f}: ours {r.ours_px} px from {r.used} of {r.drawers} drawers, "
                f"theirs {r.theirs_px} px; only ours {r.ours_only_px} px, only theirs {r.theirs_only_px} px"
            )


def as_json(rows: Sequence[Row], methods: Sequence[str], version: str | None) -> dict[str, Any]:
    return {
        "workflow_version": version or "all",
        "methods": list(methods),
        "target_median_iou": TARGET_MEDIAN_IOU,
        "median_iou_single_cluster": single_cluster_medians(rows, methods),
        "single_cluster_subjects": sum(r.clusters == 1 for r in rows),
        "median_area_ratio_single_cluster": single_cluster_area_ratios(rows, methods),
        "subjects": [asdict(r) for r in rows],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--export", type=Path, default=EXPORT)
    parser.add_argument("--reductions", type=Path, default=REDUCTIONS)
    parser.add_argument(
        "--workflow-version",
        default=REDUCED_VERSION,
        help=f"rows both sides read (default {REDUCED_VERSION}, what the reductions used; 'all': every row)",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--worst", type=int, default=6, help="how many differing subjects to explain")
    parser.add_argument("--overlays", type=Path, help="write one overlay PNG per subject here")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    version = None if args.workflow_version == "all" else args.workflow_version
    facts = read_facts(args.export, version)
    reductions = read_reductions(args.reductions)
    with tempfile.TemporaryDirectory(prefix="compare-cat-") as tmp:
        export = Path(tmp) / "export.csv"
        write_rows_of_version(args.export, export, version)
        runs = {method: run_ours(export, Path(tmp) / method, method) for method in args.methods}
        rows = compare(facts, reductions, runs, args.overlays)
    if args.json:
        print(json.dumps(as_json(rows, args.methods, version), indent=2))
        return
    print_table(rows, args.methods)
    print_summary(rows, args.methods, version)
    print_differences(rows, args.methods, args.worst)
    if args.overlays:
        print(f"\noverlays (white both, red only ours, blue only Zooniverse's; panels {', '.join(args.methods)}):")
        print(f"  {args.overlays}")


if __name__ == "__main__":
    main()
