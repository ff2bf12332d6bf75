"""Training sets from real database rows and real mask files: settled consensus only, records,
snapshot, hash, refusals."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy.engine import Engine
from sqlmodel import Session

from etchacell_loop.config import RetirementSettings, Settings
from etchacell_loop.db.models import (
    Classification,
    ClassificationSource,
    ConsensusKind,
    ConsensusResult,
    DataSplit,
    RetirementState,
    Roi,
    Subject,
    WorkflowRole,
)
from etchacell_loop.loop.retire_job import record_decision, run_retire
from etchacell_loop.model.training_set import DISPUTED, TrainingSetError, build_training_set
from etchacell_loop.retirement import FixedCount, Update
from tests.factories import add_project, add_workflow
from tests.model.training_rows import add_consensus, add_volume
from tests.panoptes.support import session_factory

CROP = (100, 120, 64, 48)


def _mask(path: Path, radius: int) -> str:
    yy, xx = np.mgrid[:24, :32]
    area = (yy - 12) ** 2 + (xx - 16) ** 2 <= radius**2
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(area, 255, 0).astype(np.uint8)).save(path)
    return str(path)


def _roi(session: Session, volume_id: int, name: str, split: DataSplit) -> Roi:
    roi = Roi(volume_id=volume_id, name=name, x=100, y=120, z=0, width=64, height=48, depth=16, split=split)
    session.add(roi)
    session.flush()
    return roi


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def populated(migrated_engine: Engine, data_dir: Path) -> dict[str, int]:
    """Train ROI cell01, validation ROI cell02, unassigned cell03, and the cases to skip or prefer."""
    masks = data_dir / "masks"
    with Session(migrated_engine) as session:
        volume = add_volume(session, "hela", "file:///volumes/hela.zarr")
        assert volume.id is not None
        train = _roi(session, volume.id, "cell01", DataSplit.TRAIN)
        val = _roi(session, volume.id, "cell02", DataSplit.VALIDATION)
        loose = _roi(session, volume.id, "cell03", DataSplit.UNASSIGNED)
        ids = {
            "volunteer5": add_consensus(session, train, 5, _mask(masks / "v5.png", 8), crop_xywh=CROP).id,
            "corrected5": add_consensus(
                session, train, 5, "masks/c5.png", crop_xywh=None, kind=ConsensusKind.CORRECTED
            ).id,  # relative URI under the data directory; crop from a sibling subject of the ROI
            "train6": add_consensus(session, train, 6, _mask(masks / "t6.png", 9), crop_xywh=CROP).id,
            "val5": add_consensus(session, val, 5, _mask(masks / "val5.png", 7), crop_xywh=CROP, scaling_factor=2.5).id,
            "missing": add_consensus(session, train, 7, str(masks / "gone.png"), crop_xywh=CROP).id,
            "loose": add_consensus(session, loose, 1, _mask(masks / "l1.png", 5), crop_xywh=CROP).id,
            "no_mask": add_consensus(session, val, 6, None, crop_xywh=CROP).id,
        }
        _mask(masks / "c5.png", 10)
        old = add_consensus(session, val, 9, _mask(masks / "old.png", 3), crop_xywh=CROP, settled=False)
        old.is_current = False  # superseded, never retired on
        session.commit()
    return {name: value for name, value in ids.items() if value is not None}


def test_current_masks_become_labelled_slices(
    migrated_engine: Engine, data_dir: Path, populated: dict[str, int]
) -> None:
    with Session(migrated_engine) as session:
        training_set = build_training_set(session, data_dir)
    by_id = {s.consensus_id: s for s in training_set.slices}
    assert set(by_id) == {populated["corrected5"], populated["train6"], populated["val5"]}
    corrected = by_id[populated["corrected5"]]
    assert corrected.mask_path == str(data_dir / "masks" / "c5.png")
    assert (corrected.z, corrected.split, corrected.crop_xywh, corrected.scaling_factor) == (5, "train", CROP, 2.0)
    assert corrected.volume_path == "/volumes/hela.zarr" and corrected.roi.name == "cell01"
    assert (corrected.roi.x, corrected.roi.y, corrected.roi.depth) == (100, 120, 16)
    assert by_id[populated["val5"]].scaling_factor == 2.5 and by_id[populated["val5"]].split == "validation"
    snapshot = training_set.snapshot
    assert snapshot.counts == {"train": 2, "validation": 1, "test": 0}
    assert snapshot.consensus_ids["validation"] == (populated["val5"],)
    assert snapshot.skipped == {"roi without split": 1, "mask file missing": 1}
    stored = snapshot.as_json()
    assert stored["data_hash"] == snapshot.data_hash and len(snapshot.data_hash) == 64


def test_the_hash_follows_mask_contents_and_splits(
    migrated_engine: Engine, data_dir: Path, populated: dict[str, int]
) -> None:
    def current_hash() -> str:
        with Session(migrated_engine) as session:
            return build_training_set(session, data_dir).snapshot.data_hash

    first = current_hash()
    assert current_hash() == first
    _mask(data_dir / "masks" / "t6.png", 11)  # same file name, new consensus
    changed = current_hash()
    assert changed != first
    with Session(migrated_engine) as session:
        loose = session.get(Roi, 3)
        assert loose is not None and loose.name == "cell03"
        loose.split = DataSplit.TEST
        session.commit()
        grown = build_training_set(session, data_dir)
    assert grown.snapshot.data_hash != changed and grown.snapshot.counts["test"] == 1


def test_nothing_to_train_on_is_refused(migrated_engine: Engine, data_dir: Path) -> None:
    with Session(migrated_engine) as session, pytest.raises(TrainingSetError, match="nothing to train on"):
        build_training_set(session, data_dir)


def test_no_validation_roi_is_refused(migrated_engine: Engine, data_dir: Path) -> None:
    with Session(migrated_engine) as session:
        volume = add_volume(session, "hela", "/volumes/hela.zarr")
        assert volume.id is not None
        train = _roi(session, volume.id, "cell01", DataSplit.TRAIN)
        add_consensus(session, train, 3, _mask(data_dir / "m.png", 6), crop_xywh=CROP)
        add_consensus(session, train, 4, _mask(data_dir / "n.png", 6), crop_xywh=None, scaling_factor=2.0)
        session.commit()
        with pytest.raises(TrainingSetError, match="no consensus slice in a validation ROI"):
            build_training_set(session, data_dir)


def _classified(session: Session, workflow_id: int, consensus: ConsensusResult, numbers: range) -> None:
    """Classifications ``numbers`` of the consensus's subject, the newest what the consensus accounts for."""
    subject = session.get(Subject, consensus.subject_id)
    assert subject is not None and subject.id is not None
    for number in numbers:
        panoptes_id = 1000 * subject.id + number
        session.add(
            Classification(
                panoptes_id=panoptes_id, workflow_id=workflow_id, subject_panoptes_id=0, subject_id=subject.id,
                volunteer_key=f"user:{panoptes_id}", created_at=datetime(2024, 3, 4, tzinfo=UTC),
                source=ClassificationSource.API, raw_annotations="[]",
            )
        )  # fmt: skip
        consensus.last_classification_id = panoptes_id
    session.add(consensus)


