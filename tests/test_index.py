"""The workspace index on real temporary trees: what it takes, what it answers, what it keeps."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import msgpack
import pytest

from nextab.context.index import FORMAT_VERSION, STORE_KIND, IndexLimits, WorkspaceIndex
from nextab.storage import pack_records, unpack_records
from tests.files import write_files

_write = write_files


def _indexed(root: Path, **kwargs: object) -> WorkspaceIndex:
    index = WorkspaceIndex(root, **kwargs)  # type: ignore[arg-type]
    index.start()
    assert index.wait_ready(60)
    return index


def _bump(path: Path, text: str) -> None:
    """Rewrite a file so that its size or mtime surely differs from before."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    _write(tmp_path, {
        ".gitignore": "*.gen.py\nsecret/\nlogs/*.py\n!logs/keep.py\n",
        ".git/info/exclude": "scratch.py\n",
        ".git/config": "[core]\n",
        "app/__init__.py": "",
        "app/models.py": "class User:\n    def save(self):\n        pass\n",
        "app/views.py": "from .models import User\n\ndef show(user: User):\n    return user\n",
        "app/.gitignore": "local_*.py\n!local_keep.py\n",
        "app/local_tmp.py": "def tmp(): pass\n",
        "app/local_keep.py": "def keep(): pass\n",
        "app/schema.gen.py": "def generated(): pass\n",
        "secret/key.py": "KEY = 1\n",
        "logs/debug.py": "def debug(): pass\n",
        "logs/keep.py": "def kept(): pass\n",
        "scratch.py": "def scratch(): pass\n",
        "web/index.ts": "import { api } from './api';\nexport function main(): void {}\n",
        "web/api.ts": "export const api = () => 1;\n",
        "web/bundle.min.js": "function a(){}\n",
        "web/node_modules/lib/index.js": "function vendored() {}\n",
        ".venv/lib/site.py": "def venv(): pass\n",
        "env2/pyvenv.cfg": "home = /usr\n",
        "env2/lib/thing.py": "def in_venv(): pass\n",
        "build/out.py": "def built(): pass\n",
        "vendor/dep.go": "package dep\n",
        "README.md": "# docs are not source\n",
        "blob.py": b"def x():\x00\x01\x02 pass\n",
        "latin.py": "# caf\xe9\ndef latin(): pass\n".encode("latin-1"),
        "big.py": "def big(): pass\n" + "# padding\n" * 500,
        "tool.rb": "def ruby; end\n",
    })
    return tmp_path


def test_walk_respects_ignore_rules_binaries_huge_and_vendored(project: Path) -> None:
    index = _indexed(project, max_file_bytes=2000)
    assert index.files() == [
        "app/__init__.py",
        "app/local_keep.py",
        "app/models.py",
        "app/views.py",
        "logs/keep.py",
        "tool.rb",  # code without a grammar: listed, no symbols
        "web/api.ts",
        "web/index.ts",
    ]
    stats = index.stats()
    assert stats.skipped == {"binary": 1, "undecodable": 1, "huge": 1}
    assert index.file("tool.rb").symbols is None
    index.stop()


def test_queries_definitions_imports_and_text(project: Path) -> None:
    index = _indexed(project)
    [user] = index.definitions_named("User")
    assert (user.path, user.kind, user.start_line, user.signature) == (
        "app/models.py", "class", 0, "class User:",
    )
    [save] = index.definitions_named("save")
    assert (save.kind, save.container) == ("method", "User")
    assert index.definitions_named("nothing") == []
    assert index.resolve_imports("app/views.py") == ["app/models.py"]
    assert index.resolve_imports("web/index.ts") == ["web/api.ts"]
    assert index.resolve_imports(str(project / "web" / "index.ts")) == ["web/api.ts"]
    assert index.file(f"file://{project}/app/models.py").language == "python"
    assert index.read_text("app/models.py").startswith("class User")
    assert index.read_text("blob.py") is None
    assert index.read_text("/elsewhere/x.py") is None
    assert index.file("/elsewhere/x.py") is None
    index.stop()


