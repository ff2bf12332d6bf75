"""A worker process whose job never ends on its own: ``python -m tests.loop.endless_worker DB_URL DATA_DIR``.

Used to send a real SIGTERM to a real worker process. It prints ``training <run id>`` once the job
has started and its first epoch's heartbeat is recorded, then keeps "training" until stopped.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from pathlib import Path

from sqlmodel import Session

from etchacell_loop.config import Settings
from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.models import TrainingRun
from etchacell_loop.loop.worker import Heartbeat, SessionFactory, install_stop_signals, run_worker


def endless_job(session_factory: SessionFactory, settings: Settings, run: TrainingRun, heartbeat: Heartbeat) -> int:
    """Epochs of 50 ms until the heartbeat says stop."""
    heartbeat({"loss": 1.0})
    print(f"training {run.id}", flush=True)
    while True:
        time.sleep(0.05)
        heartbeat({"loss": 0.5})


def main(db_url: str, data_dir: str) -> int:
    stop = threading.Event()
    install_stop_signals(stop)
    engine = make_engine(db_url)
    try:
        factory = functools.partial(Session, engine, expire_on_commit=False)
        report = run_worker(factory, Settings(data_dir=Path(data_dir)), endless_job, stop=stop, poll_s=0.05)
    finally:
        engine.dispose()
    return 0 if report.released == 1 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
