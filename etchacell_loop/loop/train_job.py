"""The worker's job for one training run: training set → ``train_model`` → registered model version.

Why here and not in the worker loop: the loop only knows "a job that heartbeats and returns a model
version id"; this module is the one place that knows what training needs. Keras arrives through
``model.train``, imported when the job runs, so the daemon (without the ``ml`` extra) can import the
worker's module tree for its re-queueing and the dashboard can show runs.

The run's ``config`` may override the preset's ``epochs``, ``steps_per_epoch`` and the ``seed``
(an operator's quick trial, a test's tiny run).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy.exc
from sqlmodel import Session

from etchacell_loop.config import Settings
from etchacell_loop.db.models import DataSplit, MetricReference, TrainingRun
from etchacell_loop.model import registry
from etchacell_loop.model.presets import get_preset
from etchacell_loop.model.training_set import TrainingSet, build_training_set

if TYPE_CHECKING:
    from etchacell_loop.loop.worker import Heartbeat

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
REGISTER_ATTEMPTS = 3
STAGING_DIR = "_training"


def train_job(session_factory: SessionFactory, settings: Settings, run: TrainingRun, heartbeat: Heartbeat) -> int:
    """Train the run's preset on the current consensus, register the result, promote it if better."""
    assert run.id is not None
    preset = get_preset(run.preset)
    with session_factory() as session:
        training_set = build_training_set(session, settings.data_dir)  # refused before Keras loads
    from etchacell_loop.model.train import train_model  # Keras: only on the worker

    log.info("training run %d: %s slices %s", run.id, preset.name, training_set.snapshot.counts)
    out_dir = staging_dir(settings.data_dir, run.id)
    result = train_model(
        preset,
        training_set.slices,
        out_dir,
        seed=int(run.config.get("seed", 0)),
        epochs=_optional_int(run.config.get("epochs")),
        steps_per_epoch=_optional_int(run.config.get("steps_per_epoch")),
        on_epoch=heartbeat,
        should_stop=heartbeat.should_stop,
    )
    heartbeat.check()  # stopped or lost during the last epoch: the model is incomplete, do not register
    metrics = metric_table(result.val_metrics)
    return register_and_promote(
        session_factory,
        settings,
        run,
        Path(result.artifact_path),
        training_set,
        metrics,
        architecture=preset.architecture,
    )


def register_and_promote(
    session_factory: SessionFactory,
    settings: Settings,
    run: TrainingRun,
    artifact_path: Path,
    training_set: TrainingSet,
    metrics: registry.MetricTable,
    *,
    architecture: str,
) -> int:
    """Register the artefact and decide on promotion in one transaction (retried on a name clash)."""
    for attempt in range(1, REGISTER_ATTEMPTS + 1):
        try:
            with session_factory() as session:
                version = registry.register_model_version(
                    session,
                    artifact_path=artifact_path,
                    data_dir=settings.data_dir,
                    preset=run.preset,
                    architecture=architecture,
                    metrics=metrics,
                    training_data={**training_set.snapshot.as_json(), "training_run_id": run.id},
                    data_hash=training_set.snapshot.data_hash,
                    training_run_id=run.id,
                    backend=_keras_backend(),
                )
                decision = registry.auto_promote(session, version)
                session.commit()
                assert version.id is not None
                log.info("model %s registered; promoted: %s (%s)", version.version, decision.promoted, decision.reason)
                return version.id
        except sqlalchemy.exc.IntegrityError:
            if attempt == REGISTER_ATTEMPTS:
                raise
            log.warning("version name taken by a concurrent registration; trying the next one")
    raise AssertionError("unreachable")


def staging_dir(data_dir: Path, run_id: int) -> Path:
    """Where a run trains before its folder becomes a version's (emptied first: a retried run starts clean)."""
    path = registry.models_dir(data_dir) / STAGING_DIR / f"run-{run_id:05d}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def metric_table(val_metrics: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``train_model``'s validation figures (``val_`` prefixes dropped, non-numbers left out) as the
    registry's validation-against-consensus table; ``val_loss`` wins over a plain ``loss``."""
    figures: dict[str, float] = {}
    for name, value in sorted(val_metrics.items(), key=lambda item: item[0].startswith("val_")):
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(float(value)):
            figures[name.removeprefix("val_")] = float(value)
    return {DataSplit.VALIDATION.value: {MetricReference.CONSENSUS.value: figures}}


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _keras_backend() -> str | None:
    try:
        import keras

        return str(keras.backend.backend())
    except ImportError:
        return None
