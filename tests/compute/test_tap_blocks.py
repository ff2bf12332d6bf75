"""Block-wise TAP on a real Dask cluster (worker processes on this machine) with a real Keras model:
the output equals the single-process run's byte for byte, a worker killed mid-chunk costs nothing,
and a run killed whole resumes without predicting again the chunks it had finished."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from etchacell_loop.compute.cluster import ClusterError, open_client
from etchacell_loop.compute.tap_blocks import KerasArtifact, predict_volume_blocks, work_folder
from etchacell_loop.imaging.synth_volume import SynthSpec, generate_volume
from etchacell_loop.imaging.volume import open_label, open_volume
from etchacell_loop.model.predict import PredictError, predict_volume
from etchacell_loop.model.presets import get_preset
from etchacell_loop.model.tap import TapParams

keras = pytest.importorskip("keras")
distributed = pytest.importorskip("distributed")

PATCH = (4, 16, 16)
CHUNK = (4, 32, 32)
MIN_VOXELS = 40


@pytest.fixture(scope="module")
def artefact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Keras model that returns what it is shown, through a steep sigmoid around one half,
    so the synthetic envelope (dark on light once normalised) comes out as pieces that cross chunks."""
    from etchacell_loop.model.keras_io import save_model

    preset = replace(get_preset("small"), name="mirror", patch_zyx=PATCH, depth=2, start_filters=4)
    model = keras.Sequential([keras.Input((PATCH[1], PATCH[2], PATCH[0])), keras.layers.Conv2D(PATCH[0], 1)])
    gain = -20.0  # the envelope is dark: a low value means "envelope"
    model.layers[-1].set_weights(
        [gain * np.eye(PATCH[0], dtype=np.float32)[np.newaxis, np.newaxis], np.full(PATCH[0], -gain * 0.3, np.float32)]
    )
    model = keras.Sequential([model, keras.layers.Activation("sigmoid")])
    return save_model(model, preset, tmp_path_factory.mktemp("model") / "mirror.keras")


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Model grid 8 x 140 x 140 (two pyramid levels), 20 chunks of 4 x 32 x 32, some cut short."""
    path = tmp_path_factory.mktemp("volume") / "cells.zarr"
    generate_volume(path, SynthSpec(shape=(8, 700, 700), cells=2, seed=5))
    return path


@pytest.fixture(scope="module")
def params() -> TapParams:
    return TapParams(patch_zyx=PATCH, min_component_voxels=MIN_VOXELS, keep_largest=False)


@pytest.fixture(scope="module")
def reference(artefact: Path, volume: Path, params: TapParams, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process run: what every cluster run must equal."""
    from etchacell_loop.model.keras_io import load_predict_fn

    out = tmp_path_factory.mktemp("reference") / "pred.zarr"
    predict_fn, preset = load_predict_fn(artefact)
    with open_volume(volume) as opened:
        report = predict_volume(opened, predict_fn, preset, out, params=params, chunk_zyx=CHUNK)
    assert report.n_chunks == 2 * 5 * 5
    assert report.envelope_voxels > 0 and report.n_components_kept >= 1  # a fair test: something is kept
    assert report.voted_voxels > report.envelope_voxels  # ... and something is removed
    return out


@pytest.fixture(scope="module")
def cluster_address() -> Iterator[str]:
    """A cluster of two worker processes started apart, reached by its address as a user's would be."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield str(cluster.scheduler_address)


def digests(root: Path) -> dict[str, str]:
    """Every file of a zarr tree, by its path inside it, as a digest of its bytes."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def predict_command(artefact: Path, volume: Path, out: Path) -> list[str]:
    """``etchacell predict`` of the reference run's settings on a local cluster."""
    return [
        sys.executable, "-m", "etchacell_loop", "predict", str(volume), "--model", str(artefact), "--out", str(out),
        "--chunk", ",".join(map(str, CHUNK)), "--min-component-voxels", str(MIN_VOXELS), "--no-keep-largest",
        "--scheduler", "local",
    ]  # fmt: skip


