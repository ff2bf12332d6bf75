"""``etchacell predict`` and ``etchacell evaluate`` as an operator meets them: a real Keras artefact,
a real synthetic volume, a real database, OME-Zarr read back, one-line errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr
from sqlmodel import Session
from typer.testing import CliRunner

from etchacell_loop.cli.app import app
from etchacell_loop.db.engine import make_engine
from etchacell_loop.imaging.synth_volume import SynthSpec, generate_volume
from etchacell_loop.imaging.volume import open_label, open_volume
from etchacell_loop.model import registry
from etchacell_loop.model.presets import get_preset
from etchacell_loop.model.tap import DEFAULT_BATCH_SIZE, DEFAULT_MIN_COMPONENT_VOXELS
from tests.model.envelope_truth import TruthRoi, f_measure, write_truth_roi

keras = pytest.importorskip("keras")

runner = CliRunner()
PATCH = (4, 16, 16)


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture(scope="module")
def artefact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 2.5-D model saved the way training saves one."""
    from etchacell_loop.model.keras_io import save_model

    preset = replace(get_preset("small"), name="tiny", patch_zyx=PATCH, depth=2, start_filters=4)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((PATCH[1], PATCH[2], PATCH[0])),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(PATCH[0], 3, padding="same", activation="sigmoid"),
        ]
    )
    return save_model(model, preset, tmp_path_factory.mktemp("model") / "tiny.keras")


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("volume") / "hela.zarr"
    generate_volume(path, SynthSpec(shape=(6, 256, 256), cells=1, seed=2))
    return path


