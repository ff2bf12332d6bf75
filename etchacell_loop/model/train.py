"""Training a U-Net on consensus: the one entry point the worker calls.

:func:`train_model` reads the labelled slices into stacks at the model's voxel size
(:mod:`.data`), trains the preset's U-Net on random augmented patches of the train split with the
smoothed Dice loss and Adam (:mod:`.unet`), measures the validation loss on fixed tiles of the
validation split after every epoch, lowers the learning rate by ``plateau_factor`` after
``plateau_patience`` epochs without a better validation loss, and keeps the weights of the best
epoch. The model is written as one artefact (:mod:`.keras_io`), and the validation split is then
predicted whole and scored with the paper's metrics (:mod:`.metrics`). Batches are made ahead of the
model by worker processes (:mod:`.pipeline`), so the accelerator does not wait for them.

Deterministic for a seed as far as the backend allows: Keras' seeds and every batch's generator
both come from ``seed``; multithreaded CPU and GPU kernels may still differ in the last bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from etchacell_loop.model import metrics
from etchacell_loop.model.backend import Precision, precision_policy
from etchacell_loop.model.data import (
    AugmentParams,
    FloatArray,
    LabelledSlice,
    Stack,
    TrainingDataError,
    load_stacks,
    split_stacks,
    to_model_layout,
    validation_tiles,
    with_splits,
)
from etchacell_loop.model.keras_io import predict_fn_for, save_model
from etchacell_loop.model.pipeline import BatchPipeline, auto_workers
from etchacell_loop.model.presets import ModelPreset
from etchacell_loop.model.tap import TapParams, tri_axis_probabilities
from etchacell_loop.model.unet import build_unet, compile_unet

ARTIFACT_NAME = "model.keras"
ZOOM_RANGE = (0.9, 1.1)

EpochReport = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced. ``history`` holds every epoch's ``loss``, ``val_loss`` and
    ``learning_rate``; ``val_metrics`` the best model's figures on the validation split (``loss``,
    ``f_measure``, ``precision``, ``recall``, ``ahd_px``, ``ahd_nm``, the symmetric AHD and, when a
    slice has a closed nucleus, ``area_f_measure``). ``stopped``: ``should_stop`` ended it early."""

    artifact_path: Path
    preset: ModelPreset
    history: dict[str, list[float]]
    val_metrics: dict[str, float]
    best_epoch: int
    epochs_run: int
    stopped: bool


def train_model(
    preset: ModelPreset,
    slices: Sequence[LabelledSlice],
    out_dir: Path,
    *,
    seed: int = 0,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    on_epoch: EpochReport | None = None,
    should_stop: Callable[[], bool] | None = None,
    workers: int | None = None,
    precision: Precision = "float32",
) -> TrainResult:
    """Train ``preset`` on ``slices`` and write ``out_dir/model.keras``.

    ``epochs`` and ``steps_per_epoch`` override the preset's. ``on_epoch`` receives each epoch's
    figures (``epoch``, ``epochs``, ``loss``, ``val_loss``, ``best_val_loss``, ``learning_rate``):
    the worker heartbeats and reports progress with it. ``should_stop`` is asked after every epoch;
    when it says yes, training ends and the best weights so far are saved. Records without a split
    get one by ROI (:func:`etchacell_loop.model.data.with_splits`); training needs at least one
    train and one validation ROI, else :class:`~etchacell_loop.model.data.TrainingDataError`.
    ``workers`` processes make the batches ahead of the model (:mod:`.pipeline`; ``None``: every
    core but one, 0: in this process); the batches are the same for a seed whatever their number.
    ``precision``: ``float32`` or ``mixed_bfloat16`` (:mod:`.backend`); the artefact keeps it.
    """
    keras.utils.set_random_seed(seed)
    stacks = split_stacks(load_stacks(with_splits(slices, seed), preset))
    for split in ("train", "validation"):
        if not stacks[split]:
            raise TrainingDataError(
                f"no labelled slices in the {split} split: training needs both train and validation"
            )
    n_epochs = epochs if epochs is not None else preset.epochs
    n_steps = steps_per_epoch if steps_per_epoch is not None else preset.steps_per_epoch
    val_x, val_y = validation_tiles(stacks["validation"], preset.patch_zyx, preset.validation_patches, seed)
    with precision_policy(precision):
        model = compile_unet(build_unet(preset), preset)
    best = _BestWeights(model)
    report = _epoch_reporter(model, best, n_epochs, on_epoch, should_stop)
    params = AugmentParams(zoom_range=ZOOM_RANGE if preset.zoom_augmentation else None)
    n_workers = auto_workers() if workers is None else workers
    with BatchPipeline(stacks["train"], preset, params, seed=seed, workers=n_workers) as batches:
        fitted = model.fit(
            batches.generator(),
            steps_per_epoch=n_steps,
            epochs=n_epochs,
            validation_data=(to_model_layout(val_x, preset.architecture), to_model_layout(val_y, preset.architecture)),
            validation_batch_size=preset.batch_size,
            shuffle=False,  # batches are drawn at random already; fit would only warn that it cannot shuffle them
            callbacks=[
                keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss", factor=preset.plateau_factor, patience=preset.plateau_patience, verbose=0
                ),
                keras.callbacks.LambdaCallback(on_epoch_end=report),
            ],
            verbose=0,
        )
    best.restore()
    artifact = save_model(model, preset, out_dir / ARTIFACT_NAME)
    history = {key: [float(v) for v in values] for key, values in fitted.history.items()}
    val_metrics = {"loss": best.loss, **validation_metrics(predict_fn_for(model, preset), stacks["validation"], preset)}
    epochs_run = len(history.get("loss", []))
    return TrainResult(artifact, preset, history, val_metrics, best.epoch, epochs_run, stopped=epochs_run < n_epochs)


