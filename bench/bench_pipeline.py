"""The training input pipeline's batches per second, by number of worker processes, against the
model's own step rate.

Stacks the size of the paper's training data (``--stacks`` ROIs of 150 x 400 x 400 voxels at 50 nm,
an envelope ring through them) are drawn from with the preset's batch, patch and augmentation, as
training draws them (:mod:`etchacell_loop.model.pipeline`). For each ``--workers`` count the first
batches (the workers' start) are left out and the next ``--batches`` timed. With ``--model`` the
preset's U-Net is also timed alone on a fixed batch, the rate the pipeline has to keep up with.

    .venv/bin/python bench/bench_pipeline.py [--preset paper] [--workers 0 1 2] [--batches 60] [--model] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np

from etchacell_loop.model.data import AugmentParams, Stack
from etchacell_loop.model.pipeline import BatchPipeline
from etchacell_loop.model.presets import ModelPreset, get_preset

WARM_BATCHES = 4


def paper_like_stacks(count: int, shape: tuple[int, int, int] = (150, 400, 400), seed: int = 0) -> list[Stack]:
    """``count`` stacks of noise with a ring of envelope through most of their depth."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    stacks = []
    for k in range(count):
        ring = (np.abs(np.hypot(yy - shape[1] / 2, xx - shape[2] / 2) - shape[1] / 3 + k) < 1).astype(np.uint8)
        envelope = np.zeros(shape, np.uint8)
        envelope[shape[0] // 8 : -shape[0] // 8] = ring
        image = rng.random(shape, dtype=np.float32)
        stacks.append(Stack(f"bench/r{k}", "train", tuple(range(shape[0])), image, envelope, envelope.astype(bool)))
    return stacks


def pipeline_rate(stacks: Sequence[Stack], preset: ModelPreset, workers: int, batches: int) -> float:
    """Batches per second after the first :data:`WARM_BATCHES`."""
    with BatchPipeline(stacks, preset, AugmentParams(), seed=0, workers=workers) as pipeline:
        for _ in range(WARM_BATCHES):
            next(pipeline)
        started = time.perf_counter()
        for _ in range(batches):
            next(pipeline)
        return batches / (time.perf_counter() - started)


def model_rate(preset: ModelPreset, steps: int) -> tuple[str, float]:
    """The U-Net alone: training steps per second on one fixed batch (after one untimed step)."""
    import keras

    from etchacell_loop.model.pipeline import make_batch
    from etchacell_loop.model.unet import build_unet, compile_unet

    model = compile_unet(build_unet(preset), preset)
    x, y = make_batch(paper_like_stacks(1, (24, 300, 300)), preset, AugmentParams(), 0, 0)
    model.train_on_batch(x, y.astype(np.float32))
    started = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y.astype(np.float32))
    return str(keras.backend.backend()), steps / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--stacks", type=int, default=6, help="training ROIs of 150 x 400 x 400 voxels")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--model", action="store_true", help="also time the U-Net alone")
    parser.add_argument("--model-steps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    preset = get_preset(args.preset)
    stacks = paper_like_stacks(args.stacks)
    rows = {workers: pipeline_rate(stacks, preset, workers, args.batches) for workers in args.workers}
    result: dict[str, object] = {
        "preset": preset.name,
        "batch": preset.batch_size,
        "patch_zyx": list(preset.patch_zyx),
        "batches_per_s": {str(k): round(v, 2) for k, v in rows.items()},
    }
    if args.model:
        backend, rate = model_rate(preset, args.model_steps)
        result["model_alone_steps_per_s"] = {backend: round(rate, 2)}
    if args.json:
        print(json.dumps(result))
        return
    base = rows.get(1) or next(iter(rows.values()))
    print(f"preset {preset.name}: batches of {preset.batch_size} patches {preset.patch_zyx}")
    for workers, rate in rows.items():
        where = "in the training process" if workers == 0 else f"{workers} worker process(es)"
        print(f"  {where:<26} {rate:7.2f} batches/s  ({rate / base:4.2f}x one worker)")
    for backend, rate in dict(result.get("model_alone_steps_per_s", {})).items():  # type: ignore[call-overload]
        print(f"  the U-Net alone ({backend})   {rate:7.2f} steps/s")


if __name__ == "__main__":
    main()
