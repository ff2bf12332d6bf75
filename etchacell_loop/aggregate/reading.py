"""Export rows → placed drawings, one batch at a time (run in worker processes).

Decoding the annotations' JSON is most of the cost of reading an export, so rows travel to the
workers as the text they are and come back as compact records: coordinates as float32 (sub-pixel
precision kept, half the memory of float64), routed to the slices their frames show.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from etchacell_loop import jsontext
from etchacell_loop.annotations import (
    ExportRow,
    IssueCode,
    ParseLimits,
    anonymous_token,
    parse_classification,
    volunteer_key,
)
from etchacell_loop.cria.assembly import Placement, place_tracings
from etchacell_loop.db.models import ParseStatus
from etchacell_loop.subject_metadata import SubjectLayout, export_subject_metadata, subject_layout


@dataclass(frozen=True)
class ReadRow:
    """One export row, read: who drew what on which slices, and what was wrong with it."""

    line: int
    classification_id: int
    subject_id: int
    volunteer: str
    layout: SubjectLayout
    placement: Placement
    status: ParseStatus
    empty: bool
    reasons: tuple[str, ...]


def read_rows(rows: Sequence[ExportRow], limits: ParseLimits) -> list[ReadRow]:
    """Parse a batch of rows (a worker's unit of work)."""
    return [read_row(row, limits) for row in rows]


def read_row(row: ExportRow, limits: ParseLimits) -> ReadRow:
    """Parse one row; nothing here raises on bad content: it becomes ``status`` and ``reasons``."""
    subject_id = row.subject_ids[0] if row.subject_ids else 0
    metadata = _json_mapping(row.metadata)
    layout = subject_layout(subject_id, export_subject_metadata(row.subject_data, subject_id))
    parsed = parse_classification(row.annotations, metadata if metadata is not None else row.metadata, limits)
    placement = place_tracings(parsed.tracings, layout, parsed.frame_sizes)
    compact = Placement(
        {key: tuple(np.asarray(s, dtype=np.float32) for s in strokes) for key, strokes in placement.strokes.items()},
        placement.sizes,
        placement.unplaced_frames,
        placement.own_size,
    )
    token = anonymous_token(metadata) if row.user_id is None else None
    if row.user_id is None and token is None and row.user_name:
        token = row.user_name  # "not-logged-in-<ip token>": one anonymous browser, as far as the export says
    reasons = tuple(str(issue) for issue in parsed.issues if issue.code is not IssueCode.EMPTY)
    reasons += tuple(f"subject metadata: {problem}" for problem in layout.problems)
    return ReadRow(
        line=row.line,
        classification_id=row.classification_id,
        subject_id=subject_id,
        volunteer=volunteer_key(row.user_id, token, row.classification_id),
        layout=layout,
        placement=compact,
        status=parsed.status,
        empty=parsed.empty,
        reasons=reasons,
    )


def _json_mapping(text: str) -> Mapping[str, Any] | None:
    try:
        value = jsontext.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, Mapping) else None
