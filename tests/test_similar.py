import math
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from nextab.context.similar import Passage, SimilarityIndex, terms


def passage(path: str, text: str, start: int = 0) -> Passage:
    return Passage(path, start, start + text.count("\n") + 1, text)


def test_terms_split_identifiers_into_subwords_and_drop_keywords() -> None:
    bag = terms("def parse_header(self, readLine): return HTTPServer")
    assert bag["parse_header"] == 1
    assert bag["parse"] == 1 and bag["header"] == 1
    assert bag["readline"] == 1 and bag["read"] == 1 and bag["line"] == 1
    assert bag["httpserver"] == 1 and bag["http"] == 1 and bag["server"] == 1
    assert "def" not in bag and "self" not in bag and "return" not in bag


def test_search_ranks_the_passage_sharing_rare_identifiers_first() -> None:
    index = SimilarityIndex()
    index.set_file("a.py", [passage("a.py", "def load_config(path):\n    return read_toml(path)")])
    index.set_file("b.py", [passage("b.py", "def render_page(template):\n    return template.render()")])
    index.set_file("c.py", [passage("c.py", "def save_config(config, path):\n    write_toml(path, config)")])
    hits = index.search("cfg = load_config(path)\nvalue = read_toml(")
    assert [h.passage.path for h in hits][:2] == ["a.py", "c.py"]
    assert all(h.passage.path != "b.py" for h in hits)


def test_exclude_and_replace_and_remove_files() -> None:
    index = SimilarityIndex()
    index.set_file("a.py", [passage("a.py", "alpha_beta()")])
    index.set_file("b.py", [passage("b.py", "alpha_beta(gamma)")])
    assert {h.passage.path for h in index.search("alpha_beta")} == {"a.py", "b.py"}
    assert {h.passage.path for h in index.search("alpha_beta", exclude=["a.py"])} == {"b.py"}
    index.set_file("a.py", [passage("a.py", "unrelated_name()")])
    assert {h.passage.path for h in index.search("alpha_beta")} == {"b.py"}
    index.remove_file("b.py")
    assert index.search("alpha_beta") == []
    assert len(index) == 1


def _reference_bm25(query: str, docs: list[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
    bags = [terms(d) for d in docs]
    lengths = [sum(bag.values()) for bag in bags]
    average = sum(lengths) / len(docs) or 1.0
    df: Counter[str] = Counter()
    for bag in bags:
        df.update(bag.keys())
    scores = []
    for bag, length in zip(bags, lengths, strict=True):
        score = 0.0
        for term in terms(query):
            if df[term] == 0:
                continue
            idf = math.log(1 + (len(docs) - df[term] + 0.5) / (df[term] + 0.5))
            tf = bag[term]
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average))
        scores.append(score)
    return scores


words = st.sampled_from(["alpha", "beta_gamma", "deltaEpsilon", "zeta", "eta_theta", "iota"])


@given(
    docs=st.lists(st.lists(words, min_size=1, max_size=8).map(" ".join), min_size=1, max_size=6),
    query=st.lists(words, min_size=1, max_size=4).map(" ".join),
    replaced=st.booleans(),
)
def test_scores_match_the_okapi_formula_after_updates(
    docs: list[str], query: str, replaced: bool
) -> None:
    index = SimilarityIndex()
    if replaced:
        # Stale statistics from a replaced file must not leak into the scores.
        for i in range(len(docs)):
            index.set_file(f"{i}.py", [passage(f"{i}.py", "iota zeta zeta alpha")])
    for i, doc in enumerate(docs):
        index.set_file(f"{i}.py", [passage(f"{i}.py", doc)])
    expected = _reference_bm25(query, docs)
    got = {int(h.passage.path[:-3]): h.score for h in index.search(query, limit=100)}
    for i, score in enumerate(expected):
        assert math.isclose(got.get(i, 0.0), score, rel_tol=1e-9, abs_tol=1e-12)


def test_a_file_can_change_while_a_search_scans() -> None:
    # A search over a 10,000-file pool takes long enough that, holding the index's lock, it
    # stalled the editor's didOpen (which sets the opened file's passages) behind it.
    import threading

    index = SimilarityIndex()
    index.set_file("a.py", [passage("a.py", "def parse_header(line): return line")])
    index.set_file("b.py", [passage("b.py", "def parse_body(text): return text")])
    scanning, finish = threading.Event(), threading.Event()
    score = index._score

    def slow_score(*args):
        scanning.set()
        finish.wait(5)
        return score(*args)

    index._score = slow_score  # type: ignore[method-assign]
    found: list = []
    searcher = threading.Thread(target=lambda: found.extend(index.search("parse header")))
    searcher.start()
    assert scanning.wait(5)
    changed = threading.Thread(
        target=index.set_file, args=("c.py", [passage("c.py", "parse_header = None")])
    )
    changed.start()
    changed.join(2)
    assert not changed.is_alive()  # not waiting for the scan
    finish.set()
    searcher.join(5)
    assert found[0].passage.path == "a.py"  # the scan saw the pool as it began
    assert {h.passage.path for h in found} <= {"a.py", "b.py"}
    index._score = score  # type: ignore[method-assign]
    assert "c.py" in {h.passage.path for h in index.search("parse header")}
