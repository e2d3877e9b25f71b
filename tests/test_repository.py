"""context/repository.py: the candidate pool, the strategies that cut it, and its rendering."""

from __future__ import annotations

from nextab.context.compress import Chunk, split_functions
from nextab.context.repository import (
    Candidate,
    Selection,
    by_bm25,
    fill_pool,
    make_material,
    names_near,
    query_text,
    render,
)


def words(text: str) -> int:
    return len(text.split())


def candidate(path: str, text: str, line: int = 0, why: str = "similar") -> Candidate:
    return Candidate(Chunk(f"{path}:{line}", path, text, start_line=line), why, 0.0)


def test_query_text_is_the_last_lines_before_the_cursor() -> None:
    text = "a\nb\nc\nd = fo"
    assert query_text(text, len(text), 2) == "c\nd = fo"
    assert query_text(text, len(text), 10) == text
    assert query_text(text, 0, 3) == ""


def test_names_near_are_nearest_first_and_unique() -> None:
    text = "import os\nvalue = parse(os.path)\nresult = render(value, parse"
    assert names_near(text, len(text))[:4] == ["parse", "value", "render", "result"]


def test_fill_pool_keeps_rank_order_skips_duplicates_and_what_does_not_fit() -> None:
    pool = [
        candidate("a.py", "one two three"),
        candidate("a.py", "one two three"),  # same key again
        candidate("b.py", "x " * 10),
        candidate("c.py", "four five"),
    ]
    kept = fill_pool(pool, 6, words)
    assert [c.chunk.path for c in kept] == ["a.py", "c.py"]


def test_bm25_baseline_keeps_the_most_similar_chunks_within_the_budget() -> None:
    pool = [
        candidate("a.py", "def render_page(template): return template"),
        candidate("b.py", "def load_config(path): return read_toml(path)"),
        candidate("c.py", "def save_config(config, path): write_toml(path, config)"),
    ]
    kept = by_bm25(pool, "cfg = load_config(path)", budget=12, count=words)
    assert [chunk.path for chunk, _ in kept] == ["b.py", "c.py"]


def test_render_groups_by_file_in_line_order_with_elided_gaps_most_relevant_last() -> None:
    source = "def a():\n    return 1\n\n\ndef b():\n    return 2\n\n\ndef c():\n    return 3\n"
    chunks = split_functions("lib.py", source)
    a, c = chunks[0], chunks[-1]
    other = Chunk("x.py:0", "x.py", "X = 1\n", start_line=0)
    pieces = render(
        [(c, c.text), (other, other.text), (a, a.text)],
        rank={other.key: 1, c.key: 0, a.key: 2},
    )
    assert [p.path for p in pieces] == ["x.py", "lib.py"]
    lib = pieces[-1].text
    assert lib.index("def a") < lib.index("# …") < lib.index("def c")
    assert "def b" not in lib


def test_material_strategies_none_full_and_bm25() -> None:
    pool = [candidate("a.py", "alpha beta"), candidate("b.py", "gamma delta epsilon")]
    none = make_material(("k",), pool, "gamma", Selection("none", 100, words))
    assert none.pieces == () and none.tokens == 0
    full = make_material(("k",), pool, "gamma", Selection("full", 100, words))
    assert [p.path for p in full.pieces] == ["b.py", "a.py"] and full.tokens == 5
    bm25 = make_material(("k",), pool, "gamma", Selection("bm25", 3, words))
    assert [p.path for p in bm25.pieces] == ["b.py"] and bm25.tokens == 3


def test_render_marks_a_file_that_goes_on_after_its_last_shown_chunk() -> None:
    # Shown without a mark, a file's first lines followed by the next file separator read as
    # the whole file.
    source = "import os\n\n\ndef a():\n    return 1\n\n\ndef b():\n    return 2\n"
    header, a, b = split_functions("lib.py", source)
    assert (header.last, a.last, b.last) == (False, False, True)
    (cut,) = render([(header, header.text)], rank={header.key: 0})
    assert cut.text == "import os\n\n\n# …\n"
    (whole,) = render([(a, a.text), (b, b.text)], rank={a.key: 0, b.key: 1})
    assert whole.text.startswith("# …\n") and whole.text.endswith("return 2\n")
