"""`nextab bench accept PATH...`: offline acceptance rate, from a simulated person typing real code.

A person is replayed typing segments of real files through the real server: `nextab serve`
runs as a subprocess and is driven over stdio LSP (pygls's client), exactly as an editor drives
it, so prompt building, edit history, caching, stop rules and trimming are all measured.

Stages, each a small pure function where it can be one (the dataclasses pass between them):

1. files: PATH arguments -> readable source files with a tree-sitter language (`find_files`);
2. segments: `--files` files x `--segments-per-file` runs of `--segment-lines` whole lines,
   chosen by `--seed` (`select_segments`);
3. triggers: where the person pauses and the editor asks, a function of the segment's text
   only, so every configuration sees the same candidate points (`trigger_offsets`);
4. replay: open the file minus the segment, type it one character per didChange, ask for an
   inline completion at each trigger, accept (whole, word by word, or the first line) as the
   person would (`decide`), and skip the accepted characters (`replay_segment`);
5. metrics from the per-trigger records (`metrics`), then JSON, a Markdown report and a plot.

Typing model. A segment is L whole lines. The document is opened with the file minus the
segment but keeping one line break, and the cursor on that empty line: the person pressed
Enter and types the segment's lines (without their last line break, which is already there).
Typing one character is one incremental didChange with a one-character insert range at the
cursor, in UTF-16 code units, version +1 each time; an acceptance is one didChange (Tab).
Suggestions are judged against the rest of the segment with its last line break (a suggestion
that ends the segment's last line with "\n" is right); that line break is never inserted twice.

CPR (characters persisting): accepted characters still in the final text / accepted characters
inserted. Under `--accept exact` a suggestion is only ever taken where it matches what is typed
next, so nothing accepted is deleted and CPR is 1.0 by construction; under `--accept
first-line` the person takes a whole multi-line suggestion whose first line is right and
deletes the wrong tail, and CPR measures that throw-away.

Resume: each finished (configuration, segment) appends one JSON line to `STATE/<config>.jsonl`;
a rerun with the same options skips those and computes the metrics from all records, so an
interrupted and resumed run reports what an uninterrupted one does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import re
import shlex
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from nextab.acceptance import percentile
from nextab.context.document import Document, Position, Range, split_lines
from nextab.context.languages import SPECS, spec_named
from nextab.models.backend import common_prefix_length

log = logging.getLogger(__name__)

TRIGGER_RULES = ("line-start", ".", "(", "=", "space")
DEFAULT_TRIGGERS = ",".join(TRIGGER_RULES)
# A benchmark must never write the user's acceptance log nor push next-edit suggestions, and
# with a workspace its typing must not reach the persisted edit history (nor come from it).
BASE_OPTIONS: dict[str, Any] = {
    "acceptanceLog": False,
    "nextEdit": {"push": False},
    "context": {"persist": False},
}
INDEX_WAIT_S = 600  # the most a workspace's indexing is waited for before the replay starts
# Loading may convert and export the model first (minutes on 2 cores), but a server that never
# gets there must not hang the benchmark.
LOAD_WAIT_S = 1800
# Folders a plain walk (outside git) never enters: dependencies and environments.
SKIP_DIRS = frozenset({"node_modules", "venv", "env", "virtualenv", "__pycache__", "site-packages"})
_EXTENSIONS = {ext: spec.name for spec in SPECS for ext in spec.extensions}
_COMMENT_PREFIXES = {"python": ("#",)}
_C_COMMENTS = ("//", "/*", "*", "*/")

# One "accept next word" step (VS Code's Ctrl+Right on ghost text): optional leading whitespace
# (line breaks included), then one run of word characters or one run of punctuation; or, at the
# very end of the suggestion, its trailing whitespace.
WORD_STEP = re.compile(r"\s*(?:\w+|[^\w\s]+)|\s+\Z")

AcceptMode = Literal["exact", "first-line"]
OutcomeKind = Literal["none", "rejected", "full", "partial", "first_line"]
_clock = time.perf_counter  # the latency clock, client-side (a test makes it deterministic)
REQUEST_TIMEOUT_S = 300


class BenchError(Exception):
    """A problem with the benchmark's inputs or options: reported, exit code 2."""


class ReplayError(AssertionError):
    """The replay's document diverged from the file: a bug in the benchmark, never in the model."""


# ---------------------------------------------------------------------------------------------
# Files and segments


@dataclass(frozen=True)
class SourceFile:
    path: str  # as found (relative to the PATH argument it came from, joined onto it)
    language: str
    text: str


@dataclass(frozen=True)
class Segment:
    path: str
    language: str
    start_line: int  # 0-based, the segment's first line
    open_text: str  # what didOpen sends: the file minus the segment (one line break kept)
    start: int  # offset of the cursor (the segment's start) in open_text
    typed: str  # what the person types there
    original: str  # the file: what the document must be at the end

    @property
    def id(self) -> str:
        return f"{self.path}:{self.start_line + 1}"

    @property
    def uri(self) -> str:
        return Path(self.path).resolve().as_uri()

    @property
    def tail(self) -> str:
        """The segment's last line break, already in the document after the cursor ("" at
        the end of a file without one)."""
        end = self.start + len(self.typed)
        return self.original[end : end + 1]

    @property
    def language_id(self) -> str:
        """What an editor sends in didOpen ("typescriptreact" for tsx, ...)."""
        spec = spec_named(self.language)
        return spec.language_ids[0] if spec is not None and spec.language_ids else self.language


