"""Training batches made ahead of the model in worker processes: the same for a seed however made."""

from __future__ import annotations

from dataclasses import replace
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import pytest

from etchacell_loop.model.data import AugmentParams, Stack, from_model_layout
from etchacell_loop.model.pipeline import BatchPipeline, attach_stacks, auto_workers, make_batch, share_stacks

from .support import tiny_preset


def ring_stacks(count: int = 3, shape: tuple[int, int, int] = (10, 48, 56)) -> list[Stack]:
    """Stacks whose envelope is a ring and whose image says where each voxel came from."""
    rng = np.random.default_rng(5)
    stacks = []
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    ring = (np.abs(np.hypot(yy - shape[1] / 2, xx - shape[2] / 2) - 15) < 1).astype(np.uint8)
    for k in range(count):
        envelope = np.repeat(ring[np.newaxis], shape[0], axis=0)
        envelope[: k + 1] = 0
        image = rng.random(shape, dtype=np.float32)
        stacks.append(Stack(f"v/r{k}", "train", tuple(range(shape[0])), image, envelope, envelope.astype(bool)))
    return stacks


def take(pipeline: BatchPipeline, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [next(pipeline) for _ in range(n)]


def test_the_batches_are_the_same_for_a_seed_with_any_number_of_workers() -> None:
    preset = tiny_preset()
    stacks, params = ring_stacks(), AugmentParams()
    with BatchPipeline(stacks, preset, params, seed=7, workers=0) as here:
        expected = take(here, 6)
    with BatchPipeline(stacks, preset, params, seed=7, workers=2, prefetch=3) as two:
        got = take(two, 6)
    for (x, y), (x2, y2) in zip(expected, got, strict=True):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    assert not all(np.array_equal(expected[0][0], x) for x, _ in expected[1:])  # batches differ from each other
    with BatchPipeline(stacks, preset, params, seed=8, workers=0) as other:
        assert not np.array_equal(next(other)[0], expected[0][0])


def test_a_batch_is_the_training_batch_of_its_own_generator_in_the_model_layout() -> None:
    preset = tiny_preset()
    stacks = ring_stacks()
    x, y = make_batch(stacks, preset, AugmentParams(intensity=False), seed=3, index=4)
    assert x.dtype == np.float32 and y.dtype == np.uint8
    images, labels = from_model_layout(x, preset.architecture), from_model_layout(y, preset.architecture)
    assert images.shape == (preset.batch_size, *preset.patch_zyx)
    assert set(np.unique(labels)) <= {0, 1} and labels.any()  # most patches hold envelope
    # Without intensity changes every image voxel is a voxel of some stack: nothing was invented.
    pool = np.concatenate([s.image.ravel() for s in stacks])
    assert np.isin(images.ravel()[:500], pool).all()


def test_the_workers_read_the_stacks_from_one_shared_block() -> None:
    stacks = ring_stacks(2)
    block, specs = share_stacks(stacks)
    try:
        other = SharedMemory(name=block.name)
        attached = attach_stacks(other.buf, specs)
        for original, shared in zip(stacks, attached, strict=True):
            np.testing.assert_array_equal(original.image, shared.image)
            np.testing.assert_array_equal(original.envelope, shared.envelope)
            assert shared.roi_key == original.roi_key and not shared.image.flags.writeable
        del attached, shared
        other.close()
    finally:
        block.close()
        block.unlink()


def test_closing_frees_the_shared_memory_and_a_bad_worker_count_is_refused() -> None:
    pipeline = BatchPipeline(ring_stacks(1), tiny_preset(), AugmentParams(), workers=1)
    names = [block.name for block in pipeline._blocks]
    next(pipeline)
    pipeline.close()
    pipeline.close()
    for name in names:
        with pytest.raises(FileNotFoundError):
            SharedMemory(name=name)
    with pytest.raises(ValueError, match="negative"):
        BatchPipeline(ring_stacks(1), tiny_preset(), AugmentParams(), workers=-1)


def test_automatic_workers_leave_a_core_for_the_training_loop() -> None:
    assert [auto_workers(n) for n in (1, 2, 4, 16, 64)] == [0, 1, 3, 12, 12]


def test_the_3d_layout_travels_through_the_slots() -> None:
    preset = replace(tiny_preset("unet-3d"), batch_size=2)
    with BatchPipeline(ring_stacks(), preset, AugmentParams(), seed=1, workers=1) as pipeline:
        x, y = next(pipeline)
    expected_x, expected_y = make_batch(ring_stacks(), preset, AugmentParams(), 1, 0)
    assert x.shape == (2, *preset.patch_zyx, 1)
    np.testing.assert_array_equal(x, expected_x)
    np.testing.assert_array_equal(y, expected_y)
    assert x.dtype == np.float32 and y.dtype == np.uint8
