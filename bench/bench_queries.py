"""Time every named ops query on a database shaped like a live Etch a Cell project.

Usage:
    .venv/bin/python bench/bench_queries.py [--classifications 200000] [--postgres URL] [--repeat 5]

Builds a fresh database (SQLite file in a temporary folder; with --postgres, also a throw-away
database created through that admin URL), fills it with subjects, classifications from volunteers
whose effort is heavy-tailed (as on Zooniverse), consensus rows, training runs, model versions and
events, then prints the median wall time of each query and the time the fill took.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlmodel import SQLModel

from etchacell_loop.db import models as m
from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.migrate import upgrade
from etchacell_loop.db.queries import load_queries, run_query

BATCH = 20_000


def _table(model: type[SQLModel]) -> sa.Table:
    return SQLModel.metadata.tables[str(model.__tablename__)]


def _insert(engine: Engine, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    with engine.begin() as conn:
        for start in range(0, len(rows), BATCH):
            conn.execute(sa.insert(table), rows[start : start + BATCH])


def populate(engine: Engine, n_classifications: int, seed: int = 7) -> dict[str, int]:
    """Fill the database; returns how many rows of each kind were written."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    n_subjects = max(10, n_classifications // 25)
    n_volunteers = max(5, n_classifications // 40)
    _insert(
        engine, _table(m.Project), [{"id": 1, "panoptes_id": 26558, "display_name": "Etch a Cell", "created_at": now}]
    )
    _insert(
        engine,
        _table(m.Workflow),
        [
            {
                "id": 1,
                "panoptes_id": 28090,
                "project_id": 1,
                "role": "segmentation",
                "display_name": "Trace",
                "caesar_data_fetching": False,
                "created_at": now,
            },
            {
                "id": 2,
                "panoptes_id": 28091,
                "project_id": 1,
                "role": "correction",
                "display_name": "Correct",
                "caesar_data_fetching": True,
                "created_at": now,
            },
        ],
    )
    _insert(
        engine,
        _table(m.Volume),
        [
            {
                "id": 1,
                "name": "hela",
                "storage_uri": "file:///hela.zarr",
                "shape_z": 300,
                "shape_y": 8192,
                "shape_x": 8192,
                "voxel_size_z_nm": 50.0,
                "voxel_size_y_nm": 10.0,
                "voxel_size_x_nm": 10.0,
                "dtype": "uint8",
                "created_at": now,
            }
        ],
    )
    n_rois = 20
    _insert(
        engine,
        _table(m.Roi),
        [
            {
                "id": i + 1,
                "volume_id": 1,
                "name": f"nucleus-{i + 1}",
                "x": 0,
                "y": 0,
                "z": 0,
                "width": 2000,
                "height": 2000,
                "depth": 300,
                "split": "train",
                "created_at": now,
            }
            for i in range(n_rois)
        ],
    )
    sets = 8
    _insert(
        engine,
        _table(m.SubjectSet),
        [
            {
                "id": i + 1,
                "panoptes_id": 1000 + i,
                "project_id": 1,
                "workflow_id": 1,
                "display_name": f"set-{i + 1}",
                "kind": "raw",
                "created_at": now,
            }
            for i in range(sets)
        ],
    )
    retired = rng.random(n_subjects) < 0.4
    subjects: list[dict[str, Any]] = [
        {
            "id": i + 1,
            "panoptes_id": 70_000_000 + i,
            "upload_key": f"s{i}",
            "roi_id": 1 + i % n_rois,
            "subject_set_id": 1 + i % sets,
            "slice_index": i % 300,
            "frames": [i % 300] * 5,
            "target_frame": 2,
            "kind": "raw",
            "panoptes_metadata": {},
            "upload_state": "linked",
            "upload_attempts": 1,
            "retirement_state": "retired" if retired[i] else "active",
            "retirement_reason": "consensus" if retired[i] else None,
            "retired_at": now - timedelta(days=int(rng.integers(0, 30))) if retired[i] else None,
            "created_at": now,
        }
        for i in range(n_subjects)
    ]
    _insert(engine, _table(m.Subject), subjects)
    # Heavy-tailed volunteer effort: a few volunteers do most of the work.
    volunteer = np.minimum(rng.zipf(1.6, n_classifications) - 1, n_volunteers - 1)
    subject = rng.integers(0, n_subjects, n_classifications)
    age_s = rng.integers(0, 60 * 86_400, n_classifications)
    raw = json.dumps(
        [
            {
                "task": "T0",
                "value": [{"frame": 2, "toolType": "freehandLine", "pathX": list(range(50)), "pathY": list(range(50))}],
            }
        ]
    )
    classifications = [
        {
            "panoptes_id": 600_000_000 + i,
            "workflow_id": 1,
            "workflow_version": "4.4",
            "subject_panoptes_id": 70_000_000 + int(subject[i]),
            "subject_id": int(subject[i]) + 1,
            "user_id": None if volunteer[i] % 7 == 0 else int(volunteer[i]),
            "user_name": None if volunteer[i] % 7 == 0 else f"volunteer{volunteer[i]}",
            "anonymous_token": f"{volunteer[i]:020x}" if volunteer[i] % 7 == 0 else None,
            "volunteer_key": f"anon:{volunteer[i]}" if volunteer[i] % 7 == 0 else f"user:{volunteer[i]}",
            "created_at": now - timedelta(seconds=int(age_s[i])),
            "source": "api",
            "raw_annotations": raw,
            "parse_status": "ok",
            "n_marks": 1,
            "ingested_at": now,
        }
        for i in range(n_classifications)
    ]
    _insert(engine, _table(m.Classification), classifications)
    _insert(
        engine,
        _table(m.SyncCursor),
        [
            {
                "workflow_id": 1,
                "last_classification_id": 600_000_000 + n_classifications - 1,
                "n_ingested": n_classifications,
                "updated_at": now,
            }
        ],
    )
    _insert(
        engine,
        _table(m.TrainingRun),
        [
            {
                "id": i + 1,
                "status": "succeeded",
                "trigger": "automatic",
                "requested_by": "daemon",
                "preset": "small",
                "config": {},
                "progress": {},
                "metrics": {},
                "queued_at": now - timedelta(days=i),
            }
            for i in range(50)
        ],
    )
    _insert(
        engine,
        _table(m.ModelVersion),
        [
            {
                "id": i + 1,
                "version": f"v{i + 1}",
                "training_run_id": i + 1,
                "artifact_uri": "file:///m",
                "preset": "small",
                "architecture": "unet-2.5d",
                "metrics": {},
                "training_data": {},
                "data_hash": "0" * 64,
                "promoted": i == 49,
                "created_at": now - timedelta(days=i),
            }
            for i in range(50)
        ],
    )
    _insert(
        engine,
        _table(m.ModelMetric),
        [
            {"model_version_id": v + 1, "split": "test", "reference": ref, "name": name, "value": float(rng.random())}
            for v in range(50)
            for ref in ("consensus", "truth")
            for name in ("f_measure", "ahd_nm", "precision", "recall")
        ],
    )
    n_jobs = 5 * 24 * 12
    _insert(
        engine,
        _table(m.JobRun),
        [
            {
                "job": ("ingest", "aggregate", "retire", "train", "publish")[i % 5],
                "status": "ok",
                "result": {},
                "started_at": now - timedelta(minutes=5 * i),
                "finished_at": now - timedelta(minutes=5 * i - 1),
            }
            for i in range(n_jobs)
        ],
    )
    n_events = n_classifications // 10
    _insert(
        engine,
        _table(m.Event),
        [
            {
                "created_at": now - timedelta(seconds=int(age_s[i])),
                "level": "info",
                "kind": "ingest.skip" if i % 10 else "retire",
                "message": "…",
                "payload": {},
            }
            for i in range(n_events)
        ],
    )
    return {
        "subjects": n_subjects,
        "volunteers": n_volunteers,
        "classifications": n_classifications,
        "events": n_events,
        "job_runs": n_jobs,
    }


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    name = f"etchacell_bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bench(url: str, label: str, n: int, repeat: int) -> None:
    engine = make_engine(url)
    upgrade(engine)
    started = time.perf_counter()
    counts = populate(engine, n)
    fill_s = time.perf_counter() - started
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE"))
    print(f"\n{label}: {counts}; filled in {fill_s:.1f} s")
    print(f"{'query':40s} {'median ms':>10s} {'max ms':>10s} {'rows':>6s}")
    for name, query in load_queries().items():
        times = []
        rows = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            rows = len(run_query(engine, query).rows)
            times.append((time.perf_counter() - t0) * 1000)
        print(f"{name:40s} {statistics.median(times):10.1f} {max(times):10.1f} {rows:6d}")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifications", type=int, default=200_000)
    parser.add_argument("--postgres", help="admin URL of a PostgreSQL server (a throw-away database is made)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench(f"sqlite:///{Path(tmp) / 'bench.db'}", "SQLite", args.classifications, args.repeat)
    if args.postgres:
        with postgres_database(args.postgres) as url:
            bench(url, "PostgreSQL", args.classifications, args.repeat)


if __name__ == "__main__":
    main()
