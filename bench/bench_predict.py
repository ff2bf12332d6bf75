"""Tri-axis prediction throughput: the CPU's machinery per window, the model's, and the paper's volume.

Writes a random uint8 OME-Zarr (``--source-factor`` times finer in y and x than the model's 50 nm,
at 50 nm in z), then predicts it exactly as ``etchacell predict`` does — resampling to the model's
voxel, chunked TAP with halos, component removal across chunks, OME-Zarr output — twice:

* with a **no-op model** (it returns its input): everything the CPU does around the model, per
  window predicted (resampling, zarr I/O, cutting and stacking windows, blending, voting,
  labelling, writing), and per phase (``resampling``: the window and the normalised scratch;
  ``predicting``: TAP and each chunk's votes, image and labels; ``post-processing``: the pieces
  joined across chunks and the envelope written);
* with the preset's **U-Net** (untrained: speed does not depend on the weights): the seconds spent
  inside the model per window, and the rest of the run ("exposed" CPU time: what the model waits
  for; the TAP pipeline overlaps cutting, reading and blending with the model, so this is less than
  the no-op run's machinery when there is an accelerator to overlap with).

The projection scales the U-Net run to the paper's 8192 x 8192 x 518 volume at 50 nm isotropic
(518 x 1638 x 1638 model voxels) by voxels; it assumes the same chunk overhead (windows near chunk
borders are predicted once per chunk they touch), so use chunks as large as the machine allows
(``--chunk``). ``--batch-size`` is TAP's windows per model call (default: automatic, 8 on a CPU, 32
on an accelerator). Backend-agnostic: run it with ``KERAS_BACKEND=jax`` or ``torch`` on a GPU
machine unchanged; ``--no-unet`` measures the machinery alone (a CPU machine, in seconds).

    .venv/bin/python bench/bench_predict.py [--preset small] [--grid 16,128,128] [--chunk 16,128,128]
        [--no-tap] [--batch-size N] [--source-factor 5] [--no-unet] [--json]
    # the machinery at the paper's patch on a (64, 512, 512) grid, in (64, 256, 256) chunks:
    .venv/bin/python bench/bench_predict.py --preset paper --grid 64,512,512 --chunk 64,256,256 --no-unet
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PAPER_GRID = (518, 1638, 1638)  # 8192 x 8192 x 518 at 10 x 10 x 50 nm, at 50 nm isotropic
MODEL_VOXEL_NM = 50.0
PHASES = ("resampling", "predicting", "post-processing")


@dataclass
class Counted:
    """A ``predict_fn`` that counts the windows it is given and the seconds spent inside it."""

    fn: Callable[[Any], Any]
    windows: int = 0
    seconds: float = 0.0

    def __call__(self, batch: Any) -> Any:
        started = time.perf_counter()
        output = self.fn(batch)
        self.seconds += time.perf_counter() - started
        self.windows += int(batch.shape[0])
        return output


@dataclass
class PhaseClock:
    """The progress callback: when each phase last reported, to split a run into phases."""

    started: float = field(default_factory=time.perf_counter)
    last: dict[str, float] = field(default_factory=dict)

    def __call__(self, phase: str, done: int, total: int) -> None:
        self.last[phase] = time.perf_counter()

    def seconds(self, ended: float) -> dict[str, float]:
        marks = [self.started, *(self.last.get(phase, self.started) for phase in PHASES[:-1]), ended]
        return {phase: round(marks[i + 1] - marks[i], 3) for i, phase in enumerate(PHASES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="model preset (small, paper, small-3d, paper-3d)")
    parser.add_argument("--grid", default="16,128,128", help="model-grid voxels Z,Y,X predicted")
    parser.add_argument("--chunk", default=None, help="chunk Z,Y,X in model voxels [default: the whole grid]")
    parser.add_argument("--no-tap", action="store_true", help="predict along z only")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per model call [default: automatic]")
    parser.add_argument("--source-factor", type=int, default=5, help="source voxels per model voxel in y and x")
    parser.add_argument("--no-unet", action="store_true", help="measure the machinery (no-op model) only")
    parser.add_argument("--unet-only", action="store_true", help="skip the no-op model's run (a large grid)")
    parser.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16"], help="the U-Net's")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()
    import keras

    from etchacell_loop.model.backend import precision_policy
    from etchacell_loop.model.keras_io import predict_fn_for
    from etchacell_loop.model.presets import get_preset
    from etchacell_loop.model.tap import TRI_AXES, TapParams
    from etchacell_loop.model.unet import build_unet

    grid = _triple(args.grid, "--grid")
    chunk = _triple(args.chunk, "--chunk") if args.chunk else grid
    if args.source_factor < 1:
        sys.exit("--source-factor must be at least 1")
    preset = get_preset(args.preset)
    batch_size = args.batch_size or _automatic_batch_size()
    params = TapParams(
        patch_zyx=preset.patch_zyx, axes=(0,) if args.no_tap else TRI_AXES, min_component_voxels=1000,
        batch_size=batch_size,
    )  # fmt: skip
    results: dict[str, Any] = {
        "backend": keras.backend.backend(), "preset": preset.name, "patch_zyx": list(preset.patch_zyx),
        "grid_zyx": list(grid), "chunk_zyx": list(chunk), "axes": len(params.axes), "batch_size": batch_size,
        "source_factor_yx": args.source_factor, "cpus": os.cpu_count(),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        source = _write_source(Path(folder) / "source.zarr", grid, args.source_factor)
        models: list[tuple[str, Callable[[Any], Any]]] = [] if args.unet_only else [("machinery", _noop)]
        if not args.no_unet:
            with precision_policy(args.precision):
                unet = build_unet(preset)
            unet_fn = predict_fn_for(unet, preset, batch_size=batch_size)
            unet_fn(np.zeros((batch_size, *preset.patch_zyx), np.float32))  # build the graph outside the timing
            models.append(("unet", unet_fn))
        for label, fn in models:
            results.update(_run(label, fn, source, Path(folder) / f"{label}.zarr", preset, params, chunk, grid))
    if not args.no_unet:
        paper_seconds = float(np.prod(PAPER_GRID)) / results["unet_voxels_per_s"]
        results["paper_volume_minutes"] = round(paper_seconds / 60, 1)
    if args.json:
        print(json.dumps(results))
        return
    _print(results, args.grid)


def _run(
    label: str,
    fn: Callable[[Any], Any],
    source: Path,
    out: Path,
    preset: Any,
    params: Any,
    chunk: tuple[int, int, int],
    grid: tuple[int, int, int],
) -> dict[str, Any]:
    """One prediction of the whole source with ``fn``: its seconds, windows, model time, phases."""
    from etchacell_loop.imaging.volume import open_volume
    from etchacell_loop.model.predict import predict_volume

    counted = Counted(fn)
    with open_volume(source) as volume:
        clock = PhaseClock()
        predict_volume(volume, counted, preset, out, params=params, chunk_zyx=chunk, overwrite=True, progress=clock)
        ended = time.perf_counter()
    seconds = ended - clock.started
    windows = max(counted.windows, 1)
    figures: dict[str, Any] = {
        f"{label}_seconds": round(seconds, 3),
        f"{label}_windows": counted.windows,
        f"{label}_voxels_per_s": round(float(np.prod(grid)) / seconds),
        f"{label}_phases_s": clock.seconds(ended),
    }
    if label == "machinery":
        figures["machinery_s_per_window"] = round(seconds / windows, 5)
    else:
        figures[f"{label}_model_s_per_window"] = round(counted.seconds / windows, 5)
        figures[f"{label}_exposed_cpu_s_per_window"] = round((seconds - counted.seconds) / windows, 5)
    return figures


def _print(results: dict[str, Any], grid_text: str) -> None:
    print(
        f"{results['preset']} ({results['backend']}, {results['axes']} axis/axes, batches of {results['batch_size']}),"
        f" grid {grid_text}, chunk {tuple(results['chunk_zyx'])}, source {results['source_factor_yx']}x finer in y, x:"
    )
    phases = ", ".join(f"{phase} {s:.1f} s" for phase, s in results["machinery_phases_s"].items())
    print(
        f"  machinery (no-op model)  {results['machinery_s_per_window']:.4f} s/window CPU"
        f" ({results['machinery_seconds']:.1f} s, {results['machinery_windows']} windows: {phases})"
    )
    if "unet_seconds" not in results:
        return
    print(
        f"  U-Net TAP                {results['unet_model_s_per_window']:.4f} s/window in the model,"
        f" {results['unet_exposed_cpu_s_per_window']:.4f} s/window besides"
        f" ({results['unet_seconds']:.1f} s, {results['unet_voxels_per_s']:,} voxels/s)"
    )
    print(f"  paper volume {PAPER_GRID} at this rate: {results['paper_volume_minutes']:.1f} min")


def _automatic_batch_size() -> int:
    """TAP's automatic batch, asked after Keras is imported, so that it sees the accelerator. (Only
    here: with ``--batch-size`` the bench also runs on code older than the automatic size.)"""
    from etchacell_loop.model.tap import resolve_batch_size

    return resolve_batch_size(None)


def _noop(batch: Any) -> Any:
    """The no-op model: the machinery's cost alone (its output is its input)."""
    return batch


def _write_source(path: Path, grid: tuple[int, int, int], factor: int) -> Path:
    """Random uint8 at 50 x (50 / factor) x (50 / factor) nm: ``factor`` times finer in y, x than the grid."""
    from etchacell_loop.imaging.omezarr import create_multiscale, create_volume

    shape = (grid[0], grid[1] * factor, grid[2] * factor)
    voxel = (MODEL_VOXEL_NM, MODEL_VOXEL_NM / factor, MODEL_VOXEL_NM / factor)
    root = create_volume(path, "bench")
    writer = create_multiscale(root, shape, voxel, np.uint8, name="bench", method="mean", chunks=(8, 512, 512))
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
