"""Repository material for a prompt: candidates gathered, ranked, cut to a budget, rendered.

Candidates, in rank order (gathered by context/workspace.py): the definitions of names used near
the cursor (from the workspace index, those in files the current file imports first), names
imported but not used yet, chunks edited or viewed lately, code similar to the code at the cursor (BM25
over function-level chunks), then the other imported names. The pool is cut to `pool_tokens`; a strategy brings it
to `budget_tokens`: LongCodeZip compression with the model as scorer, BM25 rank alone, or rank
order ("full"). The result is rendered as other files of the repository, most relevant last
(nearest the cursor), and kept per place so that the prompt, and its KV cache, stay the same
while the developer types there.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from nextab.context.compress import Chunk, Compressor, elision_line
from nextab.context.similar import Passage, SimilarityIndex

# Where candidates come from, in the default rank order: the `context.sources` setting names a
# subset, in any order.
SOURCES: tuple[str, ...] = (
    "api",  # what the call or attribute at the cursor refers to (context/api.py)
    "definitions",  # of names near the cursor
    "newImports",  # names the file imports but does not use yet
    "edited",  # chunks of other files edited lately
    "viewed",  # chunks of other files where the cursor was lately
    "similar",  # BM25 over function-level chunks
    "imports",  # the other imported names
    "edits",  # unified diffs of the latest edits, after the chunks (off by default: see config)
)
QUERY_LINES = 12  # lines before the cursor that say what the code there is about
NAME_LINES = 40  # lines before the cursor whose names are looked up
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ContextPiece:
    path: str
    text: str  # one file's material: its kept chunks in file order, gaps elided


@dataclass(frozen=True)
class Material:
    """What the repository contributes to one place's prompts."""

    key: tuple[object, ...]  # the place and state it was made for
    pieces: tuple[ContextPiece, ...]  # least relevant first
    tokens: int
    strategy: str
    candidates: int
    prepare_seconds: float

    @staticmethod
    def empty(key: tuple[object, ...] = (), strategy: str = "none") -> Material:
        return Material(key, (), 0, strategy, 0, 0.0)

    def shows_as(self, other: Material) -> bool:
        """Whether both put the same text in a prompt. Not a matter of keys: a place whose
        material was made again (evicted, or the index changed under it) keeps its key."""
        return self is other or self.pieces == other.pieces


@dataclass(frozen=True)
class Candidate:
    chunk: Chunk
    why: str  # "definition" | "imported" | "recent" | "viewed" | "similar"
    bm25: float  # similarity to the query (0 when not retrieved by similarity)


def query_text(text: str, offset: int, lines: int = QUERY_LINES) -> str:
    """The last lines before the cursor: what a candidate must help predict."""
    start = offset
    for _ in range(lines):
        start = text.rfind("\n", 0, max(0, start - 1))
        if start < 0:
            start = -1
            break
    return text[start + 1 : offset]


def names_near(text: str, offset: int, lines: int = NAME_LINES) -> list[str]:
    """Identifiers before the cursor, nearest first, each once."""
    seen: dict[str, None] = {}
    for name in reversed(_IDENTIFIER.findall(query_text(text, offset, lines))):
        if len(name) > 1 and name not in seen:
            seen[name] = None
    return list(seen)


def fill_pool(
    candidates: Iterable[Candidate], limit: int, count: Callable[[str], int]
) -> list[Candidate]:
    """Candidates in rank order, each once, while they fit in `limit` tokens."""
    pool: list[Candidate] = []
    used = 0
    seen: set[str] = set()
    for candidate in candidates:
        if candidate.chunk.key in seen:
            continue
        size = count(candidate.chunk.text)
        if used + size > limit:
            continue
        seen.add(candidate.chunk.key)
        pool.append(candidate)
        used += size
    return pool


def by_bm25(
    pool: Sequence[Candidate], query: str, budget: int, count: Callable[[str], int]
) -> list[tuple[Chunk, str]]:
    """The simple baseline: whole chunks by BM25 similarity to the query, within the budget."""
    index = SimilarityIndex()
    for i, candidate in enumerate(pool):
        chunk = candidate.chunk
        # Keyed by position so that equal texts from different files stay apart.
        index.set_file(str(i), [Passage(str(i), chunk.start_line, chunk.start_line, chunk.text)])
    hits = [int(hit.passage.path) for hit in index.search(query, limit=len(pool))]
    ranked = [pool[i] for i in hits] + [c for i, c in enumerate(pool) if i not in set(hits)]
    return [(c.chunk, c.chunk.text) for c in fill_pool(ranked, budget, count)]


