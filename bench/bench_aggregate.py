"""Speed and peak memory of ``etchacell aggregate`` beside panoptes-aggregation 5.3.1, on one export.

Usage:
    .venv/bin/python bench/bench_aggregate.py [--export EXPORT.csv | --synthetic 2000]
        [--replicate K [--replicate-as subjects|volunteers]] [--method cria] [--workers N]
        [--limit-theirs N_SUBJECTS] [--skip-theirs] [--theirs-cpus 1] [--json]

Without ``--export`` a synthetic export is written first (``etchacell_loop.simulation.export``).
``--replicate K`` runs on the export's rows K times over (copies as new subjects, or as new volunteers
on the same subjects), so the real cat export can stand in for a larger one.

Ours runs as ``etchacell aggregate`` in a child process. Zooniverse's runs as what its command line
runs (``panoptes_aggregation extract`` then ``reduce``: the ``extract_csv`` and ``reduce_csv``
functions) with ``polygon_extractor`` and ``polygon_reducer`` (median, eps 0.5, min_samples 2): the
pair Zooniverse uses for freehandLine and polygon tools, and the one that made the cat export's
``polygon_reducer_reductions_median.csv`` (rerun here, 5.3.1 reproduces that file's clusters and
outlines exactly). Its configuration is written by hand, as ``panoptes_aggregation config`` would
from a workflows export, with every workflow version admitted, as ours reads every row. It lives in its
own virtual environment, ``bench/.venv-pa`` (made on first use), so its version pins never touch the
project's. Both sides read the same rows; ours uses one worker per core, theirs its command line's
default of one process (``--theirs-cpus`` changes that).

Peak memory is that of the whole process tree (our workers are processes): the tree is sampled every
50 ms and the largest sum of resident set sizes is reported; shared pages are counted once per
process, so this overstates, and the sum of proportional set sizes (PSS) is shown beside it. The
sampling must stay cheap, since it shares the cores with what it measures: the tree is looked up in
/proc once a second (a scan of every process costs milliseconds) and PSS is read twice a second (the
kernel walks every page table for it), RSS from each process's status file every 50 ms.

``--limit-theirs N`` runs panoptes-aggregation on the rows of the export's first N subjects only and
scales its extract and reduce times by the ratio of classification counts (start-up is not scaled).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROJECT_BIN = ROOT / ".venv" / "bin"
PA_VENV = ROOT / "bench" / ".venv-pa"
PA_PYTHON = PA_VENV / "bin" / "python"
PA_REQUIREMENT = "panoptes-aggregation==5.3.1"
SAMPLE_S = 0.05
TREE_SCAN_S = 1.0
PSS_SAMPLE_S = 0.5
GIB = 1024**3
TARGET_SPEEDUP = 20.0
TARGET_PEAK_BYTES = 2 * GIB
ID_STRIDE = 10**9  # --replicate: copy k adds k * ID_STRIDE to subject and classification ids

EXTRACTOR_CONFIG = """workflow_id: {workflow_id}
workflow_version: {{min: '0.1'}}
extractor_config:
    polygon_extractor:
    -   task: T0
"""
REDUCER_CONFIG = """reducer_config:
    polygon_reducer:
        average_type: 'median'
        eps: 0.5
        min_samples: 2
"""
# Run by bench/.venv-pa/bin/python: one phase of the command line's own code path, timed apart from
# the imports, so that only the work is scaled when --limit-theirs extrapolates.
PA_PHASE = """
import json, sys, time
started = time.perf_counter()
from panoptes_aggregation.scripts import extract_csv, reduce_csv
imported = time.perf_counter()
phase, source, config, out_dir, cpus = sys.argv[1:6]
if phase == "extract":
    extract_csv(source, config, output_dir=out_dir, output_name="bench", cpu_count=int(cpus), hide_progressbar=True)
else:
    reduce_csv(source, config, output_dir=out_dir, output_name="bench", cpu_count=int(cpus), hide_progressbar=True)