def _newer_consensus(session: Session, old: ConsensusResult, mask_uri: str) -> ConsensusResult:
    """A later aggregation of the same slice, as the aggregate job stores it (the old row demoted)."""
    old.is_current = False
    session.add(old)
    session.flush()
    newer = ConsensusResult(
        roi_id=old.roi_id, slice_index=old.slice_index, subject_id=old.subject_id, kind=old.kind,
        n_classifications=old.n_classifications + 1, n_volunteers=old.n_volunteers + 1,
        last_classification_id=old.last_classification_id + 1, mask_uri=mask_uri,
    )  # fmt: skip
    session.add(newer)
    session.flush()
    return newer


def _consensus(session: Session, row: ConsensusResult) -> ConsensusResult:
    fresh = session.get(ConsensusResult, row.id)
    assert fresh is not None
    return fresh


def test_only_consensus_the_retire_job_settled_is_trained_on(migrated_engine: Engine, data_dir: Path) -> None:
    """The retire job (the paper's rule, here at 3 classifications) settles some slices; the others
    wait and are counted. A slice whose consensus moved on after its decision (a neighbouring
    flipbook's marks) trains on the row that was judged."""
    masks = data_dir / "masks"
    with Session(migrated_engine) as session:
        workflow = add_workflow(session, add_project(session), 77, WorkflowRole.SEGMENTATION, "trace")
        assert workflow.id is not None
        workflow_id = workflow.id
        volume = add_volume(session, "hela", "/volumes/hela.zarr")
        assert volume.id is not None
        train = _roi(session, volume.id, "cell01", DataSplit.TRAIN)
        val = _roi(session, volume.id, "cell02", DataSplit.VALIDATION)
        rows = {
            name: add_consensus(session, roi, z, _mask(masks / f"{name}.png", 8), crop_xywh=CROP, settled=False)
            for name, roi, z in (("done", train, 3), ("moved", train, 4), ("waiting", train, 5), ("val", val, 3))
        }
        for name, row in rows.items():
            _classified(session, workflow_id, row, range(2 if name == "waiting" else 3))
        session.commit()
        ids = {name: row.id for name, row in rows.items()}
    settings = Settings(
        data_dir=data_dir,
        retirement=RetirementSettings(policy="fixed-count", min_classifications=3, max_classifications=3),
    )
    factory = session_factory(migrated_engine)
    assert run_retire(factory, None, settings).retire_decisions == 3
    with Session(migrated_engine) as session:
        newer = _newer_consensus(session, _consensus(session, rows["moved"]), _mask(masks / "later.png", 10))
        session.commit()
        training_set = build_training_set(session, data_dir)
    snapshot = training_set.snapshot
    assert snapshot.consensus_ids == {"train": (ids["done"], ids["moved"]), "validation": (ids["val"],), "test": ()}
    assert snapshot.skipped == {"consensus not settled": 1}  # slice 5: 2 of 3 classifications
    by_id = {s.consensus_id: s for s in training_set.slices}
    assert newer.id not in by_id and by_id[ids["moved"]].mask_path == str(masks / "moved.png")

    with Session(migrated_engine) as session:  # slice 5's third classification, aggregated, then judged
        waiting = _consensus(session, rows["waiting"])
        third = _newer_consensus(session, waiting, _mask(masks / "waiting-3.png", 9))
        _classified(session, workflow_id, third, range(2, 3))
        session.commit()
        third_id = third.id
    assert run_retire(factory, None, settings).retire_decisions == 1
    with Session(migrated_engine) as session:
        grown = build_training_set(session, data_dir).snapshot
    assert grown.consensus_ids["train"] == (ids["done"], ids["moved"], third_id) and grown.skipped == {}
    assert grown.data_hash != snapshot.data_hash


