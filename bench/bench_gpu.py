"""The GPU worker at full speed: one command, run unchanged on a GPU machine, one table.

    python bench/bench_gpu.py --work DIR [--backends jax torch] [--deadline-s 540] [--out results.json]

Each measurement runs in its own process (Keras picks its backend at import), within a deadline for
the whole run, and every figure is written to ``--out`` as soon as it exists, so a run cut short
still says what it measured:

1. **The U-Net alone** (paper preset): training steps/s on one fixed batch, per backend and precision
   (float32, mixed bfloat16), and at a larger batch (learning rate scaled by the square root,
   :func:`etchacell_loop.model.presets.with_batch_size`) — patches/s say whether the chip was busy.
2. **End to end**: ``model.fit`` fed by the training input pipeline (:mod:`etchacell_loop.model.pipeline`)
   on stacks the size of the paper's training data, per backend at its best precision: steps/s
   against the model alone (goal ≥ 90%), and seconds per 100-step epoch against the paper's 100 s
   and the whole 100 x 100 schedule against the goal of 8 min.
3. **TAP speed**: ``bench/bench_predict.py`` predicts 0.13 and then, when the first run says it fits
   in the time left, 1.02 Gvoxel at 50 nm (three axes, the paper preset, untrained: speed does not
   depend on the weights) with the fastest configuration, projected to the paper's 8192 x 8192 x 518
   volume against its 48 min (goal ≤ 2 min).
4. **Table 1** (run before TAP, which gets what time is left): ``bench/bench_envelope.py``'s model
   stages on ``--work`` (a work folder whose crowd and consensus were made on a CPU; see that script)
   with the paper preset, as many of the paper's 100 x 100 steps as the time left allows, z only and
   each TAP rule, at the source resolution against consensus and ground truth. The work folder's
   volume does not travel: it is rebuilt from its recorded spec (and checked against its truth
   digest) while the GPU times the model alone.

``--stages`` picks some of ``model e2e tap table1``. Nothing here needs the daemon's libraries: the
GPU machine needs the deep-learning stack, numpy/scipy/scikit-image/pillow/tifffile and zarr.

Where the GPU machine has PyTorch and/or JAX with numpy, scipy and scikit-image but nothing else, carry
these wheels (``pip download --only-binary :all: --no-deps --python-version 3.12 -d .whl ...``) and
install them with ``pip install --no-index --no-deps --target /tmp/site .whl/*.whl`` before the run
(``PYTHONPATH=/tmp/site``): keras, namex, optree (the model); zarr, numcodecs, donfig, google-crc32c,
msgspec (OME-Zarr, the work folder's stacks); plus pillow, tifffile and typing-extensions where the
machine lacks them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from etchacell_loop.model.presets import get_preset

HERE = Path(__file__).resolve().parent
PAPER_EPOCH_S = 100.0  # the paper: 100 s per epoch of 100 steps on a V100
PAPER_TAP_MIN = 48.0  # the paper: TAP of the whole volume in 48 min
GOAL_SCHEDULE_MIN = 8.0
GOAL_TAP_MIN = 2.0
GOAL_E2E_SHARE = 0.9
TABLE1_OVERHEAD_S = 150.0
PRECISIONS = ("float32", "mixed_bfloat16")


# --- stages, each in its own process ---------------------------------------------------------------


def stage_model(backend: str, precision: str, batch: int, steps: int, preset: str = "paper") -> dict[str, Any]:
    """The paper U-Net alone: steps/s on one fixed batch after two untimed steps."""
    import numpy as np
    from bench_pipeline import paper_like_stacks

    from etchacell_loop.model.backend import precision_policy, running_backend_and_accelerator
    from etchacell_loop.model.pipeline import make_batch
    from etchacell_loop.model.presets import get_preset, with_batch_size
    from etchacell_loop.model.unet import build_unet, compile_unet

    _, accelerator = running_backend_and_accelerator()
    chosen = with_batch_size(get_preset(preset), batch)
    with precision_policy(precision):  # type: ignore[arg-type]
        model = compile_unet(build_unet(chosen), chosen)
    x, y = make_batch(paper_like_stacks(1, (24, 300, 300)), chosen, _augment(), 0, 0)
    for _ in range(2):
        model.train_on_batch(x, y)
    started = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss))  # wait for the device
    seconds = time.perf_counter() - started
    return {"steps_per_s": steps / seconds, "patches_per_s": steps * batch / seconds, "accelerator": accelerator}


def stage_e2e(
    backend: str, precision: str, batch: int, steps: int, workers: int | None, preset: str = "paper"
) -> dict[str, Any]:
    """``model.fit`` on the input pipeline: one short epoch to warm up, then ``steps`` timed."""
    import keras
    from bench_pipeline import paper_like_stacks

    from etchacell_loop.model.backend import precision_policy
    from etchacell_loop.model.pipeline import BatchPipeline, auto_workers
    from etchacell_loop.model.presets import get_preset, with_batch_size
    from etchacell_loop.model.unet import build_unet, compile_unet

    chosen = with_batch_size(get_preset(preset), batch)
    with precision_policy(precision):  # type: ignore[arg-type]
        model = compile_unet(build_unet(chosen), chosen)
    n_workers = auto_workers() if workers is None else workers
    times: list[float] = []
    timer = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: times.append(time.perf_counter()))
    with BatchPipeline(paper_like_stacks(6), chosen, _augment(), seed=0, workers=n_workers) as batches:
        warm = max(5, steps // 10)
        started = time.perf_counter()
        model.fit(batches.generator(), steps_per_epoch=warm, epochs=1, verbose=0, shuffle=False)
        times.append(time.perf_counter())
        model.fit(batches.generator(), steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    seconds = times[-1] - times[0]
    return {
        "steps_per_s": steps / seconds,
        "patches_per_s": steps * batch / seconds,
        "workers": n_workers,
        "warm_up_s": times[0] - started,
    }


def _augment() -> Any:
    from etchacell_loop.model.data import AugmentParams

    return AugmentParams()


STAGES: dict[str, Callable[..., dict[str, Any]]] = {"model": stage_model, "e2e": stage_e2e}


def run_stage(argv: Sequence[str]) -> None:
    """``bench_gpu.py stage NAME BACKEND JSON-ARGS``: one measurement, one JSON line on stdout."""
    name, backend, raw = argv
    os.environ["KERAS_BACKEND"] = backend
    sys.path.insert(0, str(HERE))
    result = STAGES[name](backend, **json.loads(raw))
    print("RESULT " + json.dumps(result), flush=True)


# --- the orchestra ---------------------------------------------------------------------------------


class Run:
    """The run's deadline and its results, written out after every figure."""

    def __init__(self, out: Path, deadline_s: float) -> None:
        self.out, self.started, self.deadline_s = out, time.monotonic(), deadline_s
        self.results: dict[str, Any] = {"host_cpus": os.cpu_count(), "rows": []}

    def left(self) -> float:
        return self.deadline_s - (time.monotonic() - self.started)

    def record(self, key: str, value: Any) -> None:
        self.results[key] = value
        self.save()

    def row(self, row: Mapping[str, Any]) -> None:
        self.results["rows"].append(dict(row))
        self.save()
        log(json.dumps(row))

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.results, indent=1))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def subprocess_stage(run: Run, name: str, backend: str, budget_s: float, **kwargs: Any) -> dict[str, Any] | None:
    """One stage in a fresh process; None (and the reason recorded) when it fails or runs out of time."""
    timeout = min(budget_s, run.left() - 5)
    if timeout < 10:
        run.row({"stage": name, "backend": backend, **kwargs, "skipped": "no time left"})
        return None
    command = [sys.executable, str(Path(__file__).resolve()), "stage", name, backend, json.dumps(kwargs)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        run.row({"stage": name, "backend": backend, **kwargs, "failed": f"over its {timeout:.0f} s"})
        return None
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        run.row({"stage": name, "backend": backend, **kwargs, "failed": " | ".join(tail)[-400:]})
        return None
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    run.row({"stage": name, "backend": backend, **kwargs, **{k: _round(v) for k, v in result.items()}})
    return result


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def measure_model(
    run: Run, backends: Sequence[str], steps: int, big_batch: int, preset: str
) -> dict[str, tuple[str, int, float]]:
    """Model alone per backend and precision; returns per backend its fastest (precision, batch, patches/s)."""
    best: dict[str, tuple[str, int, float]] = {}
    batch = get_preset(preset).batch_size
    for backend in backends:
        for precision in PRECISIONS:
            got = subprocess_stage(
                run, "model", backend, 150, precision=precision, batch=batch, steps=steps, preset=preset
            )
            if got and got["patches_per_s"] > best.get(backend, ("", 0, 0.0))[2]:
                best[backend] = (precision, batch, got["patches_per_s"])
        if backend in best and big_batch > batch:
            precision = best[backend][0]
            got = subprocess_stage(
                run, "model", backend, 150, precision=precision, batch=big_batch, steps=steps, preset=preset
            )
            if got and got["patches_per_s"] > 1.15 * best[backend][2]:  # worth a change of the learning rate
                best[backend] = (precision, big_batch, got["patches_per_s"])
    run.record(
        "best_model_alone", {b: {"precision": p, "batch": n, "patches_per_s": r} for b, (p, n, r) in best.items()}
    )
    return best


def measure_e2e(run: Run, best: Mapping[str, tuple[str, int, float]], steps: int, preset: str) -> dict[str, float]:
    """End to end per backend at its best configuration; steps/s by backend."""
    rates: dict[str, float] = {}
    for backend, (precision, batch, alone) in best.items():
        got = subprocess_stage(
            run, "e2e", backend, 240, precision=precision, batch=batch, steps=steps, workers=None, preset=preset
        )
        if got:
            rates[backend] = got["steps_per_s"]
            share = got["patches_per_s"] / alone
            schedule_min = 100 * 100 * 12 / got["patches_per_s"] / 60  # the paper's 120,000 patches
            run.row({
                "summary": "end to end", "backend": backend, "precision": precision, "batch": batch,
                "share_of_model_alone": round(share, 3), "goal_share": GOAL_E2E_SHARE,
                "s_per_paper_epoch": round(100 * 12 / got["patches_per_s"], 1), "paper_epoch_s": PAPER_EPOCH_S,
                "paper_schedule_min": round(schedule_min, 2), "goal_schedule_min": GOAL_SCHEDULE_MIN,
            })  # fmt: skip
    return rates


def measure_tap(
    run: Run, backend: str, precision: str, grids: Sequence[str], chunk: str, batch: int, preset: str
) -> None:
    """TAP of each of ``grids`` (model voxels at 50 nm, the paper preset), projected to the paper's
    volume; a larger grid is tried only when the smaller one's time says it fits in what is left."""
    last_s = 0.0
    last_voxels = 1.0
    for grid in grids:
        voxels = float(np_prod(grid))
        expected = last_s * voxels / last_voxels * 1.3
        if expected > run.left() - 10:
            run.row({"stage": "tap", "grid": grid, "skipped": f"needs about {expected:.0f} s, {run.left():.0f} s left"})
            return
        command = [
            sys.executable, str(HERE / "bench_predict.py"), "--preset", preset, "--grid", grid, "--chunk", chunk,
            "--batch-size", str(batch), "--source-factor", "1", "--precision", precision, "--unet-only", "--json",
        ]  # fmt: skip
        timeout = run.left() - 5
        env = {**os.environ, "KERAS_BACKEND": backend}
        started = time.monotonic()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            run.row({"stage": "tap", "backend": backend, "grid": grid, "failed": f"over its {timeout:.0f} s"})
            return
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            run.row({"stage": "tap", "backend": backend, "grid": grid, "failed": done.stderr.strip()[-400:]})
            return
        last_s, last_voxels = time.monotonic() - started, voxels
        result = json.loads(lines[-1])
        run.row({
            "stage": "tap", "backend": backend, "precision": precision, "gvoxels": round(voxels / 1e9, 3), **result,
            "paper_min": PAPER_TAP_MIN, "goal_min": GOAL_TAP_MIN,
        })  # fmt: skip


def start_volume(work: Path) -> subprocess.Popen[str]:
    """Rebuild the work folder's synthetic volume (it does not travel) while the GPU runs the model
    alone, which leaves the cores idle."""
    workers = max(1, (os.cpu_count() or 2) - 2)
    command = [
        sys.executable, str(HERE / "bench_envelope.py"), "--work", str(work), "--stages", "volume",
        "--workers", str(workers),
    ]  # fmt: skip
    log(f"volume: rebuilding in {work} with {workers} processes")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_volume(run: Run, process: subprocess.Popen[str]) -> None:
    started = time.monotonic()
    try:
        _, err = process.communicate(timeout=max(10.0, run.left() - 60))
    except subprocess.TimeoutExpired:
        process.kill()
        run.row({"stage": "volume", "failed": "not rebuilt in time"})
        return
    row = {"stage": "volume", "waited_s": round(time.monotonic() - started, 1), "returncode": process.returncode}
    if process.returncode != 0:
        row["failed"] = err.strip()[-400:]
    run.row(row)


def np_prod(grid: str) -> int:
    total = 1
    for value in grid.split(","):
        total *= int(value)
    return total


def measure_table1(
    run: Run, work: Path, backend: str, config: tuple[str, int, str], steps_per_s: float, reserve_s: float
) -> None:
    """The preset trained on ``work`` for as many of the paper's epochs (100 steps of 12 patches, fewer
    steps of a larger batch) as time allows, then Table 1; ``config`` is (precision, batch, preset).
    ``TABLE1_OVERHEAD_S`` is kept for reading the stacks, predicting and scoring."""
    precision, batch, preset = config
    steps = max(1, round(100 * 12 / batch))
    budget = run.left() - reserve_s - TABLE1_OVERHEAD_S
    epochs = min(100, int(budget * steps_per_s / steps * 0.9))
    if epochs < 2:
        run.row({"stage": "table1", "skipped": f"{budget:.0f} s left is too little to train"})
        return
    command = [
        sys.executable, str(HERE / "bench_envelope.py"), "--work", str(work), "--stages", "model", "--preset",
        preset, "--epochs", str(epochs), "--steps", str(steps), "--batch-size", str(batch), "--precision",
        precision, "--rule", "each", "--json",
    ]  # fmt: skip
    env = {**os.environ, "KERAS_BACKEND": backend}
    log(f"table1: {epochs} epochs of {steps} steps on {backend} ({precision}, batch {batch})")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=max(30.0, run.left() - 5), env=env)
    except subprocess.TimeoutExpired:
        run.row({"stage": "table1", "failed": "over its time"})
        return
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        run.row({"stage": "table1", "failed": done.stderr.strip()[-600:]})
        return
    result = json.loads(lines[-1])
    run.record("table1", result)
    for name, table in result.get("tables", {}).items():
        run.row({
            "table1": name, "f_measure": round(table["f_measure"], 3), "ahd_px": round(table["ahd_px"], 2),
            "recall": round(table["recall"], 3), "precision": round(table["precision"], 3),
        })  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["stage"]:
        run_stage(args_list[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="bench_envelope work folder for Table 1")
    parser.add_argument("--backends", nargs="+", default=["jax", "torch"])
    parser.add_argument("--stages", nargs="+", default=["model", "e2e", "tap", "table1"])
    parser.add_argument("--deadline-s", type=float, default=540.0, help="the whole run ends by then")
    parser.add_argument("--model-steps", type=int, default=30)
    parser.add_argument("--e2e-steps", type=int, default=300)
    parser.add_argument("--big-batch", type=int, default=48, help="a larger batch tried with the model alone")
    parser.add_argument(
        "--tap-grids", nargs="+", default=["200,800,800", "400,1600,1600"], help="model voxels predicted, in turn"
    )
    parser.add_argument("--tap-chunk", default="200,800,800")
    parser.add_argument("--tap-batch", type=int, default=32)
    parser.add_argument("--tap-reserve-s", type=float, default=120.0, help="kept for the TAP stage")
    parser.add_argument("--preset", default="paper", help="the U-Net measured (small: a quick try on a CPU)")
    parser.add_argument("--out", type=Path, default=Path("bench-gpu.json"))
    args = parser.parse_args(args_list)
    run = Run(args.out, args.deadline_s)
    best: dict[str, tuple[str, int, float]] = {}
    rates: dict[str, float] = {}
    volume = start_volume(args.work) if "table1" in args.stages and args.work is not None else None
    if "model" in args.stages:
        best = measure_model(run, args.backends, args.model_steps, args.big_batch, args.preset)
    if volume is not None:  # before the end-to-end figures: they need every core for the input pipeline
        finish_volume(run, volume)
    if "e2e" in args.stages:
        default = get_preset(args.preset).batch_size
        rates = measure_e2e(
            run, best or {b: ("float32", default, 1.0) for b in args.backends}, args.e2e_steps, args.preset
        )
    fastest = max(rates, key=lambda b: rates[b]) if rates else args.backends[0]
    precision, batch, _ = best.get(fastest, ("float32", 12, 0.0))
    if "table1" in args.stages and args.work is not None:
        reserve = args.tap_reserve_s if "tap" in args.stages else 0.0
        steps_per_s = rates.get(fastest, 20.0)
        measure_table1(run, args.work, fastest, (precision, batch, args.preset), steps_per_s, reserve)
    if "tap" in args.stages:
        measure_tap(run, fastest, precision, args.tap_grids, args.tap_chunk, args.tap_batch, args.preset)
    run.record("seconds", round(time.monotonic() - run.started, 1))
    print_table(run.results)


def print_table(results: Mapping[str, Any]) -> None:
    """Every row, one line each, as a plain table."""
    for row in results.get("rows", []):
        print("  ".join(f"{key}={value}" for key, value in row.items()))
    print(f"total {results.get('seconds')} s")


if __name__ == "__main__":
    main()
