"""Helpers the Panoptes and loop tests share: settings for a sandbox, frames, DB rows, inventory checks."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session

from etchacell_loop.config import PanoptesSettings
from etchacell_loop.db.models import Project, SubjectSet, Workflow, WorkflowRole
from etchacell_loop.panoptes.http import RetryPolicy
from etchacell_loop.panoptes.upload import FrameFile, SubjectUpload
from etchacell_loop.sandbox.harness import SandboxProcess
from tests.factories import add_project, add_roi, add_subject_set, add_workflow, row_id

# Small waits so fault tests stay quick; a read timeout well above the sandbox's normal answers.
FAST_POLICY = RetryPolicy(attempts=8, base_s=0.005, max_s=0.05, connect_timeout_s=2.0, read_timeout_s=10.0)
FAULTS_20 = {"error_rate": 0.2, "error_statuses": [500, 502, 503, 429]}


def panoptes_settings(sandbox: SandboxProcess, secret: str | None = None) -> PanoptesSettings:
    return PanoptesSettings(
        endpoint=sandbox.url,
        client_id=sandbox.client_id,
        client_secret=SecretStr(secret if secret is not None else sandbox.client_secret),
    )


def sandbox_environment(sandbox: SandboxProcess, project: Mapping[str, int], db_url: str) -> dict[str, str]:
    """The ``ETCHACELL_*`` variables that point the commands at a sandbox project and a database."""
    return {
        "ETCHACELL_DATABASE_URL": db_url,
        "ETCHACELL_PANOPTES__ENDPOINT": sandbox.url,
        "ETCHACELL_PANOPTES__CLIENT_ID": sandbox.client_id,
        "ETCHACELL_PANOPTES__CLIENT_SECRET": sandbox.client_secret,
        "ETCHACELL_PANOPTES__PROJECT_ID": str(project["project_id"]),
        "ETCHACELL_PANOPTES__SEGMENTATION_WORKFLOW_ID": str(project["segmentation_workflow_id"]),
        "ETCHACELL_PANOPTES__CORRECTION_WORKFLOW_ID": str(project["correction_workflow_id"]),
    }


def session_factory(engine: Engine) -> Callable[[], Session]:
    return lambda: Session(engine, expire_on_commit=False)


def jpeg_bytes(seed: int, size: int = 48) -> bytes:
    """A small real JPEG, different for every seed."""
    rng = random.Random(seed)
    image = Image.new("L", (size, size))
    image.putdata([rng.randrange(256) for _ in range(size * size)])
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return out.getvalue()


def make_uploads(folder: Path, roi_id: int, count: int, frames: int = 5, prefix: str = "vol1") -> list[SubjectUpload]:
    """``count`` flipbooks of ``frames`` JPEG files each, written under ``folder``."""
    uploads = []
    for index in range(count):
        files = []
        for frame in range(frames):
            path = folder / f"{prefix}-{index:04d}-{frame}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg_bytes(index * 100 + frame))
            files.append(FrameFile(path))
        uploads.append(
            SubjectUpload(
                upload_key=f"{prefix}/roi{roi_id}/z{index:04d}",
                roi_id=roi_id,
                slice_index=index,
                frames=tuple(index + offset for offset in range(frames)),
                target_frame=frames // 2,
                files=tuple(files),
                metadata={"slice": index, "#roi": roi_id},
            )
        )
    return uploads


def add_loop_rows(engine: Engine, project: dict[str, int], set_panoptes_id: int | None, name: str) -> dict[str, int]:
    """Project, segmentation workflow, subject set and ROI rows for a seeded sandbox project."""
    with Session(engine) as session:
        project_row = add_project(session, panoptes_id=project["project_id"])
        workflow = add_workflow(
            session, project_row, project["segmentation_workflow_id"], WorkflowRole.SEGMENTATION, "Trace"
        )
        subject_set = add_subject_set(session, project_row, workflow, name, set_panoptes_id)
        roi = add_roi(session)
        ids = {
            "project": row_id(project_row),
            "workflow": row_id(workflow),
            "subject_set": row_id(subject_set),
            "roi": row_id(roi),
        }
        session.commit()
    return ids


def get_row(engine: Engine, model: type[Project] | type[Workflow] | type[SubjectSet], key: int) -> Any:
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(model, key)
        assert row is not None
        return row


def assert_uploaded_once(
    inventory: dict[str, Any], uploads: list[SubjectUpload], real_set: int, staging_name: str
) -> None:
    """Exactly one Panoptes subject per upload key, every blob present and complete, all in the
    real set and none left in staging."""
    by_key: dict[str, list[dict[str, Any]]] = {}
    for subject in inventory["subjects"]:
        by_key.setdefault(subject["metadata"].get("#upload_key"), []).append(subject)
    assert sorted(k for k in by_key if k) == sorted(u.upload_key for u in uploads)
    assert all(len(found) == 1 for found in by_key.values()), {k: len(v) for k, v in by_key.items() if len(v) > 1}
    for upload in uploads:
        (subject,) = by_key[upload.upload_key]
        assert subject["subject_set_ids"] == [real_set]
        sizes = [f.path.stat().st_size for f in upload.files]
        assert [loc["bytes"] for loc in subject["locations"]] == sizes
        assert all(loc["present"] for loc in subject["locations"])
    staging = [s for s in inventory["subject_sets"] if s["display_name"] == staging_name]
    assert len(staging) <= 1
    if staging:
        assert all(staging[0]["id"] not in s["subject_set_ids"] for s in inventory["subjects"])
        assert staging[0]["workflow_ids"] == []


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


def upload_to_json(upload: SubjectUpload) -> dict[str, Any]:
    return {
        "upload_key": upload.upload_key,
        "roi_id": upload.roi_id,
        "slice_index": upload.slice_index,
        "frames": list(upload.frames),
        "target_frame": upload.target_frame,
        "files": [str(f.path) for f in upload.files],
        "metadata": dict(upload.metadata),
    }


def upload_from_json(item: dict[str, Any]) -> SubjectUpload:
    return SubjectUpload(
        upload_key=item["upload_key"],
        roi_id=item["roi_id"],
        slice_index=item["slice_index"],
        frames=tuple(item["frames"]),
        target_frame=item["target_frame"],
        files=tuple(FrameFile(Path(p)) for p in item["files"]),
        metadata=item["metadata"],
    )


REPO_ROOT = Path(__file__).resolve().parents[2]


def start_worker(
    job: dict[str, Any], job_file: Path, database_url: str, sandbox: SandboxProcess
) -> subprocess.Popen[bytes]:
    """Start ``crash_worker`` on a job; the client secret travels in the environment only."""
    job_file.write_text(json.dumps(job))
    config = job_file.with_suffix(".toml")
    config.write_text("")  # never a developer's ./etchacell.toml
    env = {
        **os.environ,
        "ETCHACELL_CONFIG": str(config),
        "ETCHACELL_DATABASE_URL": database_url,
        "ETCHACELL_PANOPTES__ENDPOINT": sandbox.url,
        "ETCHACELL_PANOPTES__CLIENT_ID": sandbox.client_id,
        "ETCHACELL_PANOPTES__CLIENT_SECRET": sandbox.client_secret,
    }
    log = job_file.with_suffix(".log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.panoptes.crash_worker", str(job_file)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    return process


def kill_when(process: subprocess.Popen[bytes], condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """SIGKILL the worker as soon as ``condition`` holds; fail if it finished or never got there."""
    reached = wait_until(lambda: condition() or process.poll() is not None, timeout_s)
    still_running = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert reached and still_running, "the worker finished (or stalled) before it could be killed halfway"