def language_of(path: str) -> str | None:
    return _EXTENSIONS.get(os.path.splitext(path)[1].lower())


def _git_files(folder: Path) -> list[Path] | None:
    """The tracked files under `folder` when it is in a git work tree, else None."""
    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "ls-files", "-z"],
            capture_output=True, check=True, timeout=60,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return [folder / name for name in out.decode("utf-8", "surrogateescape").split("\0") if name]


def _walk_files(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        # Hidden folders (.git, .venv), dependencies and environments are not the user's code.
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and "venv" not in d
        )
        found.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
    return found


def candidate_paths(paths: Iterable[str]) -> list[Path]:
    """Files named or under the folders named, with a known language, sorted, no duplicates."""
    out: dict[str, Path] = {}
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            listed = _git_files(p)
            listed = _walk_files(p) if listed is None else listed
        elif p.is_file():
            listed = [p]
        else:
            log.warning("bench accept: %s: no such file or folder; skipped", raw)
            continue
        for f in listed:
            if language_of(f.name) is not None:
                out.setdefault(str(f.resolve()), f)
    return [out[k] for k in sorted(out)]


def read_source(path: Path, max_bytes: int) -> SourceFile | None:
    """The file as text, or None (logged) when it is too big, binary or not UTF-8."""
    language = language_of(path.name)
    try:
        if language is None:
            raise ValueError("no tree-sitter language for its extension")
        if path.stat().st_size > max_bytes:
            raise ValueError(f"larger than --max-file-bytes {max_bytes}")
        data = path.read_bytes()
        if b"\0" in data:
            raise ValueError("binary (NUL bytes)")
        text = data.decode("utf-8")
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        log.warning("bench accept: %s skipped: %s", path, error)
        return None
    return SourceFile(str(path), language, text)