def test_keep_decisions_reactivated_subjects_and_unsettled_corrections(migrated_engine: Engine, data_dir: Path) -> None:
    """A KEEP does not settle; a subject made active again is not settled any more; a settled
    volunteer consensus stands in for a correction of the slice that has not settled yet."""
    masks = data_dir / "masks"
    with Session(migrated_engine) as session:
        volume = add_volume(session, "hela", "/volumes/hela.zarr")
        assert volume.id is not None
        train = _roi(session, volume.id, "cell01", DataSplit.TRAIN)
        val = _roi(session, volume.id, "cell02", DataSplit.VALIDATION)
        volunteer = add_consensus(session, train, 2, _mask(masks / "v2.png", 8), crop_xywh=CROP)
        add_consensus(session, train, 2, _mask(masks / "c2.png", 9), crop_xywh=CROP, kind=ConsensusKind.CORRECTED,
                      settled=False)  # fmt: skip
        kept = add_consensus(session, train, 3, _mask(masks / "v3.png", 8), crop_xywh=CROP, settled=False)
        kept_subject = session.get(Subject, kept.subject_id)
        assert kept_subject is not None
        record_decision(session, kept_subject, kept, FixedCount(30), [Update(8, None)], "consensus")
        reactivated = add_consensus(session, train, 4, _mask(masks / "v4.png", 8), crop_xywh=CROP)
        again = session.get(Subject, reactivated.subject_id)
        assert again is not None
        again.retirement_state = RetirementState.ACTIVE  # an operator wants more classifications
        validation = add_consensus(session, val, 2, _mask(masks / "val2.png", 7), crop_xywh=CROP)
        session.commit()
        snapshot = build_training_set(session, data_dir).snapshot
    assert snapshot.consensus_ids["train"] == (volunteer.id,)
    assert snapshot.consensus_ids["validation"] == (validation.id,)
    assert snapshot.skipped == {"consensus not settled": 2}  # slices 3 and 4


