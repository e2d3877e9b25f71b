"""`nextab bench accept`: the person's decisions, trigger points, segment choice, the replay
against fake servers, resume, and one run end to end against the real server (tiny model)."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from nextab import bench_accept as ba
from nextab.bench_accept import (
    Decision,
    Segment,
    SourceFile,
    decide,
    make_segment,
    replay_segment,
    select_segments,
    trigger_offsets,
    word_prefix,
)
from nextab.context.document import Position, Range

DEFAULT_RULES = ba.parse_triggers(ba.DEFAULT_TRIGGERS)

# --- the person's decision ---------------------------------------------------------------------


def test_full_acceptance() -> None:
    assert decide("foo(x)", "foo(x)\nbar") == Decision("full", "foo(x)", 6)
    assert decide("a\n    b\n", "a\n    b\n    c") == Decision("full", "a\n    b\n", 8)


@pytest.mark.parametrize(
    ("suggestion", "rest", "taken"),
    [
        # Leading whitespace goes with the word after it; stops before the first wrong word.
        ("x = compute(a, b)", "x = compute(c)", "x = compute("),
        ("  return x", "  return y", "  return"),
        # A run of punctuation is one step: ")." is not split into ")" and ".".
        ("foo).bar", "foo)]", "foo"),
        ("foo).bar", "foo).baz", "foo)."),
        # A line break is whitespace before the next word: "\n    c" is one step.
        ("a\n    b", "a\n    c", "a"),
        # Words are never split: "ab" is one step, and "a" alone is not offered.
        ("ab", "a", ""),
        ("zzz", "abc", ""),
        # Trailing whitespace at the very end is its own last step.
        ("x  ", "x  y", "x  "),
    ],
)
def test_word_prefix(suggestion: str, rest: str, taken: str) -> None:
    assert word_prefix(suggestion, rest) == taken


def test_partial_and_rejected() -> None:
    assert decide("x = compute(a, b)", "x = compute(c)\n") == Decision("partial", "x = compute(", 12)
    assert decide("zzz", "abc") == Decision("rejected")
    assert decide("ab", "a") == Decision("rejected")
    assert decide("   \n", "abc") == Decision("none")
    assert decide("", "abc") == Decision("none")


def test_first_line_rule() -> None:
    s, rest = "a = 1\nb = 2\n", "a = 1\nb = 3\n"
    # exact: word by word up to the wrong "2"
    assert decide(s, rest, "exact") == Decision("partial", "a = 1\nb =", 9)
    # first-line: the whole suggestion is taken, then everything after "b = " deleted
    assert decide(s, rest, "first-line") == Decision("first_line", s, len("a = 1\nb = "))
    # a wrong first line falls back to word by word; one-line suggestions never use the rule
    assert decide("a = 2\nb = 3\n", rest, "first-line") == Decision("partial", "a =", 3)
    assert decide("a = 1 + 2", "a = 1\n", "first-line") == Decision("partial", "a = 1", 5)


# --- trigger points ----------------------------------------------------------------------------

TYPED = "def f(x):\n    y = x.real"


def test_trigger_offsets_per_rule() -> None:
    def at(rules: str, **kw: int) -> tuple[int, ...]:
        return trigger_offsets(TYPED, ba.parse_triggers(rules), **kw)

    assert at("line-start") == (0, 14)  # after line 2's indentation, not at its column 0
    assert at("space") == (4, 16, 18)  # spaces inside the indentation are not triggers
    assert at("(") == (6,)
    assert at("=") == (17,)
    assert at(".") == (20,)
    assert at("line-start,.,(,=,space") == (0, 4, 6, 14, 16, 17, 18, 20)
    # min-gap: a candidate under 4 characters after the previous kept one is dropped
    assert at("line-start,.,(,=,space", min_gap=4) == (0, 4, 14, 18)
    # every N adds the multiples of N; none at the very end (nothing left to suggest)
    assert at("(", every=8) == (6, 8, 16)
    assert trigger_offsets("ab.", ba.parse_triggers(".")) == ()


def test_unknown_trigger_is_an_error() -> None:
    with pytest.raises(ba.BenchError, match="unknown"):
        ba.parse_triggers("line-start,;")


# --- files and segments -------------------------------------------------------------------------

GOOD = "import os\n\n\ndef f(x):\n    # a comment\n    y = x.real\n    return y\n\nz = 1\n"


def _project(root: Path) -> Path:
    root.mkdir()
    (root / "good.py").write_text(GOOD)
    (root / "also.js").write_text("const a = 1;\nfunction g(b) {\n  return b + a;\n}\n")
    (root / "binary.py").write_bytes(b"x = 1\n\0\0\n" * 5)
    (root / "latin1.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1") * 5)
    (root / "huge.py").write_text("x = 1\n" * 2000)  # 12 000 bytes
    (root / "notes.txt").write_text("just prose\n" * 10)
    for hidden in (".hidden", "node_modules", ".venv"):
        (root / hidden).mkdir()
        (root / hidden / "inside.py").write_text(GOOD)
    return root


def test_candidate_paths_and_skipped_files(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    names = [p.name for p in ba.candidate_paths([str(root)])]
    assert names == ["also.js", "binary.py", "good.py", "huge.py", "latin1.py"]
    segs = select_segments(
        ba.candidate_paths([str(root)]), files=10, per_file=1, lines=2, seed=0, max_bytes=10_000
    )
    assert sorted(Path(s.path).name for s in segs) == ["also.js", "good.py"]
    # The same file, explicitly named, is not read twice.
    assert len(ba.candidate_paths([str(root), str(root / "good.py")])) == 5


def test_git_work_tree_uses_tracked_files(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "tracked.py").write_text(GOOD)
    (root / "untracked.py").write_text(GOOD)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "tracked.py"], check=True)
    assert [p.name for p in ba.candidate_paths([str(root)])] == ["tracked.py"]


def test_segment_selection_is_deterministic_by_seed(tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for n in range(12):
        (root / f"m{n}.py").write_text("".join(f"v{n}_{i} = {i}\n" for i in range(30)))
    paths = ba.candidate_paths([str(root)])

    def ids(seed: int) -> list[str]:
        chosen = select_segments(paths, files=4, per_file=2, lines=3, seed=seed, max_bytes=10_000)
        return [s.id for s in chosen]

    assert ids(0) == ids(0) and len(ids(0)) == 8
    assert len({tuple(ids(seed)) for seed in range(5)}) > 1
    # Segments of one file never overlap.
    for seed in range(5):
        chosen = select_segments(paths, files=4, per_file=2, lines=3, seed=seed, max_bytes=10_000)
        by_file: dict[str, list[int]] = {}
        for s in chosen:
            by_file.setdefault(s.path, []).append(s.start_line)
        assert all(len(v) == 2 and abs(v[0] - v[1]) >= 3 for v in by_file.values())


def test_segment_starts_skip_blank_and_comment_only_windows() -> None:
    lines = ["import os\n", "\n", "# one\n", "# two\n", "x = 1\n", "\n"]
    assert ba.segment_starts(lines, "python", 2) == [0, 3, 4]
    assert ba.segment_starts(["// c\n", "// d\n", "int x;\n"], "c", 2) == [1]


def test_make_segment_keeps_a_line_break_for_the_cursor() -> None:
    source = SourceFile("good.py", "python", GOOD)
    seg = make_segment(source, 3, 4)
    assert seg.typed == "def f(x):\n    # a comment\n    y = x.real\n    return y"
    assert seg.open_text == "import os\n\n\n\n\nz = 1\n"
    assert seg.open_text[: seg.start] + seg.typed + seg.open_text[seg.start :] == GOOD
    last = make_segment(SourceFile("t.py", "python", "a = 1\nb = 2"), 1, 1)  # no final newline
    assert (last.typed, last.open_text) == ("b = 2", "a = 1\n")


# --- replay against fake servers ---------------------------------------------------------------


def _utf16_offset(text: str, pos: Position) -> int:
    """Independent of nextab's Document: count UTF-16 units by encoding."""
    lines = text.split("\n")
    start = sum(len(line) + 1 for line in lines[: pos.line])
    line = lines[pos.line]
    units = 0
    for i, c in enumerate(line):
        if units == pos.character:
            return start + i
        units += len(c.encode("utf-16-le")) // 2
    assert units == pos.character, "position inside a character or past the line"
    return start + len(line)


