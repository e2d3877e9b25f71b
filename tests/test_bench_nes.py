"""The next-edit benchmark's logic: rebuilding the history, replaying it, scoring."""

from __future__ import annotations

import gzip
import json

import pytest

from nextab.config import NextEditConfig
from nextab.context.edits import Proposal
from nextab.nextedit import NextEditRequest, predict
from tests.scripts import load_benchmark

bench = load_benchmark("next_edit.py", "next_edit_bench")
needs_data = pytest.mark.skipif(not bench.DEFAULT_DATA.exists(), reason=f"no data at {bench.DEFAULT_DATA}")

BEFORE = "def f(a):\n    return a\n\n\nx = compute(items)\ny = 2 * compute(items)\n"


def _case(history, expected: Proposal) -> object:
    buffer = BEFORE
    for start, old, new in history:
        lines = buffer.splitlines(True)
        assert "".join(lines[start : start + len(old.splitlines(True))]) == old
        lines[start : start + len(old.splitlines(True))] = new.splitlines(True)
        buffer = "".join(lines)
    return bench.Case("toy", "toy.py", bench.undo(buffer, history), tuple(history), buffer, (0, 0), expected)


def test_undo_and_replay_give_back_both_files() -> None:
    history = [(0, "def f(a):\n", "def f(a, b=0):\n"), (4, "x = compute(items)\n", "x = compute(items, 2)\n")]
    case = _case(history, Proposal(5, 6, "y = 2 * compute(items, 2)\n", 1, "expected"))
    assert case.before == BEFORE
    recorded, document = bench.replay(case, "file:///toy.py")
    assert document.text == case.buffer
    assert [(e.old, e.new) for e in recorded.edits()] == [("", ", b=0"), ("", ", 2")]


def test_scoring_a_right_and_a_wrong_suggestion() -> None:
    history = [(4, "x = compute(items)\n", "x = compute(items, tax)\n")]
    expected = Proposal(5, 6, "y = 2 * compute(items, tax)\n", 1, "expected")
    case = _case(history, expected)
    recorded, document = bench.replay(case, "file:///toy.py")
    request = NextEditRequest(document, document.text, 0, tuple(recorded.edits()), path="toy.py")
    result = predict(NextEditConfig(), request, None)
    outcome = bench.score_case(case, "repeat", result)
    # The added argument repeats at the other call: the right line, exactly the expected text.
    assert outcome.top1 and outcome.exact and outcome.similarity == 1.0
    wrong = bench.score_case(
        bench.Case(**{**case.__dict__, "expected": Proposal(0, 1, "def f(a, b):\n", 1, "e")}), "repeat", result
    )
    assert not wrong.top1 and not wrong.exact and wrong.similarity < 1.0


def test_overlap_counts_an_insertion_as_the_line_it_precedes() -> None:
    assert bench.overlaps(3, 3, 3, 4) and bench.overlaps(2, 5, 4, 4)
    assert not bench.overlaps(3, 3, 4, 5) and not bench.overlaps(0, 2, 2, 3)


@pytest.mark.parametrize(("a", "b"), [("kitten", "sitting"), ("", "abc"), ("flask", "flask"), ("ab", "ba")])
def test_similarity_is_one_minus_normalised_levenshtein(a: str, b: str) -> None:
    from similarity import edit_similarity, python_similarity

    assert edit_similarity(a, b) == pytest.approx(python_similarity(a, b))
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)


@needs_data
def test_every_flask_case_replays() -> None:
    cases = bench.load_cases(bench.DEFAULT_DATA)
    with gzip.open(bench.DEFAULT_DATA, "rt", encoding="utf-8") as handle:
        assert len(cases) == sum(1 for _ in handle) == 400
    for case in cases[::20]:
        recorded, document = bench.replay(case, f"file:///flask/{case.path}")
        assert document.text == case.buffer and len(recorded.edits()) >= 1
    with gzip.open(bench.DEFAULT_DATA, "rt", encoding="utf-8") as handle:
        first = json.loads(handle.readline())
    assert cases[0].expected.start_line == first["expected"]["start_line"]
