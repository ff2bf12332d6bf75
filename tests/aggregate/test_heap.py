"""Workers keep freed memory (arrays of a slice's size stop costing fresh pages once it is set), and
the cycle collector runs rarely only for as long as asked."""

from __future__ import annotations

import gc
import json
import platform
import subprocess
import sys

import pytest

from etchacell_loop.aggregate.heap import collecting_rarely

# Run in a fresh interpreter: the setting lasts for the life of the process that makes it.
CHURN = """
import json, resource
import numpy as np
from etchacell_loop.aggregate.heap import keep_freed_memory

def faults_of_churn():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        frames = [np.ones((1000, 1000), np.uint8) for _ in range(4)]  # a slice's frame-sized arrays …
        del frames  # … freed together when it is done
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of_churn()
default = faults_of_churn()
taken = keep_freed_memory()
faults_of_churn()
kept = faults_of_churn()
print(json.dumps({"default": default, "taken": taken, "kept": kept}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator settings are glibc's")
def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    done = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, check=True, timeout=60)
    faults = json.loads(done.stdout)
    assert faults["taken"] is True
    assert faults["default"] > 50 * 245  # the heap trimmed after each slice: its pages faulted in anew
    assert faults["kept"] < faults["default"] / 20


def test_collecting_rarely_raises_the_thresholds_for_the_block_and_restores_them() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), collecting_rarely((50_000, 20, 30)):
        assert gc.get_threshold() == (50_000, 20, 30)
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # cycles are still collected, on request or at the higher threshold
        raise RuntimeError("the thresholds come back even when the block fails")
    assert gc.get_threshold() == before
