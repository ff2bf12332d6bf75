"""A held-out set of exports a user might hand ``etchacell aggregate``: each one is read (gzip), or
gives one line and exit status 2, or its bad rows are skipped and recorded; never a traceback."""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from etchacell_loop.annotations import EXPORT_COLUMNS
from etchacell_loop.cli.app import app
from tests.aggregate.test_run import ExportWriter, fem_mark, square

runner = CliRunner()
PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00"


def aggregate(export: Path, tmp_path: Path) -> Result:
    return runner.invoke(app, ["aggregate", str(export), "--out", str(tmp_path / "out"), "--workers", "0"])


def good_export() -> bytes:
    """Three volunteers tracing one subject: a valid export."""
    export = ExportWriter()
    for i in range(3):
        export.add(1, f"u{i}", [fem_mark(0, square(50, 50, 100))], frames=1)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    writer.writerows(export.rows)
    return buffer.getvalue().encode()


def with_rows(*rows: dict[str, str]) -> bytes:
    """The good export followed by rows whose fields are overridden (the rest copied from a good row)."""
    data = good_export()
    first = next(csv.DictReader(io.StringIO(data.decode())))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow([{**first, **row}[c] for c in EXPORT_COLUMNS])
    return data + buffer.getvalue().encode()


def assert_one_line_exit_2(result: Result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_a_gzip_export_is_read_whatever_its_name(tmp_path: Path) -> None:
    for name in ("export.csv.gz", "export.csv"):  # a gzip export renamed .csv is still gzip
        path = tmp_path / name
        path.write_bytes(gzip.compress(good_export()))
        result = aggregate(path, tmp_path)
        assert result.exit_code == 0, result.output
        assert "3 classifications" in result.stdout and "1 subjects" in result.stdout


UNREADABLE: dict[str, tuple[Callable[[], bytes], str]] = {
    "a PNG renamed .csv": (
        lambda: PNG_HEADER + os.urandom(200),
        "not a classification export: the file is a PNG image",
    ),
    "random bytes": (lambda: b"\x00\x01\x02\xff" + os.urandom(4000), "not a classification export"),
    "latin-1 text": (lambda: "classification_id;café\n".encode("latin-1"), "not UTF-8 text"),
    "a zip archive": (lambda: b"PK\x03\x04" + os.urandom(100), "a zip archive (unzip it"),
    "an empty file": (lambda: b"", "the export is empty (no header row)"),
    "only the header": (lambda: good_export().splitlines(keepends=True)[0], "no classification rows after the header"),
    "a header cut short": (lambda: good_export()[:60], "missing column(s)"),
    "a gzip cut short": (lambda: gzip.compress(good_export() * 20)[:300], "damaged or cut short"),
    "a damaged gzip": (
        lambda: (lambda z: z[:20] + bytes(b ^ 0xFF for b in z[20:60]) + z[60:])(gzip.compress(good_export())),
        "gzip-compressed export is damaged",
    ),
    "a gzip of a PNG": (lambda: gzip.compress(PNG_HEADER + os.urandom(100)), "not a classification export"),
    "a header with a huge field": (lambda: b"classification_id," + b"x" * 300_000 + b"\n1,2\n", "missing column(s)"),
    "only rows with wrong types": (
        lambda: (
            good_export().splitlines(keepends=True)[0]
            + with_rows({"classification_id": "abc"}, {"workflow_id": "ten"}).splitlines(keepends=True)[-1]
        ),
        "no readable classification: 1 unreadable row(s)",
    ),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_an_unreadable_export_is_one_line_and_exit_2(case: str, tmp_path: Path) -> None:
    make, expected = UNREADABLE[case]
    path = tmp_path / "export.csv"
    path.write_bytes(make())
    assert_one_line_exit_2(aggregate(path, tmp_path), expected)


def test_rows_with_wrong_types_missing_ids_or_huge_fields_are_skipped_and_recorded(tmp_path: Path) -> None:
    huge = '[{"task": "T0", "value": [' + ",".join(['{"frame": 0, "toolType": "point"}'] * 200_000) + "]}]"
    path = tmp_path / "export.csv"
    path.write_bytes(
        with_rows(
            {"classification_id": "abc"},  # wrong type
            {"classification_id": ""},  # missing id
            {"subject_ids": ""},  # no subject
            {"classification_id": "99", "workflow_id": "1.5"},  # wrong type
            {"classification_id": "100", "annotations": huge},  # a line of several megabytes
            {"classification_id": "101", "created_at": "yesterday"},
        )
    )
    result = aggregate(path, tmp_path)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert "unreadable row(s) skipped" in result.stdout
    with (tmp_path / "out" / "issues.csv").open(newline="") as handle:
        issues = list(csv.DictReader(handle))
    assert sum(row["status"] == "unreadable" for row in issues) >= 4


def test_a_directory_says_it_is_one(tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    assert_one_line_exit_2(aggregate(tmp_path / "exports", tmp_path), "is a directory")
    assert_one_line_exit_2(aggregate(tmp_path / "missing.csv", tmp_path), "no such file")


def test_rows_only_of_another_workflow_name_the_workflows(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(good_export())
    result = runner.invoke(
        app, ["aggregate", str(path), "--out", str(tmp_path / "out"), "--workers", "0", "--workflow-id", "77"]
    )
    assert_one_line_exit_2(result, "no classification of workflow 77; the export has workflow(s) 10")