def test_open_buffer_wins_until_closed(project: Path) -> None:
    changes: list[tuple] = []
    index = _indexed(project, on_change=lambda *c: changes.append(c))
    changes.clear()
    index.update_text("app/models.py", "class Account:\n    pass\n")
    assert index.definitions_named("User") == []
    assert [d.path for d in index.definitions_named("Account")] == ["app/models.py"]
    assert index.read_text("app/models.py") == "class Account:\n    pass\n"
    assert index.file("app/models.py").from_buffer
    # The disk copy changing underneath does not override the open buffer...
    _bump(project / "app/models.py", "class Disk:\n    pass\n")
    index.update_file("app/models.py")
    assert index.definitions_named("Disk") == []
    # ...until the buffer is closed.
    index.close_text("app/models.py")
    assert [d.path for d in index.definitions_named("Disk")] == ["app/models.py"]
    assert index.definitions_named("Account") == []
    assert [c[:3] for c in changes] == [
        ("app/models.py", "class Account:\n    pass\n", "python"),
        ("app/models.py", "class Disk:\n    pass\n", "python"),
    ]
    # The buffer's tree is handed on (listeners chunk with it instead of parsing again); the
    # closed buffer's disk text was parsed when the file was indexed, before this listener.
    assert changes[0][3] is not None and changes[0][3].root_node.child(0).type == "class_definition"
    assert changes[1][3] is None
    # A buffer for a file not on disk yet (a new, unsaved file) is indexed too.
    index.update_text(str(project / "app" / "new.py"), "def fresh(): pass\n")
    assert [d.path for d in index.definitions_named("fresh")] == ["app/new.py"]
    index.stop()


def test_update_and_remove_files(project: Path) -> None:
    index = _indexed(project)
    _write(project, {"app/extra.py": "def extra(): pass\n"})
    assert index.update_file("app/extra.py")
    assert [d.path for d in index.definitions_named("extra")] == ["app/extra.py"]
    assert not index.update_file("app/extra.py")  # unchanged: nothing done
    (project / "app/extra.py").unlink()
    assert index.update_file("app/extra.py")  # gone from disk: forgotten
    assert index.definitions_named("extra") == []
    assert index.remove_file("app")  # a directory: everything under it
    assert [p for p in index.files() if p.startswith("app/")] == []
    index.refresh("app")  # and back, by walking it
    assert "app/models.py" in index.files() and "app/local_tmp.py" not in index.files()
    _write(project, {"secret/more.py": "def hidden(): pass\n"})
    assert not index.update_file("secret/more.py")  # ignored paths stay out
    index.stop()


def test_progress_counts_increase_to_the_total(project: Path) -> None:
    reports: list[tuple[int, int, str]] = []
    index = _indexed(project, progress=lambda d, t, m: reports.append((d, t, m)))
    # Every source file the walk found counts, the binary and undecodable ones included.
    total = len(index.files()) + sum(index.stats().skipped.values())
    assert reports[-1][:2] == (total, total)
    dones = [d for d, _, _ in reports]
    assert dones == sorted(dones) and len(reports) >= 3
    assert all(t == total for _, t, _ in reports[1:])
    index.stop()


def test_queries_answer_while_the_scan_runs(tmp_path: Path) -> None:
    _write(tmp_path, {f"m{i:03}.py": f"def shared(): return {i}\n" for i in range(300)})
    paused, release = threading.Event(), threading.Event()

    def progress(done: int, total: int, _message: str) -> None:
        if 0 < done < total:
            paused.set()
            release.wait(30)

    index = WorkspaceIndex(tmp_path, progress=progress)
    index.start()
    try:
        assert paused.wait(30)
        started = time.perf_counter()
        partial = index.definitions_named("shared")
        files = index.files()
        assert time.perf_counter() - started < 1.0
        assert 0 < len(partial) < 300 and not index.ready
        assert len(files) == len(partial)
    finally:
        release.set()
    assert index.wait_ready(60)
    assert len(index.definitions_named("shared")) == 300
    index.stop()


def test_store_reparses_only_changed_files(project: Path) -> None:
    store = project.parent / "store" / "index.msgpack"
    first = _indexed(project, store_path=store)
    parsed_first = first.stats().parsed
    first.stop()
    assert store.is_file() and parsed_first == 8  # the files with a grammar

    second = _indexed(project, store_path=store)
    assert second.stats().parsed == 0 and second.stats().reused == len(second.files())
    assert [d.path for d in second.definitions_named("User")] == ["app/models.py"]
    second.stop()

    _bump(project / "app/models.py", "class Member:\n    pass\n")
    (project / "web/api.ts").unlink()
    third = _indexed(project, store_path=store)
    assert third.stats().parsed == 1
    assert third.definitions_named("User") == []
    assert [d.path for d in third.definitions_named("Member")] == ["app/models.py"]
    assert "web/api.ts" not in third.files()
    third.stop()