class FakeServer:
    """Follows the document as an LSP server would and suggests from the original file."""

    def __init__(self, original: str, suggest: Any) -> None:
        self.original = original
        self.make = suggest  # (original, cursor offset) -> suggestion
        self.text = ""
        self.version = 0
        self.changes: list[tuple[Range, str]] = []
        self.requests = 0
        self.closed = False

    def open(self, uri: str, language_id: str, text: str) -> None:
        assert uri.startswith("file://") and language_id
        self.text, self.version = text, 1

    def change(self, uri: str, version: int, range: Range, text: str) -> None:
        assert version == self.version + 1
        self.version = version
        start, end = _utf16_offset(self.text, range.start), _utf16_offset(self.text, range.end)
        self.text = self.text[:start] + text + self.text[end:]
        self.changes.append((range, text))

    def close(self, uri: str) -> None:
        self.closed = True

    async def suggest(self, uri: str, position: Position) -> str:
        self.requests += 1
        at = _utf16_offset(self.text, position)
        assert self.text[:at] == self.original[:at]  # what is typed so far is the file
        return self.make(self.original, at)

    async def stop(self) -> None:
        pass


def rest_of_line(original: str, at: int, extra: str = "") -> str:
    end = original.find("\n", at)
    return original[at : end if end >= 0 else len(original)] + extra


