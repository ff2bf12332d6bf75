"""The model registry: trained versions, their figures, and which one the loop predicts with.

Why these rules:

* A version's files live under ``<data_dir>/models/<version>/`` and its name says its order and its
  data, ``v0003-1a2b3c4d`` (number, then the first 8 hex digits of the training set's
  ``data_hash``), so two versions trained on the same consensus are recognisable at a glance.
* Figures are kept twice: as JSON on the version (``metrics[split][reference][name]``) for display,
  and as :class:`~etchacell_loop.db.models.ModelMetric` rows in long form for SQL that must run on
  SQLite and PostgreSQL alike.
* At most one version is promoted (a partial unique index). Promotion demotes the current one and
  promotes the new one in the caller's transaction, so nobody ever sees two or, after the commit,
  none. A new version is promoted automatically only when it beats the promoted one on the
  validation ROIs against consensus: higher envelope F-measure, ties broken by lower average
  Hausdorff distance. Those are the figures of the model as it is deployed — whole ROIs predicted
  with TAP under the loop's rule and clean-up, scored at the source resolution
  (:mod:`etchacell_loop.model.scoring`) — not the network's figures on validation tiles. A worse
  model never silently replaces a better one; an Event says why.
* The promotion history is the ordered ``model.promoted`` events: each carries the version promoted
  and, for a rollback, ``rollback: true``. Replaying them as a stack (promote pushes, rollback pops)
  gives the version a rollback returns to, and a second rollback goes one further back.

Database functions take a Session and do not commit.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from etchacell_loop.db.models import (
    DataSplit,
    Event,
    EventLevel,
    MetricReference,
    ModelMetric,
    ModelVersion,
)
from etchacell_loop.db.types import utcnow

F_MEASURE = "f_measure"  # envelope F-measure, voxel-wise (paper §4.10)
AHD_NM = "ahd_nm"  # average Hausdorff distance, truth → prediction, in nm
PROMOTED_EVENT = "model.promoted"
VERSION_PATTERN = re.compile(r"^v(\d+)-")
MODELS_DIR = "models"

MetricTable = Mapping[str, Mapping[str, Mapping[str, float]]]  # split → reference → name → value


class RegistryError(Exception):
    """A registry request that cannot be met (unknown version, nothing to roll back to)."""


@dataclass(frozen=True)
class PromotionDecision:
    """Whether a new version was promoted, and the sentence that says why."""

    promoted: bool
    reason: str


def models_dir(data_dir: Path) -> Path:
    """Where every version's folder lives."""
    return data_dir / MODELS_DIR


def version_name(number: int, data_hash: str) -> str:
    """``v0003-1a2b3c4d``: the order of training and the data it saw."""
    return f"v{number:04d}-{data_hash[:8]}"


def next_version_number(session: Session) -> int:
    """One more than the highest number among the registered names."""
    names = session.exec(select(ModelVersion.version)).all()
    numbers = [int(match.group(1)) for name in names if (match := VERSION_PATTERN.match(name))]
    return max(numbers, default=0) + 1


def find_version(session: Session, name: str) -> ModelVersion:
    """The version called ``name``; a one-line error listing a few known names otherwise."""
    version = session.exec(select(ModelVersion).where(ModelVersion.version == name)).first()
    if version is None:
        known = ", ".join(v.version for v in list_versions(session)[:5]) or "none registered"
        raise RegistryError(f"no model version {name!r} (newest: {known})")
    return version


def list_versions(session: Session) -> list[ModelVersion]:
    """Every version, newest first."""
    statement = select(ModelVersion).order_by(col(ModelVersion.created_at).desc(), col(ModelVersion.id).desc())
    return list(session.exec(statement).all())


def promoted_version(session: Session) -> ModelVersion | None:
    """The version the loop predicts with, if any."""
    return session.exec(select(ModelVersion).where(col(ModelVersion.promoted).is_(True))).first()


