"""Export rows → placed drawings, one batch at a time (run in worker processes).

Parsing CSV and decoding the annotations' JSON are nearly all the cost of reading an export, so the
reading process only cuts the file into records (:func:`export_records`: whole lines, joined while a
quoted field is open) and the records travel to the workers as bytes. They come back as compact
records: coordinates as float32 (sub-pixel precision kept, half the memory of float64), routed to the
slices their frames show.

An export arrives as the project's CSV or gzip-compressed (``.csv.gz``: what the Panoptes sandbox
and many archives serve). :func:`open_export` tells them apart by their first bytes, not their
name, and turns anything else (an image, an archive, a damaged stream) into one
``ExportFormatError`` line instead of a decoding traceback.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from etchacell_loop import jsontext
from etchacell_loop.annotations import (
    ExportFormatError,
    ExportRow,
    IssueCode,
    ParseLimits,
    RowProblem,
    anonymous_token,
    export_columns,
    export_row,
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
    workflow_id: int
    subject_id: int
    volunteer: str
    layout: SubjectLayout
    placement: Placement
    status: ParseStatus
    empty: bool
    reasons: tuple[str, ...]


Record = tuple[int, bytes]  # (line number where the record starts, its bytes)
MAX_RECORD_BYTES = 256 * 1024 * 1024  # a record longer than this is a quote that never closes
GZIP_MAGIC = b"\x1f\x8b"
# Files people hand over instead of an export, by their first bytes, so the one line can say what it got.
NOT_AN_EXPORT = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a zip archive (unzip it and give the CSV inside)",
    b"BZh": "bzip2-compressed (decompress it, or export it again as CSV)",
    b"\xfd7zXZ": "xz-compressed (decompress it, or export it again as CSV)",
    b"\x28\xb5\x2f\xfd": "zstd-compressed (decompress it, or export it again as CSV)",
    b"SQLite format 3": "an SQLite database",
}


@contextmanager
def open_export(path: Path) -> Iterator[tuple[Iterable[bytes], Callable[[], int]]]:
    """The export's lines as bytes, decompressed when the file is gzip, with a function telling how
    many bytes of the file itself have been read (progress against its size on disk).

    A file that starts like an image, an archive or another compression is refused at once with
    what it looks like; a gzip stream that is damaged or cut short raises ``ExportFormatError``
    where the damage is met."""
    with path.open("rb") as raw:
        start = raw.read(16)
        raw.seek(0)
        kind = next((what for magic, what in NOT_AN_EXPORT.items() if start.startswith(magic)), None)
        if kind is not None:
            raise ExportFormatError(f"not a classification export: the file is {kind}")
        if start.startswith(GZIP_MAGIC):
            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield _gzip_lines(unzipped), raw.tell
        else:
            yield raw, raw.tell


def _gzip_lines(unzipped: gzip.GzipFile) -> Iterator[bytes]:
    """The decompressed lines; a damaged or truncated stream becomes one line saying where."""
    lines = 0
    try:
        for line in unzipped:
            lines += 1
            yield line
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ExportFormatError(
            f"the gzip-compressed export is damaged or cut short after line {lines} ({exc})"
        ) from None


def export_records(handle: Iterable[bytes]) -> Iterator[Record]:
    """The CSV records of an export, as bytes, with the line each starts on.

    A record ends at the end of a line where the count of ``"`` is even: in CSV a quote inside a
    quoted field is doubled, so an open field always leaves the count odd. A file cut short in an
    open field ends with that incomplete record (its parse then reports it)."""
    pending: list[bytes] = []
    quotes = size = 0
    start = 1
    for number, line in enumerate(handle, start=1):
        if not pending:
            start = number
        pending.append(line)
        quotes += line.count(b'"')
        size += len(line)
        if quotes % 2 == 0 or size > MAX_RECORD_BYTES:
            yield start, b"".join(pending)
            pending, quotes, size = [], 0, 0
    if pending:
        yield start, b"".join(pending)


def export_header(record: bytes) -> dict[str, int]:
    """Column positions from the header record (``ExportFormatError`` when it is not an export's:
    binary, not UTF-8, not CSV, or without the columns an export has)."""
    if b"\x00" in record:
        raise ExportFormatError("not a classification export: its first line holds binary data")
    try:
        text = record.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ExportFormatError("not a classification export: its first line is not UTF-8 text") from None
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        header = next(csv.reader([text]), [])
    except csv.Error as exc:
        raise ExportFormatError(f"not a classification export: its first line is not CSV ({exc})") from None
    return export_columns(header)


def read_records(
    records: Sequence[Record], columns: Mapping[str, int], limits: ParseLimits
) -> list[ReadRow | RowProblem]:
    """Parse a batch of records (a worker's unit of work); blank records are skipped."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    rows: list[ReadRow | RowProblem] = []
    for line, record in records:
        try:
            values = next(csv.reader(io.StringIO(record.decode("utf-8"), newline="")), None)
        except (csv.Error, UnicodeDecodeError) as exc:
            rows.append(RowProblem(line, f"unreadable CSV record ({exc})"))
            continue
        if not values:
            continue
        row = export_row(line, values, columns)
        rows.append(read_row(row, limits) if isinstance(row, ExportRow) else row)
    return rows


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
        workflow_id=row.workflow_id,
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
