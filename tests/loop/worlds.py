"""Two identical loops to compare: each world is its own sandbox project and database, holding the
same subjects and the same volunteers' classifications, so whatever differs at the end was made by
the loop itself.

The classifications are drawn once, by simulated volunteers in a third project, then replayed into
each world in the same order (each volunteer's classifications under one browser session), so both
worlds hold identical inputs before the loop starts.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.db.engine import make_engine
from etchacell_loop.sandbox.harness import SandboxProcess
from tests.panoptes.support import sandbox_environment
from tests.simulation.sandbox_support import project_classifications

runner = CliRunner()

LOOP_SETTINGS = {
    "ETCHACELL_IMAGING__CROP_SIZE_PX": "360",
    "ETCHACELL_IMAGING__SUBJECT_SIZE_PX": "180",
    "ETCHACELL_RETIREMENT__POLICY": "fixed-count",
    "ETCHACELL_RETIREMENT__MIN_CLASSIFICATIONS": "3",
    "ETCHACELL_RETIREMENT__MAX_CLASSIFICATIONS": "3",
    "ETCHACELL_TRAINING__MIN_NEW_CONSENSUS_SLICES": "100000",  # only `etchacell retrain` queues a run
    "ETCHACELL_TRAINING__EPOCHS": "1",
    "ETCHACELL_TRAINING__STEPS_PER_EPOCH": "2",
    "ETCHACELL_TRAINING__HEARTBEAT_TIMEOUT_S": "10",
    "ETCHACELL_PANOPTES__PAGE_SIZE": "3",  # ingest in several pages, so a kill can land between two
    "ETCHACELL_JOBS__INGEST_INTERVAL_S": "5",
    "ETCHACELL_JOBS__AGGREGATE_INTERVAL_S": "5",
    "ETCHACELL_JOBS__RETIRE_INTERVAL_S": "5",
    "ETCHACELL_JOBS__TRAIN_INTERVAL_S": "5",
    "COLUMNS": "200",
}
LOOP_JOBS = ("ingest", "aggregate", "retire", "train")


@dataclass(frozen=True)
class World:
    """One project and its database, and the environment every command of this world runs in."""

    name: str
    project: dict[str, int]
    db_url: str
    env: dict[str, str]
    engine: Engine  # for reading the world's rows; the loop's processes have their own

    def cli(self, *args: str) -> str:
        """Run an ``etchacell`` command in this world; it must succeed."""
        result = runner.invoke(app, list(args), env=self.env)
        assert result.exit_code == 0, f"{self.name}: etchacell {' '.join(args)}\n{result.output}"
        return result.output

    def process_env(self) -> dict[str, str]:
        """The environment of this world's daemon and worker processes."""
        return {**os.environ, **self.env}

    def rows(self, sql: str) -> list[sa.Row[Any]]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql)))


def make_world(name: str, sandbox: SandboxProcess, db_url: str, data_dir: Path, retirement_count: int = 30) -> World:
    """A fresh sandbox project (Panoptes retiring a subject after ``retirement_count`` classifications)
    and a migrated database, configured for the loop."""
    project = sandbox.seed(display_name=name, retirement_count=retirement_count)
    env = {
        **LOOP_SETTINGS,
        "ETCHACELL_DATA_DIR": str(data_dir),
        **sandbox_environment(sandbox, project, db_url),
    }
    world = World(name, project, db_url, env, make_engine(db_url))
    world.cli("db", "upgrade")
    return world


def upload_subjects(world: World, subjects: Path) -> None:
    world.cli("subjects", "upload", str(subjects), "--subject-set", "traced",
              "--split", "cell01=train", "--split", "cell02=validation")  # fmt: skip


def subjects_by_upload_key(sandbox: SandboxProcess, project_id: int) -> dict[int, str]:
    """Panoptes subject id → the upload key the loop gave it (the same key in every world)."""
    return {s["id"]: s["metadata"]["#upload_key"] for s in sandbox.inventory(project_id)["subjects"]}


def replay_classifications(
    sandbox: SandboxProcess, source_project_id: int, world: World, per_subject: Callable[[str], int] | None = None
) -> int:
    """Post the source project's classifications into ``world``, in their order, each on the world's
    subject with the same upload key and under a session naming its volunteer; how many.
    ``per_subject`` (upload key → a number) replays only each subject's first ones."""
    source_keys = subjects_by_upload_key(sandbox, source_project_id)
    world_subjects = {
        key: subject for subject, key in subjects_by_upload_key(sandbox, world.project["project_id"]).items()
    }
    posted: Counter[str] = Counter()
    for rank, item in enumerate(
        sorted(project_classifications(sandbox, source_project_id), key=lambda c: int(c["id"]))
    ):
        (subject,) = item["links"]["subjects"]
        key = source_keys[int(subject)]
        if per_subject is not None and posted[key] >= per_subject(key):
            continue
        metadata = {**item["metadata"], "session": _session(item, rank)}
        sandbox.bulk_classifications(
            world.project["segmentation_workflow_id"],
            [world_subjects[key]],
            annotations=item["annotations"],
            metadata=metadata,
        )
        posted[key] += 1
    return posted.total()


