"""Which Dask cluster a command runs on, and how a local one is laid out.

``compute.scheduler`` (or a command's ``--scheduler``) says where work goes:

- ``auto`` (the default): each command's fastest way on one machine, as measured
  (``bench/bench_distributed.py``): ``predict`` on a local cluster, ``aggregate`` on this machine's
  process pool (a local cluster's transfers cost it 45%: 63 s against 44 s for the paper-sized
  export), the GPU worker's prediction batches in the worker itself;
- ``local``: a cluster started for the command and stopped after it, sized to the machine: one
  worker process per GPU, pinned to it (``CUDA_VISIBLE_DEVICES``) and carrying the resource
  ``GPU=1``, and one single-threaded worker process per remaining core for the CPU-side work
  (resampling, reading, voting, writing). On a machine without a GPU every core gets a worker and
  each runs whole chunks, model included;
- ``none``: in the command's own process (aggregation: its process pool), no Dask at all;
- ``tcp://host:8786`` (any address a Dask client takes): an existing cluster, e.g. one started on
  SLURM (docs/cluster.md);
- a path to a scheduler file (``dask scheduler --scheduler-file F``): the same, by file.

Tasks that need the model ask for ``GPU=1`` only when some worker of the cluster offers GPUs
(:func:`model_resources`), so a CPU-only cluster runs them anywhere.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from distributed.diagnostics.plugin import WorkerPlugin

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

AUTO = "auto"
IN_PROCESS = "none"
LOCAL = "local"
Command = Literal["predict", "aggregate", "worker"]
AUTO_CHOICE: dict[str, str] = {"predict": LOCAL, "aggregate": IN_PROCESS, "worker": IN_PROCESS}
GPU_RESOURCE = "GPU"
DASHBOARD_ADDRESS = ":0"  # a free port: two commands on one machine must not fight over 8787


class ClusterError(ValueError):
    """A scheduler that cannot be reached or a setting that names none; one line."""


@dataclass(frozen=True)
class WorkerSpec:
    """One worker process of a local cluster: its threads, resources and environment."""

    name: str
    nthreads: int
    resources: dict[str, float]
    env: dict[str, str]


def resolve_scheduler(scheduler: str, command: Command) -> str:
    """The scheduler ``command`` uses: ``auto`` made concrete (see the module docstring); the
    worker's batches use a cluster only when one is named by address or file."""
    text = scheduler.strip()
    if text.lower() == AUTO or (command == "worker" and text.lower() == LOCAL):
        return AUTO_CHOICE[command]
    return text


def in_process(scheduler: str) -> bool:
    """Whether ``scheduler`` means "no cluster": the single-process paths."""
    return scheduler.strip().lower() in {IN_PROCESS, ""}


def visible_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """The GPUs this machine offers, as ``CUDA_VISIBLE_DEVICES`` values: those the variable lists
    when it is set (empty: none), else those ``nvidia-smi -L`` lists (none without the tool)."""
    env = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        listed = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in listed.splitlines() if line.startswith("GPU "))]


def local_worker_specs(cores: int, gpus: list[str], workers: int | None = None) -> list[WorkerSpec]:
    """A local cluster's workers: one per GPU (pinned, ``GPU=1``), then one single-threaded CPU
    worker per remaining core (pinned to no GPU, so it never takes one's memory). ``workers``
    caps the CPU workers (at least one worker in all)."""
    specs = [WorkerSpec(f"gpu-{device}", 1, {GPU_RESOURCE: 1.0}, {"CUDA_VISIBLE_DEVICES": device}) for device in gpus]
    cpu_workers = max(cores - len(gpus), 0 if gpus else 1)
    if workers is not None:
        cpu_workers = max(0 if gpus else 1, min(cpu_workers, workers) if gpus else workers)
    no_gpu = {"CUDA_VISIBLE_DEVICES": ""} if gpus else {}
    specs += [WorkerSpec(f"cpu-{i}", 1, {}, dict(no_gpu)) for i in range(cpu_workers)]
    return specs


