"""A real watchdog observer keeps the index in step with changes made outside the editor."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from watchdog.events import FileModifiedEvent

from nextab.context.index import WorkspaceIndex
from nextab.context.watch import WorkspaceWatcher, _Handler

TIMEOUT = 15.0


def _eventually(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _names(index: WorkspaceIndex, name: str) -> list[str]:
    return [d.path for d in index.definitions_named(name)]


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, WorkspaceIndex, WorkspaceWatcher]]:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "core.py").write_text("def original(): pass\n")
    (tmp_path / "pkg" / "old.py").write_text("def doomed(): pass\n")
    (tmp_path / ".gitignore").write_text("generated/\n")
    index = WorkspaceIndex(tmp_path)
    index.start()
    assert index.wait_ready(30)
    watcher = WorkspaceWatcher(index, quiet_seconds=0.1, max_delay_seconds=1.0)
    assert watcher.start()
    yield tmp_path, index, watcher
    watcher.stop()
    index.stop()


def test_created_modified_deleted_and_moved_files(watched) -> None:
    root, index, _ = watched
    (root / "pkg" / "fresh.py").write_text("def fresh(): pass\n")
    assert _eventually(lambda: _names(index, "fresh") == ["pkg/fresh.py"])

    (root / "pkg" / "core.py").write_text("def rewritten(): pass\n")
    assert _eventually(lambda: _names(index, "rewritten") == ["pkg/core.py"])
    assert _names(index, "original") == []

    (root / "pkg" / "old.py").unlink()
    assert _eventually(lambda: _names(index, "doomed") == [])
    assert "pkg/old.py" not in index.files()

    (root / "pkg" / "fresh.py").rename(root / "pkg" / "renamed.py")
    assert _eventually(lambda: _names(index, "fresh") == ["pkg/renamed.py"])


def test_directories_moved_in_and_removed(watched, tmp_path_factory) -> None:
    root, index, _ = watched
    outside = tmp_path_factory.mktemp("outside")
    (outside / "lib").mkdir()
    (outside / "lib" / "util.py").write_text("def util(): pass\n")
    shutil.move(str(outside / "lib"), str(root / "lib"))
    assert _eventually(lambda: _names(index, "util") == ["lib/util.py"])
    shutil.rmtree(root / "lib")
    assert _eventually(lambda: _names(index, "util") == [])


def test_ignored_paths_and_git_internals_stay_out(watched) -> None:
    root, index, _ = watched
    (root / "generated").mkdir()
    (root / "generated" / "api.py").write_text("def generated_api(): pass\n")
    (root / "node_modules" / "x").mkdir(parents=True)
    (root / "node_modules" / "x" / "index.js").write_text("function vendored() {}\n")
    (root / ".git" / "objects").mkdir(parents=True)
    (root / ".git" / "objects" / "ab.py").write_text("def in_git(): pass\n")
    (root / "pkg" / "marker.py").write_text("def marker(): pass\n")  # written last
    assert _eventually(lambda: _names(index, "marker") == ["pkg/marker.py"])
    time.sleep(0.3)  # let any batch holding the earlier events be applied too
    assert _names(index, "generated_api") == []
    assert _names(index, "vendored") == []
    assert _names(index, "in_git") == []


def test_gitignore_change_rescans(watched) -> None:
    root, index, _ = watched
    assert "pkg/core.py" in index.files()
    (root / ".gitignore").write_text("generated/\npkg/core.py\n")
    assert _eventually(lambda: "pkg/core.py" not in index.files())
    (root / ".gitignore").write_text("generated/\n")
    assert _eventually(lambda: "pkg/core.py" in index.files())


def test_a_burst_of_changes_is_coalesced(watched) -> None:
    root, index, watcher = watched
    batches_before = watcher.batches
    burst = root / "burst"
    burst.mkdir()
    for i in range(200):
        (burst / f"m{i:03}.py").write_text(f"def burst_{i}(): pass\n")
    assert _eventually(lambda: all(_names(index, f"burst_{i}") for i in range(200)))
    # 200 files (400+ events) arrive in a few batches, not one per event.
    assert watcher.batches - batches_before <= 20


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_checkout_updates_the_index(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    (tmp_path / "app.py").write_text("def on_main(): pass\n")
    git("add", "."), git("commit", "-q", "-m", "main")
    git("checkout", "-q", "-b", "feature")
    (tmp_path / "app.py").write_text("def on_feature(): pass\n")
    (tmp_path / "extra.py").write_text("def extra(): pass\n")
    git("add", "."), git("commit", "-q", "-m", "feature")
    git("checkout", "-q", "main")
    index = WorkspaceIndex(tmp_path)
    index.start()
    assert index.wait_ready(30)
    watcher = WorkspaceWatcher(index, quiet_seconds=0.1)
    watcher.start()
    try:
        assert _names(index, "on_main") == ["app.py"]
        git("checkout", "-q", "feature")
        assert _eventually(lambda: _names(index, "on_feature") == ["app.py"])
        assert _eventually(lambda: _names(index, "extra") == ["extra.py"])
        assert _names(index, "on_main") == []
        assert not any(p.startswith(".git/") for p in index.files())
    finally:
        watcher.stop()
        index.stop()


def test_errors_never_reach_watchdogs_thread(tmp_path: Path) -> None:
    index = WorkspaceIndex(tmp_path)

    class Broken(WorkspaceWatcher):
        def queue_event(self, event) -> None:
            raise RuntimeError("bug")

    handler = _Handler(Broken(index))
    handler.on_any_event(FileModifiedEvent(str(tmp_path / "a.py")))  # logged, not raised
    watcher = WorkspaceWatcher(index)
    watcher.apply(["missing/never.py", "../outside.py"])  # paths that do not exist: no error
    assert watcher.batches == 1


def test_unwatchable_root_is_reported_not_raised(tmp_path: Path) -> None:
    index = WorkspaceIndex(tmp_path / "does-not-exist")
    watcher = WorkspaceWatcher(index)
    assert watcher.start() is False
    watcher.stop()


def test_no_watches_left_means_polling_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno

    from nextab.context import watch

    class Exhausted(watch.Observer):  # what watchdog raises when inotify's watches run out
        def start(self) -> None:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watch, "Observer", Exhausted)
    (tmp_path / "a.py").write_text("def before(): pass\n")
    index = WorkspaceIndex(tmp_path)
    index.start()
    assert index.wait_ready(30)
    watcher = WorkspaceWatcher(index, quiet_seconds=0.1, poll_seconds=0.2)
    try:
        assert watcher.start() and watcher.mode == "polling"
        assert any("every 0.2 s" in r.getMessage() for r in caplog.records)
        (tmp_path / "b.py").write_text("def polled(): pass\n")
        (tmp_path / "a.py").unlink()
        assert _eventually(lambda: _names(index, "polled") == ["b.py"])
        assert _eventually(lambda: _names(index, "before") == [])
    finally:
        watcher.stop()
        index.stop()


def test_a_storm_of_events_is_applied_without_blocking_queries(tmp_path: Path) -> None:
    # 5,000 file events: 2,500 files created, then their folder removed with rm -rf, and a
    # node_modules of 1,000 files appearing; queries answer meanwhile, the index ends in step.
    (tmp_path / "keep.py").write_text("def kept(): pass\n")
    index = WorkspaceIndex(tmp_path)
    index.start()
    assert index.wait_ready(30)
    watcher = WorkspaceWatcher(index, quiet_seconds=0.1, max_delay_seconds=1.0)
    assert watcher.start()
    try:
        storm = tmp_path / "storm"
        for d in range(25):
            folder = storm / f"d{d}"
            folder.mkdir(parents=True)
            for i in range(100):
                (folder / f"m{i}.py").write_text(f"def storm_{d}_{i}(): pass\n")
        modules = tmp_path / "node_modules" / "lib"
        modules.mkdir(parents=True)
        for i in range(1000):
            (modules / f"x{i}.js").write_text("function vendored() {}\n")
        slowest = 0.0
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and len(index.files()) < 2501:
            started = time.perf_counter()
            assert _names(index, "kept") == ["keep.py"]
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.02)
        assert len(index.files()) == 2501
        shutil.rmtree(storm)
        assert _eventually(lambda: sorted(index.files()) == ["keep.py"])
        assert not _names(index, "vendored")
        assert slowest < 1.0  # a query never waits for the batch being applied
    finally:
        watcher.stop()
        index.stop()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_checkout_of_a_thousand_files_leaves_the_index_as_the_disk(tmp_path: Path) -> None:
    # Modified, deleted, added files and a rename over an existing file, both ways.
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)  # fmt: skip

    src = tmp_path / "src"
    src.mkdir()
    git("init", "-q", "-b", "main")
    for i in range(1000):
        (src / f"m{i}.py").write_text(f"def main_{i}(): pass\n")
    git("add", "."), git("commit", "-q", "-m", "main")
    git("checkout", "-q", "-b", "feature")
    for i in range(500):
        (src / f"m{i}.py").write_text(f"def feature_{i}(): pass\n")
    for i in range(500, 750):
        (src / f"m{i}.py").unlink()
    for i in range(250):
        (src / f"n{i}.py").write_text(f"def added_{i}(): pass\n")
    (src / "m999.py").replace(src / "m998.py")  # renamed over an existing file
    git("add", "-A"), git("commit", "-q", "-m", "feature")
    git("checkout", "-q", "main")

    def in_step() -> bool:
        on_disk = sorted(f"src/{p.name}" for p in src.iterdir())
        if sorted(index.files()) != on_disk:
            return False
        for path in on_disk:
            entry = index.file(path)
            if entry is None or entry.symbols is None:
                return False
            names = [d.name for d in entry.symbols.definitions]
            if names != [(src / path[4:]).read_text().split()[1].removesuffix("():")]:
                return False
        return True

    index = WorkspaceIndex(tmp_path)
    index.start()
    assert index.wait_ready(60)
    watcher = WorkspaceWatcher(index)
    assert watcher.start()
    try:
        assert in_step()
        git("checkout", "-q", "feature")
        assert _eventually(in_step, 30), "the index does not match the disk after the checkout"
        assert _names(index, "main_999") == ["src/m998.py"] and not _names(index, "main_998")
        git("checkout", "-q", "main")
        assert _eventually(in_step, 30)
        assert _names(index, "main_998") == ["src/m998.py"]
    finally:
        watcher.stop()
        index.stop()
