"""The dashboard's three actions — queue a training run, promote a version, roll back — done exactly
as ``etchacell retrain`` and ``etchacell model promote|rollback`` do them, in one transaction each.

Why a module of its own: the same library calls as the CLI (``queue_training_run``, the registry), so
a run queued from the browser is indistinguishable from one queued from a shell, and the refusals
(a run already active, an unknown version) are the same, with the same words.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from etchacell_loop.config import Settings
from etchacell_loop.db.engine import session_scope
from etchacell_loop.db.models import TrainingTrigger
from etchacell_loop.loop.runs import RunAlreadyActive, queue_training_run
from etchacell_loop.model import registry
from etchacell_loop.model.presets import PresetError, get_preset

MAX_REASON_CHARS = 500


class ActionRefused(Exception):
    """The action was not done; the message says why, for the operator. ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def queue_retrain(
    engine: Engine, settings: Settings, *, by: str, reason: str, preset: str | None = None, force: bool = False
) -> int:
    """Queue a manual training run; its id. Refused without a reason, with an unknown preset, or
    (unless ``force``) while another run is queued or running."""
    text = reason.strip()
    if not text:
        raise ActionRefused("say why: a training run needs a reason", status=400)
    if len(text) > MAX_REASON_CHARS:
        raise ActionRefused(f"the reason is longer than {MAX_REASON_CHARS} characters", status=400)
    name = preset or settings.training.preset
    try:
        get_preset(name)
    except PresetError as exc:
        raise ActionRefused(str(exc), status=400) from None
    try:
        with session_scope(engine) as session:
            run = queue_training_run(
                session,
                TrainingTrigger.MANUAL,
                by,
                text,
                name,
                force=force,
                config=settings.training.run_config(),
            )
    except RunAlreadyActive as exc:
        raise ActionRefused(str(exc).replace("use --force", "tick 'queue anyway'")) from None
    assert run.id is not None
    return run.id


def promote(engine: Engine, version: str, *, by: str, reason: str) -> None:
    """Make ``version`` the promoted model, recorded with who did it and why."""
    try:
        with session_scope(engine) as session:
            target = registry.find_version(session, version)
            if target.promoted:
                raise ActionRefused(f"{version} is already the promoted version")
            registry.promote_version(session, target, by=by, reason=reason.strip() or "from the dashboard")
    except registry.RegistryError as exc:
        raise ActionRefused(str(exc), status=404) from None


def rollback(engine: Engine, *, by: str) -> str:
    """Promote again the version promoted before the current one; its name."""
    try:
        with session_scope(engine) as session:
            return registry.rollback(session, by=by).version
    except registry.RegistryError as exc:
        raise ActionRefused(str(exc)) from None