def render(kept: Sequence[tuple[Chunk, str]], rank: dict[str, int]) -> tuple[ContextPiece, ...]:
    """One piece per file, chunks in file order with elided gaps; most relevant file last."""
    by_path: dict[str, list[tuple[Chunk, str]]] = {}
    for chunk, text in kept:
        by_path.setdefault(chunk.path, []).append((chunk, text))
    pieces = []
    for path, items in by_path.items():
        items.sort(key=lambda item: item[0].start_line)
        parts: list[str] = []
        line = 0
        for chunk, text in items:
            if chunk.start_line > line:
                parts.append(elision_line(chunk.language, ""))
            parts.append(text if text.endswith("\n") else text + "\n")
            line = chunk.end_line
        # A file cut short must not read as a whole file: after a few import lines and a file
        # separator, the model learns that files end there and stops the current one too.
        if not items[-1][0].last:
            parts.append(elision_line(items[-1][0].language, ""))
        pieces.append((min(rank[c.key] for c, _ in items), ContextPiece(path, "".join(parts))))
    pieces.sort(key=lambda item: -item[0])
    return tuple(piece for _, piece in pieces)


@dataclass(frozen=True)
class Selection:
    """How a pool is cut down: the strategy, its budget, and what it measures with."""

    strategy: str  # "none" | "full" | "bm25" | "longcodezip" ("auto": longcodezip if it can)
    budget: int  # tokens
    count: Callable[[str], int]
    compressor: Compressor | None = None


def select(
    pool: Sequence[Candidate],
    query: str,
    how: Selection,
    should_stop: Callable[[], bool] | None = None,
) -> list[tuple[Chunk, str]]:
    if how.strategy == "none" or how.budget <= 0 or not pool:
        return []
    if how.strategy == "full":
        return [(c.chunk, c.chunk.text) for c in fill_pool(pool, how.budget, how.count)]
    if how.strategy == "bm25" or how.compressor is None:
        return by_bm25(pool, query, how.budget, how.count)
    compressed = how.compressor.compress([c.chunk for c in pool], query, how.budget, should_stop)
    return [(kept.chunk, kept.text) for kept in compressed.kept]


def make_material(
    key: tuple[object, ...],
    pool: Sequence[Candidate],
    query: str,
    how: Selection,
    should_stop: Callable[[], bool] | None = None,
    pinned: Sequence[Candidate] = (),
) -> Material:
    """The material for one place: the pinned candidates (what the cursor's site refers to,
    most relevant last) as they are, then the strategy's pick of the pool in the budget they
    leave."""
    started = time.perf_counter()
    kept_pinned = [(c.chunk, c.chunk.text) for c in fill_pool(reversed(pinned), how.budget, how.count)]
    used = sum(how.count(text) for _, text in kept_pinned)
    # A pinned interface stands for its definition: the pool's chunk of it would repeat it.
    rest = [c for c in pool if not any(_covers(c.chunk, chunk) for chunk, _ in kept_pinned)]
    kept = select(rest, query, replace(how, budget=how.budget - used), should_stop)
    # Pinned first in rank (shown last, nearest the cursor); the latest site first of them.
    ranked = [chunk.key for chunk, _ in kept_pinned] + [c.chunk.key for c in rest]
    rank = {chunk_key: i for i, chunk_key in enumerate(ranked)}
    pieces = render([*kept_pinned, *kept], rank)
    return Material(
        key=key,
        pieces=pieces,
        tokens=used + sum(how.count(text) for _, text in kept),
        strategy=how.strategy,
        candidates=len(pool) + len(pinned),
        prepare_seconds=time.perf_counter() - started,
    )


def _covers(chunk: Chunk, pinned: Chunk) -> bool:
    return chunk.key == pinned.key or (
        chunk.path == pinned.path and chunk.start_line <= pinned.start_line < chunk.end_line
    )
