"""What the cursor's position implies: single-line or multi-line completion, and its surroundings."""

from __future__ import annotations

from typing import Literal

from nextab.models.stopping import Mode, Surroundings

RequestedMode = Literal["auto", "line", "block"]

# Lines ending with one of these open a block whose body the developer is about to write.
_BLOCK_OPENERS = (":", "{", "(", "[", "=>", "->", " do", " then")


def surroundings(text: str, offset: int, lookahead_lines: int = 3) -> Surroundings:
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    if line_end < 0:
        line_end = len(text)
    following: list[str] = []
    for line in text[line_end + 1 :].split("\n"):
        if len(following) >= lookahead_lines:
            break
        if line.strip():
            following.append(line)
    rest = text[offset:line_end]
    if rest.strip() and not text[line_start:offset].strip():
        # The cursor stands before code on its line: that line is what comes next.
        following.insert(0, text[line_start:line_end])
    return Surroundings(
        line_prefix=text[line_start:offset],
        rest_of_line=rest,
        suffix_lines=tuple(following[:lookahead_lines]),
    )


def decide_mode(text: str, offset: int, requested: RequestedMode = "auto") -> Mode:
    """Multi-line only where a new body is being started; everywhere else one line.

    A block is offered at the end of a line that opens a block (`:`, `{`, `(`, ...) and on a
    blank line right after one. Mid-line, with code after the cursor, or after a plain
    statement, a completion is one line.
    """
    if requested != "auto":
        return requested
    around = surroundings(text, offset)
    if around.rest_of_line.strip():
        return "line"
    if around.line_prefix.strip():
        return "block" if around.line_prefix.rstrip().endswith(_BLOCK_OPENERS) else "line"
    previous = _previous_nonblank_line(text, offset)
    if previous is not None and previous.rstrip().endswith(_BLOCK_OPENERS):
        return "block"
    return "line"


def _previous_nonblank_line(text: str, offset: int) -> str | None:
    line_start = text.rfind("\n", 0, offset) + 1
    for line in reversed(text[: max(0, line_start - 1)].split("\n")):
        if line.strip():
            return line
    return None
