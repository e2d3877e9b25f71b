"""benchmarks/latency.py: places, the keystroke schedule, the counting, the llama.cpp peer's
replay and cancellation (a fake llama), and one run end to end against the real server with a
tiny random-weight model (no peer)."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nextab.context.document import Document
from tests.scripts import load_benchmark

bench = load_benchmark("latency.py", "bench_latency")

SOURCE = """import os


def total(items):
    count = 0
    for item in items:
        count += item.price
    return count


def describe(path):
    label = "\U0001f600 file"
    if os.path.isdir(path) and label != "\U0001f600":
        return "folder"
    return label


@decorated
def skipped(x):
    return x


def chained(x):
    if x:
        return 1
    else:
        return 2
"""


def _places(keys: int = 6, body_keys: int = 2, min_prefix: int = 0) -> list[Any]:
    return bench.places_in(
        "/w/src.py", SOURCE, keys=keys, body_keys=body_keys, min_prefix_chars=min_prefix
    )


# --- places and the schedule --------------------------------------------------------------------


def test_places_are_statements_typed_anew() -> None:
    places = {p.header: p for p in _places()}
    # Decorated definitions are skipped; an `if` with an `else` is taken whole (no dangling else).
    assert "def skipped(x):" not in places
    assert set(places) == {
        "def total(items):", "for item in items:", "def describe(path):",
        'if os.path.isdir(path) and label != "\U0001f600":', "def chained(x):",
    }  # fmt: skip
    p = places["for item in items:"]
    assert p.typed == "items:" and p.body_indent == "        " and p.body == "co"
    # Opened without the statement: its header typed but for `keys` characters, cursor there.
    assert p.open_text[: p.cursor].endswith("\n    for item in ")
    assert p.open_text[p.cursor :].startswith("\n    return count\n")
    # A header shorter than --keys is not a place; one too near the file's start neither.
    assert "if x:" not in {p.header for p in _places(keys=6)}
    assert all(len(p.header) >= 12 for p in _places(keys=12))
    chained = SOURCE.index("def chained")
    assert [p.header for p in _places(keys=5, min_prefix=chained)] == ["def chained(x):", "if x:"]


def test_schedule_types_the_statement_back_with_utf16_positions() -> None:
    p = next(p for p in _places() if p.header.startswith("if os."))
    steps = bench.schedule(p, pause_every=3, no_cancel=False, next_edit=True)
    kinds = [s.kind for s in steps]
    assert kinds == ["completion"] * (1 + len(p.typed) + 1 + len(p.body)) + ["next_edit"]
    assert steps[0].cold and steps[0].insert is None and steps[0].waited
    # The typed keys, Enter with the body's indentation, then the body's first characters.
    assert "".join(s.insert for s in steps[1:-1]) == p.typed + "\n" + p.body_indent + p.body
    final = steps[-1].text
    assert f"{p.header}\n{p.body_indent}{p.body}\n    return label" in final
    # Each change's position is where the cursor was, in UTF-16 code units: the emoji counts 2.
    for before, step in itertools.pairwise(steps[:-1]):
        doc = Document("file:///w/src.py", before.text)
        assert step.at == doc.position_at(before.offset)
        assert (
            step.text == before.text[: before.offset] + step.insert + before.text[before.offset :]
        )
    emoji = next(s for s in steps if s.insert == "\U0001f600")
    column = emoji.offset - (emoji.text.rfind("\n", 0, emoji.offset) + 1)
    assert emoji.position.character == column + 1
    # Pauses: every 3rd keystroke, the Enter that starts the body, the last keystroke.
    keystrokes = steps[1:-1]
    waited = [n for n, s in enumerate(keystrokes, start=1) if s.waited]
    enter = next(n for n, s in enumerate(keystrokes, start=1) if s.insert.startswith("\n"))
    assert waited == sorted({*range(3, len(keystrokes) + 1, 3), enter, len(keystrokes)})
    assert all(s.waited for s in bench.schedule(p, pause_every=0, no_cancel=True, next_edit=False))
    assert (
        bench.schedule(p, pause_every=0, no_cancel=False, next_edit=False)[-1].kind == "completion"
    )


# --- counting --------------------------------------------------------------------------------------


def _record(category: str, outcome: str, latency: float | None, waited: bool) -> Any:
    return bench.RequestRecord(
        config="c", place="f.py:1", step=0, kind="completion", category=category, waited=waited,
        prompt_tokens=100, sent_s=0.0, outcome=outcome, latency_ms=latency,
        in_time=latency is not None and latency <= 125, suggestion="x" if latency else None,
    )  # fmt: skip


def test_stats_count_and_percentiles() -> None:
    records = [
        _record("warm_single", "answered", 100.0, False),  # beat the next keystroke
        _record("warm_single", "answered", 900.0, True),  # a pause: waited for
        _record("warm_single", "answered", 700.0, True),
        _record("warm_single", "cancelled", None, False),
        _record("warm_single", "cancelled", None, False),
        _record("warm_single", "failed", None, True),
        _record("cold", "answered", 5000.0, True),
    ]
    s = bench.summarize(records)
    w = s["warm_single"]
    assert (w["sent"], w["answered"], w["cancelled"], w["failed"]) == (6, 3, 2, 1)
    assert w["cancelled_share"] == round(2 / 6, 4) and w["in_time"] == round(1 / 6, 4)
    # latency_ms: only the requests the client waited for; answered_latency_ms: all answered.
    assert w["latency_ms"]["n"] == 2 and w["latency_ms"]["p50"] == 800.0
    assert w["answered_latency_ms"]["n"] == 3 and w["answered_latency_ms"]["p50"] == 700.0
    assert s["warm_multi"]["sent"] == 0 and s["warm_multi"]["latency_ms"]["p50"] is None
    peer = bench.summarize(
        [
            _record("warm_single", "answered", 2000.0, True),
            _record("cold", "answered", 8000.0, True),
        ],
        bench.CATEGORIES[:3],
    )
    assert bench.ratios(s, peer) == {"cold": 0.625, "warm_single": 0.4, "warm_multi": None}
    assert bench.targets(s, peer) == {
        "warm_single_p50_le_300ms": False,
        "warm_single_p50_le_half_peer": True,
        "fresh_warm_single_p50_le_300ms": False,
        "fresh_warm_single_p50_le_half_peer": True,
        "cold_p50_1_5x_faster_than_peer": True,
    }
    # An answer that continues the previous one (typeahead) counts in latency_ms, not in
    # fresh_latency_ms.
    records[2].continues = True
    again = bench.summarize(records)["warm_single"]
    assert again["continued"] == 1 and again["latency_ms"]["n"] == 2
    assert again["fresh_latency_ms"]["n"] == 1 and again["fresh_latency_ms"]["p50"] == 900.0
    assert bench.targets(s, None)["cold_p50_1_5x_faster_than_peer"] is None


def test_continuations_are_the_last_answer_less_what_was_typed() -> None:
    p = next(p for p in _places() if p.header == "for item in items:")  # types "items:"
    steps = bench.schedule(p, pause_every=0, no_cancel=True, next_edit=False)[:5]
    answers = ["items:", "tems:", "x", "s:", ""]  # cold, then after "i", "t", "e", "m"

    def record(step: Any, text: str, outcome: str = "answered") -> Any:
        r = _record("warm_single", outcome, 50.0 if outcome == "answered" else None, True)
        r.step, r.suggestion = step.index, text if outcome == "answered" else None
        return r

    records = [record(s, a) for s, a in zip(steps, answers, strict=True)]
    bench.mark_continuations(records, steps)
    # "tems:" continues "items:" after "i"; "x" is not "ems:"; "s:" does not continue "x"
    # (which "e" does not start); an empty answer continues nothing.
    assert [r.continues for r in records] == [False, True, False, False, False]
    records = [
        record(steps[0], "items:"),
        record(steps[1], "", "cancelled"),
        record(steps[2], "ems:"),
    ]
    bench.mark_continuations(records, steps[:3])
    assert [r.continues for r in records] == [False, False, True]  # "it" typed since "items:"


def test_paired_ratios_compare_the_same_model_computed_requests() -> None:
    def record(config: str, step: int, ms: float, **kw: Any) -> Any:
        fields = {"category": "warm_single", "waited": True, "continues": False, **kw}
        return bench.RequestRecord(
            config=config, place="a.py:1", step=step, kind="completion", prompt_tokens=10,
            sent_s=0.0, outcome="answered", latency_ms=ms, in_time=False, **fields,
        )  # fmt: skip

    ours = [
        record("s", 1, 100.0),
        record("s", 2, 5.0, continues=True),  # typed-ahead: not the model's work
        record("s", 3, 300.0),
        record("s", 4, 200.0),
        record("s", 5, 50.0, waited=False),  # overtaken by a keystroke
    ]
    peer = [record("p", 1, 400.0), record("p", 2, 900.0), record("p", 3, 500.0), record("p", 5, 10.0)]
    paired = bench.paired_ratios(ours, peer)
    # Steps 1 and 3 only: 2 continued on our side, 4 has no peer answer, 5 was not waited for.
    assert paired == {"warm_single": {"n": 2, "p50_ms": 200.0, "peer_p50_ms": 450.0, "ratio": 0.444}}
    assert bench.paired_ratios(ours[1:2], peer) == {}


def test_configurations_from_backends_and_configs() -> None:
    assert list(bench.make_configs(None, None)) == ["torch"]
    configs = bench.make_configs("torch,onnx", ['short={"maxTokens": 8}'])
    assert list(configs) == ["torch", "onnx", "short"]
    assert configs["onnx"]["backend"] == "onnx" and configs["onnx"]["acceptanceLog"] is False
    assert configs["short"]["maxTokens"] == 8 and "backend" not in configs["short"]
    assert list(bench.make_configs(None, ['a={"backend": "onnx"}'])) == ["a"]
    with pytest.raises(bench.BenchError):
        bench.make_configs("torch,torch", None)
    with pytest.raises(bench.BenchError):
        bench.make_configs("torch", ["torch={}"])


# --- the peer, with a fake llama ----------------------------------------------------------------


class FakeLlama:
    """llama-cpp-python's surface the peer uses: generate (with prefix reuse), reset,
    detokenize. Token t spells chr(t); each generated token takes `token_s`."""

    def __init__(self, token_s: float, script: str) -> None:
        self.token_s, self.script = token_s, script
        self._input_ids: list[int] = []
        self.n_tokens = 0
        self.resets = 0
        self.evaluated: list[int] = []  # prompt tokens evaluated per generate call

    def reset(self) -> None:
        self.resets += 1
        self.n_tokens = 0

    def detokenize(self, tokens: list[int]) -> bytes:
        return "".join(map(chr, tokens)).encode()

    def generate(self, tokens: list[int], **_: Any):
        common = bench._common_prefix(self._input_ids[: self.n_tokens], tokens[:-1])
        self.evaluated.append(len(tokens) - common)
        self._input_ids = list(tokens)
        self.n_tokens = len(tokens)
        for c in self.script:
            time.sleep(self.token_s)
            yield ord(c)
            self._input_ids.append(ord(c))
            self.n_tokens += 1


def _peer_prompts(places: list[Any], schedules: list[list[Any]]) -> dict[tuple[int, int], Any]:
    prompts = {}
    for p, steps in enumerate(schedules):
        for s in steps:
            if s.kind == "completion":
                ids = tuple(ord(c) for c in s.text[: s.offset])
                prompts[(p, s.index)] = bench.PromptInfo(ids, "line", _stop_at_newline, False)
    return prompts


def _stop_at_newline(text: str) -> int | None:
    i = text.find("\n")
    return i if i >= 0 else None


def test_peer_replays_the_schedule_with_cancellation() -> None:
    place = next(p for p in _places() if p.header == "for item in items:")
    steps = bench.schedule(place, pause_every=3, no_cancel=False, next_edit=True)
    prompts = _peer_prompts([place], [steps])
    llm = FakeLlama(token_s=0.03, script="abcd\nefgh")  # 4 tokens then a newline: ~150 ms
    target = bench.PeerTarget(llm, prompts, bench.PeerParams(frozenset({0}), max_tokens=64))
    try:
        records = asyncio.run(bench.replay_place(target, 0, place, steps, prompts, interval_s=0.05))
    finally:
        target.shutdown()
    # No next-edit request for the peer; every completion accounted for.
    assert [r.step for r in records] == [s.index for s in steps if s.kind == "completion"]
    assert all(r.outcome in ("answered", "cancelled") for r in records)
    waited = [r for r in records if r.waited]
    assert waited and all(r.outcome == "answered" and r.suggestion == "abcd" for r in waited)
    assert all(r.latency_ms >= 4 * 30 for r in waited)
    # At 50 ms a keystroke, requests not waited for are stopped by the next keystroke.
    assert any(r.outcome == "cancelled" for r in records if not r.waited)
    assert records[0].category == "cold" and llm.resets == 1
    # Prefix reuse: after the cold prompt a request evaluates only the characters typed since
    # the last generation (the prompt here is the text up to the cursor, a token a character;
    # Enter types a line break and the indentation at once).
    assert llm.evaluated[0] == len(prompts[(0, 0)].ids)
    assert max(llm.evaluated[1:]) <= len("\n" + place.body_indent) + 2


def test_peer_max_tokens_and_stop_ids() -> None:
    place = _places()[0]
    steps = bench.schedule(place, pause_every=1, no_cancel=True, next_edit=False)[:2]
    prompts = _peer_prompts([place], [steps])
    stop = threading.Event()
    target = bench.PeerTarget(
        FakeLlama(0.0, "xyzxyzxyz"), prompts, bench.PeerParams(frozenset({ord("z")}), 64)
    )
    assert target.generate(prompts[(0, 0)], stop, True) == bench.PeerResult("xy", 2, "eos", 0)
    target.params = bench.PeerParams(frozenset(), 4)
    result = target.generate(prompts[(0, 1)], stop, False)
    assert (result.text, result.stop_reason) == ("xyzx", "length")
    stop.set()
    assert target.generate(prompts[(0, 1)], stop, False) is None  # superseded before it ran
    target.shutdown()


def test_peer_is_skipped_without_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails
    args = bench.argparse.Namespace(no_peer=False)
    records, info = asyncio.run(bench.run_peer(args, [], [], {}, bench.PeerParams(frozenset(), 64)))
    assert records == [] and "llama_cpp is not importable" in info["skipped"]
    args.no_peer = True
    assert asyncio.run(bench.run_peer(args, [], [], {}, bench.PeerParams(frozenset(), 64)))[1] == {
        "skipped": "--no-peer"
    }


# --- end to end: the real server, tiny random model ---------------------------------------------


def test_end_to_end_with_the_real_server(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "shop.py"
    source.write_text(SOURCE)
    out = tmp_path / "requests.jsonl"
    argv = [
        "--files", str(source), "--positions", "1", "--keys", "3", "--body-keys", "1",
        "--pause-every", "2", "--min-prefix-chars", "0", "--model", str(tiny_model_dir),
        "--no-peer", "--out", str(out),
    ]  # fmt: skip
    assert bench.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["benchmark"] == "latency" and result["machine"]["cores"] >= 1
    assert result["peer"] == {"skipped": "--no-peer"}
    assert list(result["configs"]) == ["torch"] and len(result["places"]) == 1
    config = result["configs"]["torch"]
    assert config["initialization_options"]["backend"] == "torch"
    assert config["initialization_options"]["acceptanceLog"] is False
    assert config["server"]["model"]["device"] == "cpu"
    assert config["ratio_to_peer_p50"] == {}
    assert config["targets"]["warm_single_p50_le_half_peer"] is None
    summary = config["summary"]
    assert set(summary) == set(bench.CATEGORIES)
    for stats in summary.values():
        assert stats["sent"] == stats["answered"] + stats["cancelled"] + stats["failed"]
        assert stats["latency_ms"]["n"] <= stats["answered"] <= stats["sent"]
        assert stats["failed"] == 0
    # One cold request and one next edit per place, both waited for and answered.
    for category in ("cold", "next_edit"):
        assert summary[category]["sent"] == summary[category]["answered"] == 1
        assert summary[category]["latency_ms"]["p50"] > 0
    # 3 header keys + Enter + 1 body key: five keystroke requests, each warm single or multi.
    keystrokes = summary["warm_single"]["sent"] + summary["warm_multi"]["sent"]
    assert keystrokes == 5 and summary["warm_multi"]["sent"] >= 1
    assert summary["cold"]["prompt_tokens"]["p50"] == result["places"][0]["cold_prompt_tokens"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 7 and [r["step"] for r in lines] == list(range(7))
    assert all((r["latency_ms"] is None) == (r["outcome"] != "answered") for r in lines)
    assert all(r["outcome"] == "answered" for r in lines if r["waited"])
