"""Tri-axis prediction throughput: model voxels per second, and what that means for the paper's volume.

Writes a random uint8 OME-Zarr at 50 x 10 x 10 nm, then predicts it with the preset's U-Net (untrained:
speed does not depend on the weights) exactly as ``etchacell predict`` does — resampling to the
model's voxel, chunked TAP with halos, component removal across chunks, OME-Zarr output — and
prints voxels per second of the model grid, once with the U-Net and once with a free pointwise
``predict_fn`` (the cost of the machinery alone). The projection scales the U-Net rate to the
paper's 8192 x 8192 x 518 volume at 50 nm isotropic (518 x 1638 x 1638 model voxels); it assumes
the same chunk overhead, so use chunks as large as the machine allows (``--chunk``).
Backend-agnostic: run it with ``KERAS_BACKEND=jax`` or ``torch`` on a GPU machine unchanged.

    .venv/bin/python bench/bench_predict.py [--preset small] [--grid 16,128,128] [--chunk 16,128,128]
        [--no-tap] [--batch-size 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PAPER_GRID = (518, 1638, 1638)  # 8192 x 8192 x 518 at 10 x 10 x 50 nm, at 50 nm isotropic
SOURCE_VOXEL_NM = (50.0, 10.0, 10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="model preset (small, paper, small-3d, paper-3d)")
    parser.add_argument("--grid", default="16,128,128", help="model-grid voxels Z,Y,X predicted")
    parser.add_argument("--chunk", default=None, help="chunk Z,Y,X in model voxels [default: the whole grid]")
    parser.add_argument("--no-tap", action="store_true", help="predict along z only")
    parser.add_argument("--batch-size", type=int, default=16, help="patches per model call")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()
    import keras

    from etchacell_loop.imaging.volume import open_volume
    from etchacell_loop.model.keras_io import predict_fn_for
    from etchacell_loop.model.predict import predict_volume
    from etchacell_loop.model.presets import get_preset
    from etchacell_loop.model.tap import TRI_AXES, TapParams
    from etchacell_loop.model.unet import build_unet

    grid = _triple(args.grid, "--grid")
    chunk = _triple(args.chunk, "--chunk") if args.chunk else grid
    preset = get_preset(args.preset)
    params = TapParams(
        patch_zyx=preset.patch_zyx, axes=(0,) if args.no_tap else TRI_AXES, min_component_voxels=1000,
        batch_size=args.batch_size,
    )  # fmt: skip
    unet_fn = predict_fn_for(build_unet(preset), preset, batch_size=args.batch_size)
    results: dict[str, Any] = {
        "backend": keras.backend.backend(), "preset": preset.name, "patch_zyx": list(preset.patch_zyx),
        "grid_zyx": list(grid), "chunk_zyx": list(chunk), "axes": len(params.axes), "cpus": os.cpu_count(),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        source = _write_source(Path(folder) / "source.zarr", grid)
        unet_fn(np.zeros((1, *preset.patch_zyx), np.float32))  # build the graph outside the timing
        for label, fn in (("unet", unet_fn), ("pointwise", _pointwise)):
            with open_volume(source) as volume:
                started = time.perf_counter()
                predict_volume(
                    volume, fn, preset, Path(folder) / f"{label}.zarr", params=params, chunk_zyx=chunk, overwrite=True
                )
                seconds = time.perf_counter() - started
            results[f"{label}_seconds"] = round(seconds, 3)
            results[f"{label}_voxels_per_s"] = round(float(np.prod(grid)) / seconds)
    paper_hours = float(np.prod(PAPER_GRID)) / results["unet_voxels_per_s"] / 3600
    results["paper_volume_hours"] = round(paper_hours, 2)
    if args.json:
        print(json.dumps(results))
        return
    print(f"{preset.name} ({results['backend']}, {results['axes']} axis/axes), grid {args.grid}, chunk {chunk}:")
    print(f"  U-Net TAP   {results['unet_voxels_per_s']:>12,} voxels/s ({results['unet_seconds']:.1f} s)")
    print(f"  machinery   {results['pointwise_voxels_per_s']:>12,} voxels/s ({results['pointwise_seconds']:.1f} s)")
    print(f"  paper volume {PAPER_GRID} at this rate: {paper_hours:.1f} h")


def _pointwise(batch: Any) -> Any:
    return np.clip(batch, 0.0, 1.0)


def _write_source(path: Path, grid: tuple[int, int, int]) -> Path:
    """Random uint8 at 50 x 10 x 10 nm, five times finer in y, x than the model grid."""
    from etchacell_loop.imaging.omezarr import create_multiscale, create_volume

    shape = (grid[0], grid[1] * 5, grid[2] * 5)
    root = create_volume(path, "bench")
    writer = create_multiscale(
        root, shape, SOURCE_VOXEL_NM, np.uint8, name="bench", method="mean", chunks=(8, 512, 512)
    )
    rng = np.random.default_rng(0)
    for z in range(0, shape[0], 8):
        depth = min(8, shape[0] - z)
        writer.write_block(z, rng.integers(0, 256, (depth, shape[1], shape[2]), dtype=np.uint8))
    return path


def _triple(text: str, option: str) -> tuple[int, int, int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 1:
        sys.exit(f"{option}: {text!r} is not Z,Y,X")
    return values[0], values[1], values[2]


if __name__ == "__main__":
    main()
