"""Where files shipped beside the code live: Alembic migrations and the named ops queries.

In a source checkout they sit at the top of the repository (``migrations/``, ``ops/queries/``);
in an installed wheel they are bundled under ``etchacell_loop/_bundled/``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE_DIR.parent


def _first_existing(*candidates: Path) -> Path:
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"none of {', '.join(map(str, candidates))} exists; is the package installed fully?")


def migrations_dir() -> Path:
    """The Alembic script directory."""
    return _first_existing(_PACKAGE_DIR / "_bundled" / "migrations", _REPO_ROOT / "migrations")


def queries_dir() -> Path:
    """The folder of named ops queries (``*.sql``)."""
    return _first_existing(_PACKAGE_DIR / "_bundled" / "queries", _REPO_ROOT / "ops" / "queries")