def _is_comment_or_blank(line: str, language: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith(_COMMENT_PREFIXES.get(language, _C_COMMENTS))


def segment_starts(lines: Sequence[str], language: str, length: int) -> list[int]:
    """Lines where a segment of `length` lines may start: a non-blank first line, and not
    only blanks and comments (nothing a person would want completed)."""
    starts = []
    for i in range(len(lines) - length + 1):
        window = lines[i : i + length]
        if window[0].strip() and not all(_is_comment_or_blank(w, language) for w in window):
            starts.append(i)
    return starts


def make_segment(source: SourceFile, start_line: int, length: int) -> Segment:
    lines = split_lines(source.text)
    start = sum(len(line) for line in lines[:start_line])
    seg = "".join(lines[start_line : start_line + length])
    before, after = source.text[:start], source.text[start + len(seg) :]
    # The person pressed Enter first: the segment's last line break is already there and the
    # cursor sits on an empty line, as when writing new code between existing lines.
    keep = "\n" if seg.endswith("\n") else ""
    typed = seg[: len(seg) - len(keep)]
    return Segment(source.path, source.language, start_line, before + keep + after, start, typed, source.text)


def select_segments(
    paths: Sequence[Path], *, files: int, per_file: int, lines: int, seed: int, max_bytes: int
) -> list[Segment]:
    """`files` files in a seeded random order (skipping unreadable ones and those without a
    place for a segment), `per_file` non-overlapping segments each; deterministic in `seed`."""
    rng = random.Random(seed)
    order = list(paths)
    rng.shuffle(order)
    chosen: list[Segment] = []
    taken_files = 0
    for path in order:
        if taken_files >= files:
            break
        source = read_source(path, max_bytes)
        if source is None:
            continue
        starts = segment_starts(split_lines(source.text), source.language, lines)
        rng.shuffle(starts)
        picked: list[int] = []
        for s in starts:
            if len(picked) >= per_file:
                break
            if all(abs(s - p) >= lines for p in picked):
                picked.append(s)
        if picked:
            taken_files += 1
            chosen.extend(make_segment(source, s, lines) for s in sorted(picked))
    return chosen


# ---------------------------------------------------------------------------------------------
# Triggers


def parse_triggers(spec: str) -> frozenset[str]:
    rules = frozenset(r.strip() for r in spec.split(",") if r.strip())
    unknown = rules - set(TRIGGER_RULES)
    if unknown:
        raise BenchError(f"--triggers: unknown {sorted(unknown)}; known: {DEFAULT_TRIGGERS}")
    return rules


def trigger_offsets(text: str, rules: frozenset[str], *, every: int = 0, min_gap: int = 0) -> tuple[int, ...]:
    """Offsets into `text` (the segment) where the editor asks for a suggestion: the cursor is
    after text[:offset]. Computed from the text alone so every configuration shares them.

    line-start: at each non-blank line's first non-blank column (after the indentation);
    ".", "(", "=": right after that character; space: right after a space past the
    indentation; every N: after each N characters. A candidate closer than `min_gap`
    characters after the previous kept one is dropped (the editor debounces). None at the end
    of the text: nothing is left to suggest.
    """
    points: set[int] = set()
    line_start = 0
    for line in text.split("\n"):
        indent = len(line) - len(line.lstrip(" \t"))
        if "line-start" in rules and line.strip():
            points.add(line_start + indent)
        for j, c in enumerate(line):
            if c in rules or (c == " " and "space" in rules and j >= indent):
                points.add(line_start + j + 1)
        line_start += len(line) + 1
    if every > 0:
        points.update(range(every, len(text), every))
    kept: list[int] = []
    for p in sorted(q for q in points if q < len(text)):
        if not kept or p - kept[-1] >= min_gap:
            kept.append(p)
    return tuple(kept)


# ---------------------------------------------------------------------------------------------
# The person's decision (pure)


@dataclass(frozen=True)
class Decision:
    kind: OutcomeKind
    insert: str = ""  # what one Tab inserts at the cursor
    keep: int = 0  # of which the first `keep` characters stay; the rest is deleted again


def word_prefix(suggestion: str, rest: str) -> str:
    """The longest run of whole accept-next-word steps (WORD_STEP) of `suggestion` that is
    still a prefix of `rest`: what a person taking it word by word keeps."""
    taken, at = "", 0
    while at < len(suggestion):
        step = WORD_STEP.match(suggestion, at)
        if step is None or step.end() == at:
            break
        if not rest.startswith(suggestion[: step.end()]):
            break
        taken, at = suggestion[: step.end()], step.end()
    return taken


def decide(suggestion: str, rest: str, mode: AcceptMode = "exact") -> Decision:
    """What the person does with a shown suggestion, knowing what they type next (`rest`)."""
    if not suggestion.strip():
        return Decision("none")
    if rest.startswith(suggestion):
        return Decision("full", suggestion, len(suggestion))
    if mode == "first-line" and "\n" in suggestion:
        first = suggestion[: suggestion.index("\n") + 1]
        if rest.startswith(first):
            # Read the first line, pressed Tab, then deleted what goes wrong after it.
            return Decision("first_line", suggestion, common_prefix_length(suggestion, rest))
    taken = word_prefix(suggestion, rest)
    if taken:
        return Decision("partial", taken, len(taken))
    return Decision("rejected")


def first_line(text: str) -> str:
    return text.split("\n", 1)[0]


# ---------------------------------------------------------------------------------------------
# Replay


class Server(Protocol):
    """What the replay needs of a server; `LspServer` is the real one, tests use fakes."""

    def open(self, uri: str, language_id: str, text: str) -> None: ...
    def change(self, uri: str, version: int, range: Range, text: str) -> None: ...
    def close(self, uri: str) -> None: ...

    # The suggestion at `position`: its text, or its text and the end of the range it
    # replaces (the start is the cursor); "" when nothing is shown.
    async def suggest(self, uri: str, position: Position) -> str | tuple[str, Position]: ...


@dataclass(frozen=True)
class Outcome:
    """One request at one trigger: what was shown and what the person did with it."""

    at: int  # offset in the segment
    latency_ms: float
    suggestion: str
    kind: OutcomeKind
    accepted: int  # characters accepted and kept
    inserted: int  # characters inserted by the acceptance (> accepted after a first-line fix)
    line_match: bool  # the suggestion's first line is the rest of the current line


@dataclass(frozen=True)
class SegmentResult:
    segment: str
    path: str
    language: str
    chars_total: int
    accepted_inserted: int
    accepted_kept: int
    triggers: tuple[Outcome, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(raw: dict[str, Any]) -> SegmentResult:
        triggers = tuple(Outcome(**t) for t in raw["triggers"])
        return SegmentResult(**{**raw, "triggers": triggers})


class _Typist:
    """The editor's side of one segment: the document, its version, and who wrote each
    character of the typed region (None: typed; an int: the suggestion it came from)."""

    def __init__(self, server: Server, segment: Segment) -> None:
        self.server, self.segment = server, segment
        self.doc = Document(segment.uri, segment.open_text)
        self.version = 1
        self.origin: list[int | None] = []
        self.inserted_by_suggestion = 0

    @property
    def cursor(self) -> int:
        return self.segment.start + len(self.origin)

    def insert(self, text: str, source: int | None) -> None:
        at = self.doc.position_at(self.cursor)
        self._send(Range(at, at), text)
        self.origin.extend([source] * len(text))
        if source is not None:
            self.inserted_by_suggestion += len(text)

    def delete_back_to(self, length: int) -> None:
        """Delete the typed region's characters after its first `length` (cursor at the end)."""
        start, end = self.doc.position_at(self.segment.start + length), self.doc.position_at(self.cursor)
        self._send(Range(start, end), "")
        del self.origin[length:]

    def _send(self, range: Range, text: str) -> None:
        self.version += 1
        self.doc.apply_change(text, range, self.version)
        self.server.change(self.segment.uri, self.version, range, text)

    def shown_text(self, answer: str | tuple[str, Position]) -> str:
        """The suggestion as an insertion at the cursor. A range ending past the cursor
        replaces characters there (auto-closed brackets): when the suggestion ends with
        them, they are part of what it asserts follows and the insertion is the rest."""
        if isinstance(answer, str):
            return answer
        text, end = answer
        replaced = self.doc.text[self.cursor : self.doc.offset_at(end, clamp=True)]
        if replaced and text.endswith(replaced):
            return text[: len(text) - len(replaced)]
        return text


async def replay_segment(
    server: Server,
    segment: Segment,
    triggers: Iterable[int],
    mode: AcceptMode = "exact",
    warm: bool = False,
) -> SegmentResult:
    """Type `segment` into `server`, asking at `triggers` (offsets in the segment) and taking
    suggestions as `decide` says; the final document must be the original file.

    `warm`: one untimed, uncounted request right after didOpen, so that the first counted
    request does not pay for computing the whole file's prompt from scratch (as in an editor
    where the file has been open a while)."""
    typist = _Typist(server, segment)
    points = set(triggers)
    typed = segment.typed
    outcomes: list[Outcome] = []
    server.open(segment.uri, segment.language_id, segment.open_text)
    try:
        if warm:
            await server.suggest(segment.uri, typist.doc.position_at(typist.cursor))
        i = 0
        asked_at = -1
        while i <= len(typed):
            # A trigger point inside accepted text is never reached: `i` jumps over it.
            if i in points and i != asked_at:
                asked_at = i
                outcome = await _ask(typist, i, mode, len(outcomes))
                outcomes.append(outcome)
                if outcome.accepted:
                    i += outcome.accepted
                    continue  # the cursor moved past the accepted text: maybe a trigger there
            if i == len(typed):
                break
            typist.insert(typed[i], None)
            i += 1
    finally:
        server.close(segment.uri)
    if typist.doc.text != segment.original:
        raise ReplayError(f"{segment.id}: the replayed document differs from the file")
    kept = sum(1 for o in typist.origin if o is not None)
    return SegmentResult(
        segment.id, segment.path, segment.language, len(typed),
        typist.inserted_by_suggestion, kept, tuple(outcomes),
    )  # fmt: skip


async def _ask(typist: _Typist, i: int, mode: AcceptMode, suggestion_id: int) -> Outcome:
    rest = typist.segment.typed[i:]
    position = typist.doc.position_at(typist.cursor)
    started = _clock()
    answer = await typist.server.suggest(typist.segment.uri, position)
    latency_ms = (_clock() - started) * 1000
    text = typist.shown_text(answer)
    # Judged against the segment with its last line break, as the person would write it: a
    # suggestion that ends the last line with "\n" is right. That line break is already in
    # the document, so what is kept stops before it (a first-line fix deletes its copy).
    decision = decide(text, rest + typist.segment.tail, mode)
    keep = min(decision.keep, len(rest))
    insert = decision.insert if decision.kind == "first_line" else decision.insert[:keep]
    if insert:
        typist.insert(insert, suggestion_id)
        if keep < len(insert):
            typist.delete_back_to(i + keep)
    return Outcome(
        at=i,
        latency_ms=round(latency_ms, 3),
        suggestion=text,
        kind=decision.kind,
        accepted=keep,
        inserted=len(insert),
        line_match=decision.kind != "none" and first_line(text) == first_line(rest),
    )


# ---------------------------------------------------------------------------------------------
# The real server over stdio LSP


class LspServer:
    """`nextab serve` as a subprocess, driven by pygls's client as an editor drives it."""

    def __init__(self, client: Any, stderr_tail: deque[str], drain: asyncio.Task[None]) -> None:
        self.client = client
        self.stderr_tail = stderr_tail
        self._drain = drain

    @classmethod
    async def start(
        cls, model: str, device: str, options: dict[str, Any], root: str | None = None,
        log: Path | None = None,
    ) -> LspServer:
        """Start the server; with `root`, as an editor opened on that folder: the server
        indexes it (waited for) and serves repository context from it. With `log`, its
        stderr (one line per completion, with the prompt's and the stages' figures) is
        appended to that file."""
        from lsprotocol import types
        from pygls.lsp.client import LanguageClient

        client = LanguageClient("nextab-bench-accept", "1")
        errors: list[str] = []

        @client.feature(types.WINDOW_SHOW_MESSAGE)
        def show_message(ls: Any, params: types.ShowMessageParams) -> None:
            if params.type == types.MessageType.Error:
                errors.append(params.message)
            else:
                log.warning("server: %s", params.message)

        @client.feature(types.WINDOW_LOG_MESSAGE)
        def log_message(ls: Any, params: types.LogMessageParams) -> None:
            log.debug("server: %s", params.message)

        # Indexing progress, as an editor shows it; here, only acknowledged.
        @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def progress_create(ls: Any, params: types.WorkDoneProgressCreateParams) -> None:
            return None

        @client.feature(types.PROGRESS)
        def progress(ls: Any, params: types.ProgressParams) -> None:
            log.debug("server progress: %s", params.value)

        await client.start_io(sys.executable, "-m", "nextab", "serve", "--model", model, "--device", device)
        # pygls pipes the server's stderr and never reads it: a full pipe would stall the
        # server mid-benchmark, so it is drained here (the tail explains a failure).
        tail: deque[str] = deque(maxlen=40)
        drain = asyncio.create_task(_drain(client._server.stderr, tail, log))
        server = cls(client, tail, drain)
        root_uri = Path(root).resolve().as_uri() if root else None
        await client.initialize_async(
            types.InitializeParams(
                capabilities=types.ClientCapabilities(),
                initialization_options=options,
                process_id=os.getpid(),
                root_uri=root_uri,
                workspace_folders=[types.WorkspaceFolder(root_uri, Path(root).name)] if root else None,
            )
        )
        client.initialized(types.InitializedParams())
        await server._wait_ready(errors)
        if root:
            await server._wait_indexed()
        return server

    async def _wait_indexed(self) -> None:
        """Wait for the workspace index, so that every segment gets the same repository
        context; a configuration that does not index (context.index off) waits 10 s at most."""
        started = time.monotonic()
        while time.monotonic() - started < INDEX_WAIT_S:
            indexing = _get(await self.client.protocol.send_request_async("nextab/status", None), "indexing")
            if _get(indexing, "finished"):
                return
            if indexing is None and time.monotonic() - started > 10:
                return
            await asyncio.sleep(0.5)
        log.warning("bench accept: indexing unfinished after %d s; replaying anyway", INDEX_WAIT_S)

    async def _wait_ready(self, errors: list[str]) -> None:
        """Wait for the model, then one untimed request, so no latency counts loading."""
        deadline = time.monotonic() + LOAD_WAIT_S
        while True:
            left = deadline - time.monotonic()
            status = None
            if left > 0:
                request = self.client.protocol.send_request_async("nextab/status", None)
                with contextlib.suppress(TimeoutError):
                    status = await asyncio.wait_for(request, timeout=min(left, 60))
            state = _get(status, "state")
            if state == "ready":
                break
            if left <= 0 or state == "failed" or self.client._server.returncode is not None:
                await self.stop()
                message = "; ".join(errors) or _get(status, "error") or "\n".join(self.stderr_tail)
                if left <= 0:
                    message = f"not ready after {LOAD_WAIT_S} s ({message or 'no error reported'})"
                raise BenchError(f"the server could not load the model: {message}")
            await asyncio.sleep(0.2)
        uri = Path(os.getcwd(), "nextab-bench-warmup.py").as_uri()
        self.open(uri, "python", "def add(a, b):\n    return \n")
        await self.suggest(uri, Position(1, 11))
        self.close(uri)

    def open(self, uri: str, language_id: str, text: str) -> None:
        from lsprotocol import types

        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                text_document=types.TextDocumentItem(uri=uri, language_id=language_id, version=1, text=text)
            )
        )

    def change(self, uri: str, version: int, range: Range, text: str) -> None:
        from lsprotocol import types

        lsp_range = types.Range(
            types.Position(range.start.line, range.start.character),
            types.Position(range.end.line, range.end.character),
        )
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[types.TextDocumentContentChangePartial(range=lsp_range, text=text)],
            )
        )

    def close(self, uri: str) -> None:
        from lsprotocol import types

        self.client.text_document_did_close(
            types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri))
        )

    async def inline_completion(self, uri: str, position: Position) -> Any:
        """The server's answer as it came: None for a superseded request."""
        from lsprotocol import types

        request = self.client.text_document_inline_completion_async(
            types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(position.line, position.character),
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Automatic
                ),
            )
        )
        try:
            # A server that died or hangs must end the run, not stall it forever.
            return await asyncio.wait_for(request, REQUEST_TIMEOUT_S)
        except TimeoutError:
            tail = "\n".join(self.stderr_tail)
            raise BenchError(f"no answer in {REQUEST_TIMEOUT_S} s; the server's log ends:\n{tail}") from None

    async def suggest(self, uri: str, position: Position) -> str | tuple[str, Position]:
        from lsprotocol import types

        result = await self.inline_completion(uri, position)
        items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
        if not items or not isinstance(items[0].insert_text, str):
            return ""
        item = items[0]
        if item.range is None:
            return item.insert_text
        end = item.range.end
        return item.insert_text, Position(end.line, end.character)

    async def stop(self) -> None:
        client = self.client
        if client._server is not None and client._server.returncode is None:
            try:
                await asyncio.wait_for(client.shutdown_async(None), 30)
                client.exit(None)
                await asyncio.wait_for(client._server.wait(), 30)
            except Exception as error:  # never leave a server behind
                log.warning("bench accept: server did not shut down cleanly (%s); killing it", error)
                client._server.kill()
        await client.stop()
        await self._drain


