"""LongCodeZip-style compression: chunking, segmentation, allocation, knapsack, the pipeline."""

from __future__ import annotations

import inspect
import itertools
import math
import re
import textwrap
from collections.abc import Sequence

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nextab.context.compress import (
    Chunk,
    CompressionCancelled,
    Compressor,
    allocate,
    before_elision,
    budget_for_ratio,
    elision_line,
    knapsack,
    segment,
    spike_threshold,
    split_functions,
)
from nextab.context.symbols import extract

# ---------------------------------------------------------------------------------------------
# A scorer whose behaviour is known: identifiers stand in for what a model would predict.

WORD = re.compile(r"[A-Za-z_]\w*")


def idents(text: str) -> set[str]:
    return set(WORD.findall(text))


class IdentifierScorer:
    """Tokens are whitespace-separated words; a target is easy to predict where its
    identifiers were already seen (in the context or on earlier lines)."""

    def __init__(self) -> None:
        self.calls = 0

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def nll_batch(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        self.calls += 1
        return [1.0 / (1 + len(idents(t) & idents(c))) for t, c in pairs]

    def line_nll_batch(self, pairs: Sequence[tuple[str, str]]) -> list[list[float]]:
        self.calls += 1
        out = []
        for text, context in pairs:
            seen = idents(context)
            values = []
            for line in text.splitlines():
                words = idents(line)
                values.append(float(len(words - seen)) if line.strip() else math.nan)
                seen |= words
            out.append(values)
        return out


def chunk(key: str, text: str, **kw) -> Chunk:
    path = kw.pop("path", "m.py")
    return Chunk(key=key, path=path, text=text, kind="function", language="python", **kw)


# ---------------------------------------------------------------------------------------------
# Knapsack, allocation, segmentation


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(st.tuples(st.integers(0, 15), st.floats(-3, 10, allow_nan=False)), max_size=9),
    capacity=st.integers(-2, 50),
)
def test_knapsack_is_optimal(items: list[tuple[int, float]], capacity: int) -> None:
    weights = [w for w, _ in items]
    values = [v for _, v in items]
    chosen = knapsack(weights, values, capacity)
    assert chosen == sorted(set(chosen))
    assert sum(weights[i] for i in chosen) <= max(0, capacity)
    best = max(
        sum(values[i] for i in subset)
        for r in range(len(items) + 1)
        for subset in itertools.combinations(range(len(items)), r)
        if sum(weights[i] for i in subset) <= max(0, capacity)
    )
    assert sum(values[i] for i in chosen) == pytest.approx(best, abs=1e-9)


def test_knapsack_rejects_mismatched_input() -> None:
    with pytest.raises(ValueError):
        knapsack([1, 2], [1.0], 3)
    with pytest.raises(ValueError):
        knapsack([-1], [1.0], 3)


@example(rows=[(1, 1.0), (1, -6.4231091185018554e-161), (4, 0.0)], target=5, beta=1.0)
@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.tuples(st.integers(1, 300), st.floats(-5, 5)), min_size=1, max_size=8),
    target=st.integers(0, 1500),
    beta=st.floats(0, 1),
)
def test_allocation_stays_within_target_and_favours_rank(
    rows: list[tuple[int, float]], target: int, beta: float
) -> None:
    sizes = [s for s, _ in rows]
    scores = [c for _, c in rows]
    shares = allocate(sizes, scores, target, beta)
    assert all(0 <= share <= size for share, size in zip(shares, sizes, strict=True))
    if sum(sizes) <= target:
        assert shares == sizes
        return
    assert sum(shares) <= target
    # Rounding down loses less than one token per function; clamping loses nothing, except
    # that beta = 1 gives the lowest-scored functions rate 0 (the paper's formula).
    # (A score within rounding of the lowest normalises to 0 as well: 1 + (2 * 1e-161 - 1) == 0.)
    low, high = min(scores), max(scores)
    lowest = low < high and beta >= 1.0
    at_bottom = [lowest and 1 + beta * (2 * ((score - low) / (high - low)) - 1) <= 0 for score in scores]
    reachable = sum(size for (size, _), bottom in zip(rows, at_bottom, strict=True) if not bottom)
    assert sum(shares) >= min(target, reachable) - len(sizes)
    rates = [share / size for share, size in zip(shares, sizes, strict=True)]
    for i, j in itertools.permutations(range(len(rows)), 2):
        if scores[i] > scores[j] and rates[j] < 1:
            assert rates[i] + 1 / sizes[i] >= rates[j] - 1 / sizes[j]


