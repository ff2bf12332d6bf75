"""A separate process that uploads or ingests, for tests that SIGKILL it halfway.

Run from the repository root as ``python -m tests.panoptes.crash_worker JOB.json``. Settings come
from the environment like any etchacell process (``ETCHACELL_DATABASE_URL``,
``ETCHACELL_PANOPTES__*``; the client secret only there).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from sqlmodel import Session

from etchacell_loop.config import load_settings
from etchacell_loop.db.engine import make_engine
from etchacell_loop.db.models import SubjectSet, Workflow
from etchacell_loop.loop.ingest import ingest_classifications
from etchacell_loop.panoptes.gateway import connect
from etchacell_loop.panoptes.upload import upload_subjects
from tests.panoptes.support import FAST_POLICY, upload_from_json


def main(job: dict[str, Any]) -> None:
    settings = load_settings()
    engine = make_engine(settings.effective_database_url)

    def factory() -> Session:
        return Session(engine, expire_on_commit=False)

    with connect(settings.panoptes, FAST_POLICY) as gateway, factory() as session:
        if job["mode"] == "upload":
            subject_set = session.get(SubjectSet, job["subject_set"])
            assert subject_set is not None
            uploads = [upload_from_json(item) for item in job["uploads"]]
            upload_subjects(factory, gateway, subject_set, uploads, max_attempts=8, link_batch=job["link_batch"])
        else:
            workflow = session.get(Workflow, job["workflow"])
            assert workflow is not None
            ingest_classifications(factory, gateway, workflow, job["project"], job["page_size"])


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text()))
