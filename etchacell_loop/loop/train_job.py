"""The worker's job for one training run: training set → ``train_model`` → scored as deployed →
registered model version.

Why here and not in the worker loop: the loop only knows "a job that heartbeats and returns a model
version id"; this module is the one place that knows what training needs. Keras arrives through
``model.train``, imported when the job runs, so the daemon (without the ``ml`` extra) can import the
worker's module tree for its re-queueing and the dashboard can show runs.

Once trained, the model is scored as the loop will use it (:mod:`etchacell_loop.model.scoring`):
every validation and test ROI predicted whole with TAP under the ``correction`` section's rule and
clean-up (the parameters the prediction batches get), Table 1 at the source resolution against the
consensus and, for a synthetic volume, the ground truth. Those figures are what the registry stores
per split and what promotion compares (validation against consensus); the network's own figures from
training (validation loss; F-measure and AHD along z alone on the model grid) are kept beside them
as ``loss`` and ``z_only_*``.

Registration is held under the run's lease (:meth:`~etchacell_loop.loop.worker.RunHeartbeat.hold`):
the version, its promotion and the run's success commit in one transaction that first checks, and
locks, the run as this worker's. A worker that lost the run (re-queued after a silence, maybe claimed
by another) registers nothing, and a run leaves at most one version. Each attempt trains in a folder
of its own, named after its lease, so a worker that lost the run and the one that holds it now never
delete each other's files.

The run's ``config`` may override the preset's ``epochs``, ``steps_per_epoch``, ``batch_size``
(the learning rate scaled with it, :func:`etchacell_loop.model.presets.with_batch_size`) and the
``seed`` (an operator's quick trial, a test's tiny run). The ``training`` section says how the worker
runs it: the precision (``model.backend``) and the processes that make batches (``model.pipeline``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shutil
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import sqlalchemy.exc
from sqlmodel import Session, select

from etchacell_loop.config import Settings
from etchacell_loop.db.models import DataSplit, MetricReference, TrainingRun, Volume
from etchacell_loop.loop import fault_points, runs
from etchacell_loop.loop.batches import tap_params
from etchacell_loop.loop.publish_job import tap_settings
from etchacell_loop.model import registry, scoring
from etchacell_loop.model.backend import choose_precision, running_backend_and_accelerator
from etchacell_loop.model.presets import get_preset, with_batch_size
from etchacell_loop.model.tap import TapParams
from etchacell_loop.model.training_set import TrainingSet, build_training_set

if TYPE_CHECKING:
    from etchacell_loop.loop.worker import Heartbeat

log = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
REGISTER_ATTEMPTS = 3
STAGING_DIR = "_training"
ATTEMPT_PREFIX = "attempt-"
SCORING_DIR = "scoring"
Z_ONLY_PREFIX = "z_only_"  # training's validation figures: the network along z alone, model grid, no clean-up


def train_job(session_factory: SessionFactory, settings: Settings, run: TrainingRun, heartbeat: Heartbeat) -> int:
    """Train the run's preset on the current consensus, register the result, promote it if better."""
    assert run.id is not None
    preset = get_preset(run.preset)
    batch_size = _optional_int(run.config.get("batch_size"))
    if batch_size is not None:
        preset = with_batch_size(preset, batch_size)
    with session_factory() as session:
        training_set = build_training_set(session, settings.data_dir)  # refused before Keras loads
        voxel_sizes = recorded_voxel_sizes(session)
    from etchacell_loop.model.train import train_model  # Keras: only on the worker

    precision = choose_precision(settings.training.precision, *running_backend_and_accelerator())
    log.info(
        "training run %d: %s (batch %d, %s) on slices %s", run.id, preset.name, preset.batch_size, precision,
        training_set.snapshot.counts,
    )  # fmt: skip
    out_dir = staging_dir(settings.data_dir, run.id, heartbeat.lease.worker_host)
    try:
        result = train_model(
            preset,
            training_set.slices,
            out_dir,
            seed=int(run.config.get("seed", 0)),
            epochs=_optional_int(run.config.get("epochs")),
            steps_per_epoch=_optional_int(run.config.get("steps_per_epoch")),
            on_epoch=functools.partial(_epoch_done, heartbeat),
            should_stop=heartbeat.should_stop,
            workers=settings.training.data_workers,
            precision=precision,
        )
        heartbeat.check()  # stopped or lost during the last epoch: the model is incomplete, do not register
        artifact = Path(result.artifact_path)
        metrics = deployed_metrics(settings, training_set, voxel_sizes, artifact, out_dir, heartbeat)
        metrics = merge_metrics(metrics, metric_table(result.val_metrics))
        fault_points.reach("train:scored")
        return register_and_promote(
            session_factory, settings, run, artifact, training_set, metrics, heartbeat, architecture=preset.architecture
        )
    finally:
        remove_attempt(out_dir)  # registered: already moved to the version's folder; else this attempt's leftovers


def _epoch_done(heartbeat: Heartbeat, progress: Mapping[str, Any]) -> None:
    """The epoch's heartbeat, then the fault tests' ``train:epoch`` point."""
    heartbeat(progress)
    fault_points.reach("train:epoch")


