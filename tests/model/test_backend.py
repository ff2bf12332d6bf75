"""Which Keras backend and precision a process takes, and the learning rate a larger batch gets."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from etchacell_loop.model import backend
from etchacell_loop.model.backend import BackendError, choose_backend, choose_precision
from etchacell_loop.model.presets import PresetError, get_preset, with_batch_size


def test_the_environment_wins_then_the_fastest_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_backend("auto", environ={"KERAS_BACKEND": "tensorflow"}) == "tensorflow"
    monkeypatch.setattr(backend, "installed", lambda name: name in {"torch", "tensorflow"})
    monkeypatch.setattr(backend, "nvidia_gpu_present", lambda: True)
    assert choose_backend("auto", environ={}) == "torch"  # JAX first on a GPU, but it is not installed
    monkeypatch.setattr(backend, "nvidia_gpu_present", lambda: False)
    assert choose_backend("auto", environ={}) == "tensorflow"
    monkeypatch.setattr(backend, "installed", lambda name: False)
    with pytest.raises(BackendError, match=r"no Keras backend is installed: install .* ml-tf"):
        choose_backend("auto", environ={})


def test_a_named_backend_must_exist_and_be_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendError, match="unknown Keras backend 'theano'"):
        choose_backend("auto", environ={"KERAS_BACKEND": "theano"})
    monkeypatch.setattr(backend, "installed", lambda name: name == "tensorflow")
    with pytest.raises(BackendError, match="'jax' is not installed: install the extra ml-jax"):
        choose_backend("jax")
    assert choose_backend("tensorflow") == "tensorflow"


def test_a_process_that_already_imported_keras_cannot_switch() -> None:
    program = (
        "import os; os.environ['KERAS_BACKEND'] = 'tensorflow'; import keras\n"
        "from etchacell_loop.model.backend import select_backend, BackendError\n"
        "assert select_backend('tensorflow') == 'tensorflow'\n"
        "try:\n    select_backend('jax')\nexcept BackendError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1000:]
    if backend.installed("jax"):
        assert "already running on tensorflow; set KERAS_BACKEND=jax" in done.stdout


def test_precision_is_float32_unless_bf16_was_measured_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    assert choose_precision("auto", "jax", True) in {"float32", "mixed_bfloat16"}
    assert choose_precision("auto", "tensorflow", False) == "float32"
    assert choose_precision("mixed_bfloat16", "tensorflow", False) == "mixed_bfloat16"
    monkeypatch.setattr(backend, "BF16_FASTER_ON", frozenset({("jax", True)}))
    assert choose_precision("auto", "jax", True) == "mixed_bfloat16"
    assert choose_precision("auto", "torch", True) == "float32"


def test_a_larger_batch_scales_the_rate_by_the_square_root_and_keeps_the_patches_per_epoch() -> None:
    paper = get_preset("paper")
    assert with_batch_size(paper, 12) is paper
    bigger = with_batch_size(paper, 48)
    assert bigger.batch_size == 48 and bigger.learning_rate == pytest.approx(5e-4 * 2)
    assert bigger.steps_per_epoch == 25  # 100 steps of 12 = 25 of 48 patches
    assert bigger.epochs == paper.epochs and bigger.patch_zyx == paper.patch_zyx
    with pytest.raises(PresetError, match="at least 1"):
        with_batch_size(paper, 0)


def test_mixed_precision_keeps_the_output_and_the_loss_in_float32() -> None:
    import keras

    from etchacell_loop.model.backend import precision_policy
    from etchacell_loop.model.unet import build_unet

    from .support import tiny_preset

    with precision_policy("mixed_bfloat16"):
        model = build_unet(tiny_preset())
    assert keras.mixed_precision.dtype_policy().name == "float32"  # restored
    assert model.get_layer("envelope").compute_dtype == "float32"
    assert model.get_layer("down0_conv1").compute_dtype == "bfloat16"


def test_the_backends_chatter_is_silenced_at_its_source_and_nothing_else() -> None:
    """What filled the worker's log: TensorFlow's cuInit error on a CPU machine, its retracing
    warnings, and Keras' ``shuffle=True`` warning for a generator. Other warnings still show."""
    program = (
        "import logging, warnings\n"
        "from etchacell_loop.model.backend import select_backend\n"
        "select_backend('tensorflow')\n"
        "import keras, numpy as np, tensorflow as tf\n"
        "model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])\n"
        "model.compile('adam', 'mse')\n"
        "def batches():\n"
        "    while True:\n"
        "        yield np.zeros((2, 4), 'float32'), np.zeros((2, 1), 'float32')\n"
        "model.fit(batches(), steps_per_epoch=1, epochs=1, verbose=0)\n"
        "tf.get_logger().warning('5 out of the last 5 calls to <function f> triggered tf.function retracing.')\n"
        "tf.get_logger().warning('a warning that matters')\n"
        "warnings.warn('another warning that matters', UserWarning)\n"
    )
    environ = {k: v for k, v in os.environ.items() if k not in {"TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND"}}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300, env=environ)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cuInit" not in done.stderr and "retracing" not in done.stderr and "shuffle=True" not in done.stderr
    assert "a warning that matters" in done.stderr and "another warning that matters" in done.stderr
