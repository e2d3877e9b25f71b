"""What the cursor's position implies: single-line or multi-line completion, and its surroundings."""

from __future__ import annotations

from typing import Literal

from nextab.context.syntax import Snapshot
from nextab.models.stopping import Mode, Surroundings

RequestedMode = Literal["auto", "line", "block"]

# Lines ending with one of these open a block whose body the developer is about to write.
_BLOCK_OPENERS = (":", "{", "(", "[", "=>", "->", " do", " then")


def surroundings(
    text: str, offset: int, lookahead_lines: int = 3, tree: Snapshot | None = None
) -> Surroundings:
    """The cursor's line and the lines after it; with a syntax tree of `text`, also the
    indentation of the block the cursor is in."""
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
    block = tree.block_end(offset) if tree is not None and tree.text == text else None
    return Surroundings(
        line_prefix=text[line_start:offset],
        rest_of_line=rest,
        suffix_lines=tuple(following[:lookahead_lines]),
        block_indent=block.indent if block is not None else None,
    )


def decide_mode(
    text: str, offset: int, requested: RequestedMode = "auto", tree: Snapshot | None = None
) -> Mode:
    """Multi-line only where a new body is being started; everywhere else one line.

    With a syntax tree of `text`, a block is offered where the cursor starts a body (a block
    with nothing before the cursor); mid-expression, inside strings and comments, and between
    existing statements a completion is one line. Without a tree, or where the code around
    the cursor does not parse, the text decides: a block at the end of a line that opens one
    (`:`, `{`, `(`, ...) and on a blank line right after one.
    """
    if requested != "auto":
        return requested
    around = surroundings(text, offset)
    if around.rest_of_line.strip():
        return "line"
    # A tree of another text (a stale snapshot) would place the cursor wrongly: ignore it.
    if tree is not None and tree.text == text:
        context = tree.cursor_at(offset)
        if not context.in_error:
            return "block" if context.kind == "body_start" else "line"
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