FILE = "import os\ndef f(x):\n    y = x.real\n    return y\n"


def _segment(text: str = FILE, start_line: int = 1, lines: int = 2) -> Segment:
    return make_segment(SourceFile("/tmp/bench-accept-fake.py", "python", text), start_line, lines)


def _replay(seg: Segment, server: FakeServer, mode: ba.AcceptMode = "exact") -> ba.SegmentResult:
    triggers = trigger_offsets(seg.typed, DEFAULT_RULES, min_gap=4)
    return asyncio.run(replay_segment(server, seg, triggers, mode))


def test_replay_rest_of_line_oracle_known_counts() -> None:
    # typed "def f(x):\n    y = x.real" (24 chars), triggers (0, 4, 14, 18):
    # at 0 "def f(x):" is taken whole (9); "\n" and the indentation are typed; at 14
    # "y = x.real" is taken whole (10) and the segment is done: 4 and 18 were inside
    # accepted text.
    seg = _segment()
    server = FakeServer(FILE, rest_of_line)
    result = _replay(seg, server)
    assert [(o.at, o.kind, o.accepted) for o in result.triggers] == [(0, "full", 9), (14, "full", 10)]
    assert server.text == FILE and server.closed and server.requests == 2
    # Typing is one-character inserts; acceptances are one change each.
    inserts = [text for r, text in server.changes]
    assert inserts == ["def f(x):", "\n", " ", " ", " ", " ", "y = x.real"]
    assert all(r.start == r.end for r, _ in server.changes)
    m = ba.metrics([result], typing_speed=5)
    assert (m["triggers"], m["shown"], m["accepted_full"], m["accepted_partial"]) == (2, 2, 2, 0)
    assert (m["chars_accepted"], m["chars_total"], m["chars_saved_per_100"]) == (19, 24, 79.17)
    assert (m["acceptance_rate"], m["exact_line_match"], m["cpr"]) == (1.0, 1.0, 1.0)


def test_replay_asks_again_right_after_an_acceptance() -> None:
    # Every offset is a trigger and each suggestion is the next 3 characters of
    # "def f(x):\n    y = x.real": each is taken whole and the next request comes right where
    # it ends; "\n  ", "   ", "   " (at 9, 10, 11) are whitespace, not shown, and typed one
    # character each. Offsets inside accepted text are never asked at.
    seg = _segment()
    server = FakeServer(FILE, lambda o, at: o[at : at + 3])
    result = asyncio.run(replay_segment(server, seg, range(len(seg.typed))))
    assert [(o.at, o.kind) for o in result.triggers] == [
        (0, "full"), (3, "full"), (6, "full"), (9, "none"), (10, "none"), (11, "none"),
        (12, "full"), (15, "full"), (18, "full"), (21, "full"),
    ]  # fmt: skip
    m = ba.metrics([result], typing_speed=5)
    assert (m["shown"], m["chars_accepted"], m["chars_saved_per_100"]) == (7, 21, 87.5)
    assert server.text == FILE