def test_predict_writes_an_roi_that_the_reader_opens_and_evaluate_scores_it(
    artefact: Path, volume: Path, tmp_path: Path
) -> None:
    roi = open_volume(volume).rois[0]
    out = tmp_path / "pred.zarr"
    args = ["predict", str(volume), "--model", str(artefact), "--out", str(out), "--roi", roi.name]
    result = runner.invoke(app, [*args, "--rule", "majority", "--min-component-voxels", "0", "--chunk", "4,16,16"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and roi.name in result.stdout
    with open_volume(out) as probability, open_label(out, "envelope") as envelope:
        assert probability.voxel_size_nm == (50.0, 50.0, 50.0)
        expected = (roi.clipped((6, 256, 256)).depth, -(-roi.clipped((6, 256, 256)).height // 5))
        assert (probability.shape_zyx[0], probability.shape_zyx[1]) == expected
        assert envelope.shape_zyx == probability.shape_zyx
        assert set(np.unique(envelope.read(0, slice(None), slice(None)))) <= {0, 1}

    table = runner.invoke(app, ["evaluate", str(out), str(volume)])
    assert table.exit_code == 0, table.output
    assert "F-measure" in table.stdout and "AHD (nm)" in table.stdout and "pred.zarr" in table.stdout
    as_json = runner.invoke(app, ["evaluate", str(out), str(out), "--json", "--name", "self"])
    figures = json.loads(as_json.stdout)
    assert figures["name"] == "self" and figures["f_measure"] == 1.0 and figures["ahd_px"] == 0.0


@pytest.fixture(scope="module")
def perfect_artefact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Keras model that returns what it is shown: each slice (a channel) through its own
    steep sigmoid around one half, so an image that is the truth (0 or 1 once normalised) is
    predicted as the truth."""
    from etchacell_loop.model.keras_io import save_model

    patch = (8, 32, 32)
    preset = replace(get_preset("small"), name="perfect", patch_zyx=patch, depth=2, start_filters=4)
    gain = 20.0
    model = keras.Sequential(
        [
            keras.Input((patch[1], patch[2], patch[0])),
            keras.layers.Conv2D(patch[0], 1, activation="sigmoid"),
        ]
    )
    model.layers[-1].set_weights(
        [gain * np.eye(patch[0], dtype=np.float32)[np.newaxis, np.newaxis], np.full(patch[0], -gain / 2, np.float32)]
    )
    return save_model(model, preset, tmp_path_factory.mktemp("perfect") / "perfect.keras")


@pytest.fixture(scope="module")
def truth_roi(tmp_path_factory: pytest.TempPathFactory) -> TruthRoi:
    return write_truth_roi(tmp_path_factory.mktemp("truth-roi"))


def _envelope(path: Path) -> np.ndarray:
    with open_label(path, "envelope") as envelope:
        z, y, x = envelope.shape_zyx
        return np.stack([envelope.read(k, slice(0, y), slice(0, x)) for k in range(z)]).astype(bool)


def _tap_attrs(path: Path) -> dict[str, object]:
    attrs = zarr.open_group(path, mode="r").attrs["etchacell"]
    assert isinstance(attrs, dict)
    tap = attrs["tap"]
    assert isinstance(tap, dict)
    return tap


def test_predict_with_its_defaults_keeps_a_true_envelope(
    perfect_artefact: Path, truth_roi: TruthRoi, tmp_path: Path
) -> None:
    out = tmp_path / "pred.zarr"
    args = ["predict", str(truth_roi.path), "--model", str(perfect_artefact), "--out", str(out)]
    result = runner.invoke(app, [*args, "--roi", truth_roi.roi.name, "--chunk", "32,48,48"])  # chunks < the ROI
    assert result.exit_code == 0, result.output
    assert "in 1 piece(s)" in result.stdout
    recorded = {
        key: value for key, value in _tap_attrs(out).items() if key in ("rule", "min_component_voxels", "keep_largest")
    }
    assert recorded == {"rule": "all", "min_component_voxels": DEFAULT_MIN_COMPONENT_VOXELS, "keep_largest": True}
    assert f_measure(_envelope(out), truth_roi.truth) >= 0.99
    assert "every piece was smaller" not in result.stdout
    too_big = runner.invoke(
        app,
        [*args, "--roi", truth_roi.roi.name, "--overwrite", "--min-component-voxels", str(10 * truth_roi.truth.size)],
    )
    assert too_big.exit_code == 0 and "in 0 piece(s)" in too_big.stdout
    assert "every piece was smaller than --min-component-voxels" in too_big.stdout  # says why it is empty


def test_keep_largest_is_on_for_an_roi_and_off_for_the_whole_volume_unless_told(
    artefact: Path, volume: Path, tmp_path: Path
) -> None:
    base = ["predict", str(volume), "--model", str(artefact), "--min-component-voxels", "0", "--chunk", "4,16,16"]
    for name, extra, expected in (
        ("roi", ["--roi", "cell01"], True),
        ("roi-all-pieces", ["--roi", "cell01", "--no-keep-largest"], False),
        ("whole", [], False),
        ("whole-largest", ["--keep-largest"], True),
    ):
        out = tmp_path / f"{name}.zarr"
        result = runner.invoke(app, [*base, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        assert _tap_attrs(out)["keep_largest"] is expected, name
    shown = runner.invoke(app, ["predict", "--help"])
    assert "--no-keep-largest" in shown.stdout and "on with --roi, off for the whole volume" in shown.stdout


def test_the_batch_size_is_the_option_or_a_cpus_and_is_recorded(artefact: Path, volume: Path, tmp_path: Path) -> None:
    base = ["predict", str(volume), "--model", str(artefact), "--min-component-voxels", "0", "--roi", "cell01"]
    for name, extra, expected in (("given", ["--batch-size", "3"], 3), ("automatic", [], DEFAULT_BATCH_SIZE)):
        out = tmp_path / f"{name}.zarr"
        result = runner.invoke(app, [*base, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        assert _tap_attrs(out)["batch_size"] == expected, name  # this machine has no accelerator
    shown = runner.invoke(app, ["predict", "--help"])
    assert "--batch-size" in shown.stdout and "8 on a CPU, 32 on an accelerator" in shown.stdout


def test_predict_by_version_name_from_the_database(
    db_url: str, artefact: Path, volume: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETCHACELL_DATABASE_URL", db_url)
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "tiny.keras").write_bytes(artefact.read_bytes())
    engine = make_engine(db_url)
    try:
        with Session(engine) as session:
            version = registry.register_model_version(
                session, artifact_path=folder / "tiny.keras", data_dir=tmp_path / "data", preset="tiny",
                architecture="unet-2.5d", metrics={}, training_data={}, data_hash="a" * 64,
            )  # fmt: skip
            name = version.version
            session.commit()
    finally:
        engine.dispose()
    out = tmp_path / "v.zarr"
    args = ["predict", str(volume), "--model", name, "--out", str(out), "--no-tap", "--roi", "0,0,0,80,80,6"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    with open_volume(out) as opened:
        assert opened.shape_zyx == (6, 16, 16)
    unknown = runner.invoke(app, ["predict", str(volume), "--model", "v9999-x", "--out", str(tmp_path / "u.zarr")])
    assert unknown.exit_code == 2 and "no model version 'v9999-x'" in unknown.stderr
    assert "Traceback" not in unknown.output
    promoted = runner.invoke(app, ["predict", str(volume), "--model", "promoted", "--out", str(tmp_path / "p.zarr")])
    assert promoted.exit_code == 2 and "no model version is promoted" in promoted.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rule", "most"], "--rule 'most'"),
        (["--roi", "cell99"], "not an ROI of the volume (ROIs: cell01)"),
        (["--roi", "1,2,3,0,5,5"], "must be positive"),
        (["--chunk", "4,16"], "--chunk '4,16'"),
        (["--min-component-voxels", "-1"], "must not be negative"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_predict_refuses_bad_options_in_one_line(
    artefact: Path, volume: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "x.zarr"
    result = runner.invoke(app, ["predict", str(volume), "--model", str(artefact), "--out", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not out.exists()


def test_predict_refuses_missing_inputs_and_existing_outputs(artefact: Path, volume: Path, tmp_path: Path) -> None:
    missing_model = runner.invoke(
        app, ["predict", str(volume), "--model", str(tmp_path / "none.keras"), "--out", str(tmp_path / "a.zarr")]
    )
    assert missing_model.exit_code == 2 and "no such model file" in missing_model.stderr
    missing_volume = runner.invoke(
        app, ["predict", str(tmp_path / "nope.zarr"), "--model", str(artefact), "--out", str(tmp_path / "b.zarr")]
    )
    assert missing_volume.exit_code == 2 and "no such file or folder" in missing_volume.stderr
    existing = tmp_path / "c.zarr"
    existing.mkdir()
    taken = runner.invoke(app, ["predict", str(volume), "--model", str(artefact), "--out", str(existing)])
    assert taken.exit_code == 2 and "already exists" in taken.stderr


def test_evaluate_refuses_what_it_cannot_compare(volume: Path, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["evaluate", str(tmp_path / "none.zarr"), str(volume)])
    assert missing.exit_code == 2 and "no such file or folder" in missing.stderr
    other = tmp_path / "other.tif"
    import tifffile

    tifffile.imwrite(other, np.zeros((2, 8, 8), dtype=np.uint8))
    mismatch = runner.invoke(app, ["evaluate", str(other), str(volume)])
    assert mismatch.exit_code == 2 and "not on one grid" in mismatch.stderr
    bad = runner.invoke(app, ["evaluate", str(volume), str(volume), "--pixel-size-nm", "0"])
    assert bad.exit_code == 2 and "--pixel-size-nm must be positive" in bad.stderr
