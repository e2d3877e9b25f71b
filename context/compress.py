"""LongCodeZip-style compression of candidate context, scored by the completion model itself.

Shi et al. 2025, "LongCodeZip: Compress Long Context for Code Language Models", in two stages:

coarse  Candidate context arrives as function-level chunks. Each is ranked by its approximated
        mutual information with the query (the code at the cursor): how much it lowers the
        query's perplexity, AMI(c, q) = NLL(q) - NLL(q | c). In rank order, every chunk that
        still fits the coarse budget, `budget / fine_ratio`, is selected.
fine    Inside each selected function, per-line NLLs split the body into blocks where the
        perplexity spikes. Each function gets its own token budget, larger for higher-ranked
        functions, and an exact 0/1 knapsack picks the blocks (value: the block's importance
        for the query, weight: its tokens). The header lines are always kept; each run of
        dropped blocks becomes one elision comment ("# …"). Budget the fine stage leaves
        unused goes to whole chunks the coarse stage passed over, in rank order.

Measured on a 2-core CPU with Qwen2.5-Coder-0.5B in fp32, scoring runs at about 70 tokens/s,
so 20 functions (4k tokens) take about 2.5 minutes: run it off the keystroke path, in the
background, and let the caches make the next call for the same place free.

Budget scheme: the reference code (YerbaPage/LongCodeZip) selects functions up to the coarse
target and then keeps `fine_ratio` of their lines, so its output is about `fine_ratio` times
the target. Here the caller's budget is the final size: the coarse stage may select
`budget / fine_ratio` tokens and the fine stage brings those down to `budget`. The output
never exceeds `budget` as counted by the scorer's tokenizer; that is checked, not estimated.

The model is reached through the small `Scorer` protocol below (context/ must not import
models/); nextab.models.scoring.BackendScorer implements it over a model backend. Scores are
cached by content hash, so compressing again for the same place costs no model call.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

import numpy as np
from tree_sitter import Node, Tree

from nextab.context.document import split_lines
from nextab.context.languages import parser, spec_for

log = logging.getLogger(__name__)

ELISION = "…"
_HASH_BYTES = 16


class Scorer(Protocol):
    """What compression needs from a language model: token counts and conditional NLLs."""

    def count_tokens(self, text: str) -> int: ...

    def nll_batch(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Mean per-token NLL (nats) of each `target` given its `context`: pairs of
        (target, context), context "" for none. NaN where the target has no tokens."""
        ...

    def line_nll_batch(self, pairs: Sequence[tuple[str, str]]) -> list[list[float]]:
        """Per line of each text (split at "\\n" only), the mean NLL of the tokens that start on
        it, given the context and the lines before; NaN for lines with no tokens of their own
        or only whitespace. Pairs of (text, context)."""
        ...


class CompressionCancelled(Exception):
    """`should_stop` answered True between two model calls; the caches keep what was scored."""


@dataclass(frozen=True)
class Chunk:
    """One candidate piece of context, usually a function, a class header or module lines."""

    key: str  # stable across edits elsewhere in the file: path plus the definition's first line
    path: str
    text: str
    kind: str = "text"  # "function" | "class" | "module" | "block" | "text"
    origin: str = ""  # where the caller found it ("open-file", "import", ...), for reports
    start_line: int = 0  # 0-based line of the chunk in its file
    header: tuple[int, int] = (0, 1)  # lines [a, b) of the chunk always kept (signature)
    language: str | None = None  # nextab language name, for the elision comment
    last: bool = False  # the file's last chunk: nothing of the file follows it

    @property
    def end_line(self) -> int:
        """The line after the chunk's last one (its text spells whole lines)."""
        newlines = self.text.count("\n")
        return self.start_line + newlines + (0 if self.text.endswith("\n") else 1)


# ---------------------------------------------------------------------------------------------
# Function-level chunking