def test_replay_a_suggestion_ending_the_segment_with_its_line_break_is_full() -> None:
    # "y = x.real\n" at 14 ends the segment with the line break the document already has
    # after the cursor: full, and only "y = x.real" is inserted (no doubled line break).
    seg = _segment()
    server = FakeServer(FILE, lambda o, at: rest_of_line(o, at, "\n"))
    result = _replay(seg, server)
    assert [(o.at, o.kind, o.accepted, o.inserted) for o in result.triggers] == [
        (0, "full", 10, 10),
        (14, "full", 10, 10),
    ]
    assert server.changes[-1][1] == "y = x.real" and server.text == FILE
    assert ba.metrics([result], typing_speed=5)["chars_saved_per_100"] == 83.33
    # first-line: the whole suggestion, then its copy of the line break deleted again
    server = FakeServer(FILE, lambda o, at: rest_of_line(o, at, "\nnope\n"))
    result = _replay(seg, server, "first-line")
    assert [(o.kind, o.accepted, o.inserted) for o in result.triggers] == [
        ("first_line", 10, 15),
        ("first_line", 10, 16),
    ]
    assert server.text == FILE


def test_replay_word_wise_partial_with_a_wrong_tail() -> None:
    # "def f(x):\ngarbage\n" at 0: word steps "def", " f", "(", "x", "):" match, "\ngarbage"
    # does not -> 9 taken; at 14 likewise "y = x.real" (10).
    seg = _segment()
    server = FakeServer(FILE, lambda o, at: rest_of_line(o, at, "\ngarbage\n"))
    result = _replay(seg, server)
    assert [(o.kind, o.accepted) for o in result.triggers] == [("partial", 9), ("partial", 10)]
    m = ba.metrics([result], typing_speed=5)
    assert (m["accepted_full"], m["accepted_partial"], m["acceptance_rate"]) == (0, 2, 1.0)
    assert m["cpr"] == 1.0 and m["full_acceptance_rate"] == 0.0 and m["exact_line_match"] == 1.0
    assert server.text == FILE


def test_replay_first_line_rule_and_cpr() -> None:
    # at 0 the whole "def f(x):\ngarbage\n" (18) is taken and "garbage\n" deleted (kept 10);
    # the indentation is typed; at 14 "y = x.real\ngarbage\n" (19): its first line ends the
    # segment with the line break already there, so it is taken whole too and everything
    # after "y = x.real" deleted (kept 10). CPR = 20 / 37.
    seg = _segment()
    server = FakeServer(FILE, lambda o, at: rest_of_line(o, at, "\ngarbage\n"))
    result = _replay(seg, server, "first-line")
    assert [(o.kind, o.inserted, o.accepted) for o in result.triggers] == [
        ("first_line", 18, 10),
        ("first_line", 19, 10),
    ]
    assert (result.accepted_inserted, result.accepted_kept) == (37, 20)
    m = ba.metrics([result], typing_speed=5)
    assert m["cpr"] == pytest.approx(20 / 37, abs=1e-4) and m["accepted_partial"] == 2
    deletion = server.changes[1]
    assert deletion[1] == "" and deletion[0].start == Position(2, 0) and deletion[0].end == Position(3, 0)
    assert server.text == FILE


def test_replay_utf16_positions_with_non_ascii_text() -> None:
    text = "x = 1\ns = '😀é😀' + 'ü'\nt = s.upper()\n"
    seg = _segment(text, 1, 2)
    server = FakeServer(text, lambda o, at: "")  # nothing shown: everything is typed
    result = _replay(seg, server)
    assert server.text == text
    assert all(o.kind == "none" for o in result.triggers) and len(result.triggers) > 2
    # The typed emoji is one insert of two UTF-16 units' width: the next starts 2 later.
    cols = [r.start.character for r, t in server.changes if r.start.line == 1]
    i = seg.typed.index("😀")
    assert cols[i + 1] - cols[i] == 2


