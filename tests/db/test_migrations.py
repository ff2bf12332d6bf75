"""Migrations go up, down and up again on both backends, and agree with the models."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from etchacell_loop.db import models  # noqa: F401  (registers the tables)
from etchacell_loop.db.migrate import current_revision, downgrade, head_revision, is_up_to_date, upgrade


def _tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade(engine: Engine) -> None:
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert _tables(engine) == set(SQLModel.metadata.tables)

    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert _tables(engine) == set()

    upgrade(engine)
    assert is_up_to_date(engine)
    assert _tables(engine) == set(SQLModel.metadata.tables)


def test_models_and_migrations_agree(migrated_engine: Engine) -> None:
    with migrated_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, SQLModel.metadata)
    assert diff == []


def test_partial_unique_indexes_exist(migrated_engine: Engine) -> None:
    indexes = {ix["name"]: ix for ix in sa.inspect(migrated_engine).get_indexes("model_version")}
    assert indexes["uq_model_version_promoted"]["unique"]
