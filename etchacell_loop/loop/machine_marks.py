"""A predicted nucleus as editable marks: the body of a Caesar ``machineLearnt`` reduction.

Why marks and not an overlay: the new front end (FEM) pre-loads the marks of a subject's
``machineLearnt`` reduction as ordinary freehand marks of the drawing task when the workflow has
``configuration.enable_caesar_data_fetching``. Volunteers then move, delete or redraw them in place,
and a mark they leave alone comes back in the classification with its ``markId``: an unedited
machine mark is that volunteer's agreement with the model.

The nucleus area (a boolean mask at the subject image's natural size) becomes one closed line per
outline: several loops where the envelope breaks into islands near the caps, and one per hole. Each
line is simplified (Douglas-Peucker, ``tolerance_px``) so a volunteer edits a handful of vertices,
not thousands, and its coordinates are natural image pixels rounded to 2 decimals, with pixel
(row, column) centred at (x=column, y=row) as :mod:`etchacell_loop.cria.raster` fills them back.

Mark ids are derived from the subject, the frame and the outline's index, so pushing the same
prediction again gives the same ids (Caesar upserts; nothing a volunteer kept changes identity).

Pure functions: arrays in, JSON-ready dictionaries out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from skimage.measure import approximate_polygon, find_contours

REDUCER_KEY = "machineLearnt"
MACHINE_MARK_PREFIX = "ml"  # machine mark ids start with this; FEM's own ids are 8 base-36 characters
DEFAULT_MIN_AREA_PX = 30.0
COORDINATE_DECIMALS = 2

Loop = NDArray[np.float64]  # (n, 2): x, y in natural image pixels, first point repeated last


def envelope_marks(
    area: NDArray[np.bool_],
    frame: int = 0,
    task_key: str = "T0",
    tolerance_px: float = 1.0,
    min_area_px: float = DEFAULT_MIN_AREA_PX,
    *,
    subject_id: int | str = "",
    step_key: str = "S0",
    task_index: int = 0,
    tool_index: int = 0,
) -> list[dict[str, Any]]:
    """FEM freehandLine marks, one per outline of ``area`` (islands and holes alike).

    ``subject_id`` (the Panoptes subject the marks are pushed for) seeds the mark ids; outlines
    enclosing less than ``min_area_px`` are left out (speckle a volunteer would only have to delete).
    """
    if area.ndim != 2:
        raise ValueError(f"the predicted area must be a 2-D mask, not {area.ndim}-D")
    if tolerance_px < 0 or min_area_px < 0:
        raise ValueError("tolerance_px and min_area_px must not be negative")
    marks = []
    for index, loop in enumerate(outline_loops(area, tolerance_px, min_area_px)):
        marks.append(
            {
                "stepKey": step_key,
                "taskIndex": task_index,
                "taskKey": task_key,
                "taskType": "drawing",
                "toolIndex": tool_index,
                "toolType": "freehandLine",
                "frame": frame,
                "markId": machine_mark_id(subject_id, frame, index),
                "pathX": _coordinates(loop[:, 0]),
                "pathY": _coordinates(loop[:, 1]),
            }
        )
    return marks


def outline_loops(area: NDArray[np.bool_], tolerance_px: float = 1.0, min_area_px: float = 0.0) -> list[Loop]:
    """Every boundary loop of ``area``, simplified, as closed (x, y) paths in a fixed order.

    The mask is padded by one pixel first, so a nucleus cut by the image edge still gives closed
    loops (they run along the outermost pixel centres there).
    """
    mask = np.asarray(area, dtype=bool)
    if not mask.any():
        return []
    height, width = mask.shape
    padded = np.pad(mask, 1).astype(np.float32)
    loops: list[Loop] = []
    for contour in find_contours(padded, 0.5):  # type: ignore[no-untyped-call]
        points = np.column_stack([contour[:, 1] - 1.0, contour[:, 0] - 1.0])
        if len(points) < 4 or abs(_shoelace_area(points)) < min_area_px:
            continue
        if not np.array_equal(points[0], points[-1]):
            points = np.vstack([points, points[:1]])
        simplified = np.asarray(approximate_polygon(points, tolerance=tolerance_px), dtype=np.float64)  # type: ignore[no-untyped-call]
        if len(simplified) < 4:  # a triangle or less: keep the unsimplified loop
            simplified = points
        simplified[:, 0] = np.clip(simplified[:, 0], 0.0, width - 1.0)
        simplified[:, 1] = np.clip(simplified[:, 1], 0.0, height - 1.0)
        loops.append(simplified)
    return loops


def machine_mark_id(subject_id: int | str, frame: int, index: int) -> str:
    """A stable id for outline ``index`` of ``frame`` of a subject (same inputs, same id)."""
    digest = hashlib.blake2b(f"{subject_id}/{frame}/{index}".encode(), digest_size=5).hexdigest()
    return f"{MACHINE_MARK_PREFIX}{digest}"


def is_machine_mark_id(mark_id: str | None) -> bool:
    """Whether a classification's ``markId`` is one this module made (an unedited machine mark)."""
    return (
        mark_id is not None
        and len(mark_id) == len(MACHINE_MARK_PREFIX) + 10
        and mark_id.startswith(MACHINE_MARK_PREFIX)
        and all(c in "0123456789abcdef" for c in mark_id[len(MACHINE_MARK_PREFIX) :])
    )


def reduction_body(
    subject_panoptes_id: int, marks: Sequence[dict[str, Any]], subgroup: str | None = None
) -> dict[str, Any]:
    """The JSON body of ``PUT /workflows/:id/reducers/machineLearnt/reductions`` for one subject."""
    reduction: dict[str, Any] = {"subject_id": int(subject_panoptes_id), "data": {"data": list(marks)}}
    if subgroup is not None:
        reduction["subgroup"] = subgroup
    return {"reduction": reduction}


def mark_loops(marks: Sequence[dict[str, Any]], frame: int | None = None) -> list[Loop]:
    """The (x, y) paths of marks (of one frame, when given): what a consumer fills back into a mask."""
    loops = []
    for mark in marks:
        if frame is not None and int(mark.get("frame", 0)) != frame:
            continue
        x = np.asarray(mark.get("pathX") or [], dtype=np.float64)
        y = np.asarray(mark.get("pathY") or [], dtype=np.float64)
        if x.size == y.size and x.size >= 3:
            loops.append(np.column_stack([x, y]))
    return loops


def _coordinates(values: NDArray[np.float64]) -> list[float]:
    return [round(float(v), COORDINATE_DECIMALS) for v in values]


def _shoelace_area(points: Loop) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))
