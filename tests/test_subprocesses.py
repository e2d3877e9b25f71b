"""Children nextab starts (pip, the model builder) end with it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from nextab.models import subprocesses

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX process semantics")


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # our own child: reap it, or it lingers as a zombie
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        if _zombie(pid):  # ended, waiting for a parent (init, here) to reap it
            return True
        time.sleep(0.05)
    return False


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_run_returns_what_subprocess_run_would() -> None:
    done = subprocesses.run([sys.executable, "-c", "print('out'); raise SystemExit(3)"],
                            capture_output=True, text=True)  # fmt: skip
    assert (done.returncode, done.stdout) == (3, "out\n")
    assert subprocesses.live() == []


def test_end_all_ends_a_running_child_and_its_caller_returns() -> None:
    results: list[subprocess.CompletedProcess[str]] = []
    caller = threading.Thread(
        target=lambda: results.append(
            subprocesses.run(["sleep", "60"], capture_output=True, text=True)
        )
    )
    caller.start()
    deadline = time.monotonic() + 5
    while not subprocesses.live() and time.monotonic() < deadline:
        time.sleep(0.02)
    [child] = subprocesses.live()
    started = time.monotonic()
    subprocesses.end_all()
    caller.join(5)
    assert not caller.is_alive() and results[0].returncode != 0
    assert time.monotonic() - started < 2
    assert _gone(child.pid)


@pytest.mark.parametrize("how", ["exit", "os._exit after end_all"])
def test_children_do_not_outlive_the_process(tmp_path, how: str) -> None:
    # A process with a child in flight on another thread (as the model thread runs pip) exits:
    # normally (atexit) or as the server does when its editor is gone.
    ending = "sys.exit(0)" if how == "exit" else "subprocesses.end_all(); os._exit(0)"
    script = textwrap.dedent(f"""
        import os, sys, threading, time
        from nextab.models import subprocesses
        threading.Thread(target=subprocesses.run, args=(["sleep", "60"],), daemon=True).start()
        while not subprocesses.live():
            time.sleep(0.01)
        print(subprocesses.live()[0].pid, flush=True)
        {ending}
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert _gone(int(done.stdout.split()[0]))
