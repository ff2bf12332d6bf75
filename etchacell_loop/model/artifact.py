"""A model artefact's name and stored preset, read without Keras.

Why apart from :mod:`~etchacell_loop.model.keras_io`: a process that only plans work for others (a
Dask client sending chunks to workers that load the model) needs the patch and voxel size of a
model, not the model, and should not wait for a deep-learning stack to import.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from etchacell_loop.model.presets import ModelPreset, PresetError, preset_from_dict

PRESET_ENTRY = "etchacell_preset.json"
ARTIFACT_SUFFIX = ".keras"


class ArtifactError(ValueError):
    """A model artefact that cannot be used; the message is one line naming the file."""


def read_preset(artifact_path: Path) -> ModelPreset:
    """The preset stored in an artefact, without loading the model (no Keras work)."""
    try:
        with zipfile.ZipFile(artifact_path) as archive:
            data = json.loads(archive.read(PRESET_ENTRY))
    except FileNotFoundError:
        raise ArtifactError(f"{artifact_path}: no such model artefact") from None
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError) as exc:
        raise ArtifactError(f"{artifact_path}: not a model artefact with a stored preset ({exc})") from None
    try:
        return preset_from_dict(data)
    except PresetError as exc:
        raise ArtifactError(f"{artifact_path}: {exc}") from None
