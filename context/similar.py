"""Code similar to the code at the cursor: BM25 over the identifiers of workspace chunks.

Identifiers carry most of what makes two pieces of code related (the names of the things they
use), so a chunk is a bag of its identifiers and their sub-words (`parse_header` also counts as
`parse` and `header`, `readLine` as `read` and `line`). This is the retrieval Continue and
llama.vscode use for "similar code"; it costs microseconds per query on a few thousand chunks
and is updated per file as files change.
"""

from __future__ import annotations

import math
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SUBWORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
# Words so common in code that they say nothing about what a chunk is about.
_STOP = frozenset(
    {
        "self", "this", "cls", "def", "return", "if", "else", "elif", "for", "while", "in", "is",
        "not", "and", "or", "none", "true", "false", "null", "import", "from", "as", "class",
        "function", "const", "let", "var", "new", "public", "private", "static", "void", "int",
        "str", "the", "a", "an", "of", "to",
    }
)


def terms(text: str) -> Counter[str]:
    """The bag of identifier terms BM25 matches on."""
    bag: Counter[str] = Counter()
    for identifier in _IDENTIFIER.findall(text):
        lowered = identifier.lower()
        if lowered in _STOP or len(lowered) < 2:
            continue
        bag[lowered] += 1
        subwords = [w.lower() for w in _SUBWORD.findall(identifier)]
        if len(subwords) > 1:
            for word in subwords:
                if len(word) > 1 and word not in _STOP:
                    bag[word] += 1
    return bag


@dataclass(frozen=True)
class Passage:
    """A piece of a file that can be retrieved: whole function-level chunks where possible."""

    path: str
    start_line: int  # 0-based, inclusive
    end_line: int  # exclusive
    text: str


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float


class SimilarityIndex:
    """BM25 (Okapi, k1=1.2, b=0.75) over passages, replaceable per file, thread-safe."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._lock = threading.Lock()
        self._by_path: dict[str, list[tuple[Passage, Counter[str], int]]] = {}
        self._document_frequency: Counter[str] = Counter()
        self._passages = 0
        self._total_length = 0

    def __len__(self) -> int:
        return self._passages

    def set_file(self, path: str, passages: Iterable[Passage]) -> None:
        entries = []
        for passage in passages:
            bag = terms(passage.text)
            entries.append((passage, bag, sum(bag.values())))
        with self._lock:
            self._drop(path)
            self._by_path[path] = entries
            for _, bag, length in entries:
                self._document_frequency.update(bag.keys())
                self._passages += 1
                self._total_length += length

    def remove_file(self, path: str) -> None:
        with self._lock:
            self._drop(path)

    def _drop(self, path: str) -> None:
        for _, bag, length in self._by_path.pop(path, []):
            self._document_frequency.subtract(bag.keys())
            self._passages -= 1
            self._total_length -= length
        # Counter.subtract leaves zeros behind; they would skew nothing but cost memory.
        if len(self._document_frequency) > 4 * max(1, self._passages):
            self._document_frequency = +self._document_frequency

    def search(
        self, query: str, limit: int = 10, exclude: Iterable[str] = (), min_score: float = 0.0
    ) -> list[Hit]:
        wanted = terms(query)
        if not wanted:
            return []
        skip = set(exclude)
        with self._lock:
            count = self._passages
            if count == 0:
                return []
            average = self._total_length / count or 1.0
            idf = {
                term: math.log(1 + (count - df + 0.5) / (df + 0.5))
                for term in wanted
                if (df := self._document_frequency.get(term, 0)) > 0
            }
            if not idf:
                return []
            # The scan runs outside the lock: over a 10,000-file pool it takes long enough to
            # stall the editor's didOpen (set_file) behind it. A file's entries are replaced,
            # never changed in place, so the snapshot stays consistent.
            files = list(self._by_path.items())
        hits = []
        for path, entries in files:
            if path in skip:
                continue
            for passage, bag, length in entries:
                score = self._score(bag, length, average, idf)
                if score > min_score:
                    hits.append(Hit(passage, score))
        hits.sort(key=lambda h: (-h.score, h.passage.path, h.passage.start_line))
        return hits[:limit]

    def _score(
        self, bag: Counter[str], length: int, average: float, idf: dict[str, float]
    ) -> float:
        norm = self.k1 * (1 - self.b + self.b * length / average)
        score = 0.0
        for term, weight in idf.items():
            tf = bag.get(term, 0)
            if tf:
                score += weight * tf * (self.k1 + 1) / (tf + norm)
        return score