def kill_at(command: list[str], env: dict[str, str]) -> None:
    """Run ``command`` until the fault point its environment names kills it (SIGKILL), then kill
    whatever of its process group outlived it (its cluster's worker processes)."""
    killed = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, stderr = killed.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(killed.pid, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, stderr.decode()[-2000:]


def run_blocks(address: str, artefact: Path, volume: Path, params: TapParams, out: Path, **options: object) -> object:
    from etchacell_loop.model.artifact import read_preset

    with open_client(address) as client, open_volume(volume) as opened:
        assert client is not None
        return predict_volume_blocks(
            client, opened, KerasArtifact(artefact), read_preset(artefact), out, params=params, chunk_zyx=CHUNK,
            **options,  # type: ignore[arg-type]
        )  # fmt: skip


def test_two_workers_write_the_single_process_output_byte_for_byte(
    cluster_address: str, artefact: Path, volume: Path, params: TapParams, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred.zarr"
    report = run_blocks(cluster_address, artefact, volume, params, out)
    assert digests(out) == digests(reference)
    assert len(digests(out)) > 20  # two levels of image and envelope, with their metadata
    assert report.chunks_computed == report.n_chunks == 50  # type: ignore[attr-defined]
    assert not work_folder(out).exists()  # the scratch and the records go once the output is complete
    with open_label(out, "envelope") as envelope:
        assert envelope.shape_zyx == (8, 140, 140)


def test_a_worker_killed_mid_chunk_has_its_chunk_done_elsewhere(
    artefact: Path,
    volume: Path,
    params: TapParams,
    reference: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = tmp_path / "faults"
    state.mkdir()
    monkeypatch.setenv("ETCHACELL_TEST_FAULT_AT", "tap:chunk:7=kill-once")
    monkeypatch.setenv("ETCHACELL_TEST_FAULT_STATE", str(state))
    out = tmp_path / "pred.zarr"
    run_blocks("local", artefact, volume, params, out)  # a local cluster: its workers see the variables
    assert (state / "tap_chunk_7").exists()  # a worker did die there, after writing half of its chunk
    assert digests(out) == digests(reference)


def test_a_run_killed_whole_resumes_and_predicts_only_the_unfinished_chunks(
    artefact: Path, volume: Path, params: TapParams, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred.zarr"
    command = predict_command(artefact, volume, out)
    env = {**os.environ, "ETCHACELL_TEST_FAULT_AT": "tap:collected:12", "ETCHACELL_DATA_DIR": str(tmp_path)}
    kill_at(command, env)
    finished = len(list((work_folder(out) / "done" / "predict").glob("*.npz")))
    assert 12 <= finished < 50

    resumed = subprocess.run(
        [*command, "--resume"], env={**os.environ, "ETCHACELL_DATA_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{50 - finished} of 50 chunks predicted by this run" in resumed.stdout
    ours, theirs = digests(out), digests(reference)
    assert ours.pop(".zattrs") and theirs.pop(".zattrs")  # the command records the model it used
    assert ours == theirs
    attrs = json.loads((out / ".zattrs").read_text())["etchacell"]
    expected = json.loads((reference / ".zattrs").read_text())["etchacell"]
    assert attrs.pop("model")["preset"] == "mirror" and expected.pop("model") == {}
    assert attrs == expected


def test_a_large_regions_window_is_counted_on_the_cluster_as_the_single_process_run_takes_it(
    cluster_address: str, artefact: Path, volume: Path, params: TapParams, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Above WINDOW_SAMPLE_VOXELS the window comes from evenly spaced slices: the cluster counts
    them where they were resampled, and its window (and so its output) equals the single-process
    run's, which resamples those slices and takes np.percentile of them."""
    from etchacell_loop.model import predict as predict_module
    from etchacell_loop.model.keras_io import load_predict_fn

    monkeypatch.setattr(predict_module, "WINDOW_SAMPLE_VOXELS", 3 * 140 * 140)  # 3 of the 8 slices
    predict_fn, preset = load_predict_fn(artefact)
    with open_volume(volume) as opened:
        single = predict_volume(opened, predict_fn, preset, tmp_path / "single.zarr", params=params, chunk_zyx=CHUNK)
    out = tmp_path / "blocks.zarr"
    report = run_blocks(cluster_address, artefact, volume, params, out)
    assert report.intensity_window == single.intensity_window  # type: ignore[attr-defined]
    assert digests(out) == digests(tmp_path / "single.zarr")
    monkeypatch.undo()
    with open_volume(volume) as opened:
        whole = predict_volume(opened, predict_fn, preset, tmp_path / "whole.zarr", params=params, chunk_zyx=CHUNK)
    assert whole.intensity_window != single.intensity_window  # a fair test: the slices' window is another


def test_a_run_killed_after_resampling_resumes_with_the_window_counted_from_the_scratch(
    artefact: Path, volume: Path, params: TapParams, reference: Path, tmp_path: Path
) -> None:
    """Killed once every chunk is resampled but before the window is recorded: the resumed run
    resamples nothing again, counts the window from the scratch, and writes the reference output."""
    out = tmp_path / "pred.zarr"
    command = predict_command(artefact, volume, out)
    env = {**os.environ, "ETCHACELL_TEST_FAULT_AT": "tap:resampled", "ETCHACELL_DATA_DIR": str(tmp_path)}
    kill_at(command, env)
    assert len(list((work_folder(out) / "done" / "resample").iterdir())) == 50
    assert not (work_folder(out) / "window.json").exists()

    resumed = subprocess.run(
        [*command, "--resume"], env={**os.environ, "ETCHACELL_DATA_DIR": str(tmp_path)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ours, theirs = digests(out), digests(reference)
    assert ours.pop(".zattrs") and theirs.pop(".zattrs")  # the command records the model it used
    assert ours == theirs
    window = json.loads((out / ".zattrs").read_text())["etchacell"]["intensity_window"]
    assert window == json.loads((reference / ".zattrs").read_text())["etchacell"]["intensity_window"]


def test_resuming_a_different_run_or_nothing_is_refused(
    cluster_address: str, artefact: Path, volume: Path, params: TapParams, tmp_path: Path
) -> None:
    out = tmp_path / "pred.zarr"
    with pytest.raises(PredictError, match="no interrupted run to resume"):
        run_blocks(cluster_address, artefact, volume, params, out, resume=True)
    work = work_folder(out)
    work.mkdir()
    (work / "run.json").write_text('{"format": 1, "chunk_zyx": [1, 1, 1]}')
    with pytest.raises(PredictError, match=r"differs in .*chunk_zyx"):
        run_blocks(cluster_address, artefact, volume, params, out, resume=True)


def test_an_unreachable_scheduler_is_one_line(tmp_path: Path) -> None:
    with (
        pytest.raises(ClusterError, match="cannot reach the Dask scheduler"),
        open_client("tcp://127.0.0.1:9", connect_timeout_s=2),
    ):
        pass
    with pytest.raises(ClusterError, match="no such file"), open_client(str(tmp_path / "scheduler.json")):
        pass
