"""Edits as next-edit prediction sees them: whole lines of the current text.

The edit history keeps character offsets into the text each edit was made on; predicting the
next edit needs the recent edits where they now are (`LineChange`) and yields replacements of
whole lines of the current text (`Proposal`), which an editor gets as a minimal range edit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

from nextab.context.document import split_lines
from nextab.context.history import Edit
from nextab.context.syntax import changed_span

TOKEN = re.compile(r"[A-Za-z_]\w*|\d[\w.]*|\s+|\S")
NAME = re.compile(r"[A-Za-z_]\w*\Z")
# Words that look like names but are not worth following (an edit that adds `return` does not
# ask for the other returns to change).
KEYWORDS = frozenset({
    "and", "as", "assert", "async", "await", "break", "class", "const", "continue", "def", "del",
    "elif", "else", "except", "false", "finally", "for", "from", "function", "global", "if",
    "import", "in", "is", "lambda", "let", "nonlocal", "none", "not", "null", "or", "pass",
    "raise", "return", "self", "this", "true", "try", "var", "while", "with", "yield",
})  # fmt: skip


def tokens(text: str) -> list[str]:
    """Names, numbers, runs of whitespace and single other characters: fine enough to tell
    what an edit changed, coarse enough that `count` -> `total` is one change."""
    return TOKEN.findall(text)


def token_changes(old: list[str], new: list[str]) -> list[tuple[str, int, int, int, int]]:
    """difflib's opcodes between two token lists, the unchanged runs left out."""
    matcher = SequenceMatcher(None, old, new, autojunk=False)
    return [op for op in matcher.get_opcodes() if op[0] != "equal"]


@dataclass(frozen=True)
class LineChange:
    """Lines `old` became lines `new` (each with its line ends), which now start at `line`."""

    uri: str
    line: int  # 0-based, in the current text
    old: str
    new: str

    @property
    def new_end(self) -> int:
        """The line after the new lines, in the current text."""
        return self.line + len(split_lines(self.new))


@dataclass(frozen=True)
class Proposal:
    """Replace lines [start_line, end_line) of the current text by `new_text` (whole lines,
    each ending with a line end unless it is the text's last line)."""

    start_line: int
    end_line: int
    new_text: str
    score: float  # higher is likelier; comparable within one source
    source: str  # "rename", "repeat-line", "repeat-change", "model"
    reason: str = ""  # what it follows from, for logs and editors' tooltips


@dataclass(frozen=True)
class TextEdit:
    """`text[start:end]` becomes `new_text`: the least an editor has to change."""

    start: int
    end: int
    new_text: str


def whole_lines(edit: Edit) -> tuple[str, str]:
    """The lines an edit touched, before and after it."""
    prefix = edit.head[edit.head.rfind("\n") + 1 :]
    cut = edit.tail.find("\n")
    suffix = edit.tail if cut < 0 else edit.tail[: cut + 1]
    return prefix + edit.old + suffix, prefix + edit.new + suffix


def line_changes(edits: Sequence[Edit], uri: str) -> list[LineChange]:
    """The edits made to `uri`, oldest first, placed in the current text: each edit's line is
    moved by the lines that later edits above it added or removed."""
    mine = [e for e in edits if e.uri == uri and not e.truncated]
    changes: list[LineChange] = []
    for i, edit in enumerate(mine):
        old, new = whole_lines(edit)
        line = edit.line
        for later in mine[i + 1 :]:
            if later.line < line:
                line += later.new.count("\n") - later.old.count("\n")
        changes.append(LineChange(edit.uri, max(0, line), old, new))
    return changes


def line_offsets(text: str) -> list[int]:
    """Where each line starts; one more entry than lines, the last being len(text)."""
    starts = [0]
    position = text.find("\n")
    while position >= 0:
        starts.append(position + 1)
        position = text.find("\n", position + 1)
    if starts[-1] != len(text):
        starts.append(len(text))
    return starts


def lines_text(text: str, start_line: int, end_line: int) -> str:
    offsets = line_offsets(text)
    last = len(offsets) - 1
    return text[offsets[min(start_line, last)] : offsets[min(end_line, last)]]


def apply(text: str, proposal: Proposal) -> str:
    offsets = line_offsets(text)
    last = len(offsets) - 1
    start, end = offsets[min(proposal.start_line, last)], offsets[min(proposal.end_line, last)]
    new = proposal.new_text
    if start == len(text) and text and not text.endswith("\n") and new:
        new = "\n" + new  # lines added after a last line that had no line end
    return text[:start] + new + text[end:]


def minimal_edit(text: str, proposal: Proposal) -> TextEdit:
    """The proposal as the smallest replacement of `text` (common ends trimmed)."""
    offsets = line_offsets(text)
    last = len(offsets) - 1
    start, end = offsets[min(proposal.start_line, last)], offsets[min(proposal.end_line, last)]
    after = apply(text, proposal)
    old, new = text[start:end], after[start : len(after) - (len(text) - end)]
    prefix, old_end, new_end = changed_span(old, new)
    return TextEdit(start + prefix, start + old_end, new[prefix:new_end])


def overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    """Whether two line ranges share a line (an empty range shares none)."""
    return not (a_end <= b_start or a_start >= b_end)


def nearness(line: int, change: LineChange) -> float:
    """Closer to the change is higher; below it before above it at equal distance, since
    people tend to work down a file."""
    distance = line - change.new_end if line >= change.new_end else change.line - line + 0.5
    return 1.0 / (2.0 + max(0.0, distance))
