"""The location step of next-edit prediction: where the developer will likely edit next.

Candidates come from the edit history and the code's structure, each with the reason it was
found; the engine ranks them (the model's rewrite decides whether anything changes there):
- the places the repeat-edit proposer found (`context/repeat.py`);
- call sites of a function whose signature the last edit changed (and, for a method, calls
  through any object);
- other uses of a name the last edit introduced or removed;
- the lines just after and just before the last edit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from nextab.context.document import split_lines
from nextab.context.edits import (
    KEYWORDS,
    NAME,
    LineChange,
    Proposal,
    line_offsets,
    nearness,
    overlaps,
    token_changes,
    tokens,
)
from nextab.context.syntax import Snapshot

MAX_PROBED_LINES = 8
NEAR_LINES = 3  # the lines around the last edit that form a candidate of their own


@dataclass(frozen=True)
class Location:
    start_line: int  # the lines [start_line, end_line) of the current text
    end_line: int
    score: float  # higher first; the sources' scales are set against each other below
    reason: str


def candidates(
    text: str,
    changes: Sequence[LineChange],
    tree: Snapshot | None = None,
    proposals: Sequence[Proposal] = (),
    limit: int = 8,
) -> list[Location]:
    """Where to look for the next edit, best first, without overlaps."""
    if not changes:
        return []
    last = changes[-1]
    lines = split_lines(text)
    found = [
        *(Location(p.start_line, p.end_line, 4.0 + p.score / 10, p.reason or p.source) for p in proposals),
        *_call_sites(text, lines, last, tree),
        *_name_uses(lines, last),
        *_near(lines, last),
    ]
    found.sort(key=lambda location: -location.score)
    kept: list[Location] = []
    for location in found:
        if not any(overlaps(location.start_line, location.end_line, k.start_line, k.end_line) for k in kept):
            kept.append(location)
        if len(kept) == limit:
            break
    return kept


def _changed_function(text: str, change: LineChange, tree: Snapshot | None) -> str | None:
    """The name of the function whose header the change touched, if it touched one."""
    if tree is None or tree.text != text:
        return None
    offsets = line_offsets(text)
    if change.line >= len(offsets) - 1:
        return None
    start = offsets[change.line]
    end = offsets[min(change.new_end, len(offsets) - 1)]
    # Probe inside each changed line's code: at a line's very first byte the tree's path does
    # not always reach into the definition that starts there.
    for line in range(change.line, min(change.new_end, change.line + MAX_PROBED_LINES, len(offsets) - 1)):
        body = text[offsets[line] : offsets[line + 1]]
        probe = offsets[line] + len(body) - len(body.lstrip()) + 1
        for scope in reversed(tree.scopes_at(min(probe, len(text)))):
            if scope.kind in ("function", "method") and scope.name:
                header_end = scope.start + len(scope.header)
                if scope.start < end and start <= header_end:
                    return scope.name
    return None


def _call_sites(text: str, lines: list[str], change: LineChange, tree: Snapshot | None) -> list[Location]:
    name = _changed_function(text, change, tree)
    if name is None:
        return []
    call = re.compile(rf"(?<![\w$]){re.escape(name)}\s*\(")
    definition = re.compile(rf"\b(def|function|fn|func)\s+{re.escape(name)}\b")
    return [
        Location(number, number + 1, 3.0 + nearness(number, change), f"calls {name}(), whose signature changed")
        for number, line in enumerate(lines)
        if not change.line <= number < change.new_end and call.search(line) and not definition.search(line)
    ]


def introduced_and_removed(change: LineChange) -> tuple[set[str], set[str]]:
    """Identifiers the change added (not in the old lines) and took away (not in the new)."""
    old = tokens(change.old)
    new = tokens(change.new)
    added, removed = set(), set()
    for _, i1, i2, j1, j2 in token_changes(old, new):
        added.update(t for t in new[j1:j2] if _is_name(t))
        removed.update(t for t in old[i1:i2] if _is_name(t))
    return added - set(old), removed - set(new)


def _is_name(token: str) -> bool:
    return bool(NAME.match(token)) and len(token) > 1 and token.lower() not in KEYWORDS


def _name_uses(lines: list[str], change: LineChange) -> list[Location]:
    added, removed = introduced_and_removed(change)
    names = sorted(added | removed)
    if not names:
        return []
    word = re.compile(r"(?<![\w$])(" + "|".join(map(re.escape, names)) + r")(?![\w$])")
    found = []
    for number, line in enumerate(lines):
        if change.line <= number < change.new_end:
            continue
        match = word.search(line)
        if match:
            verb = "removed" if match.group(1) in removed else "introduced"
            found.append(
                Location(number, number + 1, 2.0 + nearness(number, change),
                         f"uses {match.group(1)}, which the last edit {verb}")
            )
    return found


def _near(lines: list[str], change: LineChange) -> list[Location]:
    after_start = min(change.new_end, len(lines))
    after_end = min(len(lines), after_start + NEAR_LINES)
    before_end = max(0, change.line)
    before_start = max(0, before_end - NEAR_LINES)
    found = []
    if after_end > after_start:
        found.append(Location(after_start, after_end, 1.5, "just after the last edit"))
    if before_end > before_start:
        found.append(Location(before_start, before_end, 1.2, "just before the last edit"))
    # The edited lines themselves: the edit may not be finished.
    found.append(Location(change.line, max(change.line + 1, change.new_end), 1.0, "the last edit"))
    return found
