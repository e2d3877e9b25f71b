"""The repeat-edit proposer: where the last edit is a transformation that applies verbatim
elsewhere, propose it there, without a model (cheap, and exact when it applies).

Three shapes, tried on the latest edit:
- a rename: one identifier became another; every other use of the old name follows;
- a repeated line: the edited lines stand elsewhere too (up to indentation); they change alike;
- a repeated change: a small change inside a line (an added argument, a call wrapped, an
  operator swapped), found elsewhere with the same code on both sides of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from nextab.context.document import split_lines
from nextab.context.edits import (
    KEYWORDS,
    NAME,
    LineChange,
    Proposal,
    nearness,
    overlaps,
    token_changes,
    tokens,
)

# Code tokens of unchanged context kept around a repeated change: three on the left take in
# the called name of an added argument (`log(total` + `, 'x'`), two on the right close it.
LEFT_ANCHOR = 3
RIGHT_ANCHOR = 2
MIN_PATTERN_CHARS = 6  # a shorter pattern (say `a)`) matches too much to repeat blindly
MAX_REPEATED_LINES = 6

# Which source wins when two propose the same lines.
PRIORITY = {"rename": 3.0, "repeat-line": 2.0, "repeat-change": 1.0}

IsCode = Callable[[int], bool]  # is this offset of the current text in code (not a string or comment)?


def propose(
    text: str, changes: Sequence[LineChange], limit: int = 20, is_code: IsCode | None = None
) -> list[Proposal]:
    """Proposals from the latest change, best first: by shape, then by nearness to it."""
    if not changes:
        return []
    last = changes[-1]
    lines = split_lines(text)
    found: dict[int, Proposal] = {}
    for proposal in (
        *_renames(lines, last, is_code),
        *_repeated_lines(lines, last),
        *_repeated_changes(lines, last),
    ):
        held = found.get(proposal.start_line)
        if held is None or proposal.score > held.score:
            found[proposal.start_line] = proposal
    ranked = sorted(found.values(), key=lambda p: -p.score)
    return _without_overlaps(ranked)[:limit]


def _score(source: str, line: int, change: LineChange) -> float:
    return PRIORITY[source] + nearness(line, change)


# -- a rename ------------------------------------------------------------------------------------


def renamed(change: LineChange) -> tuple[str, str] | None:
    """(old name, new name) if the change swapped one identifier for another, everywhere it
    touched, and nothing else."""
    old, new = tokens(change.old), tokens(change.new)
    pairs = set()
    for tag, i1, i2, j1, j2 in token_changes(old, new):
        if tag != "replace" or i2 - i1 != 1 or j2 - j1 != 1:
            return None
        pairs.add((old[i1], new[j1]))
    if len(pairs) != 1:
        return None
    before, after = pairs.pop()
    if not (NAME.match(before) and NAME.match(after)) or before.lower() in KEYWORDS:
        return None
    return before, after


def _renames(lines: list[str], change: LineChange, is_code: IsCode | None) -> list[Proposal]:
    names = renamed(change)
    if names is None:
        return []
    before, after = names
    word = re.compile(rf"(?<![\w$]){re.escape(before)}(?![\w$])")
    proposals = []
    offset = 0
    for number, line in enumerate(lines):
        starts = [m.start() for m in word.finditer(line)]
        if is_code is not None:
            starts = [s for s in starts if is_code(offset + s)]
        offset += len(line)
        if not starts or change.line <= number < change.new_end:
            continue
        new = line
        for start in reversed(starts):
            new = new[:start] + after + new[start + len(before) :]
        proposals.append(
            Proposal(number, number + 1, new, _score("rename", number, change), "rename",
                     f"renamed {before} to {after}")
        )
    return proposals


# -- a repeated line -----------------------------------------------------------------------------


def _repeated_lines(lines: list[str], change: LineChange) -> list[Proposal]:
    old, new = split_lines(change.old), split_lines(change.new)
    old_body = [line.strip() for line in old]
    if not old or len(old) > MAX_REPEATED_LINES or sum(len(s) for s in old_body) < MIN_PATTERN_CHARS:
        return []
    if not any(old_body) or [line.strip() for line in new] == old_body:
        return []
    base = _indent(old[0])
    proposals = []
    for number in range(len(lines) - len(old) + 1):
        if change.line - len(old) < number < change.new_end:
            continue
        if [line.strip() for line in lines[number : number + len(old)]] != old_body:
            continue
        here = _indent(lines[number])
        moved = [here + line[len(base) :] if line.startswith(base) else line for line in new]
        text = "".join(_line_end_like(line, lines[number]) for line in moved)
        proposals.append(
            Proposal(number, number + len(old), text, _score("repeat-line", number, change),
                     "repeat-line", "the same lines were just edited")
        )
    return proposals


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _line_end_like(line: str, model: str) -> str:
    body = line.rstrip("\r\n")
    end = model[len(model.rstrip("\r\n")) :] or line[len(body) :]
    return body + end


# -- a repeated change ---------------------------------------------------------------------------


def pattern(change: LineChange) -> tuple[str, str] | None:
    """(before, after): the one region the change altered with `ANCHOR_TOKENS` code tokens of
    unchanged context on each side, within one line; None if the change is not one such region
    or the pattern is too short to be told apart from chance."""
    old_lines, new_lines = split_lines(change.old), split_lines(change.new)
    if len(old_lines) != 1 or len(new_lines) != 1:
        return None
    old, new = tokens(old_lines[0].rstrip("\r\n")), tokens(new_lines[0].rstrip("\r\n"))
    ops = token_changes(old, new)
    if not ops:
        return None
    i1, i2 = ops[0][1], ops[-1][2]
    j1, j2 = ops[0][3], ops[-1][4]
    left = _anchor(old[:i1], LEFT_ANCHOR, reverse=True)
    right = _anchor(old[i2:], RIGHT_ANCHOR, reverse=False)
    before = "".join(old[i1 - left : i2 + right])
    after = "".join(new[j1 - left : j2 + right])
    if len(before.strip()) < MIN_PATTERN_CHARS or not re.search(r"[A-Za-z_]", before):
        return None
    return before, after


def _anchor(tokens: list[str], wanted: int, reverse: bool) -> int:
    """How many tokens next to the change make `wanted` code tokens of context (whitespace
    between them included, whitespace beyond them not: indentation must not have to match)."""
    count = taken = 0
    sequence = list(reversed(tokens) if reverse else tokens)
    for token in sequence:
        if count == wanted:
            break
        taken += 1
        if not token.isspace():
            count += 1
    while taken and sequence[taken - 1].isspace():
        taken -= 1
    return taken


def _repeated_changes(lines: list[str], change: LineChange) -> list[Proposal]:
    found = pattern(change)
    if found is None:
        return []
    before, after = found
    proposals = []
    for number, line in enumerate(lines):
        if change.line <= number < change.new_end or before not in line:
            continue
        if before in after and after in line:
            continue  # already changed here
        new = line.replace(before, after)
        proposals.append(
            Proposal(number, number + 1, new, _score("repeat-change", number, change),
                     "repeat-change", f"{before.strip()} -> {after.strip()}")
        )
    return proposals


def _without_overlaps(ranked: list[Proposal]) -> list[Proposal]:
    kept: list[Proposal] = []
    for proposal in ranked:
        if not any(overlaps(proposal.start_line, proposal.end_line, k.start_line, k.end_line) for k in kept):
            kept.append(proposal)
    return kept
