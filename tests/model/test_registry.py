"""The model registry on a real database: registration, automatic promotion, promotion history."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy.exc
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from etchacell_loop.db.models import DataSplit, Event, MetricReference, ModelMetric, ModelVersion
from etchacell_loop.model import registry


def _train_output(tmp_path: Path, name: str) -> Path:
    """A folder as training leaves it: the model file and a preset beside it."""
    folder = tmp_path / "staging" / name
    folder.mkdir(parents=True)
    (folder / "model.keras").write_bytes(b"weights of " + name.encode())
    (folder / "preset.json").write_text('{"name": "small"}')
    return folder / "model.keras"


def _register(
    session: Session, tmp_path: Path, f_measure: float | None, ahd_nm: float = 100.0, data_hash: str = "ab" * 32
) -> ModelVersion:
    figures = {"ahd_nm": ahd_nm, "loss": 0.3, "precision": float("nan")}
    if f_measure is not None:
        figures["f_measure"] = f_measure
    version = registry.register_model_version(
        session,
        artifact_path=_train_output(tmp_path, f"{f_measure}-{ahd_nm}-{data_hash[:4]}"),
        data_dir=tmp_path / "data",
        preset="small",
        architecture="unet-2.5d",
        metrics={"validation": {"consensus": figures}, "test": {"truth": {"f_measure": 0.5}}},
        training_data={"counts": {"train": 3, "validation": 1}},
        data_hash=data_hash,
    )
    registry.auto_promote(session, version)
    session.commit()
    return version


def test_registration_moves_the_artefact_and_writes_long_form_metrics(migrated_engine: Engine, tmp_path: Path) -> None:
    with Session(migrated_engine) as session:
        first = _register(session, tmp_path, 0.8, data_hash="1a2b3c4d" + "0" * 56)
        second = _register(session, tmp_path, 0.7)
        assert first.version == "v0001-1a2b3c4d" and second.version == "v0002-abababab"
        artefact = Path(first.artifact_uri)
        assert artefact == (tmp_path / "data" / "models" / "v0001-1a2b3c4d" / "model.keras").resolve()
        assert artefact.read_bytes().startswith(b"weights of 0.8") and (artefact.parent / "preset.json").is_file()
        rows = session.exec(select(ModelMetric).where(ModelMetric.model_version_id == first.id)).all()
        figures = {(r.split, r.reference, r.name): r.value for r in rows}
        assert figures == {
            (DataSplit.VALIDATION, MetricReference.CONSENSUS, "f_measure"): 0.8,
            (DataSplit.VALIDATION, MetricReference.CONSENSUS, "ahd_nm"): 100.0,
            (DataSplit.VALIDATION, MetricReference.CONSENSUS, "loss"): 0.3,
            (DataSplit.TEST, MetricReference.TRUTH, "f_measure"): 0.5,
        }  # NaN precision left out
        assert first.training_data["parent"] is None
        assert second.training_data["parent"] == {"id": first.id, "version": first.version}


def test_only_a_better_model_is_promoted_automatically(migrated_engine: Engine, tmp_path: Path) -> None:
    with Session(migrated_engine) as session:
        first = _register(session, tmp_path, 0.80, ahd_nm=120.0)
        assert first.promoted  # the first version is promoted when none is
        worse = _register(session, tmp_path, 0.75)
        assert not worse.promoted and first.promoted
        why = session.exec(select(Event).where(Event.kind == "model.not_promoted")).one()
        assert worse.version in why.message and "0.7500 is not higher" in why.message
        tie_worse_ahd = _register(session, tmp_path, 0.80, ahd_nm=130.0)
        assert not tie_worse_ahd.promoted
        tie_better_ahd = _register(session, tmp_path, 0.80, ahd_nm=90.0)
        assert tie_better_ahd.promoted
        no_figures = _register(session, tmp_path, None)
        assert not no_figures.promoted
        better = _register(session, tmp_path, 0.9)
        assert better.promoted
        promoted = session.exec(select(ModelVersion).where(ModelVersion.promoted)).all()
        assert [v.version for v in promoted] == [better.version]


def test_rollback_walks_back_through_the_promotion_history(migrated_engine: Engine, tmp_path: Path) -> None:
    with Session(migrated_engine) as session:
        a = _register(session, tmp_path, 0.5)
        b = _register(session, tmp_path, 0.6)
        c = _register(session, tmp_path, 0.55)  # not promoted: never in the history
        d = _register(session, tmp_path, 0.7)
        registry.promote_version(session, c, by="alice", reason="looks better on cell 3")
        session.commit()
        assert registry.promotion_stack(session) == [a.id, b.id, d.id, c.id]
        by_hand = session.exec(select(Event).where(Event.kind == "model.promoted")).all()[-1]
        assert by_hand.payload["by"] == "alice" and by_hand.payload["previous"]["version"] == d.version
        assert registry.rollback(session, by="bob").id == d.id
        session.commit()
        assert registry.rollback(session, by="bob").id == b.id
        session.commit()
        assert registry.rollback(session, by="bob").id == a.id
        session.commit()
        with pytest.raises(registry.RegistryError, match="first promoted version"):
            registry.rollback(session, by="bob")
        assert [v.version for v in session.exec(select(ModelVersion).where(ModelVersion.promoted))] == [a.version]


def test_rollback_without_a_promoted_version_is_refused(migrated_engine: Engine) -> None:
    with Session(migrated_engine) as session, pytest.raises(registry.RegistryError, match="nothing to roll back"):
        registry.rollback(session, by="bob")


def test_the_database_refuses_two_promoted_versions(migrated_engine: Engine, tmp_path: Path) -> None:
    with Session(migrated_engine) as session:
        _register(session, tmp_path, 0.5)
        other = _register(session, tmp_path, 0.4)
        other.promoted = True  # bypassing promote_version
        session.add(other)
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            session.commit()


def test_unknown_version_names_the_newest(migrated_engine: Engine, tmp_path: Path) -> None:
    with Session(migrated_engine) as session:
        known = _register(session, tmp_path, 0.5)
        with pytest.raises(registry.RegistryError, match=f"no model version 'v9'.*{known.version}"):
            registry.find_version(session, "v9")
