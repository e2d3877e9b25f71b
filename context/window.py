"""Which part of the current file goes into the prompt, with boundaries that rarely move."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WindowLimits:
    prefix_chars: int = 6000
    suffix_chars: int = 1200
    # The prefix window starts on a line number that is a multiple of this, so typing moves its
    # start only once per `stride` lines and the KV cache of the prompt prefix stays valid.
    stride_lines: int = 64
    # The FIM split sits at the start of a line on a grid of this many lines, not at the cursor:
    # the code typed since then goes after the middle token, so a keystroke appends to the
    # prompt instead of shifting the whole suffix behind it. 0 splits at the cursor.
    middle_lines: int = 8


@dataclass(frozen=True)
class Window:
    prefix: str  # the file before the FIM split
    middle: str  # from the split to the cursor: code the model continues
    suffix: str  # after the cursor
    prefix_start: int  # offset of the window's first character in the document


def cut_window(text: str, offset: int, limits: WindowLimits) -> Window:
    start = _stable_prefix_start(text, offset, limits)
    split = _split_point(text, start, offset, limits.middle_lines)
    end = _suffix_end(text, offset, limits.suffix_chars)
    return Window(
        prefix=text[start:split],
        middle=text[split:offset],
        suffix=text[offset:end],
        prefix_start=start,
    )


def _split_point(text: str, start: int, offset: int, grid: int) -> int:
    if grid <= 0:
        return offset
    line_starts = [start, *(m + 1 for m in _newlines(text, offset, start))]
    # Line numbers relative to the window start, which itself only moves on its own grid.
    return line_starts[((len(line_starts) - 1) // grid) * grid]


def _stable_prefix_start(text: str, offset: int, limits: WindowLimits) -> int:
    if offset <= limits.prefix_chars:
        return 0
    earliest = offset - limits.prefix_chars
    line_starts = [0, *(m + 1 for m in _newlines(text, offset))]
    # The first whole line inside the budget, then the next line on the stride grid.
    first = next((i for i, s in enumerate(line_starts) if s >= earliest), len(line_starts) - 1)
    snapped = -(-first // limits.stride_lines) * limits.stride_lines
    return line_starts[snapped] if snapped < len(line_starts) else line_starts[first]


def _newlines(text: str, end: int, begin: int = 0) -> list[int]:
    found = []
    at = text.find("\n", begin, end)
    while at >= 0:
        found.append(at)
        at = text.find("\n", at + 1, end)
    return found


def _suffix_end(text: str, offset: int, budget: int) -> int:
    # Depends only on the text after the cursor, which typing at the cursor leaves unchanged.
    end = min(len(text), offset + budget)
    if end == len(text):
        return end
    # End on a line boundary so the model never sees half a line.
    newline = text.rfind("\n", offset, end)
    return newline + 1 if newline >= offset else end