async def _drain(stream: asyncio.StreamReader | None, tail: deque[str], log: Path | None = None) -> None:
    if stream is None:
        return
    with open(log, "a", encoding="utf-8") if log is not None else contextlib.nullcontext() as out:
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").rstrip()
            tail.append(text)
            if out is not None:
                out.write(text + "\n")
                out.flush()


def _get(obj: Any, *keys: str) -> Any:
    """A field of a JSON-RPC result, whether pygls gives a dict or an object."""
    for key in keys:
        if obj is None:
            return None
        obj = obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
    return obj


# ---------------------------------------------------------------------------------------------
# Metrics


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def metrics(results: Sequence[SegmentResult], typing_speed: float) -> dict[str, Any]:
    """The metrics of a set of replayed segments (see the module's docstring and the README)."""
    outcomes = [o for r in results for o in r.triggers]
    shown = [o for o in outcomes if o.kind != "none"]
    full = sum(o.kind == "full" for o in shown)
    partial = sum(o.kind in ("partial", "first_line") for o in shown)
    chars_accepted = sum(o.accepted for o in shown)
    chars_total = sum(r.chars_total for r in results)
    latencies = [o.latency_ms for o in outcomes]
    keystroke_ms = 1000 / typing_speed
    inserted = sum(r.accepted_inserted for r in results)
    return {
        "segments": len(results),
        "triggers": len(outcomes),
        "shown": len(shown),
        "shown_per_trigger": _ratio(len(shown), len(outcomes)),
        "accepted_full": full,
        "accepted_partial": partial,
        "acceptance_rate": _ratio(full + partial, len(shown)),
        "full_acceptance_rate": _ratio(full, len(shown)),
        "chars_accepted": chars_accepted,
        "chars_total": chars_total,
        "chars_saved_per_100": round(100 * chars_accepted / chars_total, 2) if chars_total else None,
        "exact_line_match": _ratio(sum(o.line_match for o in shown), len(shown)),
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "mean": round(sum(latencies) / len(latencies), 1) if latencies else None,
        },
        "too_late": _ratio(sum(lat > keystroke_ms for lat in latencies), len(latencies)),
        "cpr": _ratio(sum(r.accepted_kept for r in results), inserted),
    }


