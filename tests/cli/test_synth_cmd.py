"""``etchacell synth volume`` as an operator meets it: a real volume on disk, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.imaging.volume import open_volume

runner = CliRunner()
SMALL = ["--shape", "6,128,160", "--seed", "5"]


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


def test_a_volume_is_written_with_its_rois_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "hela.zarr"
    result = runner.invoke(app, ["synth", "volume", str(out), *SMALL, "--voxel-size-nm", "50,12,12"])
    assert result.exit_code == 0, result.output
    with open_volume(out) as opened:
        rois, voxel_size_nm = list(opened.rois), opened.voxel_size_nm
    assert [r.name for r in rois] == ["cell01"]
    assert "cell01" in result.output and "wrote" in result.output
    assert voxel_size_nm == (50.0, 12.0, 12.0)


def test_an_existing_output_is_kept_unless_overwrite_is_given(tmp_path: Path) -> None:
    out = tmp_path / "hela.zarr"
    assert runner.invoke(app, ["synth", "volume", str(out), *SMALL]).exit_code == 0
    before = (out / ".zattrs").read_bytes()
    result = runner.invoke(app, ["synth", "volume", str(out), *SMALL, "--seed", "6"])
    assert result.exit_code == 2
    assert "already exists" in result.output and "Traceback" not in result.output
    assert (out / ".zattrs").read_bytes() == before
    result = runner.invoke(app, ["synth", "volume", str(out), *SMALL, "--seed", "6", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / ".zattrs").read_bytes() != before


def test_overwrite_never_deletes_a_folder_that_is_not_a_zarr_store(tmp_path: Path) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["synth", "volume", str(out), *SMALL, "--overwrite"])
    assert result.exit_code == 2
    assert "not a zarr store" in result.output
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--shape", "16,256", "--shape"),
        ("--shape", "a,b,c", "--shape"),
        ("--shape", "0,256,256", "--shape"),
        ("--shape", "4,2.5,256", "--shape"),
        ("--shape", "4,16,256", "at least 32"),
        ("--voxel-size-nm", "50,10", "--voxel-size-nm"),
        ("--voxel-size-nm", "50,-10,10", "--voxel-size-nm"),
        ("--cells", "0", "--cells"),
    ],
)
def test_bad_options_give_one_line_and_exit_status_2(tmp_path: Path, option: str, value: str, named: str) -> None:
    out = tmp_path / "bad.zarr"
    result = runner.invoke(app, ["synth", "volume", str(out), option, value])
    assert result.exit_code == 2, result.output
    assert named in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()