def test_warm_request_is_not_counted() -> None:
    seg = _segment()
    cold, warm = FakeServer(FILE, rest_of_line), FakeServer(FILE, rest_of_line)
    triggers = trigger_offsets(seg.typed, DEFAULT_RULES, min_gap=4)
    a = asyncio.run(replay_segment(cold, seg, triggers))
    b = asyncio.run(replay_segment(warm, seg, triggers, warm=True))
    assert (cold.requests, warm.requests) == (2, 3)
    assert [(o.at, o.kind) for o in a.triggers] == [(o.at, o.kind) for o in b.triggers]


def test_replay_detects_a_divergent_document() -> None:
    seg = _segment()
    broken = Segment(seg.path, seg.language, seg.start_line, seg.open_text, seg.start, seg.typed, FILE + "#")
    with pytest.raises(ba.ReplayError):
        _replay(broken, FakeServer(FILE, rest_of_line))


def test_range_replacing_the_text_after_the_cursor() -> None:
    # The server's range covers the line break after the cursor and its suggestion ends with
    # it: the insertion is the suggestion without it, which here is exactly what is typed.
    text = "a = 1\nprint(a)\n"
    seg = _segment(text, 1, 1)  # typed "print(a)", the cursor on an empty line

    class Replacing(FakeServer):
        async def suggest(self, uri: str, position: Position) -> Any:
            at = _utf16_offset(self.text, position)
            return rest_of_line(self.original, at) + "\n", Position(position.line + 1, 0)

    server = Replacing(text, None)
    result = _replay(seg, server)
    assert [(o.at, o.kind, o.suggestion) for o in result.triggers] == [(0, "full", "print(a)")]
    assert server.text == text


# --- options, state and resume -----------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    ba.add_arguments(parser)
    return parser


def _two_files(root: Path) -> Path:
    root.mkdir()
    (root / "one.py").write_text(
        "import math\n\n\ndef area(r):\n    return math.pi * r * r\n\n\nprint(area(2.0))\n"
    )
    (root / "two.py").write_text(
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n"
    )
    return root


def test_configs_merge_over_the_base_options() -> None:
    configs = ba.parse_configs(['greedy={}', 'beam={"decoding": "beam", "nextEdit": {"enabled": false}}'])
    assert configs["greedy"] == {
        "acceptanceLog": False, "nextEdit": {"push": False}, "context": {"persist": False}
    }
    assert configs["beam"]["nextEdit"] == {"push": False, "enabled": False}
    assert ba.parse_configs(['c={"context": {"strategy": "none"}}'])["c"]["context"] == {
        "persist": False, "strategy": "none"
    }
    assert ba.parse_configs(None) == {"default": ba.BASE_OPTIONS}
    for bad in (["x"], ["x=[1]"], ["x={"], ["a b={}"], ["a={}", "a={}"]):
        with pytest.raises(ba.BenchError):
            ba.parse_configs(bad)


class Counter:
    """A factory of fake servers that counts the servers started and the requests made."""

    def __init__(self) -> None:
        self.started = 0
        self.requests = 0

    async def __call__(self, model: str, device: str, options: dict[str, Any], log: Path | None = None) -> Any:
        self.started += 1
        counter = self
        # A suggestion that depends on the options, so the configurations differ.
        extra = "\nnope\n" if options.get("decoding") == "beam" else ""

        class Counting(FakeServer):
            def open(self, uri: str, language_id: str, text: str) -> None:
                super().open(uri, language_id, text)
                self.original = Path(uri.removeprefix("file://")).read_text()

            async def suggest(self, uri: str, position: Position) -> str:
                counter.requests += 1
                return await super().suggest(uri, position)

        return Counting("", lambda o, at: rest_of_line(o, at, extra))


@pytest.fixture
def steady_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request takes exactly 250 ms, so two runs give byte-identical JSON."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(ba, "_clock", lambda: next(ticks) * 0.25)