def model_resources(client: Client) -> dict[str, float] | None:
    """``{"GPU": 1}`` when a worker of the cluster offers GPUs, else None (any worker runs the model)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    offered = any(GPU_RESOURCE in (info.get("resources") or {}) for info in workers.values())
    return {GPU_RESOURCE: 1.0} if offered else None


class WorkerHabits(WorkerPlugin):
    """Set up each worker of the cluster, present and future (a Dask worker plugin): its allocator
    keeps the memory it frees (``aggregate.heap.keep_freed_memory``).

    Why: Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, so each chunk's arrays were
    fresh pages the kernel faulted in and zeroed: copying an 8 MB array took 5 times as long in a
    worker as in this process, and predicting a chunk 2.5 times as long."""

    name = "etchacell-worker-habits"

    def setup(self, worker: Any) -> None:
        from etchacell_loop.aggregate.heap import keep_freed_memory

        keep_freed_memory()

    def teardown(self, worker: Any) -> None:
        return None


@contextmanager
def open_client(
    scheduler: str, *, workers: int | None = None, connect_timeout_s: float = 20.0
) -> Iterator[Client | None]:
    """A client for ``scheduler`` (see the module docstring; ``auto`` must be resolved first with
    :func:`resolve_scheduler`), closed afterwards; None for ``none``. A local cluster is started
    here and stopped on leaving."""
    if scheduler.strip().lower() == AUTO:
        raise ClusterError("compute.scheduler auto must be resolved for a command first")
    if in_process(scheduler):
        yield None
        return
    from distributed import Client

    _quiet_distributed()
    if scheduler.strip().lower() == LOCAL:
        with _local_cluster(workers) as cluster, Client(cluster) as client:
            client.register_plugin(WorkerHabits())
            yield client
        return
    with _attach(scheduler, connect_timeout_s) as client:
        client.register_plugin(WorkerHabits())
        yield client


@contextmanager
def _attach(scheduler: str, timeout_s: float) -> Iterator[Client]:
    from distributed import Client

    target = scheduler.strip()
    as_file = Path(target).expanduser()
    options: dict[str, Any] = {"timeout": f"{timeout_s}s"}
    try:
        if "://" not in target and as_file.suffix == ".json":
            if not as_file.is_file():
                raise ClusterError(f"scheduler file {as_file}: no such file")
            client = Client(scheduler_file=str(as_file), **options)
        else:
            client = Client(target, **options)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler {target!r} ({exc})") from None
    try:
        yield client
    finally:
        client.close()


@contextmanager
def _local_cluster(workers: int | None) -> Iterator[Any]:
    """A cluster of this machine's worker processes (:func:`local_worker_specs`)."""
    from distributed import Nanny, Scheduler, SpecCluster

    specs = local_worker_specs(os.cpu_count() or 1, visible_gpus(), workers)
    worker_options = {
        spec.name: {
            "cls": Nanny,
            "options": {
                "nthreads": spec.nthreads,
                "resources": spec.resources,
                "env": {**spec.env, **_single_threaded_numerics()},
                "config": _unprofiled(),
                "silence_logs": logging.WARNING,
                "memory_limit": 0,  # the machine's memory is shared by design; no worker is paused for it
            },
        }
        for spec in specs
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": DASHBOARD_ADDRESS}}
    cluster = SpecCluster(workers=worker_options, scheduler=scheduler, silence_logs=logging.WARNING)
    try:
        yield cluster
    finally:
        cluster.close()


def _quiet_distributed() -> None:
    """Dask's own INFO lines (workers starting, comms closing) are not the operator's business; its
    warnings and errors still show. An operator's DEBUG level is kept."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("distributed").setLevel(logging.WARNING)


def _single_threaded_numerics() -> dict[str, str]:
    """One core a worker: numerical libraries, and zarr's pool of threads that decode chunks, must
    not each start a thread per core as well (measured: one process reading a volume kept 1.4 of
    this machine's 2 cores busy, so a second worker gained nothing)."""
    env = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env["ZARR_THREADING__MAX_WORKERS"] = "1"
    return env


def _unprofiled() -> dict[str, Any]:
    """Dask's statistical profiler off in this machine's workers: it samples the task thread's stack
    every 10 ms, and measured 5% of a chunk's time (``bench/bench_distributed.py``). The dashboard's
    task stream and progress still show; a profile can be turned back on with
    ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=True`` in the environment of ``etchacell``."""
    import dask

    wanted = os.environ.get("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED") is not None
    enabled = bool(dask.config.get("distributed.worker.profile.enabled")) if wanted else False
    # a Nanny merges its config shallowly: hand it the whole tree with the one value changed
    return dict(dask.config.merge(dask.config.config, {"distributed": {"worker": {"profile": {"enabled": enabled}}}}))


class ScatteringExecutor(Executor):
    """A ``concurrent.futures`` executor over a cluster whose tasks' arguments go straight to a
    worker (``scatter(direct=True)``) rather than inside the task through the scheduler.

    Why: an aggregation task's argument is a batch of export rows or of slices' drawings, megabytes
    each; sent inside the task it travelled client → scheduler → worker and the run took 50% longer
    than on a process pool (65.6 s against 43.8 s for the paper-sized export)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._tasks = client.get_executor(pure=False)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        placed = self._client.scatter(list(args), direct=True, hash=False) if args else []
        return self._tasks.submit(fn, *placed, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._tasks.shutdown(wait=wait)


def cluster_executor(client: Client, setup: Callable[[], None] | None = None) -> Executor:
    """A ``concurrent.futures`` executor over the cluster's workers (:class:`ScatteringExecutor`),
    each worker first running ``setup`` (what a process pool's initializer would do)."""
    if setup is not None:
        client.run(setup)
    return ScatteringExecutor(client)


def dashboard_line(client: Client) -> str:
    """Where the cluster's live dashboard is, in one line (or why there is none)."""
    link = getattr(client, "dashboard_link", None)
    workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
    if link:
        return f"Dask cluster: {workers} worker(s), dashboard {link}"
    return f"Dask cluster: {workers} worker(s) (no dashboard: install bokeh)"
