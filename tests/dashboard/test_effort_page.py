"""The models page's volunteer effort per round, over HTTP on a real database (SQLite and PostgreSQL):
the rows of ``tests/db/effort_world.py``, their chart and table; nothing invented on an empty database."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from sqlalchemy.engine import Engine

from etchacell_loop.dashboard.pages import QueryBook, models, round_label
from tests.dashboard.support import dashboard_settings, serving
from tests.db.effort_world import EXPECTED, build_effort_world


def models_page(engine: Engine, data_dir: Path) -> str:
    with serving(dashboard_settings(data_dir, public_read=True), engine) as base, httpx.Client(base_url=base) as client:
        response = client.get("/models")
    assert response.status_code == 200, response.text
    return response.text


def effort_section(page: str) -> str:
    found = re.search(r"<h2>Volunteer effort per round</h2>(.*?)<h2>Training runs</h2>", page, re.S)
    assert found, "the models page has a volunteer effort section"
    return found.group(1)


def test_the_models_page_charts_and_lists_effort_per_round(migrated_engine: Engine, tmp_path: Path) -> None:
    build_effort_world(migrated_engine)
    section = effort_section(models_page(migrated_engine, tmp_path / "data"))
    tooltips = re.findall(r'class="bar"[^>]*><title>([^<]*)</title>', section)
    assert tooltips == [
        "0 tracing volunteer-seconds per settled slice: 80",
        "1 v0001 volunteer-seconds per settled slice: 48",
        "2 v0003 volunteer-seconds per settled slice: 24",
    ]
    rows = re.findall(r"<tr>\s*(.*?)</tr>", section.split("<tbody>")[1], re.S)
    cells = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in rows]
    assert [c[:3] for c in cells] == [
        ["0", "tracing", "—"],
        ["1", "correction", "v0001-5eed0001"],
        ["2", "correction", "v0003-5eed0003"],
    ]
    assert [c[4] for c in cells] == ["6", "6", "3"]  # classifications, round 1's monitoring tracings included
    assert 'title="of which 2 traced monitoring slices from scratch"' in section
    assert [c[9] for c in cells] == ["—", "40%", "70%"]  # time saved against tracing, net of monitoring
    assert [c[10] for c in cells] == ["—", "0.700", "0.900"]  # median correction Dice
    assert 'title="missing 1, negative 1, unparsable 1"' in section
    assert "Round 1 (v0001-5eed0001): <strong>40%</strong> less volunteer time per settled slice" in section


def test_no_settled_slice_no_effort(migrated_engine: Engine, tmp_path: Path) -> None:
    section = effort_section(models_page(migrated_engine, tmp_path / "data"))
    assert "no settled slices yet" in section and "no data yet" in section
    assert "no corrected slice has settled yet" in section


def test_the_page_figures_follow_the_query(migrated_engine: Engine) -> None:
    build_effort_world(migrated_engine)
    view = models(QueryBook(migrated_engine))
    assert view.effort == [EXPECTED[0], EXPECTED[1], EXPECTED[2]]
    assert round_label({"round": None, "task": "correction", "model_version": None}) == "? correction"
    assert round_label({"round": 3, "task": "correction", "model_version": "v3-20261130"}) == "3 v3"