print(json.dumps({"import_s": imported - started, "work_s": time.perf_counter() - imported}))
"""


# --- process-tree memory ----------------------------------------------------------------------------------


def _status_fields(pid: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _kib(value: str | None) -> int:
    return int(value.split()[0]) * 1024 if value else 0


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return _kib(line[4:])
    except OSError:
        pass
    return 0


def process_tree(root: int) -> list[int]:
    """``root`` and every process descended from it (from each process's parent in /proc)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as handle:
                after_name = handle.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry.name)] = int(after_name[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


@dataclass
class TreeMemory:
    """The largest figures seen while sampling a process tree."""

    peak_rss_sum: int = 0
    peak_pss_sum: int = 0
    peak_single_rss: int = 0  # the largest one process reached (its VmHWM)
    peak_processes: int = 0

    def sample(self, pids: Sequence[int], with_pss: bool) -> None:
        rss = pss = 0
        for pid in pids:
            try:
                status = _status_fields(pid)
            except OSError:
                continue
            rss += _kib(status.get("VmRSS"))
            pss += _pss_bytes(pid) if with_pss else 0
            self.peak_single_rss = max(self.peak_single_rss, _kib(status.get("VmHWM")))
        self.peak_rss_sum = max(self.peak_rss_sum, rss)
        self.peak_pss_sum = max(self.peak_pss_sum, pss)
        self.peak_processes = max(self.peak_processes, len(pids))


@dataclass
class TreeSampler:
    """Samples a process tree into a :class:`TreeMemory`, each figure as often as its cost allows."""

    root: int
    memory: TreeMemory
    pids: list[int] = field(default_factory=list)
    scanned_at: float = float("-inf")
    pss_at: float = float("-inf")

    def sample(self) -> None:
        now = time.monotonic()
        if now - self.scanned_at >= TREE_SCAN_S:
            self.pids, self.scanned_at = process_tree(self.root), now
        with_pss = now - self.pss_at >= PSS_SAMPLE_S
        if with_pss:
            self.pss_at = now
        self.memory.sample(self.pids, with_pss)


@dataclass
class Measured:
    """A child process's output, wall time and peak memory."""

    seconds: float
    stdout: str
    memory: TreeMemory


def measure(command: Sequence[str], env: dict[str, str] | None = None) -> Measured:
    """Run ``command`` to the end, sampling its process tree's memory; raise if it fails."""
    memory = TreeMemory()
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as child:
        done = threading.Event()

        tree = TreeSampler(child.pid, memory)

        def sampler() -> None:
            while not done.is_set():
                tree.sample()
                done.wait(SAMPLE_S)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        stdout, stderr = child.communicate()
        done.set()
        thread.join()
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({child.returncode}):\n{stderr[-3000:]}")
    return Measured(seconds, stdout, memory)


# --- the export -------------------------------------------------------------------------------------------


@dataclass
class ExportShape:
    classifications: int = 0
    subjects: int = 0
    workflow_id: int | None = None
    other_workflow_rows: int = 0


def export_rows(path: Path) -> Iterator[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with path.open(newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)


def shape_of(path: Path, workflow_id: int | None) -> ExportShape:
    """Classifications and subjects of one workflow (the first in the file unless given)."""
    shape = ExportShape(workflow_id=workflow_id)
    subjects: set[str] = set()
    for row in export_rows(path):
        if shape.workflow_id is None:
            shape.workflow_id = int(row["workflow_id"])
        if int(row["workflow_id"]) != shape.workflow_id:
            shape.other_workflow_rows += 1
            continue
        shape.classifications += 1
        subjects.add(row["subject_ids"])
    shape.subjects = len(subjects)
    return shape


def first_subjects(source: Path, target: Path, n_subjects: int, workflow_id: int) -> ExportShape:
    """The rows of the workflow's first ``n_subjects`` subjects, as an export of their own."""
    shape = ExportShape(workflow_id=workflow_id)
    chosen: set[str] = set()
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer: csv.DictWriter[str] | None = None
        for row in export_rows(source):
            if writer is None:
                writer = csv.DictWriter(handle, fieldnames=list(row))
                writer.writeheader()
            if int(row["workflow_id"]) != workflow_id:
                continue
            if row["subject_ids"] not in chosen and len(chosen) >= n_subjects:
                continue
            chosen.add(row["subject_ids"])
            writer.writerow(row)
            shape.classifications += 1
    shape.subjects = len(chosen)
    return shape


def replicate(source: Path, target: Path, copies: int, as_volunteers: bool) -> None:
    """The export's rows ``copies`` times over, so a small real export can stand in for a large one with
    the same marks, image sizes and mix of tools: each copy shows new subjects (more subjects), or, with
    ``as_volunteers``, the same subjects drawn by new volunteers (more classifications per subject)."""
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer: csv.DictWriter[str] | None = None
        for copy in range(copies):
            for row in export_rows(source):
                if writer is None:
                    writer = csv.DictWriter(handle, fieldnames=list(row))
                    writer.writeheader()
                if copy:
                    row = new_volunteers(row, copy) if as_volunteers else new_subjects(row, copy)
                writer.writerow(row)


def new_subjects(row: dict[str, str], copy: int) -> dict[str, str]:
    subject_data = json.loads(row["subject_data"])
    return {
        **row,
        "classification_id": str(int(row["classification_id"]) + copy * ID_STRIDE),
        "subject_ids": ";".join(str(int(s) + copy * ID_STRIDE) for s in row["subject_ids"].split(";")),
        "subject_data": json.dumps({str(int(k) + copy * ID_STRIDE): v for k, v in subject_data.items()}),
    }


def new_volunteers(row: dict[str, str], copy: int) -> dict[str, str]:
    """The same classification by someone else: new user, IP token and browser session."""
    metadata = json.loads(row["metadata"])
    metadata["session"] = f"{metadata.get('session', '')}-copy{copy}"
    return {
        **row,
        "classification_id": str(int(row["classification_id"]) + copy * ID_STRIDE),
        "user_name": f"{row['user_name']}-copy{copy}",
        "user_id": str(int(row["user_id"]) + copy * ID_STRIDE) if row["user_id"] else "",
        "user_ip": f"{row['user_ip']}-copy{copy}",
        "metadata": json.dumps(metadata),
    }


# --- ours -------------------------------------------------------------------------------------------------


@dataclass
class OurRun:
    seconds: float
    phases: dict[str, float]
    memory: TreeMemory
    masks: int


def run_ours(export: Path, out_dir: Path, method: str, workflow_id: int, workers: int | None) -> OurRun:
    command = [
        str(PROJECT_BIN / "etchacell"), "aggregate", str(export), "--out", str(out_dir),
        "--method", method, "--join-rule", "greedy", "--workflow-id", str(workflow_id),
    ]  # fmt: skip
    if workers is not None:
        command += ["--workers", str(workers)]
    measured = measure(command, env={**os.environ, "COLUMNS": "400"})
    return OurRun(measured.seconds, phase_seconds(measured.stdout), measured.memory, count_masks(out_dir))


def phase_seconds(report: str) -> dict[str, float]:
    """``read 0.1 s, vote 0.8 s, reweight 0.0 s`` from the command's closing line."""
    flat = " ".join(report.split())
    return {name: float(value) for name, value in re.findall(r"\b(read|vote|reweight) ([0-9.]+) s\b", flat)}


def count_masks(out_dir: Path) -> int:
    return sum(1 for _ in (out_dir / "masks").glob("*.png"))


# --- theirs -----------------------------------------------------------------------------------------------


def ensure_pa_venv() -> None:
    """Make ``bench/.venv-pa`` with panoptes-aggregation on first use."""
    if PA_PYTHON.exists() and _pa_importable():
        return
    print(f"creating {PA_VENV} with {PA_REQUIREMENT} (first run only) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(PA_VENV)], check=True)
    subprocess.run([str(PA_PYTHON), "-m", "pip", "install", "--quiet", PA_REQUIREMENT], check=True)


def _pa_importable() -> bool:
    probe = subprocess.run([str(PA_PYTHON), "-c", "import panoptes_aggregation"], capture_output=True)
    return probe.returncode == 0


@dataclass
class PhaseRun:
    seconds: float  # the child's wall time
    import_s: float
    work_s: float
    memory: TreeMemory


@dataclass
class TheirRun:
    extract: PhaseRun
    reduce: PhaseRun
    subjects_reduced: int
    shape: ExportShape  # what it actually ran on
    scale: float = 1.0  # full classifications / classifications run

    def seconds(self) -> float:
        """Wall time, with the work (not the start-up) scaled to the full export."""
        return sum(p.seconds + (self.scale - 1.0) * p.work_s for p in (self.extract, self.reduce))

    def peak_rss_sum(self) -> int:
        return max(self.extract.memory.peak_rss_sum, self.reduce.memory.peak_rss_sum)


def run_phase(phase: str, source: Path, config: Path, out_dir: Path, cpus: int) -> PhaseRun:
    command = [str(PA_PYTHON), "-c", PA_PHASE, phase, str(source), str(config), str(out_dir), str(cpus)]
    measured = measure(command)
    times = json.loads(measured.stdout.strip().splitlines()[-1])
    return PhaseRun(measured.seconds, float(times["import_s"]), float(times["work_s"]), measured.memory)


def run_theirs(export: Path, work: Path, shape: ExportShape, cpus: int) -> TheirRun:
    extractor = work / "extractor.yaml"
    extractor.write_text(EXTRACTOR_CONFIG.format(workflow_id=shape.workflow_id), encoding="utf-8")
    reducer = work / "reducer.yaml"
    reducer.write_text(REDUCER_CONFIG, encoding="utf-8")
    extract = run_phase("extract", export, extractor, work, cpus)
    reduce = run_phase("reduce", work / "polygon_extractor_bench.csv", reducer, work, cpus)
    reduced = sum(1 for _ in export_rows(work / "polygon_reducer_bench.csv"))
    return TheirRun(extract, reduce, reduced, shape)


# --- the report -------------------------------------------------------------------------------------------


@dataclass
class Result:
    export: str
    method: str
    classifications: int
    subjects: int
    ours_seconds: float
    ours_phases: dict[str, float]
    ours_peak_rss_sum: int
    ours_peak_pss_sum: int
    ours_peak_single_rss: int
    ours_processes: int
    ours_masks: int
    theirs: dict[str, Any] | None = None
    speedup: float | None = None
    work_speedup: float | None = None  # start-up (imports, worker processes) left out on both sides
    notes: list[str] = field(default_factory=list)


def gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.2f} GiB" if n_bytes >= GIB / 4 else f"{n_bytes / 2**20:.0f} MiB"


def per_second(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s" if seconds > 0 else "-"


def table_row(label: str, seconds: float | str = "", rate: str = "", memory: str = "") -> str:
    shown = f"{seconds:.1f}" if isinstance(seconds, float) else seconds
    return f"{label:<34}{shown:>9}{rate:>20}{memory:>28}".rstrip()


def print_result(result: Result, theirs: TheirRun | None) -> None:
    n = result.classifications
    print(f"export {result.export}: {n:,} classifications, {result.subjects:,} subjects; our method {result.method}")
    print()
    print(table_row("", "seconds", "classifications/s", "peak memory (tree RSS)"))
    ours_rate = per_second(n, result.ours_seconds)
    print(table_row("ours: etchacell aggregate", result.ours_seconds, ours_rate, gib(result.ours_peak_rss_sum)))
    for name, seconds in result.ours_phases.items():
        print(table_row(f"  {name} (from its report)", seconds))
    if theirs is not None:
        for name, phase in (("extract", theirs.extract), ("reduce", theirs.reduce)):
            scaled = phase.seconds + (theirs.scale - 1.0) * phase.work_s
            print(table_row(f"theirs: {name}", scaled, "", gib(phase.memory.peak_rss_sum)))
            print(table_row("  of which start-up (imports)", phase.seconds - phase.work_s))
        label = "theirs: total" + (" (extrapolated)" if theirs.scale != 1.0 else "")
        print(table_row(label, theirs.seconds(), per_second(n, theirs.seconds()), gib(theirs.peak_rss_sum())))
    print()
    print(
        f"ours: peak PSS sum {gib(result.ours_peak_pss_sum)}, largest one process {gib(result.ours_peak_single_rss)}, "
        f"{result.ours_processes} processes; {result.ours_masks:,} masks written"
    )
    print(f"peak memory of ours {verdict(result.ours_peak_rss_sum <= TARGET_PEAK_BYTES)} {gib(TARGET_PEAK_BYTES)}")
    if result.speedup is not None:
        print(f"speed-up: {result.speedup:.1f}x ({verdict(result.speedup >= TARGET_SPEEDUP)} {TARGET_SPEEDUP:.0f}x)")
    if result.work_speedup is not None:
        print(f"speed-up without start-up on either side: {result.work_speedup:.1f}x")
    for note in result.notes:
        print(f"note: {note}")


def verdict(met: bool) -> str:
    return "meets the target of" if met else "MISSES the target of"


def theirs_summary(theirs: TheirRun) -> dict[str, Any]:
    return {
        "seconds": theirs.seconds(),
        "extrapolated": theirs.scale != 1.0,
        "scale": theirs.scale,
        "ran_on": asdict(theirs.shape),
        "subjects_reduced": theirs.subjects_reduced,
        "extract": asdict(theirs.extract),
        "reduce": asdict(theirs.reduce),
        "peak_rss_sum": theirs.peak_rss_sum(),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--export", type=Path, help="classification export (default: a synthetic one)")
    parser.add_argument(
        "--synthetic", type=int, default=2000, metavar="N", help="classifications of the default synthetic export"
    )
    parser.add_argument("--workflow-id", type=int, help="default: the first workflow in the export")
    parser.add_argument("--replicate", type=int, metavar="K", help="run on the export's rows K times over")
    parser.add_argument(
        "--replicate-as",
        choices=("subjects", "volunteers"),
        default="subjects",
        help="each copy is new subjects (default) or new volunteers on the same subjects",
    )
    parser.add_argument("--method", default="cria", choices=("cria", "cria-robust", "staple"))
    parser.add_argument("--workers", type=int, help="our worker processes (default: one per core)")
    parser.add_argument("--limit-theirs", type=int, metavar="N", help="run theirs on the first N subjects' rows")
    parser.add_argument("--skip-theirs", action="store_true", help="measure only ours")
    parser.add_argument("--theirs-cpus", type=int, default=1, help="panoptes-aggregation --cpu_count (its default 1)")
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return parser.parse_args(argv)


def default_export(folder: Path, classifications: int) -> Path:
    """A synthetic export of about 25 classifications per subject (as Etch a Cell retired them), when the
    simulation package is importable."""
    try:
        from etchacell_loop.simulation.export import ExportSpec, write_synthetic_export
    except ImportError:
        raise SystemExit("--export is required: no synthetic export generator is importable") from None
    spec = ExportSpec(n_subjects=max(1, classifications // 25), n_classifications=classifications)
    path = folder / "synthetic" / "export.csv"
    print(f"writing a synthetic export of {classifications:,} classifications ...", file=sys.stderr)
    write_synthetic_export(spec, path, np.random.default_rng(7), workers=os.cpu_count() or 1)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-aggregate-") as tmp:
        work = Path(tmp)
        export, label = prepare_export(args, work)
        shape = shape_of(export, args.workflow_id)
        if shape.workflow_id is None or shape.classifications == 0:
            raise SystemExit(f"{export}: no classifications")
        ours = run_ours(export, work / "ours", args.method, shape.workflow_id, args.workers)
        print(f"ours: {ours.seconds:.1f} s, peak {gib(ours.memory.peak_rss_sum)}", file=sys.stderr)
        result = our_result(label, args.method, shape, ours)
        theirs = None
        if not args.skip_theirs:
            theirs = measure_theirs(export, work, shape, shape.workflow_id, args)
            add_theirs(result, theirs, shape)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print_result(result, theirs)


def prepare_export(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    """The export to run on (written first when synthetic or replicated) and how to name it."""
    export = args.export or default_export(work, args.synthetic)
    label = str(args.export) if args.export else f"synthetic ({args.synthetic:,} classifications)"
    if args.replicate and args.replicate > 1:
        replicate(export, work / "replicated.csv", args.replicate, args.replicate_as == "volunteers")
        return work / "replicated.csv", f"{label} x{args.replicate} (copies as new {args.replicate_as})"
    return export, label


def our_result(label: str, method: str, shape: ExportShape, ours: OurRun) -> Result:
    return Result(
        export=label,
        method=method,
        classifications=shape.classifications,
        subjects=shape.subjects,
        ours_seconds=ours.seconds,
        ours_phases=ours.phases,
        ours_peak_rss_sum=ours.memory.peak_rss_sum,
        ours_peak_pss_sum=ours.memory.peak_pss_sum,
        ours_peak_single_rss=ours.memory.peak_single_rss,
        ours_processes=ours.memory.peak_processes,
        ours_masks=ours.masks,
    )


def measure_theirs(
    export: Path, work: Path, shape: ExportShape, workflow_id: int, args: argparse.Namespace
) -> TheirRun:
    """panoptes-aggregation on the export, or on its first subjects' rows, scaled to the whole."""
    ensure_pa_venv()
    (work / "theirs").mkdir()
    ran_on, source = shape, export
    if args.limit_theirs is not None and args.limit_theirs < shape.subjects:
        source = work / "theirs" / "first-subjects.csv"
        ran_on = first_subjects(export, source, args.limit_theirs, workflow_id)
    theirs = run_theirs(source, work / "theirs", ran_on, args.theirs_cpus)
    theirs.scale = shape.classifications / ran_on.classifications
    return theirs


def add_theirs(result: Result, theirs: TheirRun, shape: ExportShape) -> None:
    result.theirs = theirs_summary(theirs)
    result.speedup = theirs.seconds() / result.ours_seconds
    our_work = sum(result.ours_phases.values())
    if our_work > 0:
        result.work_speedup = theirs.scale * (theirs.extract.work_s + theirs.reduce.work_s) / our_work
    if theirs.scale != 1.0:
        result.notes.append(
            f"panoptes-aggregation ran on the first {theirs.shape.subjects:,} subjects' "
            f"{theirs.shape.classifications:,} classifications; its extract and reduce times were scaled by "
            f"{theirs.scale:.2f} to {shape.classifications:,} (linear in classifications; start-up not scaled)"
        )


if __name__ == "__main__":
    main()