def register_model_version(
    session: Session,
    *,
    artifact_path: Path,
    data_dir: Path,
    preset: str,
    architecture: str,
    metrics: MetricTable,
    training_data: Mapping[str, Any],
    data_hash: str,
    training_run_id: int | None = None,
    backend: str | None = None,
) -> ModelVersion:
    """Record a trained model: its folder moves to ``<data_dir>/models/<version>/``.

    ``artifact_path`` is the model file inside the folder training wrote; the whole folder moves
    (a preset JSON or history beside the model stays with it). ``training_data`` gets the parent
    (the version promoted now) added under ``"parent"``.
    """
    source_dir = artifact_path.parent
    parent = promoted_version(session)
    snapshot = {**training_data, "parent": _parent_ref(parent)}
    version = _insert_with_next_name(
        session,
        ModelVersion(
            version="",
            training_run_id=training_run_id,
            artifact_uri="",
            preset=preset,
            architecture=architecture,
            backend=backend,
            metrics=_as_json(metrics),
            training_data=snapshot,
            data_hash=data_hash,
        ),
    )
    target_dir = models_dir(data_dir) / version.version
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source_dir), str(target_dir))
    version.artifact_uri = str((target_dir / artifact_path.name).resolve())
    for row in metric_rows(version, metrics):
        session.add(row)
    session.add(
        Event(
            kind="model.registered",
            message=f"model {version.version} registered ({preset}, parent {_parent_name(parent)})",
            training_run_id=training_run_id,
            model_version_id=version.id,
            payload={"version": version.version, "data_hash": data_hash, "parent": _parent_ref(parent)},
        )
    )
    session.flush()
    return version


def metric_rows(version: ModelVersion, metrics: MetricTable) -> list[ModelMetric]:
    """The long form of ``metrics``: one row per split, reference and figure (finite values only)."""
    assert version.id is not None
    rows: list[ModelMetric] = []
    for split, by_reference in metrics.items():
        for reference, figures in by_reference.items():
            for name, value in figures.items():
                if math.isfinite(float(value)):
                    rows.append(
                        ModelMetric(
                            model_version_id=version.id,
                            split=DataSplit(split),
                            reference=MetricReference(reference),
                            name=name,
                            value=float(value),
                        )
                    )
    return rows


def validation_figures(version: ModelVersion) -> tuple[float | None, float | None]:
    """(F-measure, AHD in nm) on the validation ROIs against consensus, where recorded."""
    return split_figures(version, DataSplit.VALIDATION)


def split_figures(version: ModelVersion, split: DataSplit) -> tuple[float | None, float | None]:
    """(F-measure, AHD in nm) on ``split``'s ROIs against consensus, where recorded."""
    figures = version.metrics.get(split.value, {}).get(MetricReference.CONSENSUS.value, {})
    return _number(figures.get(F_MEASURE)), _number(figures.get(AHD_NM))


def beats(candidate: ModelVersion, incumbent: ModelVersion | None) -> PromotionDecision:
    """Does ``candidate`` beat ``incumbent`` on validation? Higher F wins; equal F, lower AHD wins."""
    if incumbent is None:
        return PromotionDecision(True, "no version was promoted")
    f_new, ahd_new = validation_figures(candidate)
    f_old, ahd_old = validation_figures(incumbent)
    if f_new is None:
        return PromotionDecision(False, "it has no validation F-measure against consensus")
    if f_old is None:
        return PromotionDecision(True, f"{incumbent.version} has no validation F-measure")
    if not math.isclose(f_new, f_old, rel_tol=0.0, abs_tol=1e-9):
        better = f_new > f_old
        verb = "higher" if better else "not higher"
        return PromotionDecision(better, f"validation F {f_new:.4f} is {verb} than {incumbent.version}'s {f_old:.4f}")
    if ahd_new is not None and (ahd_old is None or ahd_new < ahd_old):
        return PromotionDecision(True, f"equal validation F, lower AHD ({ahd_new:.1f} nm vs {_nm(ahd_old)})")
    return PromotionDecision(False, f"equal validation F {f_new:.4f} and AHD not lower than {incumbent.version}'s")


