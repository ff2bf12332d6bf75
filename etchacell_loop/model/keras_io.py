"""A trained model as one file, and the prediction function every consumer uses.

The artefact is Keras' own ``.keras`` archive with the preset written into it as
``etchacell_preset.json``: one file to copy, hash and register, and a model can never be separated
from the patch size, voxel size and layout it was trained for. Keras reads the archive's own entries
and ignores ours.

:func:`load_predict_fn` gives ``predict_fn(batch) -> probabilities`` on (n, pz, py, px) float32
arrays of exactly the preset's patch, already normalised with
:func:`etchacell_loop.model.data.normalise_intensity`; the layout each architecture needs inside
is this module's business, not the caller's.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import keras
import numpy as np

from etchacell_loop.model.artifact import ARTIFACT_SUFFIX, PRESET_ENTRY, ArtifactError, read_preset
from etchacell_loop.model.data import FloatArray, PredictFn, from_model_layout, to_model_layout
from etchacell_loop.model.presets import ModelPreset

__all__ = ["ARTIFACT_SUFFIX", "PRESET_ENTRY", "ArtifactError", "load_model", "load_predict_fn", "read_preset"]


def save_model(model: keras.Model, preset: ModelPreset, artifact_path: Path) -> Path:
    """Write ``model`` and ``preset`` to ``artifact_path`` (a ``.keras`` file), atomically: the
    archive is completed under a temporary name and renamed, so a reader never sees half a model."""
    if artifact_path.suffix != ARTIFACT_SUFFIX:
        raise ArtifactError(f"{artifact_path}: a model artefact's name must end in {ARTIFACT_SUFFIX}")
    artifact_path.parent.mkdir(parents=True, exist_ok=True)
    partial = artifact_path.with_name(f".{artifact_path.stem}.partial{ARTIFACT_SUFFIX}")
    model.save(partial)
    with zipfile.ZipFile(partial, "a") as archive:
        archive.writestr(PRESET_ENTRY, json.dumps(preset.as_dict(), indent=2, sort_keys=True))
    partial.replace(artifact_path)
    return artifact_path


def load_model(artifact_path: Path) -> tuple[keras.Model, ModelPreset]:
    """The model and its preset. The model is loaded uncompiled: prediction needs no optimizer,
    and training always starts from :func:`etchacell_loop.model.unet.compile_unet`."""
    preset = read_preset(artifact_path)
    try:
        model = keras.saving.load_model(artifact_path, compile=False)
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"{artifact_path}: the model cannot be loaded ({exc})") from None
    return model, preset


def predict_fn_for(model: keras.Model, preset: ModelPreset, batch_size: int | None = None) -> PredictFn:
    """``predict_fn`` over an in-memory model: (n, pz, py, px) float32 → probabilities of the same
    shape, in batches of ``batch_size`` (the preset's by default). Any other patch size is an error.

    Every call of the model gets exactly ``batch_size`` windows (a short last batch is padded with
    zeros, whose outputs are dropped): one input shape means one compiled program on JAX and one
    traced graph on TensorFlow, where a new shape would compile again."""
    step = batch_size or preset.batch_size

    def predict_fn(batch: FloatArray) -> FloatArray:
        values = np.asarray(batch, dtype=np.float32)
        if values.ndim != 4 or tuple(values.shape[1:]) != preset.patch_zyx:
            raise ValueError(
                f"predict_fn takes (n, {', '.join(map(str, preset.patch_zyx))}) arrays, not {values.shape}"
            )
        outputs = [_predict_padded(model, values[i : i + step], step, preset) for i in range(0, values.shape[0], step)]
        return np.concatenate(outputs) if outputs else np.zeros(values.shape, np.float32)

    return predict_fn


def _predict_padded(model: keras.Model, windows: FloatArray, step: int, preset: ModelPreset) -> FloatArray:
    n = windows.shape[0]
    if n < step:
        windows = np.concatenate([windows, np.zeros((step - n, *windows.shape[1:]), np.float32)])
    output = np.asarray(model.predict_on_batch(to_model_layout(windows, preset.architecture)))
    return from_model_layout(output, preset.architecture)[:n]


def load_predict_fn(artifact_path: Path, batch_size: int | None = None) -> tuple[PredictFn, ModelPreset]:
    """The artefact's prediction function and preset (see the module docstring)."""
    model, preset = load_model(artifact_path)
    return predict_fn_for(model, preset, batch_size), preset
