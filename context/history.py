"""The developer's recent edits: keystrokes coalesced into meaningful edits, kept per workspace.

They feed completion prompts as unified diffs ("recent edits") and, later, next-edit
prediction, which learns from the edit history where and what the next edit is. So an edit
keeps what replaying it needs (its offset in the text before it, the old and the new text)
and what a diff of it needs (its line and a few lines around it), captured while the text was
at hand: by the time anyone renders it, the document has moved on.

`record` runs on the server's event loop for every content change and `render` on the model
thread, so both go through one lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import msgpack

from nextab.context.document import line_starts, split_lines
from nextab.context.secrets import is_secret_uri
from nextab.context.syntax import changed_span
from nextab.storage import HEADER_BYTES, RECORD_OVERHEAD, load_records, pack_records, write_atomic

log = logging.getLogger(__name__)

FORMAT = "nextab.edit-history"  # the unframed msgpack of version 1 said so in its "format"
KIND = b"HIST"  # the framed file's kind (nextab.storage)
FORMAT_VERSION = 2  # 2: framed, one checksummed record per edit

LIMIT = 200  # closed edits kept per workspace
PAUSE_SECONDS = 1.5  # a pause this long between keystrokes ends an edit
CONTEXT_LINES = 3  # context lines on each side of a diff hunk, as `diff -u`
CONTEXT_CHARS = 1000  # at most this much context text kept on each side
MAX_EDIT_CHARS = 2000  # old or new text longer than this is truncated (a huge paste)
MAX_FILE_BYTES = 1 << 20  # the saved history's size bound; the oldest edits go first


@dataclass(frozen=True)
class Edit:
    """One meaningful edit: `text[start:start + old_length]` became `new`.

    `head` runs from the first context line up to `start` and `tail` from the end of the old
    text to the end of the last context line, both from the text before the edit, so that
    `head + old + tail` and `head + new + tail` are whole lines of the file before and after.
    When `truncated`, `old`/`new` were cut for size and the edit no longer replays;
    `old_length`/`new_length` are the real lengths all the same. When `clipped`, a line of
    the context was too long and was cut: the edit replays but its diff is not the file's.
    """

    uri: str
    start: int
    old: str
    new: str
    time: float  # wall clock (time.time()) of the edit's last keystroke
    version: int  # the document's version after the edit
    line: int  # 0-based line of `start`
    head: str
    tail: str
    truncated: bool
    clipped: bool
    old_length: int
    new_length: int

    @property
    def end(self) -> int:
        """End of the replaced text, in the text before the edit."""
        return self.start + self.old_length

    @property
    def first_line(self) -> int:
        """0-based line where `head` starts."""
        return self.line - self.head.count("\n")

    def apply(self, text: str) -> str:
        """Replay the edit on the text it was made on."""
        if self.truncated:
            raise ValueError("a truncated edit cannot be replayed")
        if text[self.start : self.end] != self.old:
            raise ValueError(f"text at {self.start} is not what the edit replaced")
        return text[: self.start] + self.new + text[self.end :]


class _Open:
    """The edit being typed: keystrokes merge into it until something closes it."""

    __slots__ = ("clipped", "head", "line", "new", "old", "start", "tail", "time", "uri", "version")

    def __init__(self, uri: str, start: int, line: int, now: float, version: int) -> None:
        self.uri = uri
        self.start = start  # also its offset in the current text: text before it is unchanged
        self.line = line
        self.old = ""
        self.new = ""
        self.time = now
        self.version = version
        self.head = ""
        self.tail = ""
        self.clipped = False

    def touches(self, start: int, end: int) -> bool:
        """Whether a change of current text[start:end] is at or inside this edit."""
        return start <= self.start + len(self.new) and end >= self.start

    def merge(self, before: str, start: int, end: int, new: str) -> tuple[int, int]:
        """Fold a touching change into the edit; returns its span in `before`."""
        a, b = self.start, self.start + len(self.new)
        lo, hi = min(a, start), max(b, end)
        # Outside [a, b) the current text is still the original, so it extends `old` as is.
        self.old = before[lo:a] + self.old + before[b:hi]
        self.new = before[lo:start] + new + before[end:hi]
        if lo < a:
            self.line -= before.count("\n", lo, a)
        self.start = lo
        return lo, hi

    def finish(self, max_chars: int) -> Edit | None:
        start, old, new, head, tail = _trim_common(self.start, self.old, self.new, self.head, self.tail)
        if old == new:
            return None  # typed, then deleted again
        line = self.line + head.count("\n", len(self.head))  # newlines moved out of `old`
        old_cut, new_cut = _truncate(old, max_chars), _truncate(new, max_chars)
        return Edit(
            uri=self.uri,
            start=start,
            old=old_cut,
            new=new_cut,
            time=self.time,
            version=self.version,
            line=line,
            head=head,
            tail=tail,
            truncated=old_cut is not old or new_cut is not new,
            clipped=self.clipped,
            old_length=len(old),
            new_length=len(new),
        )


class EditHistory:
    """The recent edits of one workspace, oldest first, and the one being typed."""

    def __init__(
        self,
        *,
        limit: int = LIMIT,
        pause_seconds: float = PAUSE_SECONDS,
        root: str | Path | None = None,
        context_lines: int = CONTEXT_LINES,
        context_chars: int = CONTEXT_CHARS,
        max_edit_chars: int = MAX_EDIT_CHARS,
        max_file_bytes: int = MAX_FILE_BYTES,
        edits: Iterable[Edit] = (),
        private: Callable[[str], bool] | None = None,
    ) -> None:
        # Documents whose edits are never kept (by uri): secrets by name without a workspace;
        # a workspace passes its own test, which knows its ignore rules and exclude list.
        self.private = private or is_secret_uri
        self.pause_seconds = pause_seconds
        self.root = PurePosixPath(Path(root).as_posix()) if root is not None else None
        self.context_lines = context_lines
        self.context_chars = context_chars
        self.max_edit_chars = max_edit_chars
        self.max_file_bytes = max_file_bytes
        # Also on loading: a history saved before a document became private must not bring
        # its edits back.
        kept = (edit for edit in edits if not self.private(edit.uri))
        self._edits: deque[Edit] = deque(kept, maxlen=max(0, limit))
        self._open: _Open | None = None
        self._lock = threading.Lock()
        self._changes = 0  # closed edits so far; `unsaved` compares it with the last save
        self._saved = 0

    # -- recording ----------------------------------------------------------------------------

    def record(
        self,
        uri: str,
        before_text: str,
        start: int,
        end: int,
        new_text: str,
        version: int,
        now: float | None = None,
    ) -> None:
        """One content change: `before_text[start:end]` became `new_text`.

        A full-document replacement (start 0, end len(before_text)) is fine: the unchanged
        ends are trimmed off first, so it records what really changed.
        """
        if self.private(uri):
            return  # a secret or git-ignored document: its text is kept nowhere
        now = time.time() if now is None else now
        start = max(0, min(start, len(before_text)))
        end = max(start, min(end, len(before_text)))
        start, end, new_text = _trim_change(before_text, start, end, new_text)
        if start == end and not new_text:
            return
        with self._lock:
            self._record(uri, before_text, start, end, new_text, version, now)

    def _record(
        self, uri: str, before: str, start: int, end: int, new: str, version: int, now: float
    ) -> None:
        edit = self._open
        if edit is not None and not (
            edit.uri == uri and now - edit.time <= self.pause_seconds and edit.touches(start, end)
        ):
            self._close()
            edit = None
        if edit is None:
            edit = self._open = _Open(uri, start, before.count("\n", 0, start), now, version)
        lo, hi = edit.merge(before, start, end, new)
        edit.time, edit.version = now, version
        # The text outside [lo, hi) is the same before and after this change and the whole
        # edit, so the context read here is what the diff needs however the edit grows.
        edit.head, head_clipped = _head(before, lo, self.context_lines, self.context_chars)
        edit.tail, tail_clipped = _tail(before, hi, self.context_lines, self.context_chars)
        edit.clipped = head_clipped or tail_clipped
        if "\n" in new:
            self._close()  # a new line ends the thought; the next keystroke starts another edit

    def forget_private(self) -> None:
        """Drop the edits of documents that `private` now covers (the exclude list grew); the
        next save writes the history without them."""
        with self._lock:
            if self._open is not None and self.private(self._open.uri):
                self._open = None
            kept = [edit for edit in self._edits if not self.private(edit.uri)]
            if len(kept) != len(self._edits):
                self._edits = deque(kept, maxlen=self._edits.maxlen)
                self._changes += 1

    def close_open_edits(self) -> None:
        """End the edit being typed (the document closed, the history is about to be read)."""
        with self._lock:
            self._close()

    flush = close_open_edits

    def _close(self) -> None:
        if self._open is None:
            return
        edit = self._open.finish(self.max_edit_chars)
        self._open = None
        if edit is not None:
            self._edits.append(edit)
            self._changes += 1

    def _expire(self, now: float) -> None:
        if self._open is not None and now - self._open.time > self.pause_seconds:
            self._close()

    def replay(self, uri: str, text: str, hunks: Iterable[Hunk], now: float = 0.0) -> str:
        """Record `hunks` as edits typed one after another, each after a pause, starting from
        `text`; the text after them. How a history is rebuilt from two versions of a file (a
        commit, a saved copy) when no editor watched the typing."""
        for version, hunk in enumerate(hunks, start=1):
            starts = line_starts(text)
            if hunk.line >= len(starts):
                raise ValueError(f"hunk at line {hunk.line} is past the end ({len(starts) - 1} lines)")
            start = starts[hunk.line]
            end = start + len(hunk.old)
            if text[start:end] != hunk.old:
                raise ValueError(f"hunk at line {hunk.line} does not apply: the old lines differ")
            self.record(uri, text, start, end, hunk.new, version, now=now)
            text = text[:start] + hunk.new + text[end:]
            now += self.pause_seconds * 2  # each hunk an edit of its own
        self.close_open_edits()
        return text

    # -- reading ------------------------------------------------------------------------------

    def edits(
        self, uri: str | None = None, *, include_open: bool = False, now: float | None = None
    ) -> list[Edit]:
        """Closed edits, oldest first (an edit paused past the threshold counts as closed)."""
        now = time.time() if now is None else now
        with self._lock:
            self._expire(now)
            found = list(self._edits)
            if include_open and self._open is not None:
                current = self._open.finish(self.max_edit_chars)
                if current is not None:
                    found.append(current)
        return [e for e in found if uri is None or e.uri == uri]

    def render(
        self,
        max_chars: int,
        uri: str | None = None,
        *,
        include_open: bool = False,
        now: float | None = None,
    ) -> str:
        """The newest edits that fit in `max_chars` as unified diffs, the most recent last.

        Stops at the first edit that does not fit rather than skipping it, so what is shown is
        always an unbroken stretch of the latest history.
        """
        parts: list[str] = []
        used = 0
        for edit in reversed(self.edits(uri, include_open=include_open, now=now)):
            text = self.diff(edit)
            if used + len(text) > max_chars:
                break
            parts.append(text)
            used += len(text)
        return "".join(reversed(parts))

    def diff(self, edit: Edit) -> str:
        """One edit as a unified diff, line numbers those of the file before the edit."""
        path = self.display_path(edit.uri)
        old_name, new_name = (f"a/{path}", f"b/{path}") if not path.startswith("/") else (path, path)
        hunks = _hunks(edit, self.context_lines)
        return f"--- {old_name}\n+++ {new_name}\n{hunks}" if hunks else ""

    def display_path(self, uri: str) -> str:
        """The uri as a workspace-relative path when it lies under the root."""
        parts = urlsplit(uri)
        if parts.scheme not in ("", "file"):
            return uri  # untitled:, vscode-notebook-cell: ... have no path to show
        path = PurePosixPath(unquote(parts.path))
        if self.root is not None:
            try:
                return path.relative_to(self.root).as_posix()
            except ValueError:
                pass
        return path.as_posix()

    @property
    def unsaved(self) -> bool:
        """Whether edits closed since the last save (a timer can skip saving when not)."""
        return self._changes != self._saved

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: str | Path) -> bool:
        """Write the history (the edit being typed included) atomically; False on failure.

        The newest edits that fit in `max_file_bytes` are kept. Costs a msgpack of at most
        `limit` small records and one file write.
        """
        with self._lock:
            edits = list(self._edits)
            if self._open is not None:
                current = self._open.finish(self.max_edit_chars)
                if current is not None:
                    edits.append(current)
            changes = self._changes
        data = _pack(edits, self.max_file_bytes)
        try:
            write_atomic(Path(path), data)
        except OSError as error:
            log.warning("could not save the edit history to %s: %s", path, error)
            return False
        self._saved = changes
        return True

    @classmethod
    def load(cls, path: str | Path | None, **settings: Any) -> EditHistory:
        """A history with the edits saved at `path`; empty when there are none to trust.

        `settings` are the constructor's keywords. A missing or unreadable file, or one from
        another format version, starts an empty history; a damaged one is moved aside (with a
        warning) and its edits that check out are kept.
        """
        edits: list[Edit] = []
        if path is not None:
            edits = _read(Path(path))
        return cls(edits=edits, **settings)


# -- changes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hunk:
    """Lines `old` (whole lines, with their line ends) became `new`, at `line` of the text the
    hunk applies to."""

    line: int
    old: str
    new: str


def hunks_between(old: str, new: str) -> list[Hunk]:
    """The line hunks that turn `old` into `new`, top to bottom; each hunk's `line` is where
    it starts once the hunks above it are applied, so `EditHistory.replay` applies them in
    order."""
    a, b = split_lines(old), split_lines(new)
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    return [
        Hunk(j1, "".join(a[i1:i2]), "".join(b[j1:j2]))
        for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        if tag != "equal"
    ]


def _trim_change(before: str, start: int, end: int, new: str) -> tuple[int, int, str]:
    """Narrow a change to what it really changes (clients may resend whole lines or files)."""
    old = before[start:end]
    if not old or not new:
        return start, end, new
    p, old_end, new_end = changed_span(old, new)
    return start + p, start + old_end, new[p:new_end]


def _trim_common(
    start: int, old: str, new: str, head: str, tail: str
) -> tuple[int, str, str, str, str]:
    """Move text both sides of an edit share into its context (backspaced and retyped)."""
    p, old_end, new_end = changed_span(old, new)
    if not p and old_end == len(old):
        return start, old, new, head, tail
    return start + p, old[p:old_end], new[p:new_end], head + old[:p], old[old_end:] + tail


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    keep = max_chars // 2
    return f"{text[:keep]}\n[... nextab: {len(text) - 2 * keep} characters truncated ...]\n{text[-keep:]}"


# -- context -----------------------------------------------------------------------------------


def _head(text: str, pos: int, lines: int, cap: int) -> tuple[str, bool]:
    """From the start of the line `lines` lines above `pos` up to `pos`; clipped if too long."""
    begin = text.rfind("\n", 0, pos) + 1
    for _ in range(lines):
        if begin == 0:
            break
        begin = text.rfind("\n", 0, begin - 1) + 1
    head = text[begin:pos]
    if len(head) <= cap:
        return head, False
    # Drop whole context lines from the top; only the edit's own line may be cut.
    cut = head.find("\n", len(head) - cap - 1) + 1
    if cut == 0:
        return head[len(head) - cap :], True
    return head[cut:], False


def _tail(text: str, pos: int, lines: int, cap: int) -> tuple[str, bool]:
    """From `pos` to the end of the line `lines` lines below it (or the end of the text)."""
    end = pos
    for _ in range(lines + 1):
        newline = text.find("\n", end)
        if newline < 0:
            end = len(text)
            break
        end = newline + 1
    tail = text[pos:end]
    if len(tail) <= cap:
        return tail, False
    cut = tail.rfind("\n", 0, cap) + 1
    if cut == 0:
        return tail[:cap], True
    return tail[:cut], False


# -- diffs -------------------------------------------------------------------------------------


def _range(start: int, count: int) -> str:
    """A hunk range as `diff -u` writes it, from a 0-based start."""
    if count == 1:
        return str(start + 1)
    return f"{start if count == 0 else start + 1},{count}"


def _hunk_line(sign: str, line: str, clipped: bool) -> str:
    if line.endswith("\n"):
        return sign + line
    if clipped:
        return f"{sign}{line}\n"  # cut short for size, not the end of the file
    return f"{sign}{line}\n\\ No newline at end of file\n"


def _hunks(edit: Edit, context: int) -> str:
    a = split_lines(edit.head + edit.old + edit.tail)
    b = split_lines(edit.head + edit.new + edit.tail)
    first = edit.first_line
    out: list[str] = []
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    for group in matcher.get_grouped_opcodes(context):
        if all(tag == "equal" for tag, *_ in group):
            continue
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(f"@@ -{_range(first + i1, i2 - i1)} +{_range(first + j1, j2 - j1)} @@\n")
        for tag, ai, aj, bi, bj in group:
            if tag == "equal":
                out.extend(_hunk_line(" ", line, edit.clipped) for line in a[ai:aj])
                continue
            out.extend(_hunk_line("-", line, edit.clipped) for line in a[ai:aj])
            out.extend(_hunk_line("+", line, edit.clipped) for line in b[bi:bj])
    return "".join(out)


# -- storage -----------------------------------------------------------------------------------

_FIELDS = (
    ("uri", str),
    ("start", int),
    ("old", str),
    ("new", str),
    ("time", float),
    ("version", int),
    ("line", int),
    ("head", str),
    ("tail", str),
    ("truncated", bool),
    ("clipped", bool),
    ("old_length", int),
    ("new_length", int),
)


def _pack(edits: list[Edit], max_bytes: int) -> bytes:
    # surrogatepass: an editor may send a lone surrogate (valid JSON, no UTF-8); it must not
    # stop the history from saving.
    records = [
        msgpack.packb([getattr(e, name) for name, _ in _FIELDS], unicode_errors="surrogatepass")
        for e in edits
    ]
    budget = max_bytes - HEADER_BYTES - RECORD_OVERHEAD  # the header and the empty metadata
    kept = 0
    for record in reversed(records):
        if len(record) + RECORD_OVERHEAD > budget:
            break
        budget -= len(record) + RECORD_OVERHEAD
        kept += 1
    return pack_records(KIND, FORMAT_VERSION, records[len(records) - kept :])


def _read(path: Path) -> list[Edit]:
    loaded = load_records(
        path, KIND, FORMAT_VERSION, _decode, what="edit history", legacy=_is_unframed
    )
    return loaded.records if loaded is not None else []


def _decode(payload: bytes) -> Edit:
    return _edit(msgpack.unpackb(payload, raw=False, unicode_errors="surrogatepass"))


def _is_unframed(data: bytes) -> bool:
    """Whether `data` is a history of version 1 (one msgpack map): rebuilt, not quarantined."""
    content = msgpack.unpackb(data, raw=False, strict_map_key=True)
    return isinstance(content, dict) and content.get("format") == FORMAT


def _edit(record: Any) -> Edit:
    if not isinstance(record, list) or len(record) != len(_FIELDS):
        raise ValueError("record of the wrong shape")
    values: dict[str, Any] = {}
    for (name, kind), value in zip(_FIELDS, record, strict=True):
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise TypeError(f"{name} is {type(value).__name__}, not {kind.__name__}")
        values[name] = value
    return Edit(**values)

