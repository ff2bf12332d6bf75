"""Start-up time of the everyday ``etchacell`` commands: median wall seconds per command, warm.

Usage:
    .venv/bin/python bench/bench_startup.py [--repeat 7] [--command "model list"]...

Each command runs once to warm the file cache (not counted), then ``--repeat`` times, against a
fresh migrated SQLite database in a temporary data directory (so ``status`` and ``query`` answer
as they would on a new project). What it measures is the import work a command does before it
can answer: a quick command must not load the model stack, the dashboard or the loop's jobs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = ("--help", "status", "query job_status", "query --list", "config show", "model list", "tick --help")


def etchacell() -> list[str]:
    """The console script beside this interpreter, else ``python -m etchacell_loop``."""
    script = Path(sys.executable).with_name("etchacell")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "etchacell_loop"]


def seconds(command: list[str], env: dict[str, str]) -> float:
    """Wall time of one run; a failing command is an error (its time would mean nothing)."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def bench(commands: list[str], repeat: int, data_dir: Path) -> None:
    env = {**os.environ, "ETCHACELL_DATA_DIR": str(data_dir), "COLUMNS": "120"}
    env.pop("ETCHACELL_DATABASE_URL", None)
    seconds([*etchacell(), "db", "upgrade"], env)
    print(f"{'command':24s} {'median s':>9s} {'min s':>7s} {'max s':>7s}")
    for text in commands:
        command = [*etchacell(), *shlex.split(text)]
        seconds(command, env)  # warm-up, not counted
        times = [seconds(command, env) for _ in range(repeat)]
        print(f"{text:24s} {statistics.median(times):9.2f} {min(times):7.2f} {max(times):7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--command", action="append", help="a command line after `etchacell` (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench(args.command or list(COMMANDS), args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
