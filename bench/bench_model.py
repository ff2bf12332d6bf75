"""U-Net speed: training steps per second and predicted voxels per second, per preset.

For each preset: builds and compiles the U-Net, times ``--steps`` training steps on random
patches of the preset's size (after one untimed step that builds the graph), then predicts a
random volume by plain sliding window through ``predict_fn`` (edge-to-edge tiles, no overlap
beyond the last tile) and reports voxels per second. Backend-agnostic: run it with
``KERAS_BACKEND=jax`` or ``torch`` on a GPU machine unchanged.

    .venv/bin/python bench/bench_model.py [--preset small --preset paper] [--steps 5] [--volume 24,512,512] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="preset name (repeatable; default: small and paper)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per preset")
    parser.add_argument("--volume", default="24,512,512", help="Z,Y,X voxels predicted per preset")
    parser.add_argument("--json", action="store_true", help="print one JSON object per preset instead of a table")
    args = parser.parse_args()
    import keras

    from etchacell_loop.model.data import to_model_layout
    from etchacell_loop.model.keras_io import predict_fn_for
    from etchacell_loop.model.presets import PresetError, get_preset
    from etchacell_loop.model.tap import TapParams, tri_axis_probabilities
    from etchacell_loop.model.unet import build_unet, compile_unet

    try:
        presets = [get_preset(name) for name in (args.preset or ["small", "paper"])]
        shape = tuple(int(v) for v in args.volume.split(","))
    except (PresetError, ValueError) as exc:
        sys.exit(str(exc))
    if len(shape) != 3 or args.steps < 1:
        sys.exit("--volume must be Z,Y,X and --steps at least 1")
    rows = []
    rng = np.random.default_rng(0)
    for preset in presets:
        model = compile_unet(build_unet(preset), preset)
        x = to_model_layout(rng.random((preset.batch_size, *preset.patch_zyx), dtype=np.float32), preset.architecture)
        y = to_model_layout(
            (rng.random((preset.batch_size, *preset.patch_zyx)) > 0.95).astype(np.float32), preset.architecture
        )
        model.train_on_batch(x, y)
        started = time.perf_counter()
        for _ in range(args.steps):
            model.train_on_batch(x, y)
        train_s = time.perf_counter() - started
        volume = rng.random(shape, dtype=np.float32)
        predict_fn = predict_fn_for(model, preset)
        predict_fn(volume[np.newaxis, : preset.patch_zyx[0], : preset.patch_zyx[1], : preset.patch_zyx[2]].copy())
        started = time.perf_counter()
        tri_axis_probabilities(volume, predict_fn, TapParams(preset.patch_zyx, axes=(0,), batch_size=preset.batch_size))
        predict_s = time.perf_counter() - started
        rows.append(
            {
                "preset": preset.name,
                "backend": keras.backend.backend(),
                "parameters": int(model.count_params()),
                "batch": preset.batch_size,
                "patch_zyx": list(preset.patch_zyx),
                "train_steps_per_s": args.steps / train_s,
                "train_patches_per_s": args.steps * preset.batch_size / train_s,
                "volume_zyx": list(shape),
                "predict_voxels_per_s": float(np.prod(shape)) / predict_s,
            }
        )
        if args.json:
            print(json.dumps(rows[-1]))
    if not args.json:
        header = ("preset", "backend", "params", "batch", "steps/s", "patches/s", "Mvoxel/s")
        print("{:<10} {:<10} {:>10} {:>5} {:>8} {:>9} {:>9}".format(*header))
        for row in rows:
            print(
                f"{row['preset']:<10} {row['backend']:<10} {row['parameters']:>10,} {row['batch']:>5} "
                f"{row['train_steps_per_s']:>8.2f} {row['train_patches_per_s']:>9.1f} "
                f"{row['predict_voxels_per_s'] / 1e6:>9.3f}"
            )


if __name__ == "__main__":
    main()
