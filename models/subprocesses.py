"""Child processes (pip fetching model parts, onnxruntime-genai's model builder) that end with
nextab.

A server whose editor is gone exits at once (`os._exit`, which skips interpreter cleanup), and
a normal exit does not end children either: a model builder started during the first run would
go on converting for minutes after the editor closed. Children run through `run` are tracked;
`end_all` ends them (SIGTERM, then SIGKILL after a grace period) and runs at exit and in the
server's own exit paths.
"""

from __future__ import annotations

import atexit
import contextlib
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

GRACE_S = 0.3  # between SIGTERM and SIGKILL

_live: set[subprocess.Popen[Any]] = set()
_lock = threading.Lock()


def run(command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run(command, **kwargs)` (no `check`, no `timeout`), the child tracked."""
    if kwargs.pop("capture_output", False):
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with subprocess.Popen(command, **kwargs) as process:
        with _lock:
            _live.add(process)
        try:
            out, err = process.communicate()
        finally:
            with _lock:
                _live.discard(process)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def live() -> list[subprocess.Popen[Any]]:
    with _lock:
        return [p for p in _live if p.poll() is None]


def end_all(grace_s: float = GRACE_S) -> None:
    """End every tracked child still running."""
    children = live()
    for child in children:
        with contextlib.suppress(OSError):
            child.terminate()
    for child in children:
        try:
            child.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                child.kill()


atexit.register(end_all)
