"""Throughput of the Panoptes gateway against a local sandbox: subjects uploaded and classifications
pulled per second, with and without 20% injected faults.

Usage:
    .venv/bin/python bench/bench_panoptes.py [--subjects 100] [--classifications 20000] [--database-url URL]

Starts ``etchacell sandbox serve`` on 127.0.0.1 in a child process (fresh state in a temporary
folder), makes flipbooks of 5 JPEG frames of about 150 KB (1000 px, quality 90, a gradient with
noise, as the subject pipeline writes them), uploads them idempotently through the real
panoptes-client, bulk-loads classifications and ingests them into a fresh SQLite database (or the
given one, which must be empty or migrated). Faults: 20% of API, token and blob requests answer
500/502/503/429 (429 with ``Retry-After: 1``, which is honoured).
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session

from etchacell_loop.config import PanoptesSettings
from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.migrate import upgrade
from etchacell_loop.db.models import Project, Roi, SubjectSet, Volume, Workflow, WorkflowRole
from etchacell_loop.loop.ingest import ingest_classifications, raw_json
from etchacell_loop.panoptes.gateway import PanoptesGateway, connect
from etchacell_loop.panoptes.http import RetryPolicy
from etchacell_loop.panoptes.upload import FrameFile, SubjectUpload, upload_subjects
from etchacell_loop.sandbox.harness import SandboxProcess, running_sandbox

FRAMES_PER_SUBJECT = 5
FAULTS = {"error_rate": 0.2, "error_statuses": [500, 502, 503, 429], "seed": 1}
POLICY = RetryPolicy(attempts=8, base_s=0.05, max_s=2.0, connect_timeout_s=5.0, read_timeout_s=30.0)
BULK_CHUNK = 5_000


@dataclass
class Waits:
    """The ``sleep`` given to the gateway: sleeps for real, and counts the retries and time waited."""

    count: int = 0
    seconds: float = 0.0

    def __call__(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds
        time.sleep(seconds)

    def since(self, count: int, seconds: float) -> str:
        return f"{self.count - count} retries waited {self.seconds - seconds:.1f} s"


@dataclass
class Rows:
    """The database rows one scenario works on."""

    subject_set: SubjectSet
    workflow: Workflow
    project_panoptes_id: int
    workflow_panoptes_id: int


def make_frames(folder: Path, n_subjects: int, seed: int = 7) -> list[SubjectUpload]:
    """Flipbooks of five ~150 KB JPEGs; each frame is different (noise) so nothing dedupes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:1000, 0:1000]
    gradient = x * 0.15 + y * 0.1
    uploads = []
    for index in range(n_subjects):
        files = []
        for frame in range(FRAMES_PER_SUBJECT):
            pixels = (gradient + rng.normal(0, 3.0, gradient.shape)).clip(0, 255).astype("uint8")
            out = io.BytesIO()
            Image.fromarray(pixels).save(out, format="JPEG", quality=90)
            path = folder / f"s{index:05d}-f{frame}.jpg"
            path.write_bytes(out.getvalue())
            files.append(FrameFile(path))
        uploads.append(
            SubjectUpload(
                upload_key=f"bench/{folder.name}/{index:05d}",
                roi_id=1,
                slice_index=index,
                frames=tuple(range(index, index + FRAMES_PER_SUBJECT)),
                target_frame=FRAMES_PER_SUBJECT // 2,
                files=tuple(files),
                metadata={"slice": index},
            )
        )
    return uploads


def add_rows(engine: Engine, seeded: dict[str, int], set_panoptes_id: int, name: str) -> Rows:
    with Session(engine, expire_on_commit=False) as session:
        project = Project(panoptes_id=seeded["project_id"], display_name=name)
        session.add(project)
        session.flush()
        assert project.id is not None
        workflow = Workflow(
            panoptes_id=seeded["segmentation_workflow_id"],
            project_id=project.id,
            role=WorkflowRole.SEGMENTATION,
            display_name="Trace",
        )
        session.add(workflow)
        session.flush()
        subject_set = SubjectSet(
            panoptes_id=set_panoptes_id, project_id=project.id, workflow_id=workflow.id, display_name=name
        )
        session.add(subject_set)
        session.commit()
    return Rows(subject_set, workflow, seeded["project_id"], seeded["segmentation_workflow_id"])


def ensure_roi(engine: Engine) -> None:
    with Session(engine) as session:
        if session.get(Roi, 1) is not None:
            return
        volume = Volume(
            name="bench", storage_uri="file:///bench", shape_z=1000, shape_y=1000, shape_x=1000,
            voxel_size_z_nm=50, voxel_size_y_nm=10, voxel_size_x_nm=10,
        )  # fmt: skip
        session.add(volume)
        session.flush()
        assert volume.id is not None
        session.add(Roi(id=1, volume_id=volume.id, name="bench", x=0, y=0, z=0, width=1000, height=1000, depth=1000))
        session.commit()