def _session(item: Mapping[str, Any], rank: int) -> str:
    """The volunteer of a source classification, as a browser session: the signed-in user, else the
    anonymous volunteer's own session, else one of its own."""
    user = item["links"].get("user")
    if user is not None:
        return f"user-{user}"
    return str(item["metadata"].get("session") or f"anonymous-{rank}")


# --- the content of a world, free of ids -----------------------------------------------------------


def snapshot(world: World, sandbox: SandboxProcess) -> dict[str, Any]:
    """What the loop made of the world's inputs, by content: ids differ between worlds, so subjects
    are named by upload key, ROIs by name and classifications by their rank in Panoptes order."""
    keys = {r.id: r.upload_key for r in world.rows("SELECT id, upload_key FROM subject")}
    ranks = {
        r.panoptes_id: rank
        for rank, r in enumerate(world.rows("SELECT panoptes_id FROM classification ORDER BY panoptes_id"))
    }
    return {
        "subjects": sorted(
            (r.upload_key, r.roi, r.slice_index, str(r.kind), str(r.upload_state), str(r.retirement_state))
            for r in world.rows(
                "SELECT s.upload_key, r.name AS roi, s.slice_index, s.kind, s.upload_state, s.retirement_state"
                " FROM subject s JOIN roi r ON r.id = s.roi_id"
            )
        ),
        "classifications": sorted(
            (
                ranks[r.panoptes_id],
                keys.get(r.subject_id),
                r.volunteer_key,
                _digest(r.raw_annotations),
                str(r.parse_status),
                r.n_marks,
            )
            for r in world.rows(
                "SELECT panoptes_id, subject_id, volunteer_key, raw_annotations, parse_status, n_marks"
                " FROM classification"
            )
        ),
        "current_consensus": sorted(
            (
                r.roi,
                r.slice_index,
                str(r.kind),
                r.n_classifications,
                r.n_volunteers,
                ranks[r.last_classification_id],
                r.area_px,
            )
            for r in world.rows(
                "SELECT r.name AS roi, c.slice_index, c.kind, c.n_classifications, c.n_volunteers,"
                " c.last_classification_id, c.area_px FROM consensus_result c JOIN roi r ON r.id = c.roi_id"
                " WHERE c.is_current"
            )
        ),
        "decisions": sorted(
            (keys[r.subject_id], str(r.outcome), r.policy, r.n_classifications, str(r.sync_state))
            for r in world.rows(
                "SELECT subject_id, outcome, policy, n_classifications, sync_state FROM retirement_decision"
            )
        ),
        "retired_on_panoptes": retired_on_panoptes(sandbox, world.project["project_id"]),
    }


def retired_on_panoptes(sandbox: SandboxProcess, project_id: int) -> list[str]:
    """Upload keys of the project's subjects retired on Panoptes (sorted, repeats kept)."""
    keys = subjects_by_upload_key(sandbox, project_id)
    return sorted(keys[r["subject_id"]] for r in sandbox.inventory(project_id)["retired"])


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def duplicates(world: World) -> dict[str, list[Any]]:
    """Rows that must be unique by content and are not: current consensus per slice, RETIRE decisions
    per subject, subjects per upload key, classifications per Panoptes id."""
    checks = {
        "current consensus per slice": "SELECT roi_id, slice_index, kind, COUNT(*) AS n FROM consensus_result"
        " WHERE is_current GROUP BY roi_id, slice_index, kind HAVING COUNT(*) > 1",
        "retire decisions per subject": "SELECT subject_id, COUNT(*) AS n FROM retirement_decision"
        " WHERE outcome = 'retire' GROUP BY subject_id HAVING COUNT(*) > 1",
        "subjects per Panoptes id": "SELECT panoptes_id, COUNT(*) AS n FROM subject"
        " WHERE panoptes_id IS NOT NULL GROUP BY panoptes_id HAVING COUNT(*) > 1",
        "classifications per Panoptes id": "SELECT panoptes_id, COUNT(*) AS n FROM classification"
        " GROUP BY panoptes_id HAVING COUNT(*) > 1",
    }
    return {name: [tuple(r) for r in world.rows(sql)] for name, sql in checks.items()}


def tick_until_settled(world: World, sandbox: SandboxProcess, max_rounds: int = 6) -> int:
    """Run the loop's jobs by hand until a round changes nothing; how many rounds it took."""
    before = snapshot(world, sandbox)
    for rounds in range(1, max_rounds + 1):
        world.cli("tick", *LOOP_JOBS)
        after = snapshot(world, sandbox)
        if after == before:
            return rounds
        before = after
    raise AssertionError(f"{world.name}: still changing after {max_rounds} rounds of tick")


def as_text(value: Mapping[str, Any]) -> str:
    return json.dumps(value, indent=1, default=str)