def test_allocation_without_beta_is_proportional() -> None:
    assert allocate([100, 300], [5.0, -5.0], 200, beta=0.0) == [50, 150]
    high_first = allocate([100, 100], [1.0, 0.0], 100, beta=0.5)
    assert high_first == [75, 25]  # rates 0.5 * (1 ± 0.5)


def test_segment_cuts_at_perplexity_spikes() -> None:
    nlls = [1, 1, 1, 5, 1, 1, 1, 4, 1]
    # std ≈ 1.47: both spikes (rises 4 and 3) clear one standard deviation, and two.
    assert spike_threshold(nlls, 1.0) == pytest.approx(1.474, abs=0.001)
    assert segment(nlls, k=2.0) == [range(0, 3), range(3, 7), range(7, 9)]
    assert segment(nlls) == [range(0, 3), range(3, 7), range(7, 9)]


def test_segment_ignores_small_bumps_and_blank_lines() -> None:
    # 1.5 rises by 0.5 only: below the threshold (std ≈ 1.73), so no cut there.
    assert segment([1, 1.5, 1, 1, 6, 1, 1]) == [range(0, 4), range(4, 7)]
    # Blank lines (NaN) are not neighbours: the spike at 2 is judged against lines 0 and 4.
    assert segment([1, math.nan, 5, math.nan, 1, 1]) == [range(0, 2), range(2, 6)]
    # A steady rise is no spike: the line must be at least both neighbours.
    assert segment([1, 5, 9, 12, 15]) == [range(0, 5)]
    # The bar scales with the spread: k = 3 (5.2) is more than the rise of 4.
    assert segment([1, math.nan, 5, math.nan, 1, 1], k=3.0) == [range(0, 6)]
    # Fewer than three scored lines: no evidence, one block.
    assert segment([1, 9]) == [range(0, 2)]
    assert segment([]) == []


@given(st.lists(st.one_of(st.floats(0, 10), st.just(math.nan)), max_size=30))
def test_segment_partitions_the_lines(nlls: list[float]) -> None:
    blocks = segment(nlls)
    assert [i for block in blocks for i in block] == list(range(len(nlls)))


def test_budget_for_ratio() -> None:
    assert budget_for_ratio(1000, 4) == 250
    with pytest.raises(ValueError):
        budget_for_ratio(1000, 0.5)


# ---------------------------------------------------------------------------------------------
# Function-level chunking with the real grammars

PY = '''"""Module doc."""
import os


# Adds things.
@decorate
def add(
    a,
    b,
):
    return a + b


class Shape:
    sides = 0

    def area(self):
        return 0

    def name(self):
        return "shape"


if __name__ == "__main__":
    print(add(1, 2))
    print("done")
'''


def test_python_chunks_cover_the_file_and_split_methods() -> None:
    chunks = split_functions("pkg/m.py", PY)
    assert "".join(c.text for c in chunks) == PY
    kinds = [(c.kind, c.text.splitlines()[0]) for c in chunks]
    assert kinds == [
        ("module", '"""Module doc."""'),
        ("function", "# Adds things."),
        ("class", "class Shape:"),
        ("function", "    def area(self):"),
        ("function", "    def name(self):"),
        ("block", 'if __name__ == "__main__":'),
    ]
    add = chunks[1]
    lines = add.text.splitlines()
    # The header is the decorator and the whole multi-line signature, not the comment.
    assert lines[add.header[0] : add.header[1]] == [
        "@decorate",
        "def add(",
        "    a,",
        "    b,",
        "):",
    ]
    assert add.key == "pkg/m.py::def add("
    assert add.language == "python"
    assert [c.start_line for c in chunks] == [0, 4, 13, 16, 19, 23]


