"""Block-wise TAP and export aggregation on a Dask cluster of this machine: how they scale.

Usage:
    .venv/bin/python bench/bench_distributed.py [--shape 40,2000,2000] [--chunk 20,128,128 [Z,Y,X ...]]
        [--workers 1 2] [--repeat 3] [--window-sample-voxels N] [--no-ceiling] [--export EXPORT.csv]
        [--method cria-robust] [--json]

1. **The CPU part of TAP**: a synthetic volume (``--shape`` source voxels at 10 x 10 x 50 nm) predicted
   by ``compute.tap_blocks`` on a local cluster of N single-threaded worker processes, for each N of
   ``--workers``, with a model that costs next to nothing (a steep sigmoid of each voxel, in numpy:
   the small preset's patch, :class:`CheapModel`). What is timed is what a GPU leaves to the CPU:
   resampling, reading halos, cutting windows, blending, voting, labelling, writing the OME-Zarr
   and its pyramid. Each N runs ``--repeat`` times, each run on a fresh cluster in a process of its
   own (as each ``etchacell predict`` runs), the counts interleaved (this machine's neighbours come
   and go) and their medians compared, with the range of the ratios round by round; start-up is
   reported apart and not in the time. Each round also runs two 1-worker runs at once (unless
   ``--no-ceiling``): two copies of the same work sharing only the machine, whose throughput against
   one alone is the most 2 workers can gain over 1 here. The single-process path
   (``model.predict.predict_volume``) is timed beside it, in a process of its own, and every output
   is checked equal to it byte for byte. Each chunk size of
   ``--chunk`` is timed on the same volume. ``--window-sample-voxels`` below the model grid's size
   (16.8 M voxels for ``--shape 64,2560,2560``) makes the run take the path of every real volume:
   the intensity window over evenly spaced slices.
2. **Export aggregation** (with ``--export``): ``etchacell aggregate`` with ``--scheduler none``
   (this machine's process pool, one per core) and ``--scheduler local`` (a Dask cluster of one
   worker per core), in child processes; wall time of each and whether their files are equal.

The paper-sized export is made by ``bench/make_synthetic_export.py --subjects 4241 --classifications
104612 --out /tmp/synth/export.csv`` (about 2 minutes, 1.2 GB).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from etchacell_loop.compute.cluster import open_client  # noqa: E402
from etchacell_loop.compute.tap_blocks import predict_volume_blocks  # noqa: E402
from etchacell_loop.imaging.synth_volume import SynthSpec, generate_volume  # noqa: E402
from etchacell_loop.imaging.volume import open_volume  # noqa: E402
from etchacell_loop.model import predict as predict_module  # noqa: E402
from etchacell_loop.model.predict import predict_volume  # noqa: E402
from etchacell_loop.model.presets import ModelPreset, get_preset  # noqa: E402
from etchacell_loop.model.tap import PredictFn, TapParams  # noqa: E402


@dataclass(frozen=True)
class CheapModel:
    """A model that costs next to nothing: each voxel through a steep sigmoid (dark = envelope)."""

    preset: ModelPreset

    def load(self) -> tuple[PredictFn, ModelPreset]:
        def predict_fn(batch: Any) -> Any:
            return (1.0 / (1.0 + np.exp(20.0 * (np.asarray(batch, np.float32) - 0.3)))).astype(np.float32)

        return predict_fn, self.preset


def written_elsewhere(source: Path, spec: SynthSpec) -> None:
    """The synthetic volume written by a child process, so that this process (whose thread runs the
    local cluster's scheduler) starts the runs as ``etchacell predict`` would, not with the
    generator's gigabytes of freed heap behind it (measured: 2 workers 10% slower after it)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        pool.submit(generate_volume, source, spec).result()


def single_process(source: Path, out: Path, chunk: tuple[int, int, int], sample_voxels: int) -> tuple[float, int]:
    """``model.predict.predict_volume`` timed in a process of its own (a child, as a separate
    ``etchacell predict --scheduler none`` would run: its arrays' heap stays out of the cluster's
    process); its seconds and chunk count."""
    sample_window(sample_voxels)
    preset = replace(get_preset("small"), name="cheap")
    predict_fn, _ = CheapModel(preset).load()
    params = TapParams(patch_zyx=preset.patch_zyx, min_component_voxels=1000, batch_size=8)
    with open_volume(source) as volume:
        started = time.perf_counter()
        report = predict_volume(volume, predict_fn, preset, out, params=params, chunk_zyx=chunk)
        return time.perf_counter() - started, report.n_chunks


def sample_window(voxels: int) -> None:
    """The size above which a region's intensity window is taken over evenly spaced slices
    (``model.predict.WINDOW_SAMPLE_VOXELS``, 64 M): set lower, a volume this machine can hold takes
    the path every real volume takes (the paper's region is 1.4 G model voxels)."""
    predict_module.WINDOW_SAMPLE_VOXELS = voxels


def _one_worker_into(
    source: Path, out: Path, chunk: tuple[int, int, int], sample_voxels: int, start: Any, results: Any
) -> None:
    try:
        results.put(cluster_run(source, out, chunk, 1, sample_voxels, start)[1])
    except Exception as exc:  # the parent is waiting on the queue: it must hear of a failure too
        start.abort()
        results.put(f"{type(exc).__name__}: {exc}")


def one_worker_pair(source: Path, work: Path, chunk: tuple[int, int, int], reference: dict[str, str]) -> float:
    """Two 1-worker runs at once, each on a cluster of its own in a process of its own, their clocks
    started together: the seconds of the slower. Two copies of the 1-worker run's work, sharing
    nothing but the machine, measure what this machine gives two processes on this work (its memory
    and caches, and its neighbours at the time): the ceiling of 2 workers over 1, ``2 x one alone /
    two at once``. Their outputs must equal ``reference`` too."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(2), context.Queue()
    outs = [work / f"pair-{k}.zarr" for k in range(2)]
    args = (chunk, predict_module.WINDOW_SAMPLE_VOXELS, start, results)
    processes = [context.Process(target=_one_worker_into, args=(source, out, *args)) for out in outs]
    for process in processes:
        process.start()
    answers = [results.get() for _ in processes]
    for process in processes:
        process.join()
    failed = [answer for answer in answers if isinstance(answer, str)]
    failed += [f"{out.name} differs from the single-process output" for out in outs if digests(out) != reference]
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)
    if failed:
        raise SystemExit(f"a 1-worker run of the pair failed: {failed[0]}")
    return max(float(answer) for answer in answers)


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def bench_tap(
    shape: tuple[int, int, int],
    chunks: list[tuple[int, int, int]],
    worker_counts: list[int],
    repeat: int,
    ceiling: bool = True,
) -> dict[str, Any]:
    """The CPU part of TAP for each chunk size of ``chunks`` on one synthetic volume."""
    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    source = work / "volume.zarr"
    started = time.perf_counter()
    written_elsewhere(source, SynthSpec(shape=shape, cells=4, seed=3))
    print(f"volume {shape} written in {time.perf_counter() - started:.1f} s", flush=True)
    figures: dict[str, Any] = {"shape": shape, "chunks": {}}
    references = {}
    for chunk in chunks:  # each single-process run first, in a process of its own, on a quiet machine
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            job = pool.submit(single_process, source, work / "single.zarr", chunk, predict_module.WINDOW_SAMPLE_VOXELS)
            seconds, n_chunks = job.result()
        print(f"chunk {chunk}: single process {seconds:.1f} s ({n_chunks} chunks)", flush=True)
        references[chunk] = digests(work / "single.zarr")
        shutil.rmtree(work / "single.zarr")
        figures["chunks"][",".join(map(str, chunk))] = {"single_process_s": seconds, "n_chunks": n_chunks}
    for chunk in chunks:
        print(f"-- chunk {chunk}", flush=True)
        runs = _tap_at(source, work, chunk, references[chunk], worker_counts, repeat, ceiling)
        figures["chunks"][",".join(map(str, chunk))].update(runs)
    shutil.rmtree(work, ignore_errors=True)
    return figures


def cluster_run(
    source: Path, out: Path, chunk: tuple[int, int, int], workers: int, sample_voxels: int, start: Any = None
) -> tuple[float, float]:
    """One run of ``compute.tap_blocks`` on a fresh local cluster of ``workers``, in a process of its
    own, as each ``etchacell predict`` command runs (the scheduler's process holds no heap of earlier
    runs or of the digests of their outputs): its start-up and its seconds. With ``start`` (a
    barrier), the clock starts when every party's cluster is up and has reached it."""
    sample_window(sample_voxels)
    preset = replace(get_preset("small"), name="cheap")
    params = TapParams(patch_zyx=preset.patch_zyx, min_component_voxels=1000, batch_size=8)
    with open_volume(source) as volume:
        started = time.perf_counter()
        with open_client("local", workers=workers) as client:
            assert client is not None
            client.wait_for_workers(workers)
            startup = time.perf_counter() - started
            if start is not None:
                start.wait()
            started = time.perf_counter()
            predict_volume_blocks(client, volume, CheapModel(preset), preset, out, params=params, chunk_zyx=chunk)
            return startup, time.perf_counter() - started


def _tap_at(
    source: Path,
    work: Path,
    chunk: tuple[int, int, int],
    reference: dict[str, str],
    worker_counts: list[int],
    repeat: int,
    ceiling: bool = True,
) -> dict[str, Any]:
    """Each worker count ``repeat`` times, interleaved, each run in a fresh process; every output
    compared with ``reference``. With ``ceiling``, each round also times two 1-worker runs at once
    (:func:`one_worker_pair`)."""
    figures: dict[str, Any] = {"runs": {}}
    ceiling = ceiling and 1 in worker_counts  # the pair is compared with the 1-worker runs
    for round_ in range(repeat):
        for n in worker_counts:
            out = work / f"workers-{n}-{round_}.zarr"
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                job = pool.submit(cluster_run, source, out, chunk, n, predict_module.WINDOW_SAMPLE_VOXELS)
                startup, seconds = job.result()
            same = digests(out) == reference
            shutil.rmtree(out)
            run = figures["runs"].setdefault(n, {"seconds": [], "startup_s": [], "identical": True})
            run["seconds"].append(seconds)
            run["startup_s"].append(startup)
            run["identical"] = run["identical"] and same
            print(f"{n} worker(s): {seconds:.2f} s (cluster start {startup:.1f} s), identical: {same}", flush=True)
        if ceiling:
            pair = one_worker_pair(source, work, chunk, reference)
            figures.setdefault("pair_s", []).append(pair)
            print(f"two 1-worker runs at once: {pair:.2f} s", flush=True)
    runs = figures["runs"]
    for n, run in runs.items():
        run["median_s"] = statistics.median(run["seconds"])
        print(f"{n} worker(s), median of {repeat}: {run['median_s']:.2f} s", flush=True)
    if 1 in runs and 2 in runs:
        figures["speedup_2_over_1"] = runs[1]["median_s"] / runs[2]["median_s"]
        paired = sorted(a / b for a, b in zip(runs[1]["seconds"], runs[2]["seconds"], strict=True))
        figures["speedup_by_round"] = paired
        print(
            f"2 workers over 1 (medians): {figures['speedup_2_over_1']:.2f}x; round by round "
            f"{paired[0]:.2f}-{paired[-1]:.2f}x, median {statistics.median(paired):.2f}x",
            flush=True,
        )
    if ceiling:
        pair = statistics.median(figures["pair_s"])
        figures["ceiling_2_over_1"] = 2 * runs[1]["median_s"] / pair
        print(
            f"two 1-worker runs at once (median {pair:.2f} s) against one alone: this machine gives two processes"
            f" {figures['ceiling_2_over_1']:.2f}x on this work (the ceiling of 2 workers over 1)",
            flush=True,
        )
    return figures


def bench_aggregate(export: Path, method: str) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    outs = {}
    for scheduler in ("none", "local"):
        out = Path(tempfile.mkdtemp(prefix=f"bench-aggregate-{scheduler}-"))
        outs[scheduler] = out
        command = [str(ROOT / ".venv" / "bin" / "etchacell"), "aggregate", str(export), "--out", str(out)]
        started = time.perf_counter()
        done = subprocess.run(
            [*command, "--method", method, "--scheduler", scheduler], capture_output=True, text=True, check=False
        )
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"aggregate --scheduler {scheduler} failed: {done.stderr.strip().splitlines()[-1:]}")
        figures[scheduler] = seconds
        print(f"aggregate --scheduler {scheduler}: {seconds:.1f} s", flush=True)
    figures["identical"] = digests(outs["none"]) == digests(outs["local"])
    print(f"outputs identical: {figures['identical']}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="40,2000,2000", help="source volume Z,Y,X (10 x 10 x 50 nm voxels)")
    parser.add_argument(
        "--chunk", nargs="+", default=["20,128,128"], help="prediction chunk(s) Z,Y,X in model voxels, each timed"
    )
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each worker count (medians compared)")
    parser.add_argument(
        "--window-sample-voxels",
        type=int,
        default=predict_module.WINDOW_SAMPLE_VOXELS,
        help="regions larger than this take their intensity window from evenly spaced slices (default 64 M)",
    )
    parser.add_argument(
        "--no-ceiling", action="store_true", help="skip the two 1-worker runs at once that measure the ceiling"
    )
    parser.add_argument("--export", type=Path, help="also aggregate this export with and without the cluster")
    parser.add_argument("--method", default="cria-robust")
    parser.add_argument("--skip-tap", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    chunks = [tuple(int(v) for v in text.split(",")) for text in args.chunk]
    figures: dict[str, Any] = {}
    if not args.skip_tap:
        sample_window(args.window_sample_voxels)
        figures["tap"] = bench_tap(shape, chunks, args.workers, args.repeat, not args.no_ceiling)  # type: ignore[arg-type]
    if args.export is not None:
        figures["aggregate"] = bench_aggregate(args.export, args.method)
    if args.json:
        print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
