"""nextab/heap.py: glibc tuned so that a long-running server's freed buffers leave its RSS."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from nextab import heap

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# Big blocks freed while a newer one lives on: KV caches of closed documents and that of the
# one being typed in. The first big block freed raises glibc's mmap threshold above the big
# size, so by default the rest come from the heap, below the live one, and their pages stay
# resident after free.
SCRIPT = """
import ctypes, sys
from nextab import heap
if sys.argv[1] == "tuned":
    assert heap.tune_allocator()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
big = 4 << 20
first = libc.malloc(big); ctypes.memset(first, 1, big); libc.free(first)
before = rss_mb()
blocks = []
for _ in range(41):
    block = libc.malloc(big)
    ctypes.memset(block, 1, big)
    blocks.append(block)
for block in blocks[:-1]:  # the newest stays: a cache still in use
    libc.free(block)
print(rss_mb() - before - 4)
"""


def _kept_mb(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in heap._USER_TUNING}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout)


def test_freed_big_blocks_leave_the_resident_set_once_tuned() -> None:
    assert _kept_mb("default") > 100  # 160 MB freed, most still resident
    assert _kept_mb("tuned") < 20


def test_a_users_own_tuning_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert heap.tune_allocator() is False
