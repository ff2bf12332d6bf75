"""ROI rows get a split once, by ROI, deterministically; a split once given is kept."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from etchacell_loop.db.models import DataSplit, Roi, Volume
from etchacell_loop.imaging.records import assign_roi_splits


def add_volume(session: Session, name: str, rois: list[str]) -> Volume:
    volume = Volume(
        name=name, storage_uri=f"{name}.zarr", shape_z=10, shape_y=100, shape_x=100,
        voxel_size_z_nm=50, voxel_size_y_nm=10, voxel_size_x_nm=10,
    )  # fmt: skip
    session.add(volume)
    session.flush()
    assert volume.id is not None
    for roi in rois:
        session.add(Roi(volume_id=volume.id, name=roi, x=0, y=0, z=0, width=10, height=10, depth=10))
    session.flush()
    return volume


def test_every_roi_gets_a_split_with_train_and_validation_among_them(migrated_engine: Engine) -> None:
    with Session(migrated_engine) as session:
        volume = add_volume(session, "hela", [f"cell{i:02d}" for i in range(1, 6)])
        splits = assign_roi_splits(session, volume)
        session.commit()
        stored = {r.name: r.split for r in session.exec(select(Roi)).all()}
    assert stored == splits and DataSplit.UNASSIGNED not in stored.values()
    assert {DataSplit.TRAIN, DataSplit.VALIDATION} <= set(stored.values())


def test_the_same_rois_get_the_same_splits_and_a_given_split_is_kept(migrated_engine: Engine) -> None:
    names = [f"cell{i:02d}" for i in range(1, 8)]
    with Session(migrated_engine) as session:
        first = assign_roi_splits(session, add_volume(session, "hela", names))
        second = assign_roi_splits(session, add_volume(session, "hela-copy-with-the-same-rois", names))
        session.commit()
        again = assign_roi_splits(session, session.exec(select(Volume).where(Volume.name == "hela")).one())
        roi = session.exec(select(Roi).where(Roi.name == "cell01", Roi.volume_id == 1)).one()
        kept = DataSplit.TEST if roi.split is not DataSplit.TEST else DataSplit.TRAIN
        roi.split = kept  # an operator's choice
        session.add(roi)
        session.flush()
        after = assign_roi_splits(session, session.exec(select(Volume).where(Volume.name == "hela")).one())
    assert again == first
    assert after["cell01"] is kept
    assert len(set(second.values())) >= 2  # another volume's ROIs are split too (its own draw)