def test_resume_skips_finished_pairs_and_matches_an_uninterrupted_run(
    tmp_path: Path, steady_clock: None
) -> None:
    root = _two_files(tmp_path / "src")
    common = [str(root), "--files", "2", "--segments-per-file", "2", "--segment-lines", "2",
              "--config", "greedy={}", "--config", 'beam={"decoding": "beam"}']  # fmt: skip
    whole = Counter()
    assert ba.run(_parser().parse_args([*common, "--out", str(tmp_path / "whole.json")]), start_server=whole) == 0
    assert whole.started == 2

    out = str(tmp_path / "resumed.json")
    first = Counter()
    assert ba.run(_parser().parse_args([*common, "--out", out, "--limit-pairs", "4"]), start_server=first) == 3
    state = Path(out + ".state")
    assert len((state / "greedy.jsonl").read_text().splitlines()) == 4  # all of greedy's
    assert not (state / "beam.jsonl").exists() and first.started == 1
    assert not Path(out).exists()
    second = Counter()
    assert ba.run(_parser().parse_args([*common, "--out", out]), start_server=second) == 0
    # Only the pairs left were replayed: greedy was done (its server never started).
    assert second.started == 1 and first.requests + second.requests == whole.requests
    assert Path(out).read_text() == (tmp_path / "whole.json").read_text()
    result = json.loads(Path(out).read_text())
    assert result["configs"]["greedy"]["overall"]["cpr"] == 1.0
    assert result["configs"]["greedy"]["overall"]["latency_ms"]["p50"] == 250.0
    # A third run has nothing left to do.
    third = Counter()
    assert ba.run(_parser().parse_args([*common, "--out", out]), start_server=third) == 0
    assert third.started == 0


def test_other_options_need_another_state_or_fresh(
    tmp_path: Path, steady_clock: None, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _two_files(tmp_path / "src")
    state = str(tmp_path / "state")
    base = [str(root), "--files", "1", "--segments-per-file", "1", "--state", state]
    assert ba.run(_parser().parse_args([*base, "--out", str(tmp_path / "a.json")]), start_server=Counter()) == 0
    assert ba.run(_parser().parse_args([*base, "--seed", "1"]), start_server=Counter()) == 2
    assert "--fresh" in capsys.readouterr().err
    again = Counter()
    args = [*base, "--seed", "1", "--fresh", "--out", str(tmp_path / "b.json")]
    assert ba.run(_parser().parse_args(args), start_server=again) == 0
    assert again.started == 1


def test_no_usable_files_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "only.txt").write_text("prose\n")
    assert ba.run(_parser().parse_args([str(tmp_path), "--state", str(tmp_path / "s")])) == 2
    assert "no usable source files" in capsys.readouterr().err


# --- end to end: the real server, tiny random model ---------------------------------------------