class _BestWeights:
    """The weights of the epoch with the lowest validation loss so far (kept in memory: a U-Net's
    weights are megabytes, a checkpoint file per improvement would be slower for nothing)."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model
        self.loss = math.inf
        self.epoch = 0
        self.weights: list[Any] | None = None

    def offer(self, epoch: int, val_loss: float) -> None:
        if val_loss < self.loss:
            self.loss, self.epoch, self.weights = val_loss, epoch, self.model.get_weights()

    def restore(self) -> None:
        if self.weights is not None:
            self.model.set_weights(self.weights)


def _epoch_reporter(
    model: keras.Model,
    best: _BestWeights,
    n_epochs: int,
    on_epoch: EpochReport | None,
    should_stop: Callable[[], bool] | None,
) -> Callable[[int, dict[str, Any] | None], None]:
    def report(epoch: int, logs: dict[str, Any] | None) -> None:
        logs = logs or {}
        val_loss = float(logs.get("val_loss", math.inf))
        best.offer(epoch + 1, val_loss)
        figures = {
            "epoch": float(epoch + 1),
            "epochs": float(n_epochs),
            "loss": float(logs.get("loss", math.nan)),
            "val_loss": val_loss,
            "best_val_loss": best.loss,
            "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
        }
        if on_epoch is not None:
            on_epoch(figures)
        if should_stop is not None and should_stop():
            model.stop_training = True

    return report


def validation_metrics(
    predict_fn: Callable[[FloatArray], FloatArray], stacks: Sequence[Stack], preset: ModelPreset
) -> dict[str, float]:
    """The paper's figures (:func:`etchacell_loop.model.metrics.evaluate_volumes`) of the model's
    thresholded prediction (probability ≥ 0.5) of every validation stack against its consensus band.

    Pooled over stacks the way each figure is defined: precision, recall and F-measure over all
    voxels; the AHDs weighted by each stack's true envelope voxels (the directed AHD is an average
    over true pixels) — the symmetric one by both sides' voxels; the area F-measure averaged over
    the stacks that have a central slice.
    """
    along_z = TapParams(preset.patch_zyx, axes=(0,), batch_size=preset.batch_size)
    predictions = [tri_axis_probabilities(stack.image, predict_fn, along_z)[0] >= 0.5 for stack in stacks]
    truths = [stack.envelope.astype(bool) for stack in stacks]
    pooled = metrics.overlap_scores(
        np.concatenate([p.ravel() for p in predictions])[np.newaxis, np.newaxis],
        np.concatenate([t.ravel() for t in truths])[np.newaxis, np.newaxis],
    )
    rows = [
        metrics.evaluate_volumes(p, t, pixel_size_nm=preset.voxel_size_nm)
        for p, t in zip(predictions, truths, strict=True)
    ]
    true_voxels = np.array([t.sum() for t in truths], dtype=np.float64)
    both_voxels = true_voxels + np.array([p.sum() for p in predictions], dtype=np.float64)
    figures = {
        "f_measure": pooled.f_measure,
        "precision": pooled.precision,
        "recall": pooled.recall,
        "ahd_px": _weighted([r.ahd_px for r in rows], true_voxels),
        "ahd_symmetric_px": _weighted([r.ahd_symmetric_px for r in rows], both_voxels),
    }
    figures["ahd_nm"] = figures["ahd_px"] * preset.voxel_size_nm
    figures["ahd_symmetric_nm"] = figures["ahd_symmetric_px"] * preset.voxel_size_nm
    areas = [r.area_f_measure for r in rows if r.area_f_measure is not None]
    if areas:
        figures["area_f_measure"] = float(np.mean(areas))
    return {key: float(value) for key, value in figures.items()}


def _weighted(values: Sequence[float], weights: NDArray[np.float64]) -> float:
    total = float(weights.sum())
    return float(np.dot(values, weights) / total) if total > 0 else float(np.mean(values)) if values else 0.0
