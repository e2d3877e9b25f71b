"""Per-document state: the text, its version, and what the model keeps for it between requests."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any, Literal

from nextab.context.syntax import SyntaxTree


class PositionError(ValueError):
    """A line/character position that does not exist in the document."""


@dataclass(frozen=True)
class Position:
    line: int
    character: int  # in the session's position encoding (UTF-16 code units unless negotiated)


@dataclass(frozen=True)
class Range:
    start: Position
    end: Position


Encoding = Literal["utf-16", "utf-8", "utf-32"]


def _unit_width(c: str, encoding: Encoding) -> int:
    if encoding == "utf-16":
        return 2 if ord(c) > 0xFFFF else 1
    if encoding == "utf-8":
        return len(c.encode("utf-8", "surrogatepass"))
    return 1


def column_length(text: str, encoding: Encoding = "utf-16") -> int:
    if encoding == "utf-32" or text.isascii():
        return len(text)
    return sum(_unit_width(c, encoding) for c in text)


def column_to_index(line: str, character: int, encoding: Encoding = "utf-16") -> int:
    """Index into `line` of a column; a column inside a character rounds down to its start."""
    if encoding == "utf-32" or line.isascii():
        return min(character, len(line))
    units = 0
    for i, c in enumerate(line):
        width = _unit_width(c, encoding)
        if units + width > character:
            return i
        units += width
    return len(line)


def index_to_column(line: str, index: int, encoding: Encoding = "utf-16") -> int:
    return column_length(line[:index], encoding)


class Document:
    """Everything nextab holds for one open document, in one place.

    `text` and `version` follow the editor. `syntax` is its tree-sitter tree, kept in step
    with each change (None for plain text and unknown languages). `kv` is the model's cache
    for the last prompt built from this document (owned by the engine, touched only on the
    model thread), and `inflight` holds, per kind of request ("completion", "nextEdit"), the
    handle that cancels the one now being computed for it: a completion does not cancel a
    next-edit request, a change of the text cancels both. `given` is the engine's record of
    the last suggestion it gave for the document, which typing can extend (nextab/typeahead.py).
    """

    def __init__(
        self,
        uri: str,
        text: str,
        language_id: str = "",
        version: int = 0,
        encoding: Encoding = "utf-16",
    ) -> None:
        self.uri = uri
        self.encoding: Encoding = encoding
        self.language_id = language_id
        self.version = version
        self.kv: Any = None
        self.kv_large: Any = None  # the large model's cache (two-model decoding)
        self.given: Any = None
        self.inflight: dict[str, Any] = {}
        self._set_text(text)
        self.syntax: SyntaxTree | None = SyntaxTree.for_document(uri, text, language_id, version)

    @property
    def text(self) -> str:
        return self._text

    def _set_text(self, text: str) -> None:
        self._text = text
        self._line_starts = lsp_line_starts(text)

    def _splice(self, start: int, end: int, new: str) -> None:
        """Replace text[start:end] and patch the line index instead of rebuilding it.

        Lines before the edit keep their starts, the edit's own lines are rescanned, and the
        starts after it shift by the change in length (a list shift, no text scan). Whether
        a position starts a line depends on the character before it and, after a \r, on the
        one at it (\r\n is one line end): so a start at `start` itself is rescanned too, and
        starts after `end` depend only on text the edit kept.
        """
        starts = self._line_starts
        # starts[:first] are before `start` (and the first line's start at 0 stays).
        first = max(1, bisect.bisect_left(starts, start))
        last = bisect.bisect_right(starts, end)  # starts[last:] are after the old text's edit
        delta = len(new) - (end - start)
        self._text = text = self._text[:start] + new + self._text[end:]
        rescanned = _starts_between(text, start, start + len(new))
        shifted = [s + delta for s in starts[last:]] if delta else starts[last:]
        starts[first:] = rescanned + shifted

    @property
    def line_count(self) -> int:
        return len(self._line_starts)

    def line(self, number: int) -> str:
        """The text of a line, without its line end."""
        start = self._line_starts[number]
        if number + 1 >= len(self._line_starts):
            return self._text[start:]
        end = self._line_starts[number + 1]
        return self._text[start : end - (2 if self._text.startswith("\r\n", end - 2) else 1)]

    def offset_at(self, position: Position, *, clamp: bool = False) -> int:
        """String index of an LSP position.

        Past-the-end positions raise PositionError unless `clamp`, which the LSP spec asks for
        when applying edits (a character past the line's end means the end of the line).
        """
        line, character = position.line, position.character
        if line < 0 or character < 0:
            raise PositionError(f"negative position {line}:{character}")
        if line >= self.line_count:
            if not clamp:
                raise PositionError(f"line {line} is past the end ({self.line_count} lines)")
            return len(self._text)
        text = self.line(line)
        if not clamp and character > column_length(text, self.encoding):
            raise PositionError(f"character {character} is past the end of line {line}")
        return self._line_starts[line] + column_to_index(text, character, self.encoding)

    def position_at(self, offset: int) -> Position:
        offset = max(0, min(offset, len(self._text)))
        if self._text.startswith("\r\n", offset - 1) and offset > 0:
            offset -= 1  # between the two characters of one line end: no position, its start
        line = bisect.bisect_right(self._line_starts, offset) - 1
        start = self._line_starts[line]
        return Position(line, column_length(self._text[start:offset], self.encoding))

    def apply_change(self, text: str, range: Range | None = None, version: int | None = None) -> None:
        """Apply one content change from didChange (a full replacement when `range` is None)."""
        if range is None:
            self._set_text(text)
            if self.syntax is not None:
                self.syntax.replace(text, version)
        else:
            start = self.offset_at(range.start, clamp=True)
            end = max(start, self.offset_at(range.end, clamp=True))
            self._splice(start, end, text)
            if self.syntax is not None:
                self.syntax.edit(start, end, text, version)
        if version is not None:
            self.version = version


def split_lines(text: str) -> list[str]:
    """Lines with their "\\n", as editors and tree-sitter count them (str.splitlines also
    splits at \\f, \\x1c, U+2028 and others, which would shift every line after one)."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


# The LSP's line ends (the spec's "\n", "\r\n" and "\r"): positions from an editor count a lone
# \r as a line break, so the document must too or every line after one would be off.
_LSP_LINE_END = re.compile(r"\r\n?|\n")


def lsp_line_starts(text: str) -> list[int]:
    """Where each line starts, as LSP positions count lines."""
    return [0, *(m.end() for m in _LSP_LINE_END.finditer(text))]


def _starts_between(text: str, lo: int, hi: int) -> list[int]:
    """The line starts in [lo, hi] of `text` (lo > 0 or the start at 0 is left out)."""
    # One character either side: a \r\n pair across either bound is a single line end.
    begin = max(lo - 1, 0)
    found = (m.end() for m in _LSP_LINE_END.finditer(text, begin, hi + 1))
    return [s for s in found if lo <= s <= hi]


def line_starts(text: str) -> list[int]:
    """Where each line starts (one entry per `split_lines` line, plus len(text) after a last
    line end)."""
    starts = [0]
    find = text.find
    at = find("\n")
    while at >= 0:
        starts.append(at + 1)
        at = find("\n", at + 1)
    return starts
