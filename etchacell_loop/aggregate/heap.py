"""Memory habits of a process that aggregates: keep freed memory, and collect cycles rarely.

A worker allocates and frees arrays of a few hundred kilobytes to a few megabytes for every slice it
votes and every image it writes. glibc's allocator serves blocks that large with ``mmap`` and returns
them with ``munmap`` (or trims the top of its heap as soon as a couple of megabytes are free), so
every new array is fresh memory the kernel must fault in and zero page by page: on a paper-sized
export that was a fifth of all CPU time, spent in the kernel. Raising both thresholds keeps the
blocks in the heap for the next slice; the worker's memory stays what its largest slice needed.

Only a process that does this kind of work should call :func:`keep_freed_memory`: it changes the
allocator of the whole process for its lifetime (aggregation calls it in its pool's workers only).

Reading an export builds millions of small containers (a tracing's points decode as one dict per
point) that reference counting frees and that never form cycles, yet every 700 of them wake Python's
cycle collector, which then walks every young object: a sixth of the time spent parsing.
:func:`collecting_rarely` raises the collector's thresholds for the length of a block and puts them
back after; garbage in cycles is still collected, only less often.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024**2  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD_BYTES = 256 * 1024**2
RARE_COLLECTION_THRESHOLDS = (100_000, 50, 100)  # allocations before a young collection; then per older one


def keep_freed_memory(
    mmap_threshold_bytes: int = MMAP_THRESHOLD_BYTES, trim_threshold_bytes: int = TRIM_THRESHOLD_BYTES
) -> bool:
    """Serve blocks below ``mmap_threshold_bytes`` from the heap and keep up to
    ``trim_threshold_bytes`` of free heap; True when the allocator took both settings (False where
    the C library is not glibc: nothing is changed there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter already uses
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # A fixed mmap threshold first: setting either one ends glibc's own adjustment of the other, and a
    # fixed trim threshold beside the default 128 KiB mmap threshold would map more blocks, not fewer.
    if mallopt(M_MMAP_THRESHOLD, mmap_threshold_bytes) != 1:
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, trim_threshold_bytes) == 1)


@contextmanager
def collecting_rarely(thresholds: tuple[int, int, int] = RARE_COLLECTION_THRESHOLDS) -> Iterator[None]:
    """Run the block with the cycle collector's thresholds at ``thresholds`` (restored after)."""
    before = gc.get_threshold()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*before)