def register_and_promote(
    session_factory: SessionFactory,
    settings: Settings,
    run: TrainingRun,
    artifact_path: Path,
    training_set: TrainingSet,
    metrics: registry.MetricTable,
    heartbeat: Heartbeat,
    *,
    architecture: str,
) -> int:
    """Register the artefact, decide on promotion and mark the run succeeded, in one transaction held
    under the run's lease (retried on a name clash).

    The hold comes first: it raises ``RunLost`` when the run is no longer this worker's, and
    otherwise locks the run's row until the commit, so nobody can re-queue it in between. Hence a
    worker whose run was taken leaves no version, and the run cannot be trained and registered again
    after its version is in.
    """
    for attempt in range(1, REGISTER_ATTEMPTS + 1):
        try:
            with session_factory() as session:
                heartbeat.hold(session)
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
                finished = runs.finish_run(session, heartbeat.lease, runs.succeeded_metrics(version))
                assert finished, "the hold keeps the run this worker's until the commit"
                session.commit()
                assert version.id is not None
                log.info("model %s registered; promoted: %s (%s)", version.version, decision.promoted, decision.reason)
                return version.id
        except sqlalchemy.exc.IntegrityError:
            if attempt == REGISTER_ATTEMPTS:
                raise
            log.warning("version name taken by a concurrent registration; trying the next one")
    raise AssertionError("unreachable")


def deployed_metrics(
    settings: Settings,
    training_set: TrainingSet,
    voxel_sizes: Mapping[str, tuple[float, float, float]],
    artifact: Path,
    out_dir: Path,
    heartbeat: Heartbeat,
) -> dict[str, dict[str, dict[str, float]]]:
    """Table 1 of the trained model on the validation and test ROIs as the loop deploys it (see the
    module docstring); the predictions are written under ``out_dir/scoring`` and removed after."""
    from etchacell_loop.model.keras_io import load_predict_fn  # Keras: only on the worker

    predict_fn, preset = load_predict_fn(artifact)
    tap = deployed_tap(settings, preset.patch_zyx)
    cases = scoring.cases_from_slices(training_set.slices, voxel_sizes)
    work = out_dir / SCORING_DIR

    def progress(case: str) -> None:
        heartbeat.check()
        log.info("scoring %s with TAP %s (%d-voxel minimum, keep largest: %s)", case, tap.rule,
                 tap.min_component_voxels, tap.keep_largest)  # fmt: skip

    try:
        scores = scoring.score_rois(cases, predict_fn, preset, tap, work, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    heartbeat.check()
    for name, row in scoring.tables_by_roi(scores).items():
        log.info("%s: F %.3f, AHD %.2f px (%.1f nm) at the source resolution", name, row.f_measure, row.ahd_px,
                 row.ahd_nm)  # fmt: skip
    return scoring.metric_table(scores)


def recorded_voxel_sizes(session: Session) -> dict[str, tuple[float, float, float]]:
    """Each volume's voxel size (z, y, x nm) as the database records it, by the path training reads
    it from (a TIFF may not say its own)."""
    rows = session.exec(select(Volume)).all()
    return {
        v.storage_uri.removeprefix("file://"): (v.voxel_size_z_nm, v.voxel_size_y_nm, v.voxel_size_x_nm) for v in rows
    }


def deployed_tap(settings: Settings, patch_zyx: tuple[int, int, int]) -> TapParams:
    """The TAP parameters the loop's prediction batches get (``correction`` section): what a model
    is scored with before promotion, so that promotion judges what will be deployed."""
    return tap_params(patch_zyx, settings.correction.tap_rule, tap_settings(settings.correction))


def merge_metrics(
    deployed: Mapping[str, Mapping[str, Mapping[str, float]]], training: Mapping[str, Mapping[str, Mapping[str, float]]]
) -> dict[str, dict[str, dict[str, float]]]:
    """The deployed figures, with training's own validation figures added under ``loss`` and
    ``z_only_<name>`` (they never replace a deployed figure)."""
    merged = {split: {ref: dict(figures) for ref, figures in refs.items()} for split, refs in deployed.items()}
    for split, refs in training.items():
        for reference, figures in refs.items():
            target = merged.setdefault(split, {}).setdefault(reference, {})
            for name, value in figures.items():
                target.setdefault(name if name == "loss" else f"{Z_ONLY_PREFIX}{name}", value)
    return merged


def staging_dir(data_dir: Path, run_id: int, worker_host: str) -> Path:
    """Where this attempt at a run trains before its folder becomes a version's: one folder per
    lease (``_training/run-<id>/attempt-<worker>``), never another attempt's.

    Emptied first (a worker back at a run it held before starts clean). Beside it, the folders of
    attempts whose worker process has ended on this machine are removed: a killed worker leaves its
    folder behind, and nothing else would remove it.
    """
    run_dir = registry.models_dir(data_dir) / STAGING_DIR / f"run-{run_id:05d}"
    remove_dead_attempts(run_dir)
    path = run_dir / attempt_folder_name(worker_host)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def attempt_folder_name(worker_host: str) -> str:
    """The lease's worker, reversibly quoted as one path component."""
    return ATTEMPT_PREFIX + quote(worker_host, safe="")


def attempt_owner(folder_name: str) -> tuple[str, int] | None:
    """The machine and process id of the worker an attempt folder belongs to, when it says."""
    if not folder_name.startswith(ATTEMPT_PREFIX):
        return None
    return runs.worker_process(unquote(folder_name.removeprefix(ATTEMPT_PREFIX)))


def remove_dead_attempts(run_dir: Path) -> list[Path]:
    """Remove the attempt folders whose worker process on this machine has ended; those removed.
    A folder from another machine, or whose process is alive (even one that lost the run and has
    not noticed yet, or is stopped), is left alone."""
    if not run_dir.is_dir():
        return []
    here = socket.gethostname()
    removed = []
    for folder in sorted(run_dir.iterdir()):
        owner = attempt_owner(folder.name)
        if owner is not None and owner[0] == here and not process_alive(owner[1]):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def remove_attempt(out_dir: Path) -> None:
    """This attempt's folder, and the run's folder once no attempt is left in it."""
    shutil.rmtree(out_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # another attempt's folder is still there
        out_dir.parent.rmdir()


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (a stopped one does; one of another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
