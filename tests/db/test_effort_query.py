"""The named query ``volunteer_effort`` on SQLite and PostgreSQL: real rows, its Python step, and the
figures worked out by hand (``tests/db/effort_world.py``); a query's ``-- compute:`` header."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from etchacell_loop.db.queries import COMPUTATIONS, QueryError, get_query, parse_query_file, render_sql, run_query
from etchacell_loop.effort import EFFORT_COLUMNS, INPUT_COLUMNS
from tests.db.effort_world import EXPECTED, build_effort_world

QUERY = get_query("volunteer_effort")


def test_effort_per_round_from_real_rows(migrated_engine: Engine) -> None:
    build_effort_world(migrated_engine)
    result = run_query(migrated_engine, QUERY)
    assert result.columns == EFFORT_COLUMNS
    assert result.as_dicts() == [EXPECTED[0], EXPECTED[1], EXPECTED[2]]


def test_the_sql_selects_the_rows_the_python_step_reads(migrated_engine: Engine) -> None:
    build_effort_world(migrated_engine)
    plain = run_query(migrated_engine, replace(QUERY, compute=None))
    assert plain.columns == INPUT_COLUMNS
    kinds = [row["row_kind"] for row in plain.as_dicts()]
    assert kinds.count("slice") == 3 + 2 + 1  # settled subjects only, monitoring subjects not again
    assert kinds.count("classification") == 6 + 4 + 3
    monitoring = [row for row in plain.as_dicts() if row["row_kind"] == "monitoring"]
    assert [(r["loop_round"], r["model_version"], r["subject_kind"], r["slice_index"]) for r in monitoring] == [
        (1, "v0001-5eed0001", "raw", 10)
    ] * 2  # the settled monitoring tracing of a settled slice, charged to the version it monitors


def test_a_query_names_a_known_python_step(tmp_path: Path) -> None:
    assert QUERY.compute == "volunteer_effort" and "volunteer_effort" in COMPUTATIONS
    bad = tmp_path / "bad.sql"
    bad.write_text("-- title: Bad\n-- compute: astrology\nSELECT 1 AS one\n", encoding="utf-8")
    with pytest.raises(QueryError, match="unknown compute step 'astrology'"):
        parse_query_file(bad)
    plain = tmp_path / "plain.sql"
    plain.write_text("-- title: Plain\nSELECT 1 AS one\n", encoding="utf-8")
    assert parse_query_file(plain).compute is None


def test_pasted_sql_says_it_selects_rows_not_figures() -> None:
    for target in ("plain", "grafana", "metabase"):
        first, _, rest = render_sql(QUERY, target).partition("\n")
        assert first.startswith("-- the rows behind volunteer_effort") and rest == QUERY.sql