def summarize(results: Sequence[SegmentResult], typing_speed: float) -> dict[str, Any]:
    languages = sorted({r.language for r in results})
    return {
        "overall": metrics(results, typing_speed),
        "by_language": {
            lang: metrics([r for r in results if r.language == lang], typing_speed) for lang in languages
        },
    }


# ---------------------------------------------------------------------------------------------
# Options, state and resume


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", metavar="PATH", nargs="+", help="files or folders (git: tracked files)")
    parser.add_argument("--files", type=int, default=20, help="files sampled (default 20)")
    parser.add_argument("--segments-per-file", type=int, default=2, help="segments per file (default 2)")
    parser.add_argument("--segment-lines", type=int, default=6, help="whole lines per segment (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--max-file-bytes", type=int, default=200_000, help="larger files are skipped")
    parser.add_argument(
        "--triggers", default=DEFAULT_TRIGGERS, help=f"when to ask, comma list (default {DEFAULT_TRIGGERS})"
    )
    parser.add_argument("--every", type=int, default=0, help="also ask every N characters (0: off)")
    parser.add_argument("--min-gap", type=int, default=4, help="characters between two requests (default 4)")
    parser.add_argument(
        "--accept", choices=["exact", "first-line"], default="exact",
        help="exact: take what matches; first-line: also take a multi-line suggestion whose first "
        "line matches, then delete the wrong tail",
    )  # fmt: skip
    parser.add_argument(
        "--warm", action="store_true",
        help="one uncounted request after opening each segment's file (no cold prompt in the latency)",
    )  # fmt: skip
    parser.add_argument(
        "--typing-speed", type=float, default=5.0, help="characters per second, for too_late (default 5)"
    )
    parser.add_argument(
        "--config", action="append", metavar="NAME=JSON", dest="configs",
        help="a configuration: JSON merged into initializationOptions (repeatable; default: default={})",
    )  # fmt: skip
    parser.add_argument(
        "--workspace", metavar="DIR",
        help="start the servers on this folder, as an editor opened on it: repository context",
    )  # fmt: skip
    parser.add_argument("--model", default="embedded", help="passed to every server (default embedded)")
    parser.add_argument("--device", default="auto", help="passed to every server (default auto)")
    parser.add_argument("--out", metavar="FILE", help="write the JSON here (default: stdout)")
    parser.add_argument("--report", metavar="FILE.md", help="write a Markdown report")
    parser.add_argument("--plot", metavar="FILE.png", help="plot acceptance rate vs latency p50 (matplotlib)")
    parser.add_argument(
        "--state", metavar="DIR",
        help="resume folder (default: next to --out, else .nextab-bench-accept)",
    )  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="discard the state folder's records first")
    # For tests and scripted interruption: stop after this many newly replayed pairs.
    parser.add_argument("--limit-pairs", type=int, default=None, help=argparse.SUPPRESS)