_FUNCTION_WORDS = ("function", "method", "constructor")
_CONTAINER_WORDS = ("class", "struct", "impl", "interface", "trait", "enum", "namespace")
# Nodes that wrap a definition without being one: the definition's own header matters.
_WRAPPER_FIELDS = {
    "decorated_definition": "definition",
    "export_statement": "declaration",
    "template_declaration": None,
}


def _kind(node: Node) -> str | None:
    kind = node.type
    if any(word in kind for word in _FUNCTION_WORDS) and not kind.endswith(
        ("_call", "_expression", "_type", "_signature")
    ):
        return "function"
    if any(word in kind for word in _CONTAINER_WORDS) and kind.endswith(
        ("_definition", "_declaration", "_item", "_specifier")
    ):
        return "class"
    return None


def _unwrap(node: Node) -> Node:
    while node.type in _WRAPPER_FIELDS:
        field_name = _WRAPPER_FIELDS[node.type]
        inner = node.child_by_field_name(field_name) if field_name else None
        if inner is None:
            inner = next((c for c in reversed(node.named_children) if _kind(c)), None)
        if inner is None:
            return node
        node = inner
    return node


def _leading_comment_row(node: Node) -> int:
    """The first row of the comment lines directly above `node` (doc comments travel with it)."""
    row = node.start_point.row
    sibling = node.prev_named_sibling
    while sibling is not None and "comment" in sibling.type and sibling.end_point.row >= row - 1:
        row = sibling.start_point.row
        sibling = sibling.prev_named_sibling
    return row


def _header_end_row(definition: Node, lines: Sequence[str]) -> int:
    """Last row of the signature: through the body's first row if the body opens on it ("{")."""
    body = definition.child_by_field_name("body")
    if body is None:
        return definition.start_point.row
    row, column = body.start_point.row, body.start_point.column
    opens_mid_line = row < len(lines) and lines[row][:column].strip() != ""
    return row if opens_mid_line or row <= definition.start_point.row else row - 1


@dataclass(frozen=True)
class _Start:
    row: int  # first row of the chunk (leading comments included)
    header: tuple[int, int]  # absolute rows [a, b) always kept
    kind: str
    title_row: int  # the definition's own first line (after decorators), which names it


def _start_of(node: Node, lines: Sequence[str], kind: str) -> _Start:
    definition = _unwrap(node)
    first = _leading_comment_row(node)
    signature = node.start_point.row
    header = (signature, _header_end_row(definition, lines) + 1)
    return _Start(first, header, kind, definition.start_point.row)


def _members(container: Node) -> Iterable[Node]:
    body = container.child_by_field_name("body")
    if body is None:
        body = next(
            (c for c in container.named_children if c.type.endswith(("body", "_list"))), None
        )
    return body.named_children if body is not None else ()


def _tree_starts(root: Node, lines: Sequence[str]) -> list[_Start]:
    starts: list[_Start] = []
    for node in root.named_children:
        if "comment" in node.type:
            continue
        kind = _kind(_unwrap(node))
        if kind is None:
            # Small statements (imports, constants) stay with the chunk before them; a large
            # one (a main guard, a big literal) is a unit of its own.
            if node.end_point.row - node.start_point.row >= 2:
                starts.append(_start_of(node, lines, "block"))
            continue
        starts.append(_start_of(node, lines, kind))
        if kind == "class":
            # Methods are chunks of their own so a big class is not kept or dropped whole;
            # the class chunk keeps its header and fields.
            for member in _members(_unwrap(node)):
                member_kind = _kind(_unwrap(member))
                if member_kind is not None:
                    starts.append(_start_of(member, lines, member_kind))
    return starts


def _plain_starts(lines: Sequence[str]) -> list[_Start]:
    """Without a grammar: a paragraph that starts at column 0 after a blank line."""
    starts = []
    for row, line in enumerate(lines):
        top_level = line.strip() and not line[0].isspace()
        if top_level and (row == 0 or not lines[row - 1].strip()):
            starts.append(_Start(row, (row, row + 1), "block", row))
    return starts


