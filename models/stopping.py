"""When a completion is done, and how its text is trimmed to fit the code around the cursor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["line", "block"]

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {v: k for k, v in _OPENERS.items()}


@dataclass(frozen=True)
class Surroundings:
    """The text right around the cursor that decides where a completion stops."""

    line_prefix: str  # current line, up to the cursor
    rest_of_line: str  # current line, after the cursor
    suffix_lines: tuple[str, ...]  # the next few non-blank lines after the cursor's line
    # The indentation of the body of the block around the cursor, where a syntax tree knows
    # it: a completion that has not shown its own yet must stay at least this deep.
    block_indent: str | None = None


@dataclass(frozen=True)
class StopRules:
    mode: Mode
    around: Surroundings
    max_lines: int = 12

    def __call__(self, text: str) -> int | None:
        """Length of `text` to keep if generation must stop now, else None."""
        if self.mode == "line":
            return _stop_line(text)
        return _stop_block(text, self)


def _stop_line(text: str) -> int | None:
    """A line completion ends at the first newline after some code.

    Newlines before any code are kept: at the end of a line, or on a blank line above code, the
    model often starts the line it means on the next one. More than two empty lines first mean
    it has nothing to say.
    """
    start = 0
    while (newline := text.find("\n", start)) >= 0:
        if text[:newline].strip():
            return newline
        if text.count("\n", 0, newline + 1) > _MAX_LEADING_NEWLINES:
            return 0
        start = newline + 1
    return None


_MAX_LEADING_NEWLINES = 2


def _indent_width(line: str) -> int:
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip(" "))


_CLOSING_STARTS = ("}", ")", "]", "end", "fi", "done", "esac")


def _stop_block(text: str, rules: StopRules, *, final: bool = False) -> int | None:
    """Where a multi-line completion leaves its block, if it has.

    Lines are judged once a newline ends them (the last one may still grow) unless `final`.
    Two starts: on a body line (blank or partly typed), the body's indentation is that of its
    first line (or, if that holds no code, of the block around the cursor as the syntax tree
    has it) and a less indented line ends it; at the end of an opener line (`def f():|`),
    the body is everything indented past the opener, and a closing line at the opener's
    indentation (`}`, `end`) is kept as the block's last line.
    """
    lines = text.split("\n")
    judged = lines if final else lines[:-1]
    around = rules.around
    first_full = around.line_prefix + lines[0]
    after_opener = bool(around.line_prefix.strip()) and not lines[0].strip()
    opener_indent = _indent_width(around.line_prefix) if after_opener else None
    body_indent = None if after_opener or not first_full.strip() else _indent_width(first_full)
    if body_indent is None and not after_opener and around.block_indent is not None:
        body_indent = _indent_width(around.block_indent)
    limit = rules.max_lines + (1 if after_opener else 0)
    offset = len(lines[0]) + 1
    for count, line in enumerate(judged[1:], start=1):
        if count >= limit:
            return offset - 1
        if line.strip():
            if _repeats_suffix(line, around.suffix_lines):
                return offset - 1  # the model is re-typing the code after the cursor
            width = _indent_width(line)
            if opener_indent is not None and width <= opener_indent:
                closes = line.strip().startswith(_CLOSING_STARTS)
                return offset + len(line) if closes else offset - 1
            if body_indent is None:
                body_indent = width
            elif width < body_indent:
                return offset - 1  # the block ended: the dedented line belongs to what follows
        offset += len(line) + 1
    return None


def _repeats_suffix(line: str, suffix_lines: tuple[str, ...]) -> bool:
    # Indentation counts: a nested block's `}` is not the enclosing function's `}`.
    return bool(suffix_lines) and line.rstrip() == suffix_lines[0].rstrip()


@dataclass(frozen=True)
class Trimmed:
    text: str
    replace: int  # characters after the cursor that the suggestion replaces


def finalize(text: str, rules: StopRules) -> Trimmed:
    """Trim a finished completion so that accepting it leaves well-formed code."""
    around = rules.around
    if rules.mode == "line":
        text = _drop_leading_blank_lines(text.rstrip(), around.line_prefix)
        if _repeats_next_line(text, around.suffix_lines):
            return Trimmed(text="", replace=0)
        text = _balance_line(around.line_prefix, text)
        return _absorb_rest_of_line(text, around.rest_of_line)
    text = "\n".join(line.rstrip() for line in text.split("\n")).rstrip("\n")
    keep = _stop_block(text, rules, final=True)
    if keep is not None:
        text = text[:keep]
    text = _drop_suffix_repeat(text, around.suffix_lines)
    text = text.rstrip()
    return _absorb_rest_of_line(text, around.rest_of_line)


def _drop_leading_blank_lines(text: str, line_prefix: str) -> str:
    """A line completion that starts on a later line keeps one newline, and only if needed.

    After code on the cursor's line the suggestion is the next line ("\ny = 2"). On a blank
    line, whitespace-only lines before the code are noise: the code goes where the cursor is,
    if its indentation starts with what the line already has.
    """
    head, newline, content = text.rpartition("\n")
    if not newline or head.strip():
        return text
    if line_prefix.strip():
        return "\n" + content
    if content.startswith(line_prefix):
        return content[len(line_prefix) :]
    return "\n" + content


def _repeats_next_line(text: str, suffix_lines: tuple[str, ...]) -> bool:
    # Re-typing the code that follows is never a useful suggestion, however it is indented.
    return bool(text.strip()) and bool(suffix_lines) and text.strip() == suffix_lines[0].strip()


def _balance_line(line_prefix: str, text: str) -> str:
    """Cut a one-line completion at the first bracket it closes that was never opened."""
    stack: list[str] = []
    _scan_brackets(line_prefix, stack)
    cut = _scan_brackets(text, stack, stop_at_unmatched=True)
    return text if cut is None else text[:cut].rstrip()


def _scan_brackets(text: str, stack: list[str], *, stop_at_unmatched: bool = False) -> int | None:
    """Track open brackets of `text` on `stack`, skipping strings.

    Returns the index of the first closing bracket that matches nothing, when asked to stop
    there; the code before the cursor may have such brackets, and they are not ours to fix.
    """
    in_string: str | None = None
    for i, c in enumerate(text):
        if in_string:
            if c == in_string:
                in_string = None
        elif c in "\"'`":
            in_string = c
        elif c in _OPENERS:
            stack.append(c)
        elif c in _CLOSERS:
            if stack and stack[-1] == _CLOSERS[c]:
                stack.pop()
            elif stop_at_unmatched:
                return i
    return None


def _absorb_rest_of_line(text: str, rest_of_line: str) -> Trimmed:
    """Let the suggestion replace what an editor auto-inserted after the cursor.

    With `foo(|)` an editor has already typed the `)`: a completion `a, b)` then replaces it
    instead of doubling it. Only a rest of line made of closing brackets, quotes, `:` and `;`
    qualifies, so real code after the cursor is never overwritten.
    """
    tail = rest_of_line.rstrip()
    if tail and all(c in ")]}\"'`:;, " for c in tail) and text.endswith(tail):
        return Trimmed(text=text, replace=len(tail))
    if tail and text.endswith(tail):
        return Trimmed(text=text[: -len(tail)], replace=0)
    return Trimmed(text=text, replace=0)


def _drop_suffix_repeat(text: str, suffix_lines: tuple[str, ...]) -> str:
    """Remove trailing completion lines that the code after the cursor already has."""
    if not suffix_lines:
        return text
    lines = text.split("\n")
    for i in range(1, len(lines)):
        if _repeats_suffix(lines[i], suffix_lines) and _matches_ahead(lines[i:], suffix_lines):
            return "\n".join(lines[:i])
    return text


def _matches_ahead(lines: list[str], suffix_lines: tuple[str, ...]) -> bool:
    compared = [line.rstrip() for line in lines if line.strip()]
    return all(a == b.rstrip() for a, b in zip(compared, suffix_lines, strict=False))
