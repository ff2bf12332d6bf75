"""Training sets from real database rows and real mask files: records, snapshot, hash, refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy.engine import Engine
from sqlmodel import Session

from etchacell_loop.db.models import ConsensusKind, DataSplit, Roi
from etchacell_loop.model.training_set import TrainingSetError, build_training_set
from tests.model.training_rows import add_consensus, add_volume

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
        old = add_consensus(session, val, 9, _mask(masks / "old.png", 3), crop_xywh=CROP)
        old.is_current = False
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
