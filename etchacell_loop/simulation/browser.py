"""What a classifier front end posts to ``POST /api/classifications``: raw annotations and metadata.

The API stores what the browser sends (reference §2.9, §3.2): the export's ``task_label`` and
``tool_label`` are added only when an export is written. The old front end (PFE) sends
``{"task", "value": [{"tool", "frame", "details", "points": [{"x", "y"}]}]}``; the new one (FEM,
``classifier_version`` 2.0) sends ``{"task", "taskType": "drawing", "value": [{"frame", "toolIndex",
"toolType": "freehandLine", "pathX", "pathY", "details", "markId"}]}``. Strokes are recorded as each
front end records them (:func:`etchacell_loop.simulation.export.record_stroke`); the metadata keys are
those real classifications carry, with the browser's layout sizes from
:func:`etchacell_loop.simulation.export.frame_dimensions`.

Pure functions: records in, JSON-ready dictionaries out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from etchacell_loop.simulation.crowd import SimStroke
from etchacell_loop.simulation.export import FEM_REVISION, Browser, FrontEnd, frame_dimensions, iso_ms

MARK_ID_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Selection:
    """How the subject was selected, as the queue told the browser (``subject_selection_state``)."""

    selected_at: str
    selection_state: str = "normal"
    retired: bool = False
    already_seen: bool = False
    finished_workflow: bool = False
    user_has_finished_workflow: bool = False


@dataclass(frozen=True)
class Visit:
    """One classification session in the browser: who, when, on which subject image."""

    browser: Browser
    front_end: FrontEnd
    session: str
    started_at_s: float
    finished_at_s: float
    workflow_version: str
    frames: int
    target_frame: int
    shape_px: tuple[int, int]  # natural size (rows, columns) of the subject's images
    selection: Selection
    live_project: bool = False


def new_mark_id(rng: np.random.Generator) -> str:
    """An id as FEM gives a new mark (eight base-36 characters)."""
    return "".join(MARK_ID_ALPHABET[int(i)] for i in rng.integers(len(MARK_ID_ALPHABET), size=8))


def api_annotations(
    recorded: Sequence[SimStroke], front_end: FrontEnd, task: str, mark_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The ``annotations`` a front end posts for strokes as it recorded them (FEM: with mark ids)."""
    if front_end is FrontEnd.PFE:
        return [{"task": task, "value": [_pfe_mark(stroke) for stroke in recorded]}]
    ids = list(mark_ids) if mark_ids is not None else [""] * len(recorded)
    if len(ids) != len(recorded):
        raise ValueError("one mark id per recorded stroke")
    marks = [_fem_mark(stroke, mark_id) for stroke, mark_id in zip(recorded, ids, strict=True)]
    return [{"task": task, "taskType": "drawing", "value": marks}]


def _pfe_mark(stroke: SimStroke) -> dict[str, Any]:
    points = [{"x": x, "y": y} for x, y in zip(_numbers(stroke.x_px), _numbers(stroke.y_px), strict=True)]
    return {"tool": 0, "frame": stroke.frame, "details": [], "points": points}


def _fem_mark(stroke: SimStroke, mark_id: str) -> dict[str, Any]:
    mark: dict[str, Any] = {
        "frame": stroke.frame,
        "toolIndex": 0,
        "toolType": "freehandLine",
        "pathX": _numbers(stroke.x_px),
        "pathY": _numbers(stroke.y_px),
        "details": [],
    }
    if mark_id:
        mark["markId"] = mark_id
    return mark


def _numbers(values: Any) -> list[float | int]:
    """Whole numbers as integers, as the browser's JSON writes them."""
    return [int(v) if float(v).is_integer() else float(v) for v in np.asarray(values).tolist()]


def api_metadata(visit: Visit, frames_drawn: Sequence[int]) -> dict[str, Any]:
    """The ``metadata`` a front end posts with a classification."""
    browser = visit.browser
    selection = visit.selection
    common: dict[str, Any] = {
        "source": "api",
        "session": visit.session,
        "viewport": {"width": browser.viewport_width_px, "height": browser.viewport_height_px},
        "started_at": iso_ms(visit.started_at_s),
        "user_agent": browser.user_agent,
        "utc_offset": str(browser.utc_offset_s),
        "finished_at": iso_ms(visit.finished_at_s),
        "live_project": visit.live_project,
        "user_language": browser.language,
        "workflow_version": visit.workflow_version,
        "subject_selection_state": {
            "retired": selection.retired,
            "selected_at": selection.selected_at,
            "already_seen": selection.already_seen,
            "selection_state": selection.selection_state,
            "finished_workflow": selection.finished_workflow,
            "user_has_finished_workflow": selection.user_has_finished_workflow,
        },
    }
    if visit.front_end is FrontEnd.FEM:
        entry = frame_dimensions(browser, visit.shape_px, fem=True)
        return {
            **common,
            "feedback": {},
            "revision": FEM_REVISION,
            "user_group_ids": [],
            "subject_flagged": False,
            "classifier_version": "2.0",
            "subject_dimensions": [entry] * visit.frames,
        }
    return {**common, "interventions": {"opt_in": False, "messageShown": False}, **_pfe_dimensions(visit, frames_drawn)}


def _pfe_dimensions(visit: Visit, frames_drawn: Sequence[int]) -> dict[str, Any]:
    """PFE fills a frame's entry only once the frame is shown: those up to the target and any drawn on."""
    shown = set(range(visit.target_frame + 1)) | set(frames_drawn)
    entry = frame_dimensions(visit.browser, visit.shape_px, fem=False)
    return {"subject_dimensions": [entry if frame in shown else None for frame in range(max(shown) + 1)]}
