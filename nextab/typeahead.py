"""Typed-ahead: when the developer types what a suggestion predicted, the rest of it is the
next suggestion, served without the model.

An editor asks again after every keystroke. If the keystrokes since a suggestion was given are
exactly its first characters, inserted at the cursor it was given for, the model would (up to
the prompt's new tokens) only say the rest again: the rest is served at once. The same test
decides whether a generation still running for an earlier keystroke is worth finishing: its
text so far must agree with what has been typed since.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Given:
    """A suggestion as given: the document state it was for, and what it inserts there."""

    text: str  # the document's text at the request
    offset: int  # the cursor in `text`
    insert: str  # the suggestion's text
    replace: int  # characters after the cursor it replaces
    mode: str
    stop_reason: str
    model: Any = None  # what produced it (the request it extends, for the metrics)


def typed_since(text: str, offset: int, now_text: str, now_offset: int) -> str | None:
    """The characters typed at the cursor that turned (text, offset) into (now_text,
    now_offset), or None if the change was anything else (a deletion, an edit elsewhere, a
    cursor that moved)."""
    count = now_offset - offset
    if count < 0 or len(now_text) != len(text) + count:
        return None
    # Compared from the cursor outwards: a keystroke changes nothing else, and a mismatch
    # (another edit) is usually found near it.
    if now_text[now_offset:] != text[offset:] or now_text[:offset] != text[:offset]:
        return None
    return now_text[offset:now_offset]


def remainder(given: Given, now_text: str, now_offset: int) -> str | None:
    """What is left of `given` to show at (now_text, now_offset), if everything typed since
    was its beginning and something that is not just whitespace is left."""
    typed = typed_since(given.text, given.offset, now_text, now_offset)
    # Nothing typed is a request asked again, which the model answers (and keeps its cache
    # warm); only keystrokes that follow the suggestion are served from it.
    if not typed or not given.insert.startswith(typed):
        return None
    rest = given.insert[len(typed) :]
    return rest if rest.strip() else None


def agrees(partial: str, typed: str) -> bool:
    """Whether a generation that has written `partial` so far may still predict `typed`."""
    return partial.startswith(typed) or typed.startswith(partial)