@dataclass(frozen=True)
class Plan:
    segments: tuple[Segment, ...]
    triggers: dict[str, tuple[int, ...]]  # per segment id
    configs: dict[str, dict[str, Any]]  # name -> initializationOptions
    options: dict[str, Any]  # what the results depend on (hashed for resume)
    state: Path


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, nested objects merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_configs(specs: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    configs: dict[str, dict[str, Any]] = {}
    for spec in specs or ["default={}"]:
        name, sep, raw = spec.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise BenchError(f"--config {spec!r}: expected NAME=JSON, NAME of letters, digits, _.-")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as error:
            raise BenchError(f"--config {name}: not valid JSON: {error}") from None
        if not isinstance(value, dict):
            raise BenchError(f"--config {name}: expected a JSON object")
        if name in configs:
            raise BenchError(f"--config {name} given twice")
        configs[name] = merge(BASE_OPTIONS, value)
    return configs


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state:
        return Path(args.state)
    if args.out:
        out = Path(args.out)
        return out.with_name(out.name + ".state")
    return Path(".nextab-bench-accept")


def make_plan(args: argparse.Namespace) -> Plan:
    for name in ("files", "segments_per_file", "segment_lines"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be at least 1")
    if args.typing_speed <= 0:
        raise BenchError("--typing-speed must be positive")
    if args.workspace and not Path(args.workspace).is_dir():
        raise BenchError(f"--workspace {args.workspace}: not a folder")
    rules = parse_triggers(args.triggers)
    configs = parse_configs(args.configs)
    paths = candidate_paths(args.paths)
    segments = select_segments(
        paths, files=args.files, per_file=args.segments_per_file, lines=args.segment_lines,
        seed=args.seed, max_bytes=args.max_file_bytes,
    )  # fmt: skip
    if not segments:
        raise BenchError("no usable source files (known languages, UTF-8, small enough) in the PATHs")
    options = {
        "paths": [str(Path(p).resolve()) for p in args.paths],
        **{k: getattr(args, k) for k in (
            "files", "segments_per_file", "segment_lines", "seed", "max_file_bytes", "triggers",
            "every", "min_gap", "accept", "typing_speed", "warm", "model", "device",
        )},
        "workspace": str(Path(args.workspace).resolve()) if args.workspace else None,
        "configs": configs,
    }  # fmt: skip
    triggers = {
        s.id: trigger_offsets(s.typed, rules, every=args.every, min_gap=args.min_gap) for s in segments
    }
    return Plan(tuple(segments), triggers, configs, options, _state_dir(args))


def options_hash(options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]


def prepare_state(plan: Plan, fresh: bool) -> None:
    """Create the state folder, or check that its records were made with the same options."""
    marker = plan.state / "options.json"
    digest = options_hash(plan.options)
    if fresh and plan.state.exists():
        for name in plan.configs:
            (plan.state / f"{name}.jsonl").unlink(missing_ok=True)
            (plan.state / f"{name}.server.log").unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
    if marker.exists():
        try:
            stored = json.loads(marker.read_text()).get("hash")
        except (OSError, ValueError, AttributeError):
            stored = None
        if stored != digest:
            raise BenchError(
                f"{plan.state} holds records of a run with other options: "
                "give another --state folder, or --fresh to discard them"
            )
        return
    plan.state.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"hash": digest, "options": plan.options}, indent=2) + "\n")