def test_end_to_end_with_the_real_server(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = _two_files(tmp_path / "src")
    out, report, plot = tmp_path / "out.json", tmp_path / "report.md", tmp_path / "plot.png"
    argv = [
        str(root), "--files", "2", "--segments-per-file", "1", "--segment-lines", "3",
        "--model", str(tiny_model_dir), "--device", "cpu",
        "--config", 'short={"maxTokens": 4}', "--config", 'long={"maxTokens": 8}',
        "--out", str(out), "--report", str(report), "--plot", str(plot),
    ]  # fmt: skip
    # Interrupted after one segment, then resumed: the finished pair is kept, not replayed.
    assert ba.run(_parser().parse_args([*argv, "--limit-pairs", "1"])) == 3
    state = Path(str(out) + ".state")
    first_record = (state / "short.jsonl").read_text()
    assert len(first_record.splitlines()) == 1
    assert ba.run(_parser().parse_args(argv)) == 0
    records = (state / "short.jsonl").read_text().splitlines()
    assert len(records) == 2 and records[0] + "\n" == first_record
    # Each server's stderr is kept beside its records: a line per completion, with its stages.
    log = (state / "long.server.log").read_text()
    assert "prefill" in log and "decode" in log and ".py:" in log

    result = json.loads(out.read_text())
    assert set(result["configs"]) == {"short", "long"} and len(result["segments"]) == 2
    keys = {"triggers", "shown", "shown_per_trigger", "accepted_full", "accepted_partial",
            "acceptance_rate", "full_acceptance_rate", "chars_accepted", "chars_total",
            "chars_saved_per_100", "exact_line_match", "latency_ms", "too_late", "cpr"}  # fmt: skip
    for config in result["configs"].values():
        m = config["overall"]
        assert keys <= set(m) and set(config["by_language"]) == {"python"}
        assert m["triggers"] > 0 and 0 <= m["shown"] <= m["triggers"]
        assert m["latency_ms"]["p50"] > 0 and m["chars_total"] > 0
        assert config["initialization_options"]["acceptanceLog"] is False
    short, long = (result["configs"][n]["overall"] for n in ("short", "long"))
    if short["chars_accepted"] == long["chars_accepted"] == 0:
        assert short["triggers"] == long["triggers"]
    text = report.read_text()
    assert "| short |" in text and "| long |" in text and "## Per language" in text
    pytest.importorskip("matplotlib")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_that_does_not_load_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _two_files(tmp_path / "src")
    argv = [str(root), "--files", "1", "--segments-per-file", "1", "--model", str(tmp_path / "no-model"),
            "--device", "cpu", "--state", str(tmp_path / "state")]  # fmt: skip
    assert ba.run(_parser().parse_args(argv)) == 2
    err = capsys.readouterr().err
    assert "could not load the model" in err and "no-model" in err


def test_a_workspace_is_indexed_first_and_nothing_persists(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --workspace the servers start as an editor opened on the folder: it is indexed before
    the replay (every segment sees the same repository context), and with the benchmark's base
    options (context.persist off) no index or edit history is left in the user cache."""
    root = _two_files(tmp_path / "src")
    cache = tmp_path / "cache"
    monkeypatch.setenv("NEXTAB_CACHE_DIR", str(cache))

    async def check() -> None:
        server = await ba.LspServer.start(str(tiny_model_dir), "cpu", ba.BASE_OPTIONS, root=str(root))
        try:
            status = await server.client.protocol.send_request_async("nextab/status", None)
            indexing = ba._get(status, "indexing")
            assert ba._get(indexing, "finished") and ba._get(indexing, "total") >= 2
        finally:
            await server.stop()

    asyncio.run(check())
    out = tmp_path / "out.json"
    argv = [str(root), "--files", "1", "--segments-per-file", "1", "--segment-lines", "2",
            "--model", str(tiny_model_dir), "--device", "cpu", "--workspace", str(root),
            "--config", 'bm25={"context": {"strategy": "bm25"}}', "--out", str(out)]  # fmt: skip
    assert ba.run(_parser().parse_args(argv)) == 0
    result = json.loads(out.read_text())
    assert result["options"]["workspace"] == str(root.resolve())
    assert result["configs"]["bm25"]["initialization_options"]["context"] == {
        "persist": False, "strategy": "bm25"
    }
    assert result["configs"]["bm25"]["overall"]["triggers"] > 0
    assert not (cache / "workspaces").exists()


def test_a_server_that_never_gets_ready_ends_the_wait(monkeypatch) -> None:
    from collections import deque
    from types import SimpleNamespace

    stopped = []

    class Loading:
        def send_request_async(self, method: str, params: Any) -> asyncio.Future:
            future = asyncio.get_running_loop().create_future()
            future.set_result({"state": "loading"})
            return future

    async def check() -> None:
        client = SimpleNamespace(protocol=Loading(), _server=SimpleNamespace(returncode=None))
        drain = asyncio.create_task(asyncio.sleep(0))
        server = ba.LspServer(client, deque(["converting the model"]), drain)

        async def stop() -> None:
            stopped.append(True)

        monkeypatch.setattr(server, "stop", stop)
        with pytest.raises(ba.BenchError, match="not ready after 1 s"):
            await server._wait_ready([])

    monkeypatch.setattr(ba, "LOAD_WAIT_S", 1)
    asyncio.run(check())
    assert stopped == [True]
