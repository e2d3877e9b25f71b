"""Edit history: keystrokes coalesced into edits, diffs that real `patch` applies, persistence."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nextab.context.history import (
    FORMAT,
    FORMAT_VERSION,
    KIND,
    Edit,
    EditHistory,
    Hunk,
    hunks_between,
)
from nextab.storage import pack_records, unpack_records

URI = "file:///ws/src/app.py"
OTHER = "file:///ws/src/util.py"


class Editor:
    """An editor sending one change per keystroke, as VS Code does, with a fake clock."""

    def __init__(self, history: EditHistory, uri: str, text: str = "", clock: list[float] | None = None):
        self.history = history
        self.uri = uri
        self.text = text
        self.cursor = len(text)
        self.version = 1
        self.clock = clock if clock is not None else [1000.0]

    def change(self, start: int, end: int, new: str) -> None:
        self.version += 1
        self.history.record(self.uri, self.text, start, end, new, self.version, now=self.clock[0])
        self.text = self.text[:start] + new + self.text[end:]
        self.clock[0] += 0.1

    def type(self, chars: str) -> None:
        for c in chars:
            self.change(self.cursor, self.cursor, c)
            self.cursor += 1

    def backspace(self, n: int = 1) -> None:
        for _ in range(n):
            self.change(self.cursor - 1, self.cursor, "")
            self.cursor -= 1

    def delete(self, n: int = 1) -> None:
        for _ in range(n):
            self.change(self.cursor, self.cursor + 1, "")

    def paste(self, text: str) -> None:
        self.change(self.cursor, self.cursor, text)
        self.cursor += len(text)

    def wait(self, seconds: float) -> None:
        self.clock[0] += seconds


def replay(text: str, edits: list[Edit]) -> str:
    for edit in edits:
        text = edit.apply(text)
    return text


HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def apply_diff(files: dict[str, str], diff: str) -> dict[str, str]:
    """A strict unified-diff applier: every hunk must match at exactly its stated lines."""
    files = dict(files)
    lines = diff.split("\n")
    assert lines.pop() == "", "a diff ends with a newline"
    i = 0
    path = ""
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- "):
            assert lines[i + 1].startswith("+++ ")
            path = lines[i + 1][4:].removeprefix("b/")
            i += 2
            continue
        match = HUNK.fullmatch(line)
        assert match, f"unexpected diff line {line!r}"
        old_start, old_count = int(match[1]), int(match[2] or 1)
        new_count = int(match[4] or 1)
        i += 1
        old: list[str] = []
        new: list[str] = []
        # The counts say where the hunk ends: a next "--- " header also starts with "-".
        while i < len(lines) and (
            (len(old), len(new)) != (old_count, new_count) or lines[i].startswith("\\")
        ):
            body = lines[i]
            if body.startswith("\\"):
                # "\ No newline at end of file": the line before it has no "\n".
                target = (old, new) if lines[i - 1][0] == " " else (old,) if lines[i - 1][0] == "-" else (new,)
                for side in target:
                    side[-1] = side[-1].removesuffix("\n")
            else:
                if body[0] in " -":
                    old.append(body[1:] + "\n")
                if body[0] in " +":
                    new.append(body[1:] + "\n")
            i += 1
        assert (len(old), len(new)) == (old_count, new_count), line
        text_lines = files[path].split("\n")
        text_lines = [t + "\n" for t in text_lines[:-1]] + ([text_lines[-1]] if text_lines[-1] else [])
        at = old_start - 1 if old_count else old_start
        assert text_lines[at : at + old_count] == old, f"hunk {line} does not match {path}"
        text_lines[at : at + old_count] = new
        files[path] = "".join(text_lines)
    return files


# -- coalescing ------------------------------------------------------------------------------


def test_typing_a_word_one_key_at_a_time_is_one_edit() -> None:
    history = EditHistory()
    editor = Editor(history, URI, "x = \n")
    editor.cursor = 4
    editor.type("hello")
    history.close_open_edits()
    [edit] = history.edits()
    assert (edit.start, edit.old, edit.new, edit.line) == (4, "", "hello", 0)
    assert edit.version == editor.version
    assert edit.apply("x = \n") == editor.text == "x = hello\n"


def test_backspaces_and_forward_deletes_coalesce() -> None:
    history = EditHistory()
    editor = Editor(history, URI, "foo bar baz")
    editor.cursor = 7  # after "bar"
    editor.backspace(3)
    editor.delete(1)  # the space after, at the same spot
    editor.type("qux")
    editor.backspace(1)
    history.flush()
    [edit] = history.edits()
    assert (edit.start, edit.old, edit.new) == (4, "bar ", "qu")
    assert editor.text == "foo qubaz"
    assert edit.apply("foo bar baz") == editor.text


def test_a_pause_longer_than_the_threshold_splits() -> None:
    history = EditHistory(pause_seconds=1.0)
    editor = Editor(history, URI)
    editor.type("ab")
    editor.wait(0.8)  # shorter than the threshold: still one edit
    editor.type("cd")
    editor.wait(1.5)
    editor.type("ef")
    history.flush()
    assert [e.new for e in history.edits()] == ["abcd", "ef"]


def test_a_paused_edit_counts_as_closed_when_read() -> None:
    history = EditHistory(pause_seconds=1.0)
    editor = Editor(history, URI)
    editor.type("ab")
    assert history.edits(now=editor.clock[0]) == []
    assert [e.new for e in history.edits(include_open=True, now=editor.clock[0])] == ["ab"]
    assert [e.new for e in history.edits(now=editor.clock[0] + 2)] == ["ab"]


def test_a_newline_ends_the_edit_it_is_typed_in() -> None:
    history = EditHistory()
    editor = Editor(history, URI)
    editor.type("x = 1\ny = 2")
    history.flush()
    edits = history.edits()
    assert [(e.start, e.new, e.line) for e in edits] == [(0, "x = 1\n", 0), (6, "y = 2", 1)]
    assert replay("", edits) == editor.text


def test_a_jump_elsewhere_splits() -> None:
    history = EditHistory()
    editor = Editor(history, URI, "def f():\n    return 1\n")
    editor.cursor = 5
    editor.type("oo")
    editor.cursor = len(editor.text) - 1  # after "return 1"
    editor.type("0")
    history.flush()
    edits = history.edits()
    assert [(e.start, e.new) for e in edits] == [(5, "oo"), (23, "0")]
    assert replay("def f():\n    return 1\n", edits) == editor.text == "def foo():\n    return 10\n"


def test_edits_in_two_documents_stay_apart() -> None:
    history = EditHistory()
    clock = [0.0]
    app = Editor(history, URI, "a\n", clock)
    util = Editor(history, OTHER, "b\n", clock)
    app.cursor = util.cursor = 1
    app.type("11")
    util.type("22")
    app.type("33")
    history.flush()
    assert [(e.uri, e.new) for e in history.edits()] == [(URI, "11"), (OTHER, "22"), (URI, "33")]
    assert [e.new for e in history.edits(OTHER)] == ["22"]
    assert replay("a\n", history.edits(URI)) == app.text == "a1133\n"


def test_typed_then_deleted_vanishes() -> None:
    history = EditHistory()
    editor = Editor(history, URI, "keep\n")
    editor.cursor = 4
    editor.type("oops")
    editor.backspace(4)
    editor.cursor = 0
    editor.type("#")
    history.flush()
    assert [e.new for e in history.edits()] == ["#"]


def test_deleted_then_retyped_vanishes_and_a_partial_retype_keeps_only_the_change() -> None:
    history = EditHistory()
    editor = Editor(history, URI, "value = old\n")
    editor.cursor = 11
    editor.backspace(3)
    editor.type("old")
    history.flush()
    assert history.edits() == []
    editor.backspace(2)
    editor.type("ne")
    history.flush()
    [edit] = history.edits()
    assert (edit.start, edit.old, edit.new) == (9, "ld", "ne")
    assert edit.apply("value = old\n") == "value = one\n"


def test_a_whole_document_change_is_narrowed_to_what_changed() -> None:
    history = EditHistory()
    before = "line 1\nline 2\nline 3\n"
    after = "line 1\nline two\nline 3\n"
    history.record(URI, before, 0, len(before), after, 2, now=0.0)
    history.flush()
    [edit] = history.edits()
    assert (edit.start, edit.old, edit.new) == (12, "2", "two")
    assert edit.apply(before) == after


def test_offsets_past_the_end_are_clamped() -> None:
    history = EditHistory()
    history.record(URI, "abc", 10, 20, "d", 2, now=0.0)
    history.flush()
    [edit] = history.edits()
    assert edit.apply("abc") == "abcd"


# -- diffs -----------------------------------------------------------------------------------


def test_a_diff_matches_what_diff_u_writes(tmp_path: Path) -> None:
    if shutil.which("diff") is None:
        pytest.skip("no diff tool")
    before = "".join(f"line {n}\n" for n in range(1, 11))
    history = EditHistory(root="/ws")
    editor = Editor(history, URI, before)
    editor.cursor = before.index("line 5") + 5
    editor.delete(1)
    editor.type("five")
    history.flush()
    (tmp_path / "a").write_text(before)
    (tmp_path / "b").write_text(editor.text)
    result = subprocess.run(
        ["diff", "-u", "a", "b"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    expected_hunks = result.stdout.split("\n", 2)[2]
    assert history.render(10_000) == f"--- a/src/app.py\n+++ b/src/app.py\n{expected_hunks}"
    assert expected_hunks.startswith("@@ -2,7 +2,7 @@\n line 2\n")


def test_a_change_on_a_last_line_without_newline_says_so() -> None:
    history = EditHistory(root="/ws")
    editor = Editor(history, URI, "a\nb")
    editor.type("c")
    history.flush()
    assert history.render(1000) == (
        "--- a/src/app.py\n+++ b/src/app.py\n@@ -1,2 +1,2 @@\n a\n-b\n"
        "\\ No newline at end of file\n+bc\n\\ No newline at end of file\n"
    )


def test_rendered_history_applies_with_gnu_patch(tmp_path: Path) -> None:
    if shutil.which("patch") is None:
        pytest.skip("no patch tool")
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    app_before = "".join(f"def f{n}():\n    return {n}\n\n" for n in range(8))
    util_before = "import os\n\nX = 1\n"
    history = EditHistory(root=root)
    clock = [0.0]
    app = Editor(history, (root / "src/app.py").as_uri(), app_before, clock)
    util = Editor(history, (root / "src/util.py").as_uri(), util_before, clock)
    app.cursor = app.text.index("return 3") + 8
    app.type("0 + x")
    util.cursor = len(util.text)
    util.type("Y = 2\n")
    app.cursor = app.text.index("def f6")
    app.type("@cache\n")
    app.cursor = app.text.index("return 1") + 7
    app.backspace(7)
    app.type("yield")
    history.flush()
    (root / "src/app.py").write_text(app_before)
    (root / "src/util.py").write_text(util_before)
    diff = history.render(100_000)
    result = subprocess.run(
        ["patch", "-p1", "-F0", "--no-backup-if-mismatch"],
        cwd=root, input=diff, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "offset" not in result.stdout  # every hunk applied at its stated line
    assert (root / "src/app.py").read_text() == app.text
    assert (root / "src/util.py").read_text() == util.text


def test_render_keeps_the_newest_edits_that_fit() -> None:
    history = EditHistory(root="/ws")
    editor = Editor(history, URI, "".join(f"v{n} = {n}\n" for n in range(40)))
    for n in range(0, 40, 5):
        editor.cursor = editor.text.index(f"v{n} =") + len(f"v{n}")
        editor.type("_x")
    history.flush()
    edits = history.edits()
    diffs = [history.diff(e) for e in edits]
    budget = len(diffs[-1]) + len(diffs[-2]) + len(diffs[-3]) + 5
    text = history.render(budget)
    assert len(text) <= budget
    assert text == "".join(diffs[-3:])  # most recent last, unbroken
    assert history.render(len(diffs[-1]) - 1) == ""
    assert history.render(0) == ""


def test_the_history_keeps_the_last_n_edits() -> None:
    history = EditHistory(limit=3)
    editor = Editor(history, URI)
    for word in ["one\n", "two\n", "three\n", "four\n", "five\n"]:
        editor.type(word)
    assert [e.new for e in history.edits()] == ["three\n", "four\n", "five\n"]
    assert EditHistory(limit=0, edits=history.edits()).edits() == []


def test_a_huge_paste_is_truncated_and_flagged() -> None:
    history = EditHistory(max_edit_chars=200)
    editor = Editor(history, URI, "start\n")
    pasted = "".join(f"row {n}\n" for n in range(2000))
    editor.paste(pasted)
    [edit] = history.edits()  # its newlines closed it
    assert edit.truncated
    assert edit.new_length == len(pasted) and edit.old_length == 0
    assert len(edit.new) < 300 and "characters truncated" in edit.new
    assert edit.new.startswith("row 0\n") and edit.new.endswith("row 1999\n")
    with pytest.raises(ValueError):
        edit.apply("start\n")
    assert "characters truncated" in history.render(10_000)


def test_a_very_long_line_clips_the_context_but_the_edit_still_replays() -> None:
    history = EditHistory(context_chars=100)
    minified = "var a=1;" * 1000 + "\nnext line\n"
    editor = Editor(history, URI, minified)
    editor.cursor = 4000
    editor.type("b=2;")
    history.flush()
    [edit] = history.edits()
    assert edit.clipped and not edit.truncated
    assert edit.head == minified[3900:4000] and edit.tail == minified[4000:4100]
    assert edit.apply(minified) == editor.text
    diff = history.diff(edit)
    assert len(diff) < 600 and "No newline" not in diff  # the line goes on; the file too


def test_paths_are_workspace_relative_when_under_the_root() -> None:
    history = EditHistory(root="/ws")
    assert history.display_path("file:///ws/src/my%20app.py") == "src/my app.py"
    assert history.display_path("file:///elsewhere/x.py") == "/elsewhere/x.py"
    assert history.display_path("untitled:Untitled-1") == "untitled:Untitled-1"
    editor = Editor(history, "file:///elsewhere/x.py")
    editor.type("a")
    history.flush()
    assert history.render(1000).startswith("--- /elsewhere/x.py\n+++ /elsewhere/x.py\n")


def test_record_and_render_from_two_threads() -> None:
    history = EditHistory(root="/ws", pause_seconds=0.15, limit=100_000)
    editor = Editor(history, URI, "start\n")
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                history.render(2000, include_open=True, now=editor.clock[0])
            except BaseException as error:  # pragma: no cover - the failure being tested for
                errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    for n in range(300):
        editor.type(f"w{n} ")
        if n % 7 == 0:
            editor.cursor = 0
    stop.set()
    reader.join()
    history.flush()
    assert not errors
    assert replay("start\n", history.edits()) == editor.text


# -- persistence -----------------------------------------------------------------------------


def sample_history(**settings: object) -> tuple[EditHistory, Editor]:
    history = EditHistory(root="/ws", **settings)  # type: ignore[arg-type]
    editor = Editor(history, URI, "a = 1\nb = 2\n")
    for n in range(12):
        editor.cursor = len(editor.text)
        editor.type(f"c{n} = {n}\n")
    return history, editor


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    history, editor = sample_history()
    editor.type("partial")  # the edit being typed is saved too
    path = tmp_path / "cache" / "history.msgpack"
    assert history.unsaved
    assert history.save(path)
    assert not history.unsaved
    loaded = EditHistory.load(path, root="/ws")
    assert loaded.edits() == history.edits(include_open=True)
    assert loaded.render(5000) == history.render(5000, include_open=True)
    assert replay("a = 1\nb = 2\n", loaded.edits()) == editor.text
    assert [p.name for p in path.parent.iterdir()] == ["history.msgpack"]  # no temp left


def test_load_keeps_the_newest_up_to_the_limit(tmp_path: Path) -> None:
    history, _ = sample_history()
    history.save(tmp_path / "h")
    loaded = EditHistory.load(tmp_path / "h", limit=4)
    assert loaded.edits() == history.edits()[-4:]


def test_missing_corrupt_and_truncated_files_start_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert EditHistory.load(tmp_path / "missing").edits() == []
    assert EditHistory.load(None).edits() == []
    history, _ = sample_history()
    path = tmp_path / "h"
    history.save(path)
    data = path.read_bytes()
    for cut in (1, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            kept = EditHistory.load(path).edits()
        # Cut in its header: nothing to trust; further on: the edits before the cut.
        assert kept == history.edits()[: len(kept)] and len(kept) < len(history.edits())
        assert "corrupt" in caplog.text and not path.exists()  # moved aside
    for garbage in (b"\xc1\xff\x00garbage", b"", msgpack.packb([1, 2, 3]), msgpack.packb({"a": 1})):
        path.write_bytes(garbage)
        assert EditHistory.load(path).edits() == []
    bad_record = {"format": FORMAT, "version": 1, "edits": [["uri", "not an int"]]}
    path.write_bytes(msgpack.packb(bad_record))
    assert EditHistory.load(path).edits() == []
    assert EditHistory.load(tmp_path).edits() == []  # a directory, not a file


def test_another_format_version_starts_empty(tmp_path: Path) -> None:
    history, _ = sample_history()
    path = tmp_path / "h"
    history.save(path)
    framed = unpack_records(path.read_bytes(), KIND, FORMAT_VERSION)
    path.write_bytes(pack_records(KIND, FORMAT_VERSION + 1, framed.records))
    assert EditHistory.load(path).edits() == []
    assert path.exists()  # another version is rebuilt, not moved aside as damaged
    # Version 1 (one msgpack map, before framing) likewise.
    path.write_bytes(msgpack.packb({"format": FORMAT, "version": 1, "edits": []}))
    assert EditHistory.load(path).edits() == [] and path.exists()


def test_the_saved_file_is_bounded_and_keeps_the_newest(tmp_path: Path) -> None:
    history, _ = sample_history(max_file_bytes=600)
    path = tmp_path / "h"
    history.save(path)
    assert path.stat().st_size <= 600
    kept = EditHistory.load(path).edits()
    assert 0 < len(kept) < len(history.edits())
    assert kept == history.edits()[-len(kept) :]


def test_a_failed_save_reports_and_keeps_the_old_file(tmp_path: Path) -> None:
    history, _ = sample_history()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert not history.save(blocker / "h")
    assert history.unsaved


# -- property --------------------------------------------------------------------------------

keys = st.one_of(
    st.tuples(st.just("type"), st.sampled_from("ab \n(")),
    st.tuples(st.just("backspace"), st.just("")),
    st.tuples(st.just("delete"), st.just("")),
    st.tuples(st.just("jump"), st.integers(0, 10_000)),
    st.tuples(st.just("wait"), st.sampled_from([0.5, 3.0])),
    st.tuples(st.just("select"), st.integers(1, 4)),  # type over a selection
    st.tuples(st.just("switch"), st.just("")),
)


@settings(max_examples=200, deadline=None)
@given(
    initial=st.tuples(st.text("xy\n", max_size=30), st.text("xy\n", max_size=30)),
    script=st.lists(keys, max_size=60),
)
def test_replaying_recorded_edits_and_their_diffs_reproduces_the_text(
    initial: tuple[str, str], script: list[tuple[str, object]]
) -> None:
    history = EditHistory(pause_seconds=1.0, root="/ws", limit=1000, context_lines=2)
    clock = [0.0]
    editors = [Editor(history, URI, initial[0], clock), Editor(history, OTHER, initial[1], clock)]
    current = editors[0]
    for action, arg in script:
        if action == "type":
            current.type(str(arg))
        elif action == "backspace" and current.cursor > 0:
            current.backspace()
        elif action == "delete" and current.cursor < len(current.text):
            current.delete()
        elif action == "jump":
            current.cursor = int(arg) % (len(current.text) + 1)
        elif action == "wait":
            current.wait(float(arg))  # type: ignore[arg-type]
        elif action == "select":
            end = min(len(current.text), current.cursor + int(arg))
            current.change(current.cursor, end, "z")
            current.cursor += 1
        elif action == "switch":
            current = editors[1] if current is editors[0] else editors[0]
    history.flush()
    edits = history.edits()
    assert len(edits) <= len(script)
    for editor, start in zip(editors, initial, strict=True):
        assert replay(start, history.edits(editor.uri)) == editor.text
    files = apply_diff({"src/app.py": initial[0], "src/util.py": initial[1]}, history.render(10**9))
    assert files == {"src/app.py": editors[0].text, "src/util.py": editors[1].text}


_LINES = st.lists(st.sampled_from(["a\n", "b\n", "def f():\n", "    return 1\n", "\n", "x = 2"]), max_size=12)


@settings(max_examples=200, deadline=None)
@given(old=_LINES, new=_LINES)
def test_replaying_the_hunks_between_two_versions_gives_the_new_one(old: list[str], new: list[str]) -> None:
    before, after = "".join(old), "".join(new)
    history = EditHistory(pause_seconds=1.0)
    hunks = hunks_between(before, after)
    assert history.replay("file:///a.py", before, hunks) == after
    # One closed edit per hunk, each recorded where it was made.
    assert len(history.edits(now=1e9)) == sum(1 for h in hunks if h.old != h.new)
    text = before
    for edit in history.edits(now=1e9):
        text = edit.apply(text)
    assert text == after


def test_a_hunk_that_does_not_apply_is_refused() -> None:
    with pytest.raises(ValueError, match="does not apply"):
        EditHistory().replay("file:///a.py", "a\nb\n", [Hunk(1, "c\n", "d\n")])
    with pytest.raises(ValueError, match="past the end"):
        EditHistory().replay("file:///a.py", "a\n", [Hunk(5, "", "d\n")])
