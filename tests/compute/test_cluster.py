"""Which cluster a command runs on, and how a local one is laid out for the machine's GPUs and cores."""

from __future__ import annotations

from pathlib import Path

import dask
import pytest

from etchacell_loop.aggregate.run import AggregateOptions, aggregate_export, start_worker
from etchacell_loop.compute.cluster import (
    GPU_RESOURCE,
    ClusterError,
    cluster_executor,
    in_process,
    local_worker_specs,
    model_resources,
    open_client,
    resolve_scheduler,
    visible_gpus,
)
from etchacell_loop.config import ConfigError, load_settings
from tests.compute.test_tap_blocks import digests

pytest.importorskip("distributed")
CAT = Path(__file__).resolve().parents[1] / "fixtures" / "zooniverse-exports" / "cat-project-classifications.csv"


def test_a_gpu_machine_gets_a_pinned_worker_per_gpu_and_a_cpu_worker_per_other_core() -> None:
    specs = local_worker_specs(16, ["0", "1"])
    gpu, cpu = specs[:2], specs[2:]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in gpu] == ["0", "1"]
    assert all(s.resources == {GPU_RESOURCE: 1.0} and s.nthreads == 1 for s in gpu)
    assert len(cpu) == 14 and all(s.resources == {} and s.env["CUDA_VISIBLE_DEVICES"] == "" for s in cpu)
    assert len(local_worker_specs(16, ["0"], workers=4)) == 1 + 4


def test_a_cpu_machine_gets_a_worker_per_core_that_runs_everything() -> None:
    specs = local_worker_specs(2, [])
    assert len(specs) == 2 and all(s.resources == {} and "CUDA_VISIBLE_DEVICES" not in s.env for s in specs)
    assert len(local_worker_specs(1, [])) == 1
    assert len(local_worker_specs(8, [], workers=3)) == 3


def test_visible_gpus_follow_cuda_visible_devices_when_it_is_set() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_by_default_predict_takes_a_local_cluster_and_aggregate_and_the_worker_stay_in_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ETCHACELL_COMPUTE__SCHEDULER", raising=False)
    monkeypatch.delenv("ETCHACELL_CONFIG", raising=False)
    default = load_settings(None).compute.scheduler
    assert default == "auto"
    assert resolve_scheduler(default, "predict") == "local"
    assert resolve_scheduler(default, "aggregate") == "none"
    assert resolve_scheduler(default, "worker") == "none"
    assert resolve_scheduler("local", "worker") == "none"  # a cluster per small batch: never
    assert resolve_scheduler("local", "aggregate") == "local"
    assert resolve_scheduler(" tcp://10.0.0.1:8786 ", "worker") == "tcp://10.0.0.1:8786"
    assert in_process("none") and in_process(" None ") and not in_process("local")
    assert not in_process("tcp://10.0.0.1:8786")
    with open_client("none") as client:
        assert client is None
    with pytest.raises(ClusterError, match="must be resolved"), open_client("auto"):
        pass
    monkeypatch.setenv("ETCHACELL_COMPUTE__SCHEDULER", " ")
    with pytest.raises(ConfigError, match=r"compute\.scheduler"):
        load_settings(None)


def test_export_aggregation_on_two_dask_workers_writes_the_same_files(tmp_path: Path) -> None:
    alone = aggregate_export(CAT, tmp_path / "alone", AggregateOptions(workers=0))
    with open_client("local", workers=2) as client:
        assert client is not None
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
        assert model_resources(client) is None  # no GPU here: any worker runs the model
        profiling = client.run(lambda: dask.config.get("distributed.worker.profile.enabled"))
        assert set(profiling.values()) == {False}  # the local workers run without Dask's profiler
        executor = cluster_executor(client, start_worker)
        spread = aggregate_export(CAT, tmp_path / "spread", AggregateOptions(), executor=executor)
    assert spread.rows == alone.rows == 153 and spread.slices == alone.slices
    assert digests(tmp_path / "spread") == digests(tmp_path / "alone")
    assert len(digests(tmp_path / "alone")) > 90  # masks, envelopes, confidence maps and the CSVs


def test_an_operator_can_have_the_workers_profiler_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from etchacell_loop.compute.cluster import _unprofiled

    assert _unprofiled()["distributed"]["worker"]["profile"]["enabled"] is False
    assert _unprofiled()["distributed"]["admin"]  # the whole tree, since a Nanny merges it shallowly
    monkeypatch.setenv("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "True")
    # what dask makes of that variable when it is imported
    with dask.config.set({"distributed.worker.profile.enabled": True}):
        assert _unprofiled()["distributed"]["worker"]["profile"]["enabled"] is True
