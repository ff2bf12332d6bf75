"""Time every named ops query on a database shaped like a live Etch a Cell project.

Usage:
    .venv/bin/python bench/bench_queries.py [--classifications 200000] [--postgres URL] [--repeat 5]

Builds a fresh database (SQLite file in a temporary folder; with --postgres, also a throw-away
database created through that admin URL), fills it with a synthetic project history (subjects,
classifications from volunteers whose effort is heavy-tailed as on Zooniverse, consensus, training
runs, model versions, job runs and events: ``etchacell_loop.simulation.ops_history``), then prints
the median wall time of each query and the time the fill took.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from history_db import filled_engine, postgres_database

from etchacell_loop.db.queries import load_queries, run_query


def bench(url: str, label: str, n: int, repeat: int, data_dir: Path) -> None:
    engine, report, fill_s = filled_engine(url, data_dir, n)
    print(f"\n{label}: {dict(report.rows)}; filled in {fill_s:.1f} s")
    print(f"{'query':40s} {'median ms':>10s} {'max ms':>10s} {'rows':>6s}")
    for name, query in load_queries().items():
        times = []
        rows = 0
        for _ in range(repeat):
            t0 = time.perf_counter()
            rows = len(run_query(engine, query).rows)
            times.append((time.perf_counter() - t0) * 1000)
        print(f"{name:40s} {statistics.median(times):10.1f} {max(times):10.1f} {rows:6d}")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifications", type=int, default=200_000)
    parser.add_argument("--postgres", help="admin URL of a PostgreSQL server (a throw-away database is made)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench(f"sqlite:///{Path(tmp) / 'bench.db'}", "SQLite", args.classifications, args.repeat, Path(tmp))
        if args.postgres:
            with postgres_database(args.postgres) as url:
                bench(url, "PostgreSQL", args.classifications, args.repeat, Path(tmp) / "pg")


if __name__ == "__main__":
    main()