def load_records(path: Path) -> dict[str, SegmentResult]:
    """Finished segments from a config's records; a torn last line (killed mid-write) is ignored."""
    done: dict[str, SegmentResult] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            result = SegmentResult.from_json(json.loads(line))
        except (ValueError, TypeError, KeyError):
            log.warning("bench accept: %s: an unreadable record skipped", path)
            continue
        done[result.segment] = result
    return done


def append_record(path: Path, result: SegmentResult) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")  # one write per line
        f.flush()


# ---------------------------------------------------------------------------------------------
# Running


ServerFactory = Callable[..., Awaitable[Any]]


class _Stopped(Exception):
    """--limit-pairs reached: the run stops here, to be resumed."""


async def run_config(
    plan: Plan,
    name: str,
    start_server: ServerFactory,
    *,
    progress: Any,
    budget: list[int] | None,
) -> list[SegmentResult]:
    """All segments under one configuration: one server, started only if something is left."""
    path = plan.state / f"{name}.jsonl"
    done = load_records(path)
    progress.update(sum(s.id in done for s in plan.segments))
    todo = [s for s in plan.segments if s.id not in done]
    if todo and budget is not None and budget[0] <= 0:
        raise _Stopped
    if todo:
        server = await start_server(
            plan.options["model"], plan.options["device"], plan.configs[name],
            log=plan.state / f"{name}.server.log",
        )
        try:
            for segment in todo:
                if budget is not None and budget[0] <= 0:
                    raise _Stopped
                mode: AcceptMode = plan.options["accept"]
                triggers = plan.triggers[segment.id]
                result = await replay_segment(server, segment, triggers, mode, plan.options["warm"])
                append_record(path, result)
                done[segment.id] = result
                progress.update(1)
                if budget is not None:
                    budget[0] -= 1
        finally:
            await server.stop()
    return [done[s.id] for s in plan.segments]


async def run_plan(
    plan: Plan, start_server: ServerFactory, limit_pairs: int | None
) -> dict[str, list[SegmentResult]]:
    from tqdm import tqdm

    budget = [limit_pairs] if limit_pairs is not None else None
    results: dict[str, list[SegmentResult]] = {}
    total = len(plan.configs) * len(plan.segments)
    with tqdm(total=total, desc="bench accept", unit="segment", file=sys.stderr) as progress:
        for name in plan.configs:  # one after another: each is CPU- or GPU-bound on its own
            progress.set_postfix_str(name)
            results[name] = await run_config(plan, name, start_server, progress=progress, budget=budget)
    return results