def test_nothing_settled_is_refused_and_says_why(migrated_engine: Engine, data_dir: Path) -> None:
    with Session(migrated_engine) as session:
        volume = add_volume(session, "hela", "/volumes/hela.zarr")
        assert volume.id is not None
        train = _roi(session, volume.id, "cell01", DataSplit.TRAIN)
        add_consensus(session, train, 3, _mask(data_dir / "m.png", 6), crop_xywh=CROP, settled=False)
        session.commit()
        with pytest.raises(TrainingSetError, match=r"no settled consensus .*1 consensus not settled"):
            build_training_set(session, data_dir)


def test_a_disputed_correction_is_not_trained_on(migrated_engine: Engine, data_dir: Path) -> None:
    """A settled corrected consensus whose verdict is ``disputed`` (too few volunteers changed the machine
    outline) is left out, and its slice keeps its settled traced consensus; ``confirmed``, ``corrected``
    and a row without a verdict are used."""
    masks = data_dir / "masks"

    def corrected(session: Session, roi: Roi, z: int, verdict: dict[str, object] | None) -> ConsensusResult:
        row = add_consensus(session, roi, z, _mask(masks / f"c{z}.png", 9), crop_xywh=CROP,
                            kind=ConsensusKind.CORRECTED)  # fmt: skip
        if verdict is not None:
            row.params = {"method": "cria", "correction": verdict}
            session.add(row)
        return row

    with Session(migrated_engine) as session:
        volume = add_volume(session, "hela", "/volumes/hela.zarr")
        assert volume.id is not None
        train = _roi(session, volume.id, "cell01", DataSplit.TRAIN)
        val = _roi(session, volume.id, "cell02", DataSplit.VALIDATION)
        traced = add_consensus(session, train, 1, _mask(masks / "v1.png", 8), crop_xywh=CROP)
        corrected(session, train, 1, {"state": "disputed", "kept": 5, "edited": 1, "deleted": 0})
        corrected(session, train, 2, {"state": "disputed"})  # nothing traced to fall back on
        used = [
            corrected(session, train, 3, {"state": "confirmed"}),
            corrected(session, train, 4, {"state": "corrected"}),
            corrected(session, train, 5, None),  # an older row, made before verdicts were stored
        ]
        add_consensus(session, val, 1, _mask(masks / "val1.png", 7), crop_xywh=CROP)
        session.commit()
        snapshot = build_training_set(session, data_dir).snapshot
    assert snapshot.consensus_ids["train"] == tuple(sorted([traced.id or 0, *(row.id or 0 for row in used)]))
    assert snapshot.skipped == {DISPUTED: 2}
