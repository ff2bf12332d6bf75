"""Time every dashboard page over HTTP on a database holding a million classifications.

Usage:
    .venv/bin/python bench/bench_dashboard.py [--classifications 1000000] [--postgres URL] [--repeat 5]
        [--keep DIR]

Fills a fresh database with a synthetic project history (SQLite in a temporary folder; with
--postgres also a throw-away PostgreSQL database), serves the dashboard on a free local port with
uvicorn, exactly as ``etchacell dashboard`` does, and requests each page: the first request (nothing cached:
every figure read from the database) and the median and worst of ``--repeat`` more (the costly
whole-table figures then come from the dashboard's short cache, ``dashboard.cache_s``). ``--keep DIR``
keeps the SQLite database and its images in DIR (and reuses them when DIR already holds one, upgrading
its schema first), so the pages can be opened by hand.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from history_db import filled_engine, postgres_database
from sqlalchemy.engine import Engine

from etchacell_loop.config import load_settings
from etchacell_loop.dashboard.app import create_app
from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.migrate import upgrade
from etchacell_loop.sandbox.harness import free_port

TOKEN = "bench-operator-token"


def pages(engine: Engine) -> list[tuple[str, str]]:
    """Every page, with a consensus slice, its overlay and a training run that exist in the history."""
    with engine.connect() as conn:
        consensus_id = conn.exec_driver_sql("SELECT MAX(id) FROM consensus_result").scalar_one()
        run_id = conn.exec_driver_sql("SELECT MAX(id) FROM training_run").scalar_one()
    return [
        ("overview", "/"),
        ("subject sets", "/subject-sets"),
        ("consensus", "/consensus"),
        ("consensus, flagged volunteers", "/consensus?flagged_only=true"),
        ("consensus, page 20", "/consensus?skip=1000"),
        ("consensus slice", f"/consensus/{consensus_id}"),
        ("consensus overlay PNG", f"/consensus/{consensus_id}/overlay.png"),
        ("models", "/models"),
        ("training run", f"/runs/{run_id}"),
        ("events", "/events"),
        ("events, warnings, page 2", "/events?level=warning&since=-60d&skip=100"),
    ]


@contextmanager
def serving(url: str, data_dir: Path) -> Iterator[str]:
    """The dashboard over ``url`` on a free port, in a thread; yields its base URL."""
    os.environ.update(
        {
            "ETCHACELL_DATABASE_URL": url,
            "ETCHACELL_DATA_DIR": str(data_dir),
            "ETCHACELL_DASHBOARD__OPERATOR_TOKEN": TOKEN,
        }
    )
    settings = load_settings(None)
    engine = make_engine(url)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, engine), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()


def time_pages(base: str, engine: Engine, repeat: int) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    print(f"{'page':32s} {'first ms':>9s} {'median ms':>10s} {'max ms':>8s} {'KiB':>7s}")
    with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
        for label, path in pages(engine):
            times = []
            size = 0
            for _ in range(repeat + 1):
                started = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                size = len(response.content)
            rest = times[1:] or times
            print(f"{label:32s} {times[0]:9.0f} {statistics.median(rest):10.0f} {max(rest):8.0f} {size / 1024:7.1f}")


def bench(url: str, label: str, n: int, repeat: int, data_dir: Path, reuse: bool = False) -> None:
    if reuse:
        engine = make_engine(url)
        started = time.perf_counter()
        upgrade(engine)
        fill = f"reused (schema upgraded in {time.perf_counter() - started:.1f} s)"
    else:
        engine, report, fill_s = filled_engine(url, data_dir, n)
        fill = f"{report.rows['classification']:,} classifications, filled in {fill_s:.0f} s"
    print(f"\n{label}: {fill}")
    with serving(url, data_dir) as base:
        time_pages(base, engine, repeat)
    engine.dispose()


def main() -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifications", type=int, default=1_000_000)
    parser.add_argument("--postgres", help="admin URL of a PostgreSQL server (a throw-away database is made)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="keep (or reuse) the SQLite database and images in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        database = folder / "dashboard-bench.db"
        bench(f"sqlite:///{database}", "SQLite", args.classifications, args.repeat, folder, reuse=database.exists())
        if args.postgres:
            with postgres_database(args.postgres) as url:
                bench(url, "PostgreSQL", args.classifications, args.repeat, Path(tmp) / "pg")


if __name__ == "__main__":
    main()