def test_brace_languages_keep_the_opening_line_as_header() -> None:
    js = (
        "// helper\nfunction a(x) {\n  return x;\n}\n\nclass B {\n  m(y) {\n    return y;\n  }\n}\n"
    )
    chunks = split_functions("a.js", js)
    assert "".join(c.text for c in chunks) == js
    a = chunks[0]
    assert a.text.splitlines()[a.header[0] : a.header[1]] == ["function a(x) {"]
    assert [c.kind for c in chunks] == ["function", "class", "function"]
    go = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println(1)\n}\n'
    go_chunks = split_functions("main.go", go)
    assert "".join(c.text for c in go_chunks) == go
    assert [c.kind for c in go_chunks] == ["module", "function"]


def test_plain_text_splits_on_top_level_paragraphs() -> None:
    text = "alpha one\n  more\n\nbeta two\n\n  indented stays\ngamma\n"
    chunks = split_functions("notes.unknownext", text)
    assert [c.text for c in chunks] == [
        "alpha one\n  more\n\n",
        "beta two\n\n  indented stays\ngamma\n",
    ]
    assert chunks[0].language is None


def test_chunking_rejects_binary_and_empty_text() -> None:
    assert split_functions("x.py", "a = 1\x00\n") == []
    assert split_functions("x.py", "") == []


@pytest.mark.parametrize("odd", ["\x0c", "\u2028", "\x1c", "\r"])
def test_chunks_count_lines_as_the_tree_does(odd: str) -> None:
    # Form feeds (old GNU and stdlib code) and other characters str.splitlines breaks at
    # must not shift the chunks off their definitions.
    text = f"import os\n{odd}\ndef a():\n    return 1  # {odd}\n\n\ndef b():\n    return 2\n"
    chunks = split_functions("x.py", text)
    assert "".join(c.text for c in chunks) == text
    definitions = {d.name: d.start_line for d in extract(text, "python").definitions}
    starts = {c.text.split("(")[0]: c.start_line for c in chunks}
    assert starts["def a"] == definitions["a"] and starts["def b"] == definitions["b"]


def test_duplicate_titles_get_distinct_keys() -> None:
    text = "def f():\n    return 1\n\n\ndef f():\n    return 2\n"
    keys = [c.key for c in split_functions("d.py", text)]
    assert len(set(keys)) == len(keys) == 2


# ---------------------------------------------------------------------------------------------
# The pipeline with the identifier scorer

RELEVANT = chunk("m.py::parse", "def parse_config(path):\n    return load_yaml(path)\n")
ALSO = chunk("m.py::load", "def load_yaml(path):\n    return yaml.safe_load(open(path))\n")
NOISE1 = chunk("m.py::fmt", "def format_money(value):\n    return f'{value:.2f} EUR'\n")
NOISE2 = chunk("m.py::area", "def circle_area(radius):\n    return 3.14 * radius * radius\n")
QUERY = "config = parse_config(path)\ndata = load_yaml(path)\n"