def build_output(plan: Plan, results: dict[str, list[SegmentResult]]) -> dict[str, Any]:
    speed = plan.options["typing_speed"]
    return {
        "options": plan.options,
        "segments": [s.id for s in plan.segments],
        "configs": {
            name: {"initialization_options": plan.configs[name], **summarize(res, speed)}
            for name, res in results.items()
        },
    }


def run(args: argparse.Namespace, *, start_server: ServerFactory | None = None) -> int:
    """`nextab bench accept`: returns the exit code (0 done, 2 bad input, 3 stopped early)."""
    try:
        plan = make_plan(args)
        prepare_state(plan, args.fresh)
    except BenchError as error:
        print(f"nextab bench accept: {error}", file=sys.stderr)
        return 2
    try:
        factory = start_server or functools.partial(LspServer.start, root=plan.options["workspace"])
        results = asyncio.run(run_plan(plan, factory, args.limit_pairs))
    except BenchError as error:
        print(f"nextab bench accept: {error}", file=sys.stderr)
        return 2
    except _Stopped:
        print(
            f"nextab bench accept: stopped after {args.limit_pairs} segments; "
            f"rerun with the same options to resume from {plan.state}",
            file=sys.stderr,
        )
        return 3
    output = build_output(plan, results)
    text = json.dumps(output, indent=2, ensure_ascii=False) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if args.report:
        command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        Path(args.report).write_text(render_report(output, command), encoding="utf-8")
    if args.plot:
        plot(output, Path(args.plot))
    return 0


# ---------------------------------------------------------------------------------------------
# Report and plot

_COLUMNS = (
    ("triggers", "triggers"), ("shown", "shown"), ("shown_per_trigger", "shown/trigger"),
    ("acceptance_rate", "CAR"), ("full_acceptance_rate", "full"), ("accepted_partial", "partial"),
    ("chars_saved_per_100", "chars saved/100"), ("exact_line_match", "line match"),
    ("latency_p50", "p50 ms"), ("latency_p95", "p95 ms"), ("too_late", "too late"), ("cpr", "CPR"),
)  # fmt: skip


def _cell(m: dict[str, Any], key: str) -> str:
    value = m["latency_ms"][key.split("_")[1]] if key.startswith("latency_") else m[key]
    if value is None:
        return "-"
    if key in ("acceptance_rate", "full_acceptance_rate", "exact_line_match", "too_late", "cpr", "shown_per_trigger"):
        return f"{value:.1%}"
    return str(value)


def _table(rows: list[tuple[str, dict[str, Any]]], first: str) -> list[str]:
    lines = [
        "| " + " | ".join([first, *(title for _, title in _COLUMNS)]) + " |",
        "|" + "---|" * (len(_COLUMNS) + 1),
    ]
    for label, m in rows:
        lines.append("| " + " | ".join([label, *(_cell(m, key) for key, _ in _COLUMNS)]) + " |")
    return lines


def render_report(output: dict[str, Any], command: str) -> str:
    configs = output["configs"]
    lines = [
        "# nextab bench accept",
        "",
        f"{len(output['segments'])} segments, {len(configs)} configuration(s).",
        "CAR = (full + partial) / shown; CPR = accepted characters kept / inserted "
        "(1.0 by construction under --accept exact).",
        "Latency is measured by the client around each request; without --warm the first request "
        "of each segment also computes the file's prompt from scratch.",
        "",
        "## Configurations",
        "",
        *_table([(name, c["overall"]) for name, c in configs.items()], "config"),
        "",
        "## Per language",
        "",
        *_table(
            [(f"{name} / {lang}", m) for name, c in configs.items() for lang, m in c["by_language"].items()],
            "config / language",
        ),
        "",
        "## Command",
        "",
        "```sh",
        command,
        "```",
        "",
        "## Options",
        "",
        "```json",
        json.dumps(output["options"], indent=2, ensure_ascii=False),
        "```",
        "",
    ]
    return "\n".join(lines)


def plot(output: dict[str, Any], path: Path) -> bool:
    """Acceptance rate against latency p50, one labelled point per configuration."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("nextab bench accept: matplotlib is not installed: no plot (pip install 'nextab[bench]')", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in output["configs"].items():
        m = c["overall"]
        x, y = m["latency_ms"]["p50"] or 0.0, m["acceptance_rate"] or 0.0
        ax.scatter([x], [y])
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5))
    names = ", ".join(Path(p).name for p in output["options"]["paths"])
    ax.set_title(f"{names}: {len(output['segments'])} segments typed", fontsize=10)
    ax.set_xlabel("latency p50 (ms), client-side")
    ax.set_ylabel("acceptance rate (CAR)")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    """For `python -m nextab.bench_accept` until the subcommand is wired in."""
    parser = argparse.ArgumentParser(prog="nextab bench accept", description=__doc__.split("\n")[0])
    add_arguments(parser)
    logging.basicConfig(level="WARNING", stream=sys.stderr)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