def test_store_answers_before_the_scan_checks_the_disk(project: Path) -> None:
    store = project.parent / "index.msgpack"
    _indexed(project, store_path=store).stop()
    paused, release = threading.Event(), threading.Event()

    def progress(_done: int, _total: int, message: str) -> None:
        if message.startswith("Scanning"):
            paused.set()
            release.wait(30)

    index = WorkspaceIndex(project, store_path=store, progress=progress)
    index.start()
    try:
        assert paused.wait(30)
        assert [d.path for d in index.definitions_named("User")] == ["app/models.py"]
    finally:
        release.set()
    index.wait_ready(60)
    index.stop()


def test_store_with_other_grammar_versions_reparses_that_language(project: Path) -> None:
    store = project.parent / "index.msgpack"
    _indexed(project, store_path=store).stop()
    framed = unpack_records(store.read_bytes(), STORE_KIND, FORMAT_VERSION)
    meta = msgpack.unpackb(framed.meta, raw=False)
    meta["languages"]["typescript"] = "an older grammar"
    store.write_bytes(pack_records(STORE_KIND, FORMAT_VERSION, framed.records, msgpack.packb(meta)))
    index = _indexed(project, store_path=store)
    assert index.stats().parsed == 2  # web/api.ts and web/index.ts
    index.stop()


def test_corrupt_store_is_logged_and_ignored(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = project.parent / "index.msgpack"
    store.write_bytes(b"\xc1 definitely not msgpack")
    with caplog.at_level(logging.WARNING):
        index = _indexed(project, store_path=store)
    assert "index store" in caplog.text
    assert index.stats().parsed == 8
    index.stop()
    # ...and replaced by a good one.
    again = _indexed(project, store_path=store)
    assert again.stats().parsed == 0
    again.stop()

    languages = msgpack.packb({"languages": {}})
    malformed_row = msgpack.packb(["x", 1])  # checks out, but no file entry
    store.write_bytes(pack_records(STORE_KIND, FORMAT_VERSION, [malformed_row], languages))
    with caplog.at_level(logging.WARNING):
        malformed = _indexed(project, store_path=store)
    assert malformed.stats().parsed == 8
    assert "corrupt" in caplog.text
    malformed.stop()


def test_symlink_loops_and_file_cap(tmp_path: Path) -> None:
    _write(tmp_path, {"pkg/a.py": "def a(): pass\n", "pkg/deep/b.py": "def b(): pass\n"})
    (tmp_path / "pkg" / "deep" / "loop").symlink_to(tmp_path / "pkg", target_is_directory=True)
    index = _indexed(tmp_path)
    assert index.files() == ["pkg/a.py", "pkg/deep/b.py"]
    index.stop()
    capped = _indexed(tmp_path, limits=IndexLimits(max_files=1))
    assert capped.files() == ["pkg/a.py"]  # breadth-first: the shallow file first
    capped.stop()


def test_listener_errors_do_not_stop_indexing(project: Path) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("listener bug")

    index = _indexed(project, on_change=broken, progress=broken)
    assert len(index.files()) == 9
    index.update_text("app/models.py", "class X: pass\n")
    assert index.definitions_named("X")
    index.stop()


def test_concurrent_buffers_updates_and_queries(project: Path) -> None:
    index = WorkspaceIndex(project)
    index.start()
    errors: list[BaseException] = []
    stop_at = time.monotonic() + 1.5

    def typist(n: int) -> None:
        try:
            i = 0
            while time.monotonic() < stop_at:
                index.update_text(f"app/typed{n}.py", f"def typed{n}_{i}(): pass\n")
                index.definitions_named(f"typed{n}_{i}")
                index.resolve_imports("app/views.py")
                i += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=typist, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert index.wait_ready(60)
    assert errors == []
    for n in range(3):
        last = index.file(f"app/typed{n}.py").definitions[0].name
        assert [d.path for d in index.definitions_named(last)] == [f"app/typed{n}.py"]
    index.stop()
