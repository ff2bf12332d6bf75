"""Training batches made ahead of the model, in worker processes, so an accelerator never waits.

Why: on an H200 the paper's U-Net trains at about 29 steps a second on its own, but one Python
process draws and augments about five of the paper's batches a second: fed that way the chip was idle
69% of the time. Batches are made here by ``workers`` processes while the model trains on earlier ones.

* **Deterministic for a seed.** Batch ``i`` is :func:`etchacell_loop.model.data.training_batch` drawn
  with its own generator, ``numpy.random.default_rng([seed, i])``, so the sequence of batches is the
  same whatever the number of workers or the order they finish in, and the same as made in one
  process (``workers=0``). The augmentation is the one training always used (:class:`AugmentParams`).
* **Spawned workers, shared stacks.** Workers are started with ``spawn``, never ``fork``: the parent
  already runs JAX, PyTorch or TensorFlow threads, and a forked copy of those can deadlock. The
  training stacks (hundreds of megabytes for the paper's ROIs) are placed once in one block of shared
  memory and every worker reads them there, without a copy each.
* **Batches come back through shared memory too**, in a ring of ``prefetch`` slots already in the
  model's layout: a batch of the paper's patches is 75 MB, too much to pickle through a pipe 26 times
  a second. The parent copies a finished slot out (the model may still be reading the array it was
  given while the slot is filled again) and hands the slot to the next batch.

Keras' own ``PyDataset`` runs its workers with ``fork`` and starts a new pool every epoch, hence this
small pipeline over :mod:`concurrent.futures` instead; what it yields is a plain iterator of
``(x, y)`` that ``model.fit`` takes on every backend.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.shared_memory import SharedMemory
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from etchacell_loop.model.data import (
    AugmentParams,
    FloatArray,
    Stack,
    to_model_layout,
    training_batch,
)
from etchacell_loop.model.presets import ModelPreset

MAX_AUTO_WORKERS = 12
Batch = tuple[
    FloatArray, NDArray[np.uint8]
]  # labels stay 0/1 bytes: the loss casts them, and they cross to the device 4x smaller


def auto_workers(cpus: int | None = None) -> int:
    """Worker processes when none are asked for: every core but one for the training loop, at most
    :data:`MAX_AUTO_WORKERS` (more made no difference to the paper's batches); none on one core."""
    count = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(0, min(MAX_AUTO_WORKERS, count - 1))


def batch_rng(seed: int, index: int) -> np.random.Generator:
    """Batch ``index``'s own generator: independent of every other batch's, the same wherever made."""
    return np.random.default_rng([seed, index])


def make_batch(
    stacks: Sequence[Stack], preset: ModelPreset, params: AugmentParams, seed: int, index: int
) -> tuple[FloatArray, NDArray[np.uint8]]:
    """Batch ``index`` in the model's layout: images as float32, labels as uint8 (0/1)."""
    images, labels = training_batch(stacks, preset, batch_rng(seed, index), params)
    return to_model_layout(images, preset.architecture), to_model_layout(labels, preset.architecture).astype(np.uint8)


# --- shared memory -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArraySpec:
    """Where one array lies in a shared block: byte offset, shape, dtype."""

    offset: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def view(self, buffer: Any) -> NDArray[Any]:
        return np.ndarray(self.shape, dtype=np.dtype(self.dtype), buffer=buffer, offset=self.offset)


def _layout(shapes: Sequence[tuple[tuple[int, ...], str]]) -> tuple[list[ArraySpec], int]:
    """Consecutive, 64-byte aligned places for arrays of these shapes and dtypes; the total size."""
    specs, offset = [], 0
    for shape, dtype in shapes:
        spec = ArraySpec(offset, shape, dtype)
        specs.append(spec)
        offset += -(-spec.nbytes // 64) * 64
    return specs, max(offset, 1)


@dataclass(frozen=True)
class StackSpec:
    """A training stack in shared memory: its arrays' places and its other fields."""

    roi_key: str
    split: str
    source_z: tuple[int, ...]
    image: ArraySpec
    envelope: ArraySpec
    area: ArraySpec


def share_stacks(stacks: Sequence[Stack]) -> tuple[SharedMemory, list[StackSpec]]:
    """Copy the stacks' arrays into one new shared block (the caller closes and unlinks it)."""
    arrays = [(a.shape, a.dtype.str) for s in stacks for a in (s.image, s.envelope, s.area)]
    specs, size = _layout(arrays)
    block = SharedMemory(create=True, size=size)
    described = []
    for k, stack in enumerate(stacks):
        image, envelope, area = specs[3 * k : 3 * k + 3]
        for spec, array in zip((image, envelope, area), (stack.image, stack.envelope, stack.area), strict=True):
            spec.view(block.buf)[...] = array
        described.append(StackSpec(stack.roi_key, stack.split, stack.source_z, image, envelope, area))
    return block, described


def attach_stacks(buffer: Any, specs: Sequence[StackSpec]) -> list[Stack]:
    """The stacks as read-only views into a shared block."""
    stacks = []
    for spec in specs:
        views = [s.view(buffer) for s in (spec.image, spec.envelope, spec.area)]
        for view in views:
            view.flags.writeable = False
        stacks.append(Stack(spec.roi_key, spec.split, spec.source_z, views[0], views[1], views[2]))
    return stacks


# --- the workers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSetup:
    """What every worker needs: where the stacks and the batch slots are, and how to draw."""

    stacks_block: str
    stacks: tuple[StackSpec, ...]
    slots_block: str
    slots: tuple[tuple[ArraySpec, ArraySpec], ...]
    preset: ModelPreset
    params: AugmentParams
    seed: int


class _Worker:
    """A worker process's state: its attachments to the shared blocks (kept open for its life)."""

    setup: WorkerSetup
    stacks: list[Stack]
    stacks_memory: SharedMemory
    slots_memory: SharedMemory


_WORKER = _Worker()


def _start_worker(setup: WorkerSetup) -> None:
    _WORKER.setup = setup
    _WORKER.stacks_memory = SharedMemory(name=setup.stacks_block)
    _WORKER.slots_memory = SharedMemory(name=setup.slots_block)
    _WORKER.stacks = attach_stacks(_WORKER.stacks_memory.buf, setup.stacks)


def _fill_slot(index: int, slot: int) -> int:
    """Make batch ``index`` into slot ``slot``; returns the index (a check for the parent)."""
    setup = _WORKER.setup
    x, y = make_batch(_WORKER.stacks, setup.preset, setup.params, setup.seed, index)
    x_spec, y_spec = setup.slots[slot]
    x_spec.view(_WORKER.slots_memory.buf)[...] = x
    y_spec.view(_WORKER.slots_memory.buf)[...] = y
    return index


# --- the pipeline ------------------------------------------------------------------------------------


class BatchPipeline:
    """Endless training batches ``(x, y)`` in the model's layout, in index order (see the module
    docstring): images float32, labels uint8 0/1 (the Dice loss casts them). ``workers=0`` makes them
    in the calling process; use as a context manager (or call :meth:`close`) so the workers and the
    shared memory go away."""

    def __init__(
        self,
        stacks: Sequence[Stack],
        preset: ModelPreset,
        params: AugmentParams,
        *,
        seed: int = 0,
        workers: int = 0,
        prefetch: int | None = None,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must not be negative, not {workers}")
        self.stacks, self.preset, self.params, self.seed, self.workers = list(stacks), preset, params, seed, workers
        self.prefetch = max(2, prefetch if prefetch is not None else 2 * workers)
        self._next = 0
        self._pool: ProcessPoolExecutor | None = None
        self._blocks: list[SharedMemory] = []
        self._pending: deque[tuple[int, int, Future[int]]] = deque()
        self._slots: list[tuple[NDArray[Any], NDArray[Any]]] = []
        if workers:
            self._start()

    def _start(self) -> None:
        stacks_block, stack_specs = share_stacks(self.stacks)
        self._blocks.append(stacks_block)
        x_shape, y_shape = self._shapes()
        slot_specs, size = _layout(
            [spec for _ in range(self.prefetch) for spec in ((x_shape, "<f4"), (y_shape, "|u1"))]
        )
        slots_block = SharedMemory(create=True, size=size)
        self._blocks.append(slots_block)
        pairs = tuple((slot_specs[2 * k], slot_specs[2 * k + 1]) for k in range(self.prefetch))
        self._slots = [(x.view(slots_block.buf), y.view(slots_block.buf)) for x, y in pairs]
        setup = WorkerSetup(
            stacks_block.name, tuple(stack_specs), slots_block.name, pairs, self.preset, self.params, self.seed
        )
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(setup,)
        )
        for _ in range(self.prefetch):
            self._submit()

    def _shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        probe = np.zeros((self.preset.batch_size, *self.preset.patch_zyx), dtype=np.float32)
        shape = to_model_layout(probe, self.preset.architecture).shape
        return shape, shape

    def _submit(self) -> None:
        assert self._pool is not None
        index = self._next
        slot = index % self.prefetch
        self._pending.append((index, slot, self._pool.submit(_fill_slot, index, slot)))
        self._next += 1

    def __iter__(self) -> Iterator[Batch]:
        return self

    def generator(self) -> Generator[Batch, None, None]:
        """The batches as a generator, the form ``model.fit`` takes for endless Python data."""
        while True:
            yield next(self)

    def __next__(self) -> Batch:
        if self._pool is None:
            batch = make_batch(self.stacks, self.preset, self.params, self.seed, self._next)
            self._next += 1
            return batch
        index, slot, future = self._pending.popleft()
        if future.result() != index:
            raise RuntimeError(f"batch {index} came back as {future.result()}")
        x_view, y_view = self._slots[slot]
        batch = (np.array(x_view), np.array(y_view))
        self._submit()
        return batch

    def close(self) -> None:
        """Stop the workers and free the shared memory (safe to call twice)."""
        if self._pool is not None:
            for _, _, future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending.clear()
        self._slots = []
        for block in self._blocks:
            block.close()
            block.unlink()
        self._blocks = []

    def __enter__(self) -> BatchPipeline:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
