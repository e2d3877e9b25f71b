"""Candidate lines for the next edit, and what a learned ranker reads about each.

The location step asks: after the edits so far, which line will the developer change next?
Every line within `WINDOW` lines of the cursor is a candidate, and so are lines that use a name
the last edit introduced or removed, lines whose names are like the last edit's, import lines
(a new name often needs one), every place the repeat-edit proposer found, and the lines around
the earlier edits. Each candidate gets a row of numbers (`FEATURES`): where it
sits against the cursor and the edits, what it shares with the last edit, what kind of line it
is, and what the history looks like. The ranker that scores the rows (`nextab/location_ranker.py`)
is trained on mined commits (`training/train_location_ranker.py`); this module only describes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nextab.context.document import split_lines
from nextab.context.edits import KEYWORDS, LineChange, Proposal
from nextab.context.locations import introduced_and_removed

WINDOW = 40  # lines above and below the cursor that are always candidates
NAME_USES = 60  # at most this many other lines using the last edit's names, nearest first
ALIKE = 30  # at most this many lines whose names are most like the last edit's
IMPORTS = 20
AROUND_EARLIER = 2  # lines around each earlier edit
MAX_CANDIDATES = 256
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IMPORT_STARTS = ("import", "from", "require", "use", "#include")
_HEADER = re.compile(r"\s*(async\s+def|def|class|function|fn|func|public|private|protected|static)\b")

# What kind of line a candidate is, from its first word: an ordinal the trees split on.
_KINDS = (
    (re.compile(r"(async\s+)?(def|function|fn|func)\b"), 1),
    (re.compile(r"class\b"), 2),
    (re.compile(r"@"), 3),
    (re.compile(r"(import|from|require|use|#include)\b"), 4),
    (re.compile(r"return\b"), 5),
    (re.compile(r"(#|//|/\*|\*)"), 6),
    (re.compile(r"(if|elif|else|for|while|try|except|finally|with|switch|case)\b"), 7),
    (re.compile(r"[\"']"), 8),
    (re.compile(r"[)\]}]"), 9),
)

FEATURES = (
    "distance", "log_distance", "below", "from_last_start", "from_last_end", "in_last",
    "from_earlier", "in_earlier", "blank", "indent", "indent_vs_cursor", "indent_vs_last",
    "removed_names", "added_names", "shared_names", "rarity", "like_old", "like_new",
    "proposed", "proposal_score", "kind", "same_scope", "edits", "last_shape", "last_size",
    "trend", "with_trend", "length", "just_after_last", "just_before_last", "removed_left",
    "name_lines", "earlier_removed_names", "earlier_added_names", "like_earlier",
)  # fmt: skip


@dataclass(frozen=True)
class Candidates:
    lines: tuple[int, ...]  # 0-based lines of the current text
    rows: np.ndarray  # float32, one row of FEATURES per line


def _indent(line: str) -> int:
    stripped = line.lstrip(" \t")
    head = line[: len(line) - len(stripped)]
    return head.count(" ") + 4 * head.count("\t")


def _names(text: str) -> set[str]:
    return {n for n in _IDENT.findall(text) if len(n) > 1 and n.lower() not in KEYWORDS}


def _kind(line: str) -> int:
    stripped = line.lstrip()
    for pattern, kind in _KINDS:
        if pattern.match(stripped):
            return kind
    return 0


def _scopes(lines: Sequence[str]) -> list[int]:
    """Per line, the line of the definition header that encloses it (-1 at the top level), by
    indentation: cheap, and the same for every language that indents its blocks."""
    enclosing: list[int] = []
    stack: list[tuple[int, int]] = []  # (indent, header line)
    for number, line in enumerate(lines):
        if not line.strip():
            enclosing.append(stack[-1][1] if stack else -1)
            continue
        indent = _indent(line)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        enclosing.append(stack[-1][1] if stack else -1)
        if _HEADER.match(line):
            stack.append((indent, number))
    return enclosing


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def candidates(
    text: str,
    changes: Sequence[LineChange],
    cursor_line: int,
    proposals: Sequence[Proposal] = (),
) -> Candidates:
    """The candidate lines and their features; none without an edit in this document."""
    lines = split_lines(text)
    if not changes or not lines:
        return Candidates((), np.zeros((0, len(FEATURES)), dtype=np.float32))
    last = changes[-1]
    earlier = changes[:-1]
    count = len(lines)
    cursor_line = min(max(cursor_line, 0), count - 1)
    added, removed = introduced_and_removed(last)
    watched = added | removed
    name_lines: list[int] = []
    if watched:
        word = re.compile(r"(?<![\w$])(" + "|".join(map(re.escape, sorted(watched))) + r")(?![\w$])")
        name_lines = [n for n, line in enumerate(lines) if word.search(line)]
    proposed = {p.start_line: p.score for p in proposals}
    old_names, new_names = _names(last.old), _names(last.new)
    last_end = last.new_end
    ends = [c.new_end for c in earlier]
    spans = [(c.line, max(end, c.line + 1)) for c, end in zip(earlier, ends, strict=True)]
    chosen = set(range(max(0, cursor_line - WINDOW), min(count, cursor_line + WINDOW + 1)))
    chosen.update(sorted(name_lines, key=lambda n: abs(n - cursor_line))[:NAME_USES])
    chosen.update(n for score, n in _alike(lines, old_names, new_names, last.line, last_end)[:ALIKE] if score >= 0.3)
    # Files are long and imports few: the cheap prefix test first.
    imports = [n for n, line in enumerate(lines) if line.lstrip().startswith(_IMPORT_STARTS) and _kind(line) == 4]
    chosen.update(imports[:IMPORTS])
    chosen.update(line for line in proposed if 0 <= line < count)
    for change, end in zip(earlier, ends, strict=True):
        chosen.update(range(max(0, change.line - AROUND_EARLIER), min(count, end + AROUND_EARLIER)))
    picked = sorted(sorted(chosen, key=lambda n: abs(n - cursor_line))[:MAX_CANDIDATES])
    names_of = {n: _names(lines[n]) for n in picked}

    scopes = _scopes(lines)
    shared = (old_names | new_names) - watched
    frequency = {name: 0 for name in watched}
    for number in name_lines:
        for name in _names(lines[number]) & watched:
            frequency[name] += 1
    last_lines = split_lines(last.new) or split_lines(last.old)
    last_indent = _indent(last_lines[0]) if last_lines else 0
    cursor_indent = _indent(lines[cursor_line])
    shape = 1.0 if not last.old else 2.0 if not last.new else 0.0
    size = max(len(split_lines(last.old)), len(split_lines(last.new)))
    trend = 0.0
    if earlier:
        trend = float(np.sign(last.line - earlier[-1].line))
    removed_left = float(any(not last.line <= n < last_end for n in name_lines if removed & _names(lines[n])))
    # The edits before the last belong to the same piece of work: what they renamed or added
    # may still be wanted elsewhere, and lines like them may be next.
    earlier_added: set[str] = set()
    earlier_removed: set[str] = set()
    earlier_names = []
    for change in earlier[-8:]:
        added_there, removed_there = introduced_and_removed(change)
        earlier_added |= added_there
        earlier_removed |= removed_there
        earlier_names += [_names(change.old), _names(change.new)]

    rows = np.zeros((len(picked), len(FEATURES)), dtype=np.float32)
    for row, number in enumerate(picked):
        line = lines[number]
        names = names_of[number]
        distance = number - cursor_line
        from_earlier = min((_gap(number, start, end) for start, end in spans), default=100)
        matched = names & watched
        rows[row] = (
            distance,
            math.log1p(abs(distance)),
            float(distance > 0),
            number - last.line,
            number - last_end,
            float(last.line <= number < last_end),
            min(from_earlier, 100),
            float(from_earlier == 0),
            float(not line.strip()),
            _indent(line) if line.strip() else -1,
            (_indent(line) - cursor_indent) if line.strip() else 0,
            (_indent(line) - last_indent) if line.strip() else 0,
            len(names & removed),
            len(names & added),
            len(names & shared),
            max((1.0 / max(1, frequency[n]) for n in matched), default=0.0),
            _jaccard(names, old_names),
            _jaccard(names, new_names),
            float(number in proposed),
            proposed.get(number, 0.0),
            _kind(line),
            float(scopes[number] == scopes[cursor_line]),
            len(changes),
            shape,
            min(size, 50),
            trend,
            trend * float(np.sign(distance)),
            min(len(line.strip()), 200),
            float(number == last_end),
            float(number == last.line - 1),
            removed_left,
            min(len(name_lines), 100),
            len(names & earlier_removed),
            len(names & earlier_added),
            max((_jaccard(names, e) for e in earlier_names), default=0.0),
        )
    return Candidates(tuple(picked), rows)


def _gap(line: int, start: int, end: int) -> int:
    """Lines between `line` and the lines [start, end) a change now occupies (0 inside them)."""
    if start <= line < end:
        return 0
    return start - line if line < start else line - end + 1


def _alike(
    lines: Sequence[str], old_names: set[str], new_names: set[str], skip_start: int, skip_end: int
) -> list[tuple[float, int]]:
    """Lines outside [skip_start, skip_end) by how alike their names are to the last edit's
    old or new names, best first. Only lines holding one of those names as text can be alike:
    a substring test finds them before any line is split into names."""
    mentioned = old_names | new_names
    if not mentioned:
        return []
    holds = re.compile("|".join(map(re.escape, sorted(mentioned, key=len, reverse=True))))
    scored = []
    for n, line in enumerate(lines):
        if not skip_start <= n < skip_end and holds.search(line):
            names = _names(line)
            scored.append((max(_jaccard(names, old_names), _jaccard(names, new_names)), n))
    return sorted(scored, reverse=True)