def timed(action: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def bench_upload(
    sandbox: SandboxProcess, gateway: PanoptesGateway, waits: Waits, engine: Engine, folder: Path, n: int, faults: bool
) -> str:
    seeded = sandbox.seed()
    name = f"bench upload {'faults' if faults else 'clean'}"
    set_id = gateway.ensure_subject_set(seeded["project_id"], name, workflow_id=seeded["segmentation_workflow_id"])
    rows = add_rows(engine, seeded, set_id, name)
    folder.mkdir(parents=True)
    uploads = make_frames(folder, n)
    before = (waits.count, waits.seconds)
    if faults:
        sandbox.set_faults(**FAULTS)
    try:
        result, seconds = timed(
            lambda: upload_subjects(
                lambda: Session(engine, expire_on_commit=False), gateway, rows.subject_set, uploads, max_attempts=10
            )
        )
    finally:
        sandbox.clear_faults()
    inventory = sandbox.inventory(seeded["project_id"])
    present = sum(all(loc["present"] for loc in s["locations"]) for s in inventory["subjects"])
    return (
        f"upload {'20% faults' if faults else 'no faults '}: {n} subjects x {FRAMES_PER_SUBJECT} frames "
        f"({_megabytes(uploads):.0f} MB) in {seconds:.1f} s = {n / seconds:.1f} subjects/s "
        f"[created {result.created}, adopted {result.adopted}, linked {result.linked}, failed {result.failed}; "
        f"sandbox holds {len(inventory['subjects'])} subjects, {present} with every frame; {waits.since(*before)}]"
    )


def bench_pull(
    sandbox: SandboxProcess, gateway: PanoptesGateway, waits: Waits, engine: Engine, n: int, points: int, faults: bool
) -> str:
    seeded = sandbox.seed()
    name = f"bench pull {'faults' if faults else 'clean'}"
    set_id = gateway.ensure_subject_set(seeded["project_id"], name, workflow_id=seeded["segmentation_workflow_id"])
    subjects = [gateway.create_subject(seeded["project_id"], set_id, [("image/jpeg", b"x")], {}).id for _ in range(50)]
    rows = add_rows(engine, seeded, set_id, name)
    annotations = [{"task": "T0", "taskType": "drawing", "value": [_mark(i, points) for i in range(2)]}]
    for start in range(0, n, BULK_CHUNK):
        per_subject = max(1, min(BULK_CHUNK, n - start) // len(subjects))
        sandbox.bulk_classifications(seeded["segmentation_workflow_id"], subjects, per_subject, annotations)
    before = (waits.count, waits.seconds)
    if faults:
        sandbox.set_faults(**FAULTS)
    try:
        result, seconds = timed(
            lambda: ingest_classifications(
                lambda: Session(engine, expire_on_commit=False), gateway, rows.workflow, rows.project_panoptes_id
            )
        )
    finally:
        sandbox.clear_faults()
    return (
        f"pull   {'20% faults' if faults else 'no faults '}: {result.inserted} classifications in {seconds:.1f} s "
        f"= {result.inserted / seconds:.0f} classifications/s [{result.pages} pages of 100; annotations "
        f"{len(raw_json(annotations)) / 1000:.1f} kB each (2 lines of {points} points); {waits.since(*before)}]"
    )


def _mark(index: int, points: int) -> dict[str, Any]:
    """A FEM freehand line (real nuclear-envelope tracings run to several hundred points)."""
    angles = np.linspace(0, 2 * np.pi, points)
    return {
        "frame": 2,
        "toolIndex": 0,
        "toolType": "freehandLine",
        "pathX": [round(500 + (200 + index) * float(np.cos(a)), 2) for a in angles],
        "pathY": [round(500 + (180 + index) * float(np.sin(a)), 2) for a in angles],
        "details": [],
    }


def _megabytes(uploads: list[SubjectUpload]) -> float:
    return sum(f.path.stat().st_size for u in uploads for f in u.files) / 1e6


def main() -> None:
    # Retries are logged at INFO by the gateway; the figures (with retry counts) are what matter here.
    logging.basicConfig(level=logging.WARNING, force=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--classifications", type=int, default=20_000)
    parser.add_argument("--points", type=int, default=300, help="points per traced line in each classification")
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, running_sandbox(Path(tmp) / "sandbox") as sandbox:
        engine = make_engine(args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}")
        upgrade(engine)
        ensure_roi(engine)
        settings = PanoptesSettings(
            endpoint=sandbox.url, client_id=sandbox.client_id, client_secret=SecretStr(sandbox.client_secret)
        )
        print(f"sandbox {sandbox.url}, database {engine.url.get_backend_name()}, retry policy {POLICY}")
        waits = Waits()
        with connect(settings, POLICY, sleep=waits) as gateway:
            for faults in (False, True):
                folder = Path(tmp) / ("frames-faults" if faults else "frames-clean")
                print(bench_upload(sandbox, gateway, waits, engine, folder, args.subjects, faults), flush=True)
            for faults in (False, True):
                line = bench_pull(sandbox, gateway, waits, engine, args.classifications, args.points, faults)
                print(line, flush=True)
        engine.dispose()


if __name__ == "__main__":
    main()
