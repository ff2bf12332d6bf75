"""The documentation names what the code has: every table, query and setting."""

from __future__ import annotations

from pathlib import Path

from sqlmodel import SQLModel

from etchacell_loop.config import known_keys
from etchacell_loop.db import models  # noqa: F401  (registers the tables)
from etchacell_loop.db.queries import load_queries

ROOT = Path(__file__).resolve().parents[1]


def test_architecture_lists_every_table() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [name for name in SQLModel.metadata.tables if f"`{name}`" not in text]
    assert missing == []


def test_readme_lists_every_query_and_setting() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert [name for name in load_queries() if f"`{name}`" not in text] == []
    assert [key for key in known_keys() if f"`{key}`" not in text] == []
