"""The C heap under a long-running server: what glibc keeps, and giving it back.

A server process lives for days and allocates buffers of every size, prompt-sized: KV caches,
logits, onnxruntime's arenas. Two glibc defaults make its RSS creep: the mmap threshold grows
to the largest block freed so far (up to 32 MB), after which such blocks come from the heap,
where a small live allocation after them keeps their pages from ever being returned; and every
thread that allocates may get an arena of its own (8 per core), each holding its own free
pages. Measured with `benchmarks/soak.py` (three documents typed at once, 10 minutes): RSS
growth after the first minute went from 141 MB (heap trimmed after model work) to 44 MB with
both fixed. Elsewhere (musl, macOS, Windows) nothing here applies and nothing is done.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

# Blocks from 1 MiB up are mapped on their own and unmapped on free: a 2048-token KV layer, a
# few positions of logits. Fixing the threshold also turns glibc's growing of it off.
MMAP_THRESHOLD = 1 << 20
ARENA_MAX = 2
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter numbers (malloc.h)
_M_ARENA_MAX = -8
# A user's own tuning (environment) wins over ours.
_USER_TUNING = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_ARENA_MAX")


def tune_allocator() -> bool:
    """Fix the mmap threshold and the number of arenas; True where glibc took them. Call it
    early: blocks and arenas that exist keep their ways."""
    if any(name in os.environ for name in _USER_TUNING):
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_ARENA_MAX, ARENA_MAX))


def trim() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim)."""
    malloc_trim = _libc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def _libc_function(name: str) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    with contextlib.suppress(OSError, AttributeError):
        return getattr(ctypes.CDLL(None), name)
    return None