def split_functions(
    path: str, text: str, language_id: str | None = None, tree: Tree | None = None
) -> list[Chunk]:
    """A file's text as function-level chunks that together spell the whole text, in order.

    With a tree-sitter grammar: top-level definitions, the methods of classes (impls,
    namespaces, ...) separately, leading comments attached to what they document, and other
    top-level lines grouped with the chunk before them. Without one: blank-line paragraphs
    that start at column 0. `tree`, the text's tree in that grammar where the caller has it,
    saves parsing again (only its rows are read, so how lone surrogates were encoded does
    not matter).
    """
    if "\x00" in text:
        log.info("not chunking %s: binary content", path)
        return []
    lines = split_lines(text)
    if not lines:
        return []
    spec = spec_for(path, language_id)
    ts_parser = parser(spec.name) if spec else None
    starts = None
    if ts_parser is not None:
        if tree is None:
            tree = ts_parser.parse(text.encode("utf-8", "surrogatepass"))
        starts = _tree_starts(tree.root_node, lines)
    if not starts:
        starts = _plain_starts(lines)
    return _chunks_from_starts(path, lines, starts, spec.name if spec else None)


def _chunks_from_starts(
    path: str, lines: Sequence[str], starts: Sequence[_Start], language: str | None
) -> list[Chunk]:
    by_row: dict[int, _Start] = {}
    for start in starts:
        by_row.setdefault(start.row, start)
    rows = sorted(by_row)
    if not rows or rows[0] > 0:
        before = lines[: rows[0]] if rows else lines
        if any(line.strip() for line in before) or not rows:
            by_row[0] = _Start(0, (0, 0), "module", 0)
            rows = [0, *rows]
        else:  # only blank lines before the first definition: they join it
            by_row[0] = by_row.pop(rows[0])
            rows[0] = 0
    chunks: list[Chunk] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        end = rows[i + 1] if i + 1 < len(rows) else len(lines)
        start = by_row[row]
        a, b = start.header
        header = (max(0, a - row), max(0, min(b, end) - row))
        title = _title(lines, start, row, end)
        n = seen.get(title, 0)
        seen[title] = n + 1
        chunks.append(
            Chunk(
                key=f"{path}::{title}" + (f"#{n}" if n else ""),
                path=path,
                text="".join(lines[row:end]),
                kind=start.kind,
                start_line=row,
                header=header,
                language=language,
                last=i + 1 == len(rows),
            )
        )
    return chunks


def _title(lines: Sequence[str], start: _Start, row: int, end: int) -> str:
    if start.kind == "module":
        return "<module>"
    for line in lines[max(row, start.title_row) : end]:
        if line.strip():
            return " ".join(line.split())[:80]
    return f"<line {row}>"


# ---------------------------------------------------------------------------------------------
# Fine stage: segmentation, budget allocation and block selection (pure functions)


def spike_threshold(values: Sequence[float], k: float) -> float:
    """How far a line's NLL must rise above a neighbour to count as a spike: k standard
    deviations of the function's line NLLs.

    The reference code uses mean + k * std, a level, as the bar for a rise; under a model whose
    NLLs are high everywhere (a small or poorly matched one) no rise ever clears it and every
    function stays one block. A multiple of the spread alone does not depend on the level.
    """
    finite = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size < 3:
        return math.inf  # too little evidence to call anything a spike
    return float(k * finite.std())


