"""Which Keras backend a process uses, on which device, at which precision.

The model code is backend-agnostic Keras 3; the backend is chosen once per process, before Keras is
imported (Keras reads ``KERAS_BACKEND`` at import). Measured on one NVIDIA H200 with the paper
preset, the U-Net alone trained at 28.9 steps/s on JAX, 11.5 on PyTorch (7.5 with ``mixed_bfloat16``,
slower still); on this project's 2-core CPU machines TensorFlow trains the small preset fastest
(22 steps/s against 17 on JAX and 16 on PyTorch; ``bench/bench_model.py``). Hence ``auto``:

* ``KERAS_BACKEND`` when the environment sets it (an operator's choice wins);
* on a machine with an NVIDIA GPU, the first installed of JAX, PyTorch, TensorFlow;
* otherwise the first installed of TensorFlow, JAX, PyTorch.

Precision: ``float32``, or ``mixed_bfloat16`` (bf16 arithmetic with float32 weights, Keras'
mixed-precision policy). ``auto`` picks float32 except where bf16 was measured to be faster (see
:data:`BF16_FASTER_ON`). Nothing here imports a backend that is not installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, get_args

log = logging.getLogger(__name__)

Backend = Literal["jax", "torch", "tensorflow"]
BackendChoice = Literal["auto", "jax", "torch", "tensorflow"]
Precision = Literal["float32", "mixed_bfloat16"]
PrecisionChoice = Literal["auto", "float32", "mixed_bfloat16"]
BACKENDS: tuple[str, ...] = get_args(Backend)
MODULE_OF = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}
EXTRA_OF = {"jax": "ml-jax", "torch": "ml-torch", "tensorflow": "ml-tf"}
GPU_ORDER: tuple[Backend, ...] = ("jax", "torch", "tensorflow")
CPU_ORDER: tuple[Backend, ...] = ("tensorflow", "jax", "torch")
# (backend, accelerator) pairs where mixed_bfloat16 trained the paper preset faster than float32.
BF16_FASTER_ON: frozenset[tuple[str, bool]] = frozenset()


# TensorFlow's C++ log level (TF_CPP_MIN_LOG_LEVEL): 2 keeps errors; 3, on a machine without an NVIDIA
# GPU, also drops the "failed call to cuInit" error TensorFlow logs on every CPU machine it starts on.
TF_LOG_LEVEL_GPU = "2"
TF_LOG_LEVEL_CPU = "3"
# Backend messages that say nothing to an operator (see quiet_backend_logs).
RETRACING = "triggered tf.function retracing"
SHUFFLE_IGNORED = r"`shuffle=True` was passed, but will be ignored"


class BackendError(RuntimeError):
    """A backend that cannot be used here; the message is one line that says what to install."""


def installed(backend: str) -> bool:
    """Whether the backend's library can be imported (without importing it)."""
    return importlib.util.find_spec(MODULE_OF[backend]) is not None


def nvidia_gpu_present() -> bool:
    """An NVIDIA GPU on this machine, by its driver's device files (no framework is imported)."""
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/gpus").is_dir()


def choose_backend(choice: BackendChoice = "auto", *, environ: dict[str, str] | None = None) -> Backend:
    """The backend for ``choice`` (see the module docstring); a clear error when it is not installed."""
    env = os.environ if environ is None else environ
    if choice == "auto":
        wanted = env.get("KERAS_BACKEND")
        if wanted:
            return _checked(wanted)
        order = GPU_ORDER if nvidia_gpu_present() else CPU_ORDER
        for backend in order:
            if installed(backend):
                return backend
        raise BackendError(
            "no Keras backend is installed: install the project with one of the extras "
            + ", ".join(EXTRA_OF[b] for b in order)
        )
    return _checked(choice)