def auto_promote(session: Session, version: ModelVersion) -> PromotionDecision:
    """Promote ``version`` when it beats the promoted one; otherwise record why it stays unpromoted."""
    incumbent = promoted_version(session)
    decision = beats(version, incumbent)
    if decision.promoted:
        promote_version(session, version, by="worker", reason=f"automatic: {decision.reason}")
    else:
        session.add(
            Event(
                kind="model.not_promoted",
                level=EventLevel.INFO,
                message=f"model {version.version} not promoted: {decision.reason}",
                model_version_id=version.id,
                training_run_id=version.training_run_id,
                payload={"version": version.version, "promoted": _parent_ref(incumbent), "reason": decision.reason},
            )
        )
        session.flush()
    return decision


def promote_version(session: Session, version: ModelVersion, *, by: str, reason: str, rollback: bool = False) -> None:
    """Make ``version`` the promoted one: demote the current one first (the unique index allows
    at most one), then promote, and record a ``model.promoted`` event for the history."""
    current = promoted_version(session)
    if current is not None and current.id != version.id:
        current.promoted = False
        session.add(current)
        session.flush()
    version.promoted = True
    version.promoted_at = utcnow()
    session.add(version)
    session.flush()
    session.add(
        Event(
            kind=PROMOTED_EVENT,
            message=f"model {version.version} promoted by {by}: {reason}",
            model_version_id=version.id,
            payload={
                "version": version.version,
                "version_id": version.id,
                "previous": _parent_ref(current),
                "by": by,
                "reason": reason,
                "rollback": rollback,
            },
        )
    )
    session.flush()


def promotion_stack(session: Session) -> list[int]:
    """Version ids in promotion order, with rolled-back promotions popped: the last is current."""
    events = session.exec(
        select(Event).where(Event.kind == PROMOTED_EVENT).order_by(col(Event.created_at), col(Event.id))
    ).all()
    stack: list[int] = []
    for event in events:
        version_id = event.payload.get("version_id")
        if not isinstance(version_id, int):
            continue
        if event.payload.get("rollback"):
            if stack:
                stack.pop()
            if not stack or stack[-1] != version_id:
                stack.append(version_id)
        elif not stack or stack[-1] != version_id:
            stack.append(version_id)
    return stack


def rollback(session: Session, *, by: str) -> ModelVersion:
    """Promote the version that was promoted before the current one."""
    current = promoted_version(session)
    if current is None:
        raise RegistryError("no model version is promoted, so there is nothing to roll back")
    stack = promotion_stack(session)
    while stack and stack[-1] != current.id:
        stack.pop()  # promoted outside the history (e.g. set by hand in SQL): start from the current one
    earlier = [version_id for version_id in stack[:-1] if session.get(ModelVersion, version_id) is not None]
    if not earlier:
        raise RegistryError(f"{current.version} is the first promoted version: nothing to roll back to")
    target = session.get(ModelVersion, earlier[-1])
    assert target is not None
    promote_version(session, target, by=by, reason=f"rollback from {current.version}", rollback=True)
    return target


def _insert_with_next_name(session: Session, version: ModelVersion) -> ModelVersion:
    """Insert under the next number. Two workers registering at the same instant may pick the same
    name: the unique constraint refuses the second at this flush (before any file moves), and the
    caller retries in a fresh transaction."""
    version.version = version_name(next_version_number(session), version.data_hash)
    session.add(version)
    session.flush()
    return version


def _as_json(metrics: MetricTable) -> dict[str, Any]:
    return {
        split: {
            reference: {name: float(value) for name, value in figures.items() if math.isfinite(float(value))}
            for reference, figures in refs.items()
        }
        for split, refs in metrics.items()
    }


def _parent_ref(version: ModelVersion | None) -> dict[str, Any] | None:
    return None if version is None else {"id": version.id, "version": version.version}


def _parent_name(version: ModelVersion | None) -> str:
    return "none" if version is None else version.version


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(float(value)):
        return float(value)
    return None


def _nm(value: float | None) -> str:
    return "none" if value is None else f"{value:.1f} nm"