def segment(nlls: Sequence[float], k: float = 1.0) -> list[range]:
    """Consecutive-line blocks of a function; a new block starts at each perplexity spike.

    A line spikes when its NLL is at least both neighbours' and exceeds one of them by the
    threshold (LongCodeZip's rule, with the threshold of `spike_threshold`). Lines without a score (NaN: blank lines) are skipped when
    looking for neighbours. The spike opens the new block: a line the model did not see
    coming is where a new step of the code begins (the reference cuts after it instead).
    """
    if not nlls:
        return []
    threshold = spike_threshold(nlls, k)
    scored = [i for i, v in enumerate(nlls) if math.isfinite(v)]
    cuts = []
    for j in range(1, len(scored) - 1):
        here, left, right = (nlls[scored[j + d]] for d in (0, -1, 1))
        rises, falls = here - left, here - right
        if rises >= 0 and falls >= 0 and max(rises, falls) >= threshold:
            cuts.append(scored[j])
    bounds = [0, *cuts, len(nlls)]
    return [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def knapsack(weights: Sequence[int], values: Sequence[float], capacity: int) -> list[int]:
    """Exact 0/1 knapsack by dynamic programming over integer capacity: the indices of a subset
    of greatest total value whose weights sum to at most `capacity`, in ascending order.

    O(len(weights) * capacity): token budgets of a function are a few thousand at most.
    """
    if len(weights) != len(values):
        raise ValueError("weights and values differ in length")
    if any(w < 0 for w in weights):
        raise ValueError("negative weight")
    capacity = max(0, int(capacity))
    best = np.zeros(capacity + 1)
    take = np.zeros((len(weights), capacity + 1), dtype=bool)
    free: list[int] = []
    for i, (w, v) in enumerate(zip(weights, values, strict=True)):
        if not v > 0:  # a worthless item never raises the total (NaN included)
            continue
        if w == 0:
            free.append(i)
            continue
        if w > capacity:
            continue
        candidate = best[: capacity + 1 - w] + v
        better = candidate > best[w:]
        take[i, w:] = better
        best[w:] = np.where(better, candidate, best[w:])
    chosen = set(free)
    room = capacity
    for i in range(len(weights) - 1, -1, -1):
        if take[i, room]:
            chosen.add(i)
            room -= weights[i]
    return sorted(chosen)


def allocate(sizes: Sequence[int], scores: Sequence[float], target: int, beta: float) -> list[int]:
    """Per-function token budgets summing to at most `target`, biased towards higher scores.

    LongCodeZip's importance-weighted allocation: with the global rate r = target / total and
    the min-max normalised score s in [0, 1], a function's rate is r * (1 + beta * (2s - 1)),
    clamped to [0, 1]. The reference rescales once; here the unclamped rates are rescaled
    until the budgets add up to the target (what clamping at 1 frees goes to the others).
    """
    total = sum(sizes)
    if total <= target:
        return list(sizes)
    if target <= 0:
        return [0] * len(sizes)
    rate = target / total
    finite = [s for s in scores if math.isfinite(s)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    spread = high - low
    norm = [(s - low) / spread if spread > 0 and math.isfinite(s) else 0.5 for s in scores]
    weights = [max(0.0, rate * (1 + beta * (2 * n - 1))) for n in norm]
    # Water-filling: find the factor f with sum(size * min(1, f * weight)) = target. Functions
    # that reach rate 1 are kept whole and leave the rest of the target to the others.
    whole: set[int] = set()
    factor = 0.0
    for _ in range(len(sizes) + 1):
        rest = sum(sizes[i] * weights[i] for i in range(len(sizes)) if i not in whole)
        if rest <= 0:
            break
        factor = (target - sum(sizes[i] for i in whole)) / rest
        grown = {i for i in range(len(sizes)) if factor * weights[i] >= 1.0}
        if grown <= whole:
            break
        whole |= grown
    rates = [1.0 if i in whole else min(1.0, factor * w) for i, w in enumerate(weights)]
    return [min(size, math.floor(size * r)) for size, r in zip(sizes, rates, strict=True)]


def budget_for_ratio(total_tokens: int, ratio: float) -> int:
    """The token budget that compresses `total_tokens` by `ratio` (e.g. 4.0 keeps a quarter)."""
    if ratio < 1.0:
        raise ValueError("a compression ratio is at least 1")
    return int(total_tokens / ratio)


_LINE_COMMENTS = {
    "python": "#",
    "javascript": "//",
    "typescript": "//",
    "tsx": "//",
    "go": "//",
    "rust": "//",
    "java": "//",
    "c": "//",
    "cpp": "//",
}


def elision_line(language: str | None, indent: str, marker: str = ELISION) -> str:
    prefix = _LINE_COMMENTS.get(language or "")
    return f"{indent}{prefix} {marker}\n" if prefix else f"{indent}{marker}\n"


_ELISION_LINE = re.compile(
    r"^[ \t]*(?:(?:" + "|".join(re.escape(p) for p in sorted(set(_LINE_COMMENTS.values()))) + r") )?"
    + re.escape(ELISION) + r"[ \t]*$",
    re.MULTILINE,
)


def before_elision(completion: str) -> str:
    """A completion up to a line that is only an elision mark: the model copying how material
    marks cut code (the end of a file shown in part reads `// …`), never code to insert."""
    found = _ELISION_LINE.search(completion)
    return completion if found is None else completion[: found.start()]


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ChunkReport:
    key: str
    score: float  # AMI with the query, nats per query token (NaN: not scored)
    rank: int  # 0 = most relevant
    kept: bool
    tokens_before: int
    tokens_after: int  # 0 when dropped
    fine_seconds: float  # time spent compressing this chunk's lines (0 if kept whole)


@dataclass(frozen=True)
class KeptChunk:
    chunk: Chunk
    text: str  # the chunk's text, or its compressed form with elision lines


@dataclass(frozen=True)
class Compressed:
    kept: tuple[KeptChunk, ...]  # in the order the chunks were given
    reports: tuple[ChunkReport, ...]  # one per chunk given, in that order
    budget: int
    tokens_before: int
    tokens_after: int  # sum of the kept texts' token counts, <= budget
    coarse_seconds: float
    fine_seconds: float
    model_calls: int  # scorer batches run; 0 when everything came from the caches


# ---------------------------------------------------------------------------------------------
# Caches

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def drop(self, match: Callable[[K], bool]) -> None:
        for key in [k for k in self._items if match(k)]:
            del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=_HASH_BYTES).digest()


# ---------------------------------------------------------------------------------------------
# The compressor

FineImportance = Literal["ami", "contrastive"]


@dataclass
class _Run:
    """Per-call bookkeeping: cancellation and how many model calls were needed."""

    should_stop: Callable[[], bool] | None
    model_calls: int = 0

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise CompressionCancelled


@dataclass(frozen=True)
class _Block:
    lines: range
    forced: bool  # header lines, always kept


@dataclass
class Compressor:
    """Two-stage LongCodeZip compression with scores cached across calls.

    fine_ratio       share of the coarse selection the fine stage keeps; the coarse budget is
                     budget / fine_ratio (paper and reference: 0.5 or 0.8)
    beta             how strongly function rank skews per-function budgets (0: uniform)
    spike_k          a spike rises spike_k standard deviations above a neighbour
    min_fine_lines   functions with fewer non-blank lines are kept whole or dropped whole
    fine_importance  "ami": each block's AMI with the query, one model call per block (the
                     paper); "contrastive": how much the query lowers each line's NLL, one
                     call per function (cheaper on a CPU)
    batch_size       scorer pairs per call; `should_stop` is checked between calls
    """

    scorer: Scorer
    fine_ratio: float = 0.5
    beta: float = 0.5
    spike_k: float = 1.0
    min_fine_lines: int = 5
    fine_importance: FineImportance = "ami"
    batch_size: int = 4
    cache_size: int = 4096
    marker: str = ELISION
    _ami: LRU[tuple[bytes, bytes], float] = field(init=False, repr=False)
    _base: LRU[bytes, float] = field(init=False, repr=False)
    _lines: LRU[tuple[bytes, bytes], tuple[float, ...]] = field(init=False, repr=False)
    _tokens: LRU[bytes, int] = field(init=False, repr=False)
    _paths: dict[str, set[bytes]] = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.fine_ratio <= 1:
            raise ValueError("fine_ratio must be in (0, 1]")
        self._ami = LRU(self.cache_size)
        self._base = LRU(256)
        self._lines = LRU(self.cache_size)
        self._tokens = LRU(self.cache_size * 4)
        self._paths = {}
        self._lock = threading.Lock()

    # -- public ---------------------------------------------------------------------------

    def compress(
        self,
        chunks: Sequence[Chunk],
        query: str,
        budget_tokens: int,
        should_stop: Callable[[], bool] | None = None,
    ) -> Compressed:
        """Keep what matters most for `query` within `budget_tokens` (scorer's tokenizer).

        Raises CompressionCancelled when `should_stop()` turns true between model calls.
        """
        with self._lock:
            return self._compress(chunks, query, max(0, budget_tokens), _Run(should_stop))

    def invalidate(self, path: str) -> None:
        """Forget the scores of `path`'s chunks (their old contents will not come back)."""
        with self._lock:
            hashes = self._paths.pop(path, set())
            if hashes:
                self._ami.drop(lambda key: key[0] in hashes)
                self._lines.drop(lambda key: key[0] in hashes)

    # -- stages ---------------------------------------------------------------------------

    def _compress(self, chunks: Sequence[Chunk], query: str, budget: int, run: _Run) -> Compressed:
        started = time.perf_counter()
        for chunk in chunks:
            self._paths.setdefault(chunk.path, set()).add(content_hash(chunk.text))
        sizes = [self._count(chunk.text) for chunk in chunks]
        total = sum(sizes)
        if total <= budget:
            scores = [math.nan] * len(chunks)
            order = list(range(len(chunks)))
            texts: dict[int, str] = {i: c.text for i, c in enumerate(chunks)}
            return self._result(
                chunks, sizes, scores, order, texts, {}, budget, started, started, run
            )
        scores = self._coarse_scores(chunks, query, run)
        order = sorted(range(len(chunks)), key=lambda i: (-_finite(scores[i]), i))
        selected = self._select(order, sizes, min(total, int(budget / self.fine_ratio)))
        coarse_done = time.perf_counter()
        texts = {i: chunks[i].text for i in selected}
        fine_times: dict[int, float] = {}
        if sum(sizes[i] for i in selected) > budget:
            texts, fine_times = self._fine(chunks, sizes, scores, selected, query, budget, run)
        texts = self._fill(self._fit(texts, order, budget), order, sizes, chunks, budget)
        return self._result(
            chunks, sizes, scores, order, texts, fine_times, budget, started, coarse_done, run
        )

    def _select(self, order: Sequence[int], sizes: Sequence[int], budget: int) -> list[int]:
        """In rank order, every chunk that still fits (a big one is skipped, not a stop)."""
        selected, used = [], 0
        for i in order:
            if used + sizes[i] <= budget:
                selected.append(i)
                used += sizes[i]
        return selected

    def _coarse_scores(self, chunks: Sequence[Chunk], query: str, run: _Run) -> list[float]:
        if not query.strip():
            return [0.0] * len(chunks)  # nothing to rank against: original order wins ties
        return self._amis([c.text for c in chunks], query, run)

    def _amis(self, texts: Sequence[str], query: str, run: _Run) -> list[float]:
        """AMI(text, query) = NLL(query) - NLL(query | text) for each text, cached."""
        q = content_hash(query)
        base = self._base.get(q)
        if base is None:
            (base,) = self._score(run, self.scorer.nll_batch, [(query, "")])
            self._base.put(q, base)
        keys = [(content_hash(t), q) for t in texts]
        missing = sorted(
            {k: t for k, t in zip(keys, texts, strict=True) if self._ami.get(k) is None}.items()
        )
        for begin in range(0, len(missing), self.batch_size):
            group = missing[begin : begin + self.batch_size]
            nlls = self._score(run, self.scorer.nll_batch, [(query, t) for _, t in group])
            for (key, _), nll in zip(group, nlls, strict=True):
                self._ami.put(key, base - nll)
        return [_or_nan(self._ami.get(k)) for k in keys]

    def _line_nlls(self, texts: Sequence[str], context: str, run: _Run) -> list[tuple[float, ...]]:
        c = content_hash(context)
        keys = [(content_hash(t), c) for t in texts]
        missing = sorted(
            {k: t for k, t in zip(keys, texts, strict=True) if self._lines.get(k) is None}.items()
        )
        for begin in range(0, len(missing), self.batch_size):
            group = missing[begin : begin + self.batch_size]
            pairs = [(t, context) for _, t in group]
            for (key, _), values in zip(
                group, self._score(run, self.scorer.line_nll_batch, pairs), strict=True
            ):
                self._lines.put(key, tuple(values))
        return [self._lines.get(k) or () for k in keys]

    def _fine(
        self,
        chunks: Sequence[Chunk],
        sizes: Sequence[int],
        scores: Sequence[float],
        selected: Sequence[int],
        query: str,
        budget: int,
        run: _Run,
    ) -> tuple[dict[int, str], dict[int, float]]:
        small = [i for i in selected if _code_lines(chunks[i].text) < self.min_fine_lines]
        large = [i for i in selected if i not in small]
        texts = {i: chunks[i].text for i in small}
        room = budget - sum(sizes[i] for i in small)
        budgets = allocate([sizes[i] for i in large], [scores[i] for i in large], room, self.beta)
        times: dict[int, float] = {}
        for i, share in zip(large, budgets, strict=True):
            began = time.perf_counter()
            text: str | None = chunks[i].text
            if share < sizes[i]:
                text = self._compress_function(chunks[i], query, share, run)
            if text is not None:
                texts[i] = text
            times[i] = time.perf_counter() - began
        return texts, times

    def _compress_function(self, chunk: Chunk, query: str, budget: int, run: _Run) -> str | None:
        """The chunk cut down to `budget` tokens, or None if even its header does not fit."""
        lines = split_lines(chunk.text)
        (nlls,) = self._line_nlls([chunk.text], "", run)
        if len(nlls) != len(lines):  # a scorer that disagrees on lines: segment nothing
            nlls = (math.nan,) * len(lines)
        blocks = _with_header(segment(list(nlls), self.spike_k), chunk.header, len(lines))
        texts = ["".join(lines[b.lines.start : b.lines.stop]) for b in blocks]
        values = self._block_values(blocks, texts, nlls, chunk.text, query, run)
        weights = [self._count(t) for t in texts]
        forced = sum(w for w, b in zip(weights, blocks, strict=True) if b.forced)
        optional = [i for i, b in enumerate(blocks) if not b.forced]
        # Elision lines and BPE merges across joins cost a few tokens the block weights do not
        # show: render, count exactly, and shrink the knapsack by the overshoot until it fits.
        capacity = budget - forced
        for _ in range(6):
            picked = knapsack(
                [weights[i] for i in optional], [values[i] for i in optional], capacity
            )
            keep = {i for i, b in enumerate(blocks) if b.forced} | {optional[j] for j in picked}
            text = self._render(chunk, lines, blocks, keep)
            over = self._count(text) - budget
            if over <= 0:
                return text
            if capacity <= 0:
                return None
            capacity -= over
        return None

    def _block_values(
        self,
        blocks: Sequence[_Block],
        texts: Sequence[str],
        nlls: Sequence[float],
        chunk_text: str,
        query: str,
        run: _Run,
    ) -> list[float]:
        """Each block's importance, shifted so every block is worth something: the knapsack
        then fills the budget, preferring the blocks that matter most."""
        if not query.strip():
            raw = [0.0] * len(blocks)
        elif self.fine_importance == "ami":
            raw = self._amis(texts, query, run)
        else:
            (conditioned,) = self._line_nlls([chunk_text], query, run)
            gains = [a - b for a, b in zip(nlls, conditioned, strict=True)]
            raw = [_nanmean([gains[i] for i in b.lines]) for b in blocks]
        finite = [v for v, b in zip(raw, blocks, strict=True) if math.isfinite(v) and not b.forced]
        low = min(finite, default=0.0)
        spread = (max(finite, default=0.0) - low) or 1.0
        return [((v - low) / spread if math.isfinite(v) else 0.0) + 0.01 for v in raw]

    def _render(
        self, chunk: Chunk, lines: Sequence[str], blocks: Sequence[_Block], keep: set[int]
    ) -> str:
        out: list[str] = []
        for i, block in enumerate(blocks):
            part = lines[block.lines.start : block.lines.stop]
            if i in keep:
                if out and not out[-1].endswith("\n"):
                    out[-1] += "\n"
                out.extend(part)
            elif i == 0 or i - 1 in keep:  # one elision line per run of dropped blocks
                indent = next((_indent(line) for line in part if line.strip()), "")
                if out and not out[-1].endswith("\n"):
                    out[-1] += "\n"
                out.append(elision_line(chunk.language, indent, self.marker))
        return "".join(out)

    def _fit(self, texts: dict[int, str], order: Sequence[int], budget: int) -> dict[int, str]:
        """Drop the lowest-ranked kept chunks while the exact total is over budget."""
        texts = dict(texts)
        for i in reversed(order):
            if sum(self._count(t) for t in texts.values()) <= budget:
                break
            texts.pop(i, None)
        return texts

    def _fill(
        self,
        texts: dict[int, str],
        order: Sequence[int],
        sizes: Sequence[int],
        chunks: Sequence[Chunk],
        budget: int,
    ) -> dict[int, str]:
        """Spend what the fine stage left (rounding, blocks too big for their share) on whole
        chunks the coarse stage passed over, in rank order; their scores are known already."""
        texts = dict(texts)
        used = sum(self._count(t) for t in texts.values())
        for i in order:
            if i not in texts and sizes[i] <= budget - used:
                texts[i] = chunks[i].text
                used += sizes[i]
        return texts

    # -- helpers --------------------------------------------------------------------------

    def _score(self, run: _Run, method: Callable[[list[tuple[str, str]]], list], pairs: list):
        run.check()
        run.model_calls += 1
        return method(pairs)

    def _count(self, text: str) -> int:
        key = content_hash(text)
        count = self._tokens.get(key)
        if count is None:
            count = self.scorer.count_tokens(text)
            self._tokens.put(key, count)
        return count

    def _result(
        self,
        chunks: Sequence[Chunk],
        sizes: Sequence[int],
        scores: Sequence[float],
        order: Sequence[int],
        texts: dict[int, str],
        fine_times: dict[int, float],
        budget: int,
        started: float,
        coarse_done: float,
        run: _Run,
    ) -> Compressed:
        rank = {i: r for r, i in enumerate(order)}
        after = {i: self._count(t) for i, t in texts.items()}
        reports = tuple(
            ChunkReport(
                key=c.key,
                score=scores[i],
                rank=rank[i],
                kept=i in texts,
                tokens_before=sizes[i],
                tokens_after=after.get(i, 0),
                fine_seconds=fine_times.get(i, 0.0),
            )
            for i, c in enumerate(chunks)
        )
        finished = time.perf_counter()
        return Compressed(
            kept=tuple(KeptChunk(chunks[i], texts[i]) for i in sorted(texts)),
            reports=reports,
            budget=budget,
            tokens_before=sum(sizes),
            tokens_after=sum(after.values()),
            coarse_seconds=coarse_done - started,
            fine_seconds=finished - coarse_done,
            model_calls=run.model_calls,
        )


def _with_header(blocks: Sequence[range], header: tuple[int, int], count: int) -> list[_Block]:
    """The blocks with the header lines cut out into a forced block of their own."""
    a, b = max(0, header[0]), min(count, header[1])
    out: list[_Block] = []
    for block in blocks:
        pieces = [
            (range(block.start, min(block.stop, a)), False),
            (range(max(block.start, a), min(block.stop, b)), True),
            (range(max(block.start, b), block.stop), False),
        ]
        out.extend(_Block(r, forced) for r, forced in pieces if len(r) > 0)
    return out


def _code_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


def _indent(line: str) -> str:
    match = re.match(r"[ \t]*", line)
    return match.group(0) if match else ""


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
