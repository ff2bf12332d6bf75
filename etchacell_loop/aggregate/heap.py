"""Keep freed memory in an aggregation worker instead of handing it back to the system at once.

A worker allocates and frees arrays of a few hundred kilobytes to a few megabytes for every slice it
votes and every image it writes. glibc's allocator serves blocks that large with ``mmap`` and returns
them with ``munmap`` (or trims the top of its heap as soon as a couple of megabytes are free), so
every new array is fresh memory the kernel must fault in and zero page by page: on a paper-sized
export that was a fifth of all CPU time, spent in the kernel. Raising both thresholds keeps the
blocks in the heap for the next slice; the worker's memory stays what its largest slice needed.

Only a process that does this kind of work should call :func:`keep_freed_memory`: it changes the
allocator of the whole process for its lifetime (aggregation calls it in its pool's workers only).
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024**2  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD_BYTES = 256 * 1024**2


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
