"""Cutting an export into CSV records without parsing it, and parsing records in a worker."""

from __future__ import annotations

import csv
import io

from etchacell_loop.aggregate.reading import ReadRow, export_header, export_records, read_records
from etchacell_loop.annotations import EXPORT_COLUMNS, ParseLimits, RowProblem


def test_records_follow_quoted_newlines_and_doubled_quotes() -> None:
    text = 'a,b\n1,"two\nlines"\n2,"say ""hi""\n, still open"\n3,plain\n'
    records = list(export_records(io.BytesIO(text.encode())))
    assert [line for line, _ in records] == [1, 2, 4, 6]
    parsed = [next(csv.reader([r.decode()])) for _, r in records]
    assert parsed[1] == ["1", "two\nlines"] and parsed[2] == ["2", 'say "hi"\n, still open']
    assert parsed[3] == ["3", "plain"]


def test_a_file_cut_inside_a_quoted_field_ends_with_that_record() -> None:
    records = list(export_records(io.BytesIO(b'a,b\n1,"open field\nnever closed\n')))
    assert len(records) == 2 and records[1][0] == 2


def test_records_parse_into_rows_or_problems() -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    values = {c: "" for c in EXPORT_COLUMNS}
    values.update(
        classification_id="5", workflow_id="9", created_at="2025-01-21 16:08:41 UTC", subject_ids="77",
        metadata='{"subject_dimensions": [{"naturalWidth": 100, "naturalHeight": 80}]}',
        annotations='[{"task": "T0", "value": [{"frame": 0, "toolType": "freehandLine",'
        ' "pathX": [10, 50, 50, 10], "pathY": [10, 10, 40, 40]}]}]',
    )  # fmt: skip
    writer.writerow([values[c] for c in EXPORT_COLUMNS])
    writer.writerow(["6", "cut short"])
    records = list(export_records(io.BytesIO(out.getvalue().encode())))
    columns = export_header(records[0][1])
    first, second = read_records(records[1:], columns, ParseLimits())
    assert isinstance(first, ReadRow) and first.workflow_id == 9 and first.subject_id == 77
    assert not first.empty and first.volunteer == "anon:classification-5"
    assert isinstance(second, RowProblem) and second.line == 3 and "truncated" in second.message