def test_coarse_stage_keeps_the_chunks_that_explain_the_query() -> None:
    chunks = [NOISE1, RELEVANT, NOISE2, ALSO]
    compressor = Compressor(IdentifierScorer(), fine_ratio=1.0)
    sizes = [len(c.text.split()) for c in chunks]
    result = compressor.compress(chunks, QUERY, budget_tokens=sizes[1] + sizes[3])
    assert [k.chunk.key for k in result.kept] == ["m.py::parse", "m.py::load"]  # given order
    assert [k.text for k in result.kept] == [RELEVANT.text, ALSO.text]
    reports = {r.key: r for r in result.reports}
    assert reports["m.py::parse"].rank in (0, 1) and reports["m.py::load"].rank in (0, 1)
    assert not reports["m.py::fmt"].kept and reports["m.py::fmt"].tokens_after == 0
    assert reports["m.py::parse"].score > reports["m.py::fmt"].score
    assert result.tokens_after <= result.budget
    assert result.tokens_before == sum(sizes)


def test_everything_that_fits_is_kept_without_model_calls() -> None:
    scorer = IdentifierScorer()
    result = Compressor(scorer).compress([NOISE1, RELEVANT], QUERY, budget_tokens=10_000)
    assert [k.text for k in result.kept] == [NOISE1.text, RELEVANT.text]
    assert scorer.calls == 0 and result.model_calls == 0


# Under the identifier scorer a line's NLL is its count of new identifiers, so each block's
# first line spikes (4 new) above the lines that reuse them (0): three blocks after the header.
LONG = chunk(
    "m.py::handler",
    textwrap.dedent(
        """\
        def handle_request(request):
            started = clock_now(alpha_one, alpha_two)
            clock_now(started)
            clock_now(alpha_one)
            user = lookup_user(request, user_db, user_cache)
            lookup_user(user)
            lookup_user(user_db)
            metric = metrics_counter(requests_total, gauge_x)
            metrics_counter(metric)
            return metric
        """
    ),
)


def test_fine_stage_keeps_header_and_relevant_block_with_an_elision_line() -> None:
    query = "user = lookup_user(request)\n"
    scorer = IdentifierScorer()
    # The coarse budget, 14 / 0.5, admits the whole function (22 words); the fine stage cuts it
    # to the header (2), one block (6 or 7) and an elision line (2) on each side of the block.
    compressor = Compressor(scorer, fine_ratio=0.5, beta=0.0)
    budget = 14
    result = compressor.compress([LONG], query, budget_tokens=budget)
    (kept,) = result.kept
    lines = kept.text.splitlines()
    assert lines[0] == "def handle_request(request):"
    assert lines[1:] == [
        "    # …",
        "    user = lookup_user(request, user_db, user_cache)",
        "    lookup_user(user)",
        "    lookup_user(user_db)",
        "    # …",
    ]
    assert scorer.count_tokens(kept.text) == result.tokens_after <= budget
    # Every kept line is a line of the original, in its original order.
    originals = LONG.text.splitlines()
    body = [line for line in lines if line.strip() != "# …"]
    positions = [originals.index(line) for line in body]
    assert positions == sorted(positions)
    assert result.reports[0].fine_seconds > 0


@pytest.mark.parametrize("importance", ["ami", "contrastive"])
@pytest.mark.parametrize("budget", [0, 3, 8, 15, 25, 40, 60])
def test_budget_is_never_exceeded(importance: str, budget: int) -> None:
    chunks = [NOISE1, LONG, RELEVANT, NOISE2, ALSO]
    compressor = Compressor(IdentifierScorer(), fine_importance=importance, min_fine_lines=3)
    result = compressor.compress(chunks, QUERY, budget_tokens=budget)
    assert result.tokens_after == sum(len(k.text.split()) for k in result.kept)
    assert result.tokens_after <= budget
    assert len(result.reports) == len(chunks)


def test_second_call_is_served_from_the_caches_and_invalidate_forgets() -> None:
    scorer = IdentifierScorer()
    compressor = Compressor(scorer, fine_ratio=0.5)
    chunks = [NOISE1, LONG, RELEVANT, ALSO]
    first = compressor.compress(chunks, QUERY, budget_tokens=20)
    assert first.model_calls > 0
    calls = scorer.calls
    second = compressor.compress(chunks, QUERY, budget_tokens=20)
    assert second.model_calls == 0 and scorer.calls == calls
    assert [k.text for k in second.kept] == [k.text for k in first.kept]
    compressor.invalidate("m.py")
    third = compressor.compress(chunks, QUERY, budget_tokens=20)
    assert third.model_calls > 0
    assert [k.text for k in third.kept] == [k.text for k in first.kept]