def _checked(name: str) -> Backend:
    if name not in BACKENDS:
        raise BackendError(f"unknown Keras backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if not installed(name):
        raise BackendError(f"the Keras backend {name!r} is not installed: install the extra {EXTRA_OF[name]}")
    backend: Backend = name  # type: ignore[assignment]
    return backend


def select_backend(choice: BackendChoice = "auto") -> Backend:
    """Choose the backend and set ``KERAS_BACKEND`` for this process. Keras must not be imported
    yet with another backend: that is refused rather than silently ignored."""
    backend = choose_backend(choice)
    import sys

    loaded = sys.modules.get("keras")
    if loaded is not None:
        current = str(loaded.backend.backend())
        if current != backend:
            raise BackendError(f"Keras is already running on {current}; set KERAS_BACKEND={backend} before starting")
        return backend
    os.environ["KERAS_BACKEND"] = backend
    quiet_backend_logs()
    return backend


def quiet_backend_logs(environ: MutableMapping[str, str] | None = None) -> None:
    """Silence, where each is made, the backend chatter that filled the worker's log and says nothing
    an operator can act on (an operator's own ``TF_CPP_MIN_LOG_LEVEL`` is kept):

    * TensorFlow's C++ start-up lines, and on a machine without an NVIDIA GPU its cuInit error
      (it looks for a GPU every time it starts): ``TF_CPP_MIN_LOG_LEVEL``, read when TensorFlow loads;
    * TensorFlow's "triggered tf.function retracing" warnings: a TAP batch of a new size is traced
      again, as expected, and predictions stay right;
    * Keras' warning that ``shuffle=True`` is ignored for a generator: training's batches are drawn
      at random already.

    Only these messages are dropped; every other warning and log line of the backends still shows."""
    env = os.environ if environ is None else environ
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL_GPU if nvidia_gpu_present() else TF_LOG_LEVEL_CPU)
    warnings.filterwarnings("ignore", message=SHUFFLE_IGNORED, category=UserWarning)
    logging.getLogger("tensorflow").addFilter(_not_retracing)


def _not_retracing(record: logging.LogRecord) -> bool:
    """Keep every TensorFlow log record but the retracing warnings."""
    return RETRACING not in record.getMessage()


def describe_device() -> str:
    """The running backend and the device it computes on, for the worker's log."""
    import keras

    backend = str(keras.backend.backend())
    version = _version(backend)
    return f"Keras {keras.__version__} on {backend} {version}, {_device(backend)}"


def accelerator_present() -> bool:
    """Whether the running Keras backend computes on an accelerator (imports Keras)."""
    return running_backend_and_accelerator()[1]


def running_backend_and_accelerator() -> tuple[str, bool]:
    """The running Keras backend and whether it computes on an accelerator (imports Keras); the
    device is logged the first time it is asked for in a process."""
    import keras

    backend = str(keras.backend.backend())
    device = _device(backend)
    if backend not in _LOGGED:
        _LOGGED.add(backend)
        log.info("Keras %s on %s %s, %s", keras.__version__, backend, _version(backend), device)
    return backend, not device.startswith("CPU")


_LOGGED: set[str] = set()


def _version(backend: str) -> str:
    module = importlib.import_module(MODULE_OF[backend])
    return str(getattr(module, "__version__", "?"))


def _device(backend: str) -> str:
    if backend == "jax":
        import jax

        devices = jax.devices()
        first = devices[0]
        kind = str(getattr(first, "device_kind", first.platform))
        return "CPU" if first.platform == "cpu" else f"{len(devices)} x {kind} ({first.platform})"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)} (cuda)"
        return "CPU"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} x GPU (tensorflow)" if gpus else "CPU"


def choose_precision(choice: PrecisionChoice, backend: str, accelerator: bool) -> Precision:
    """``auto``: bf16 only where it was measured faster (:data:`BF16_FASTER_ON`), else float32."""
    if choice != "auto":
        return choice
    return "mixed_bfloat16" if (backend, accelerator) in BF16_FASTER_ON else "float32"


@contextmanager
def precision_policy(precision: Precision) -> Iterator[None]:
    """Build models under ``precision`` (Keras' global dtype policy), restored afterwards."""
    import keras

    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
