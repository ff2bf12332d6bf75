"""A synthetic history of a live project, written straight into the database: weeks of
classifications from a skewed crowd, subjects retiring, consensus with its images, training runs,
model versions, prediction batches, daemon job runs and events.

Why: the dashboard and the named queries must be tried, and timed, on a database the size of a real
project (a million classifications) without running the loop for weeks. The rows follow the same
rules the loop's own writers keep (one current consensus per slice, at most one promoted version,
classifications numbered in time order), and the consensus shown for a handful of slices is the real
CRIA consensus of simulated volunteers' tracings of a synthetic nucleus, with its images on disk.

Rows are written with bulk inserts in chunks, with explicit ids; on PostgreSQL the id sequences are
moved past them afterwards, so the loop can go on writing to the same database.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from etchacell_loop.aggregate.outputs import consensus_pngs
from etchacell_loop.cria.consensus import Consensus, CriaParams, Drawing, slice_consensus
from etchacell_loop.db import models as m
from etchacell_loop.db.types import utcnow
from etchacell_loop.loop.consensus_job import consensus_image_uris
from etchacell_loop.model.registry import PROMOTED_EVENT
from etchacell_loop.simulation.crowd import Behaviour, make_volunteer, paper_fractions, trace
from etchacell_loop.simulation.shapes import draw_nucleus
from etchacell_loop.subject_metadata import IMAGE_KEY

CHUNK_ROWS = 20_000
FRAME_SIZE_PX = 400  # the rendered slices: small, so a history with images is quick to make
JOB_INTERVALS_S = {"ingest": 300, "aggregate": 300, "retire": 600, "train": 900, "publish": 900}
UNSAFE_NAMES = ('<script>alert("etchacell")</script>', "<b>bold</b> & <i>proud</i>", 'O\'Brien "quotes"')


@dataclass(frozen=True)
class HistorySpec:
    """How big a history to write. ``classifications`` sets the scale; the rest follows the paper's
    proportions (about 25 classifications per subject, a few thousand volunteers, effort Gini ≈ 0.8)."""

    classifications: int = 20_000
    days: int = 45
    classifications_per_subject: float = 25.0
    volunteers: int | None = None  # default: one per 250 classifications, at least 50
    anonymous_share: float = 0.15
    rendered_slices: int = 6  # slices whose consensus is computed from tracings and drawn
    model_versions: int = 3
    seed: int = 0
    now: datetime | None = None

    @property
    def n_subjects(self) -> int:
        return max(10, math.ceil(self.classifications / self.classifications_per_subject))

    @property
    def n_volunteers(self) -> int:
        return self.volunteers or max(50, self.classifications // 250)


@dataclass(frozen=True)
class HistoryReport:
    """What was written, by table."""

    rows: Mapping[str, int]
    data_dir: Path


def write_history(engine: Engine, data_dir: Path, spec: HistorySpec = HistorySpec()) -> HistoryReport:
    """Write a synthetic project history into an empty, migrated database (images under ``data_dir``)."""
    rng = np.random.default_rng(spec.seed)
    now = spec.now or utcnow()
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        _refuse_non_empty(conn)
        world = _World.build(spec, rng, now)
        renders = _render_slices(data_dir, spec, rng)
        for table, rows in _all_rows(world, renders, spec, rng, now):
            counts[table.name] = counts.get(table.name, 0) + _insert(conn, table, rows)
        if conn.dialect.name == "postgresql":
            _advance_sequences(conn, counts)
    return HistoryReport(counts, data_dir)


# --- the world: project, workflows, sets, subjects, volunteers -----------------------------------


@dataclass(frozen=True)
class _World:
    spec: HistorySpec
    start: datetime
    now: datetime
    volunteer_keys: list[str]
    volunteer_names: list[str | None]
    volunteer_user_ids: list[int | None]
    volunteer_weights: NDArray[np.float64]
    unreliable: frozenset[int]  # volunteer indexes whose tracings agree poorly

    @classmethod
    def build(cls, spec: HistorySpec, rng: np.random.Generator, now: datetime) -> _World:
        n = spec.n_volunteers
        keys: list[str] = []
        names: list[str | None] = []
        user_ids: list[int | None] = []
        for i in range(n):
            if rng.random() < spec.anonymous_share and i >= len(UNSAFE_NAMES):  # the odd names are users'
                keys.append(f"anon:{i:08x}{rng.integers(1 << 30):08x}")
                names.append(None)
                user_ids.append(None)
            else:
                user_id = 100_000 + i
                keys.append(f"user:{user_id}")
                names.append(UNSAFE_NAMES[i] if i < len(UNSAFE_NAMES) else f"volunteer_{i:05d}")
                user_ids.append(user_id)
        # a heavy tail: a few volunteers do most of the work, as on every Zooniverse project
        weights = rng.pareto(0.9, n) + 0.05
        weights[: len(UNSAFE_NAMES)] = np.sort(weights)[-len(UNSAFE_NAMES) :]  # the odd names are visible
        unreliable = frozenset(int(i) for i in rng.choice(n, size=max(1, n // 40), replace=False))
        return cls(
            spec, now - timedelta(days=spec.days), now, keys, names, user_ids, weights / weights.sum(), unreliable
        )


@dataclass(frozen=True)
class _Render:
    """One slice whose consensus was computed from simulated tracings, with its files."""

    frame_name: str
    consensus: Consensus
    uris: Mapping[str, str]


def _render_slices(data_dir: Path, spec: HistorySpec, rng: np.random.Generator) -> list[_Render]:
    n = max(1, spec.rendered_slices)
    nucleus = draw_nucleus(rng, n + 4, (FRAME_SIZE_PX, FRAME_SIZE_PX))
    frames_dir = data_dir / "subjects" / "frames" / "history" / "cell01"
    frames_dir.mkdir(parents=True, exist_ok=True)
    params = CriaParams(pixel_size_nm=20.0 * 1000 / FRAME_SIZE_PX)
    fractions = paper_fractions()
    behaviours = list(fractions)
    probabilities = np.array([fractions[b] for b in behaviours])
    renders: list[_Render] = []
    for k in range(n):
        truth = nucleus.slice_truth(k + 2)
        frame_name = f"z{k + 2:05d}.jpg"
        Image.fromarray(_em_like(truth.nucleus, rng)).save(frames_dir / frame_name, quality=90)
        drawings: list[Drawing] = []
        for v in range(10):
            behaviour = behaviours[int(rng.choice(len(behaviours), p=probabilities / probabilities.sum()))]
            volunteer = make_volunteer(f"user:{100_000 + v}", Behaviour(behaviour), rng, user_id=100_000 + v)
            strokes = trace(volunteer, [truth], 0, rng)
            if strokes:
                points = tuple(np.column_stack([s.x_px, s.y_px]) for s in strokes)
                drawings.append(Drawing(volunteer.key, v + 1, points))
        consensus = slice_consensus(drawings, 10, truth.shape_px, params)
        uris = consensus_image_uris((1, k + 2, m.ConsensusKind.VOLUNTEER), 1_000_000 + k)
        for folder, png in consensus_pngs(consensus).items():
            path = data_dir / uris[folder]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
        renders.append(_Render(frame_name, consensus, uris))
    return renders


def _em_like(nucleus: NDArray[np.bool_], rng: np.random.Generator) -> NDArray[np.uint8]:
    """A slice that looks roughly like SBF-SEM: grainy cytoplasm, paler nucleus, dark envelope."""
    image = np.full(nucleus.shape, 150.0)
    image[nucleus] = 175.0
    envelope = nucleus & ~ndimage.binary_erosion(nucleus, iterations=3)
    image[envelope] = 60.0
    image += ndimage.gaussian_filter(rng.normal(0, 30, nucleus.shape), 1.2)
    frame: NDArray[np.uint8] = np.clip(image, 0, 255).astype(np.uint8)
    return frame


# --- rows ----------------------------------------------------------------------------------------

Rows = Iterator[dict[str, Any]]


def _all_rows(
    world: _World, renders: Sequence[_Render], spec: HistorySpec, rng: np.random.Generator, now: datetime
) -> Iterator[tuple[sa.Table, Rows]]:
    t = _tables()
    start = world.start
    yield (
        t["project"],
        iter([{"id": 1, "panoptes_id": 21_000, "display_name": "Etch a Cell (history)", "created_at": start}]),
    )
    yield t["workflow"], iter(
        [
            {"id": 1, "panoptes_id": 31_001, "project_id": 1, "role": m.WorkflowRole.SEGMENTATION,
             "display_name": "Trace the nuclear envelope", "version": "12.4", "created_at": start},
            {"id": 2, "panoptes_id": 31_002, "project_id": 1, "role": m.WorkflowRole.CORRECTION,
             "display_name": "Correct the machine", "version": "3.1", "created_at": start},
        ]
    )  # fmt: skip
    yield t["volume"], iter(
        [{"id": 1, "name": "history-hela", "storage_uri": "file:///history/hela.zarr", "shape_z": 300,
          "shape_y": 8192, "shape_x": 8192, "voxel_size_z_nm": 50.0, "voxel_size_y_nm": 10.0,
          "voxel_size_x_nm": 10.0, "dtype": "uint8", "created_at": start}]
    )  # fmt: skip
    n_subjects = spec.n_subjects
    n_rois = max(3, n_subjects // 300)
    slices_per_roi = math.ceil(n_subjects / n_rois)
    splits = [m.DataSplit.TRAIN, m.DataSplit.VALIDATION, m.DataSplit.TEST]
    yield t["roi"], (
        {"id": r + 1, "volume_id": 1, "name": f"cell{r + 1:03d}", "x": 100 * r, "y": 0, "z": 0, "width": 2000,
         "height": 2000, "depth": slices_per_roi, "split": splits[r] if r < 3 else m.DataSplit.TRAIN,
         "created_at": start}
        for r in range(n_rois)
    )  # fmt: skip
    n_sets = max(2, min(12, n_rois))
    yield t["subject_set"], (
        {"id": s + 1, "panoptes_id": 41_000 + s, "project_id": 1, "workflow_id": 1,
         "display_name": f"cells {s + 1:02d}", "kind": m.SubjectKind.RAW, "created_at": start}
        for s in range(n_sets)
    )  # fmt: skip
    subjects = _Subjects.draw(world, n_subjects, n_rois, n_sets, rng)
    frames_dir = "subjects/frames/history/cell01"
    yield t["subject"], subjects.rows(world, renders, frames_dir)
    yield t["classification"], _classifications(world, subjects, rng)
    yield t["sync_cursor"], iter(
        [{"id": 1, "workflow_id": 1, "last_classification_id": 5_000_000 + spec.classifications,
          "n_ingested": spec.classifications, "updated_at": now - timedelta(minutes=4)},
         {"id": 2, "workflow_id": 2, "last_classification_id": 0, "n_ingested": 0,
          "updated_at": now - timedelta(hours=7)}]
    )  # fmt: skip
    consensus_rows, agreement_rows = _consensus(world, subjects, renders, rng)
    yield t["consensus_result"], consensus_rows
    yield t["volunteer_agreement"], agreement_rows
    yield t["retirement_decision"], subjects.decisions(world)
    runs, versions, metrics, batches, predictions = _training(world, spec, rng)
    yield t["training_run"], iter(runs)
    yield t["model_version"], iter(versions)
    yield t["model_metric"], iter(metrics)
    yield t["prediction_batch"], iter(batches)
    yield t["slice_prediction"], iter(predictions)
    yield t["job_run"], _job_runs(now, rng)
    yield t["event"], _events(world, runs, rng)
    yield t["event"], _promotions(versions, first_id=_event_count(world) + 1)


def _tables() -> dict[str, sa.Table]:
    return {name: table for name, table in SQLModel.metadata.tables.items() if table.name in _TABLE_NAMES}


_TABLE_NAMES = frozenset(
    {
        "project", "workflow", "volume", "roi", "subject_set", "subject", "classification", "sync_cursor",
        "consensus_result", "volunteer_agreement", "retirement_decision", "training_run", "model_version",
        "model_metric", "prediction_batch", "slice_prediction", "job_run", "event",
    }
)  # fmt: skip


@dataclass(frozen=True)
class _Subjects:
    """Every raw subject: its ROI, slice, set, how many classifications it gets and when it retired."""

    roi: NDArray[np.int64]
    slice_index: NDArray[np.int64]
    subject_set: NDArray[np.int64]
    quota: NDArray[np.int64]  # classifications it receives
    retired: NDArray[np.bool_]
    created_offset_s: NDArray[np.float64]

    @classmethod
    def draw(cls, world: _World, n: int, n_rois: int, n_sets: int, rng: np.random.Generator) -> _Subjects:
        ids = np.arange(n)
        per_roi = math.ceil(n / n_rois)
        roi = ids // per_roi
        total_s = (world.now - world.start).total_seconds()
        created = np.sort(rng.uniform(0, total_s * 0.8, n))
        # older subjects have had more time to collect classifications and retire
        age = 1.0 - created / total_s
        quota = np.maximum(1, rng.poisson(world.spec.classifications_per_subject * (0.4 + age)))
        quota = np.round(quota * world.spec.classifications / quota.sum()).astype(np.int64)
        quota[0] += world.spec.classifications - int(quota.sum())
        retired = (quota >= 8) & (rng.random(n) < 0.35 + 0.6 * age)
        return cls(roi, ids % per_roi, roi % n_sets, quota, retired, created)

    def __len__(self) -> int:
        return int(self.roi.size)

    def rows(self, world: _World, renders: Sequence[_Render], frames_dir: str) -> Rows:
        for i in range(len(self)):
            render = renders[i % len(renders)]
            created = world.start + timedelta(seconds=float(self.created_offset_s[i]))
            retired = bool(self.retired[i])
            yield {
                "id": i + 1, "panoptes_id": 7_000_000 + i,
                "upload_key": _upload_key(int(self.roi[i]), int(self.slice_index[i])),
                "roi_id": int(self.roi[i]) + 1, "subject_set_id": int(self.subject_set[i]) + 1,
                "slice_index": int(self.slice_index[i]), "frames": [int(self.slice_index[i])] * 5, "target_frame": 2,
                "kind": m.SubjectKind.RAW, "model_version_id": None, "prediction_batch_id": None,
                "local_dir": frames_dir, "locations": None,
                "panoptes_metadata": {IMAGE_KEY.format(index=k): render.frame_name for k in range(5)},
                "priority": None, "upload_state": m.UploadState.LINKED, "upload_attempts": 1, "upload_error": None,
                "uploaded_at": created, "machine_marks_pushed_at": None,
                "retirement_state": m.RetirementState.RETIRED if retired else m.RetirementState.ACTIVE,
                "retirement_reason": "consensus" if retired else None,
                "retired_at": self.retired_at(world, i) if retired else None, "created_at": created,
            }  # fmt: skip

    def retired_at(self, world: _World, i: int) -> datetime:
        """Halfway between its upload and now: older subjects retired earlier."""
        span = (world.now - world.start).total_seconds() - float(self.created_offset_s[i])
        return world.start + timedelta(seconds=float(self.created_offset_s[i]) + span * 0.5)

    def decisions(self, world: _World) -> Rows:
        for n, i in enumerate(np.flatnonzero(self.retired)):
            yield {
                "id": n + 1, "subject_id": int(i) + 1, "consensus_result_id": int(i) + 1, "policy": "stable-consensus",
                "outcome": m.DecisionOutcome.RETIRE, "panoptes_reason": "consensus",
                "n_classifications": int(self.quota[i]), "stability": 0.97, "details": {},
                "sync_state": m.SyncState.CONFIRMED, "sent_at": self.retired_at(world, int(i)), "error": None,
                "decided_at": self.retired_at(world, int(i)),
            }  # fmt: skip


def _upload_key(roi_index: int, slice_index: int) -> str:
    return f"history/cell{roi_index + 1:03d}/z{slice_index:05d}"


def _classifications(world: _World, subjects: _Subjects, rng: np.random.Generator) -> Rows:
    """Classifications in time order: each subject's quota spread after its upload, volunteers drawn
    by their weights (a volunteer may meet a subject twice, as happens with several sessions)."""
    owner = np.repeat(np.arange(len(subjects)), subjects.quota)
    total_s = (world.now - world.start).total_seconds()
    offsets = subjects.created_offset_s[owner] + rng.uniform(0, 1, owner.size) * (
        total_s - subjects.created_offset_s[owner]
    )
    order = np.argsort(offsets, kind="stable")
    volunteers = rng.choice(len(world.volunteer_keys), size=owner.size, p=world.volunteer_weights)
    marks = rng.integers(0, 4, owner.size)
    annotations = json.dumps(
        [{"task": "T0", "value": [{"tool": 0, "frame": 2, "pathX": [10.5, 40.0, 25.0], "pathY": [10.0, 12.0, 40.5]}]}]
    )
    for n, k in enumerate(order):
        v = int(volunteers[k])
        subject = int(owner[k])
        yield {
            "id": n + 1, "panoptes_id": 5_000_001 + n, "workflow_id": 1, "workflow_version": "12.4",
            "subject_panoptes_id": 7_000_000 + subject, "subject_id": subject + 1,
            "user_id": world.volunteer_user_ids[v], "user_name": world.volunteer_names[v],
            "anonymous_token": None if world.volunteer_user_ids[v] else world.volunteer_keys[v][5:],
            "volunteer_key": world.volunteer_keys[v],
            "created_at": world.start + timedelta(seconds=float(offsets[k])), "source": m.ClassificationSource.API,
            "raw_annotations": annotations, "raw_metadata": None, "raw_subject_data": None,
            "parse_status": m.ParseStatus.OK, "parse_errors": None, "n_marks": int(marks[k]),
            "ingested_at": world.start + timedelta(seconds=float(offsets[k]) + 120),
        }  # fmt: skip


def _consensus(
    world: _World, subjects: _Subjects, renders: Sequence[_Render], rng: np.random.Generator
) -> tuple[Rows, Rows]:
    """One current volunteer consensus per subject with at least three classifications (ids equal to
    the subject's), and the agreement of up to eight of its volunteers with it."""
    eligible = [i for i in range(len(subjects)) if subjects.quota[i] >= 3]
    n_volunteers = len(world.volunteer_keys)

    def results() -> Rows:
        for i in eligible:
            render = renders[i % len(renders)]
            drawers = int(min(subjects.quota[i], 12))
            yield {
                "id": i + 1, "roi_id": int(subjects.roi[i]) + 1, "slice_index": int(subjects.slice_index[i]),
                "subject_id": i + 1, "kind": m.ConsensusKind.VOLUNTEER, "method": "cria-robust", "params": {},
                "n_classifications": int(subjects.quota[i]), "n_volunteers": drawers,
                "last_classification_id": 5_000_000 + i, "mask_uri": render.uris["masks"],
                "band_uri": render.uris["envelope"], "confidence_uri": render.uris["confidence"],
                "area_px": render.consensus.area_px, "stability": float(rng.uniform(0.9, 1.0)), "agreement": {},
                "is_current": True, "created_at": world.now - timedelta(days=float(rng.uniform(0, world.spec.days))),
            }  # fmt: skip

    def agreements() -> Rows:
        row_id = 0
        for i in eligible:
            chosen = rng.choice(n_volunteers, size=int(min(subjects.quota[i], 8)), p=world.volunteer_weights)
            for v in set(int(c) for c in chosen):
                row_id += 1
                bad = v in world.unreliable
                dice = float(rng.uniform(0.0, 0.35) if bad else np.clip(rng.normal(0.9, 0.08), 0, 1))
                yield {"id": row_id, "consensus_result_id": i + 1, "classification_id": None,
                       "volunteer_key": world.volunteer_keys[v], "dice": dice}  # fmt: skip

    return results(), agreements()


def _training(world: _World, spec: HistorySpec, rng: np.random.Generator) -> tuple[list[dict[str, Any]], ...]:
    """Training runs (succeeded ones made versions; one failed; the newest still running), model
    versions improving round by round (the newest promoted), their test figures, prediction batches
    and how much volunteers changed their predictions."""
    runs: list[dict[str, Any]] = []
    versions: list[dict[str, Any]] = []
    metrics: list[dict[str, Any]] = []
    batches: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    n = max(1, spec.model_versions)
    step = timedelta(days=spec.days / (n + 2))
    for k in range(n):
        queued = world.start + step * (k + 1)
        runs.append(_run(len(runs) + 1, m.RunStatus.SUCCEEDED, queued, "gpu-01/4411/a1b2c3", k))
        f_consensus = 0.55 + 0.12 * k + float(rng.uniform(-0.02, 0.02))
        version = f"v{k + 1:04d}-{rng.integers(1 << 32):08x}"
        versions.append({
            "id": k + 1, "version": version, "training_run_id": len(runs), "artifact_uri": f"models/{version}.keras",
            "preset": "paper", "architecture": "unet-2d", "backend": "jax",
            "metrics": {"validation": {"f_measure": f_consensus, "ahd_nm": 40.0 / (k + 1)}},
            "training_data": {"parent": {"version": versions[-1]["version"]} if versions else None},
            "data_hash": f"{k:064x}", "promoted": k == n - 1, "promoted_at": queued + timedelta(hours=3),
            "created_at": queued + timedelta(hours=2),
        })  # fmt: skip
        for reference, bonus in (("consensus", 0.0), ("truth", 0.03)):
            metrics.append(_metric(len(metrics) + 1, k + 1, reference, "f_measure", min(0.99, f_consensus + bonus)))
            metrics.append(_metric(len(metrics) + 1, k + 1, reference, "ahd_nm", 60.0 / (k + 1) - bonus * 100))
        batches.append({
            "id": k + 1, "model_version_id": k + 1, "roi_id": 3, "status": m.RunStatus.SUCCEEDED, "tap_rule": "all",
            "params": {}, "output_uri": f"predictions/{version}/roi3.zarr", "worker_host": "gpu-01/4411/a1b2c3",
            "heartbeat_at": queued + timedelta(hours=4), "n_slices": 40, "error": None,
            "requested_at": queued + timedelta(hours=3), "started_at": queued + timedelta(hours=3, minutes=5),
            "finished_at": queued + timedelta(hours=4),
        })  # fmt: skip
        for z in range(40):
            corrected = z % 2 == 0
            predictions.append({
                "id": len(predictions) + 1, "batch_id": k + 1, "roi_id": 3, "slice_index": z,
                "uncertainty": float(rng.uniform(0, 0.3)), "envelope_area_px": int(rng.integers(5_000, 20_000)),
                "selection": m.SelectionReason.UNCERTAIN if corrected else m.SelectionReason.NOT_SELECTED,
                "subject_id": None,
                "correction_dice": float(np.clip(rng.normal(0.7 + 0.08 * k, 0.05), 0, 1)) if corrected else None,
            })  # fmt: skip
        if k == 0:
            runs.append(_run(len(runs) + 1, m.RunStatus.FAILED, queued + timedelta(hours=1), "gpu-02/977/d4e5f6", k))
    runs.append(_run(len(runs) + 1, m.RunStatus.RUNNING, world.now - timedelta(minutes=40), "gpu-01/5120/0a0b0c", n))
    return runs, versions, metrics, batches, predictions


def _run(run_id: int, status: m.RunStatus, queued: datetime, worker: str, k: int) -> dict[str, Any]:
    running = status is m.RunStatus.RUNNING
    finished = None if running else queued + timedelta(hours=2)
    return {
        "id": run_id, "status": status, "trigger": m.TrainingTrigger.AUTOMATIC if k else m.TrainingTrigger.MANUAL,
        "requested_by": "daemon" if k else "operator", "reason": "new consensus slices" if k else "first model",
        "preset": "paper", "config": {}, "worker_host": worker,
        "heartbeat_at": queued + timedelta(minutes=39) if running else finished,
        "progress": {"epoch": 23, "epochs": 60, "loss": 0.071} if running else {"epoch": 60, "epochs": 60},
        "metrics": {}, "error": "CUDA out of memory" if status is m.RunStatus.FAILED else None,
        "queued_at": queued, "started_at": queued + timedelta(minutes=1), "finished_at": finished,
    }  # fmt: skip


def _metric(metric_id: int, version_id: int, reference: str, name: str, value: float) -> dict[str, Any]:
    return {"id": metric_id, "model_version_id": version_id, "split": m.DataSplit.TEST,
            "reference": m.MetricReference(reference), "name": name, "value": value}  # fmt: skip


def _job_runs(now: datetime, rng: np.random.Generator) -> Rows:
    """Two days of daemon job runs at their intervals; one ``retire`` run failed; ``publish`` has
    been silent for half a day (late, as the dashboard should say)."""
    row_id = 0
    for job, interval_s in JOB_INTERVALS_S.items():
        silent_s = 12 * 3600 if job == "publish" else 0
        t = now - timedelta(days=2)
        while t < now - timedelta(seconds=silent_s + interval_s):
            row_id += 1
            failed = job == "retire" and row_id % 97 == 0
            took = float(rng.uniform(0.5, 30.0))
            yield {
                "id": row_id, "job": job, "status": m.JobStatus.FAILED if failed else m.JobStatus.OK,
                "host": "daemon-01", "result": {} if failed else {"seconds": took},
                "error": "PanoptesError: 502 Bad Gateway" if failed else None, "started_at": t,
                "finished_at": t + timedelta(seconds=took),
            }  # fmt: skip
            t += timedelta(seconds=interval_s)


def _events(world: _World, runs: Sequence[Mapping[str, Any]], rng: np.random.Generator) -> Rows:
    kinds = [
        ("consensus.updated", m.EventLevel.INFO, "consensus of roi {r} slice {z} updated"),
        ("subject.retired", m.EventLevel.INFO, "subject {s} retired: consensus stable"),
        ("classification.skipped", m.EventLevel.WARNING, "classification {c} skipped: coordinates off the image"),
        ("job.failed", m.EventLevel.ERROR, "retire failed: PanoptesError: 502 Bad Gateway"),
    ]
    total_s = (world.now - world.start).total_seconds()
    n = _event_count(world) - 2
    times = np.sort(rng.uniform(0, total_s, n))
    for i in range(n):
        kind, level, text = kinds[int(rng.choice(4, p=[0.6, 0.3, 0.08, 0.02]))]
        yield {
            "id": i + 1, "created_at": world.start + timedelta(seconds=float(times[i])), "level": level, "kind": kind,
            "message": text.format(r=1, z=i % 40, s=i + 1, c=5_000_001 + i), "subject_id": None,
            "classification_id": None, "training_run_id": None, "model_version_id": None, "payload": {"n": i},
        }  # fmt: skip
    yield {
        "id": n + 1, "created_at": world.now - timedelta(minutes=5), "level": m.EventLevel.WARNING,
        "kind": "volunteer.flagged", "message": f"volunteer {UNSAFE_NAMES[0]} flagged: agreement 0.12",
        "subject_id": None, "classification_id": None, "training_run_id": None, "model_version_id": None,
        "payload": {"user_name": UNSAFE_NAMES[0]},
    }  # fmt: skip
    yield {
        "id": n + 2, "created_at": world.now - timedelta(minutes=40), "level": m.EventLevel.INFO,
        "kind": "training.queued", "message": "automatic training run queued by daemon", "subject_id": None,
        "classification_id": None, "training_run_id": len(runs), "model_version_id": None, "payload": {},
    }  # fmt: skip


def _event_count(world: _World) -> int:
    """How many events :func:`_events` writes (its log, a flagged volunteer and a queued run)."""
    return max(200, world.spec.classifications // 200) + 2


def _promotions(versions: Sequence[Mapping[str, Any]], first_id: int) -> Rows:
    """A ``model.promoted`` event per version, as the worker records them: the promotion history
    that a rollback walks back."""
    for k, version in enumerate(versions):
        yield {
            "id": first_id + k, "created_at": version["promoted_at"], "level": m.EventLevel.INFO,
            "kind": PROMOTED_EVENT, "message": f"model {version['version']} promoted by worker: beats its parent",
            "subject_id": None, "classification_id": None, "training_run_id": None, "model_version_id": version["id"],
            "payload": {"version": version["version"], "version_id": version["id"], "by": "worker",
                        "reason": "beats its parent", "rollback": False},
        }  # fmt: skip


# --- writing ----------------------------------------------------------------------------------------


def _insert(conn: Connection, table: sa.Table, rows: Rows) -> int:
    """Insert ``rows`` in chunks; returns how many. Enum members become their values, JSON columns
    are encoded by SQLAlchemy."""
    written = 0
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= CHUNK_ROWS:
            conn.execute(table.insert(), chunk)
            written += len(chunk)
            chunk = []
    if chunk:
        conn.execute(table.insert(), chunk)
        written += len(chunk)
    return written


def _refuse_non_empty(conn: Connection) -> None:
    if conn.execute(sa.text("SELECT COUNT(*) FROM project")).scalar_one():
        raise ValueError("the database already holds a project: a synthetic history goes into an empty database")


def _advance_sequences(conn: Connection, counts: Mapping[str, int]) -> None:
    for table in counts:
        conn.execute(
            sa.text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f'(SELECT COALESCE(MAX(id), 0) + 1 FROM "{table}"), false)'
            )
        )