def test_should_stop_cancels_between_model_calls_and_keeps_partial_work() -> None:
    scorer = IdentifierScorer()
    compressor = Compressor(scorer, batch_size=1)
    chunks = [NOISE1, LONG, RELEVANT, NOISE2, ALSO]
    asked = []

    def stop_after_three() -> bool:
        asked.append(1)
        return len(asked) > 3

    with pytest.raises(CompressionCancelled):
        compressor.compress(chunks, QUERY, budget_tokens=20, should_stop=stop_after_three)
    assert scorer.calls == 3
    fresh = IdentifierScorer()
    full = Compressor(fresh, batch_size=1).compress(chunks, QUERY, budget_tokens=20)
    resumed = compressor.compress(chunks, QUERY, budget_tokens=20)
    assert resumed.model_calls == full.model_calls - 3
    assert [k.text for k in resumed.kept] == [k.text for k in full.kept]


# ---------------------------------------------------------------------------------------------
# The whole pipeline on the tiny random-weight model


@pytest.fixture(scope="module")
def stdlib_chunks() -> list[Chunk]:
    source = inspect.getsource(textwrap)
    chunks = split_functions("textwrap.py", source)
    assert "".join(c.text for c in chunks) == source
    return chunks


def test_pipeline_with_the_tiny_model(tiny_backend, stdlib_chunks: list[Chunk]) -> None:
    from nextab.models.scoring import BackendScorer

    scorer = BackendScorer(tiny_backend, batch_size=4)
    compressor = Compressor(scorer, fine_ratio=0.5)
    total = sum(len(tiny_backend.tokenize(c.text)) for c in stdlib_chunks)
    budget = budget_for_ratio(total, 4)
    query = "def wrap_lines(text, width=70):\n    wrapper = TextWrapper(width=width)\n"
    result = compressor.compress(stdlib_chunks, query, budget)
    kept_tokens = sum(len(tiny_backend.tokenize(k.text)) for k in result.kept)
    assert kept_tokens == result.tokens_after <= budget
    assert result.tokens_before == total
    assert result.kept and result.model_calls > 0
    for kept in result.kept:
        header = kept.chunk.text.splitlines()[kept.chunk.header[0] : kept.chunk.header[1]]
        out = kept.text.splitlines()
        assert all(line in out for line in header)
        if kept.text != kept.chunk.text:
            assert any(line.strip() == "# …" for line in out)
    assert math.isfinite(max(r.score for r in result.reports))
    again = compressor.compress(stdlib_chunks, query, budget)
    assert again.model_calls == 0
    assert [k.text for k in again.kept] == [k.text for k in result.kept]


def test_chunking_with_the_caller_s_tree_equals_chunking_alone() -> None:
    from nextab.context.symbols import parse

    text = PY + "\n\nclass Late:\n    def m(self):\n        return '\udcff'\n"
    tree = parse(text, "python")
    assert tree is not None
    assert split_functions("m.py", text, "python", tree) == split_functions("m.py", text, "python")


@pytest.mark.parametrize("language", ["python", "javascript", "rust", None])
def test_a_completion_ends_before_an_elision_line_as_material_writes_it(language):
    mark = elision_line(language, "    ")
    assert before_elision(f"x = 1\n{mark}y = 2\n") == "x = 1\n"
    assert before_elision(mark) == ""


@pytest.mark.parametrize(
    "code", ["x = 1\ny = 2\n", "print('…')\n", "# … and more\n", "s = a…b\n", "// see …\n"]
)
def test_code_that_mentions_an_ellipsis_is_kept_whole(code):
    assert before_elision(code) == code
