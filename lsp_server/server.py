"""The language server: LSP in, engine requests out, suggestions back as LSP.

Everything the model does runs on one worker thread, so the event loop keeps reading messages
(didChange, $/cancelRequest) while a suggestion is computed. Each document has at most one
request in flight: a newer one cancels it, and so does the client's $/cancelRequest, with one
exception: a completion whose text so far agrees with the characters typed since it was asked
for keeps running, and the next keystroke's request, queued behind it, takes the rest of its
answer (nextab/typeahead.py) instead of starting over. A cancel stops the model inside the
forward it is in (`interruptible` in models/backend.py), so what it cost the next request is
milliseconds, not the rest of a pre-fill chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
from lsprotocol import types
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcParseError,
)
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

from nextab import __version__, heap
from nextab.acceptance import AcceptanceLog, outcome_from_params, stages_of
from nextab.config import Config, load
from nextab.context.document import Document, Position, PositionError, Range
from nextab.context.history import EditHistory
from nextab.engine import CompletionRequest, Engine, Metrics, Suggestion
from nextab.models import subprocesses
from nextab.models.decoding import Cancelled, CancelToken
from nextab.nextedit import EditSuggestion, NextEditRequest, NextEditResult, end_of_last_edit
from nextab.typeahead import agrees, typed_since

if TYPE_CHECKING:
    from nextab.context.workspace import Workspace

log = logging.getLogger(__name__)

EngineFactory = Callable[[Config], Engine]
_T = TypeVar("_T")

_REINDEX_DELAY_S = 0.75
# How long a completion the client cancelled keeps running, waiting for the next keystroke's
# request to take it over: editors cancel the old request and send the new one together.
_ADOPT_S = 0.1
# How often the editor's process (initialize's processId) is looked for: an editor that crashes
# or is killed sends no shutdown, and its server must not outlive it.
_PARENT_POLL_S = 0.25
# What saving the edit history and index may take when the editor is gone, before exiting anyway.
_SAVE_ON_EXIT_S = 0.6
# How often, at most, the C heap is trimmed after model work (a trim costs milliseconds).
_TRIM_EVERY_S = 10.0
# While a workspace is indexed, what it has indexed so far is frozen this often (see
# `_freeze_long_lived`).
_FREEZE_EVERY_S = 2.0

# Settings that need the model reloaded when they change.
_MODEL_KEYS = ("model", "device", "dtype", "backend", "precision")

# nextab's own requests and notifications, announced under `experimental.nextab` in the
# server's capabilities.
NEXT_EDIT = "nextab/nextEdit"
NEXT_EDIT_PUSHED = "nextab/nextEditSuggestion"
STATUS = "nextab/status"
OUTCOME = "nextab/suggestionOutcome"
# The server's copy of a document, {textDocument: {uri}} -> {text, version}: how a client (or
# a test) checks that both sides hold the same text after a stream of incremental changes.
DEBUG_DOCUMENT = "nextab/debugDocument"


@dataclasses.dataclass(frozen=True)
class _Rejected:
    """A message whose fields do not fit its method's types: answered with an error instead
    of being handled (pygls alone logs it and never answers, so the client waits forever)."""

    data: dict[str, Any]
    error: JsonRpcException


class _Protocol(LanguageServerProtocol):
    def structure_message(self, data: dict[str, Any]) -> Any:
        if "jsonrpc" in data and "id" in data and _is_notification(self.get_message_type(data.get("method", ""))):
            # A notification's method sent as a request: pygls would handle it as the
            # notification and never answer the id.
            return _Rejected(data, JsonRpcInvalidRequest(f"{data['method']} is a notification"))
        try:
            return super().structure_message(data)
        except JsonRpcException as error:
            return _Rejected(data, error)

    def handle_message(self, message: Any) -> None:
        if isinstance(message, _Rejected):
            self._reject(message)
        elif not hasattr(message, "jsonrpc"):
            # JSON that is no JSON-RPC message at all (an array, a number, an object without
            # "jsonrpc"): the spec's answer is Invalid Request with a null id.
            log.warning("ignored a message that is not JSON-RPC (%s)", type(message).__name__)
            self.send_error(None, JsonRpcInvalidRequest())
        else:
            super().handle_message(message)

    def _reject(self, rejected: _Rejected) -> None:
        data, error = rejected.data, rejected.error
        method = data.get("method")
        msg_id = data.get("id")
        valid_id = isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool)
        if "id" not in data:
            log.warning("ignored notification %r: its params do not fit the method", method)
        elif method is None:
            # A malformed response to one of the server's own requests: fail that request
            # rather than leave it waiting.
            log.warning("malformed response to request %r", msg_id)
            if valid_id:
                self._handle_response(msg_id, None, error.to_response_error())
        else:
            log.warning("request %r (%s) has invalid params", msg_id, method)
            if not isinstance(error, (JsonRpcInvalidParams, JsonRpcInvalidRequest)) or not isinstance(method, str):
                error = JsonRpcInvalidRequest()
            self.send_error(msg_id if valid_id else None, error)

    def send_error(self, msg_id: int | str | None, error: JsonRpcException) -> None:
        if msg_id is not None:
            self._send_response(msg_id, None, error.to_response_error())
            return
        # JSON-RPC wants `"id": null` when the id could not be read; lsprotocol's converter
        # would leave the member out.
        body = {"code": error.code, "message": error.message}
        self._send_data({"jsonrpc": "2.0", "id": None, "error": body})


    # pygls keeps a copy of every open document of its own, which nextab never reads: it
    # rewrites the whole text on every change (a keystroke in a 100k-line file costs a pass
    # over all of it) and, for a range past a line's end, moves the range's end in place, so
    # the handler below would see a different edit than the client sent. These three hand
    # the params to nextab's handlers untouched instead.
    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> Any:
        yield from self._handle_only(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> Any:
        yield from self._handle_only(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> Any:
        yield from self._handle_only(types.TEXT_DOCUMENT_DID_CLOSE, params)

    def _handle_only(self, method: str, params: Any) -> Any:
        if (handler := self.fm.features.get(method)) is not None:
            yield handler, (params,), None

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams) -> Any:
        result = yield from super().lsp_initialize(params)
        server = self._server
        enabled = isinstance(server, NextabServer) and server.config.next_edit.enabled
        result.capabilities.experimental = {
            "nextab": {
                "nextEdit": enabled,
                "nextEditPush": enabled and server.config.next_edit.push,
                "status": True,
                "suggestionOutcome": True,
                "debugDocument": True,
            }
        }
        return result


def _is_notification(message_type: Any) -> bool:
    return attrs.has(message_type) and "id" not in attrs.fields_dict(message_type)


class _RedactParams(logging.Filter):
    """pygls logs the params of a message it could not handle, and the values that did not
    fit their types: document text, in a log that editors keep. Below debug level (where
    pygls logs every message anyway) the params are left out; `_Protocol._reject` logs a
    line of its own for a message that did not fit."""

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        if str(record.msg).startswith("Unable to deserialize message"):
            return False
        if isinstance(record.args, tuple):
            record.args = tuple(
                a if a is None or isinstance(a, (int, float, str)) else "<params not logged>"
                for a in record.args
            )
        return True


logging.getLogger("pygls.protocol.json_rpc").addFilter(_RedactParams())


class NextabServer(LanguageServer):
    def __init__(self, config: Config, engine_factory: EngineFactory | None = None) -> None:
        super().__init__("nextab", __version__, protocol_cls=_Protocol)
        self.config = config
        self.engine_factory = engine_factory or _load_engine
        self.documents: dict[str, Document] = {}
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nextab-model")
        # The large model of two-model decoding loads here, beside the model thread, which
        # serves completions with the small model meanwhile (a first load exports the 1.5B:
        # minutes on a CPU).
        self.large_loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nextab-large")
        self._large_loading: str | None = None
        self.engine_future: asyncio.Future[Engine] | None = None
        self.config_messages: list[str] = []
        self.workspace_root: str | None = None
        self._index_pending: dict[str, asyncio.TimerHandle] = {}
        self._push_pending: dict[str, asyncio.TimerHandle] = {}
        self._pushes: set[asyncio.Future[None]] = set()
        self._opening: asyncio.Future[None] | None = None
        # Edits are recorded before any workspace exists (and with none at all): next-edit
        # prediction needs them either way. An opened workspace takes over with its own
        # persisted history.
        self._history = EditHistory()
        self.indexing: tuple[int, int] | None = None  # files indexed, of how many
        self.last_latency_ms: float | None = None
        self.last_source: str | None = None
        # Tokens the model computed for completions since start, those the large model of
        # two-model decoding decided, and why it sat some out: its share of the work.
        self.tokens = Counter[str]()
        # The last completion served per document: its stage budget goes into the acceptance
        # log with the editor's report of what became of it.
        self.served: dict[str, Metrics] = {}
        self.acceptance = AcceptanceLog()
        self._trimmed_at = 0.0
        # From a cancel to the model thread giving that work up, per cancelled running request.
        self.cancel_stops: deque[float] = deque(maxlen=1000)

    def report_server_error(self, error: Exception, source: Any) -> None:
        # pygls's read loop hands over what it could not even parse: answer as JSON-RPC asks
        # (Parse error, null id), so a client that sent it sees why nothing came back.
        if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
            log.warning("ignored a message that is not JSON: %s", error)
            assert isinstance(self.protocol, _Protocol)
            self.protocol.send_error(None, JsonRpcParseError())
        else:  # pygls logged it already, with its traceback
            log.debug("%s: %s", getattr(source, "__name__", source), error)

    def start_engine(self) -> None:
        """Load the model in the background; requests wait for it instead of failing."""
        loop = asyncio.get_running_loop()
        config = self.config
        self.engine_future = loop.run_in_executor(self.model_thread, self.engine_factory, config)
        self.engine_future.add_done_callback(self._engine_loaded)

    def _engine_loaded(self, future: asyncio.Future[Engine]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            log.error("model failed to load: %s", error)
            self.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Error, message=f"nextab: {error}")
            )
            return
        engine = future.result()
        _freeze_long_lived()
        info = engine.backend.info
        self.window_log_message(
            types.LogMessageParams(
                type=types.MessageType.Info,
                message=f"nextab: {info.name} ready on {info.device} ({info.dtype})",
            )
        )
        for doc in list(self.documents.values()):  # opened while the model loaded
            engine.warm(doc, path=_display_path(doc.uri))
        self.load_large_later(engine)
        if self.workspace_root is not None and self.config.context.index:
            self._opening = asyncio.ensure_future(self.open_workspace(engine, self.workspace_root))

    async def open_workspace(self, engine: Engine, root: str) -> None:
        """Index the workspace in the background, reporting progress; requests go on meanwhile."""
        loop = asyncio.get_running_loop()
        token = f"nextab-index-{id(engine)}"
        progress = _Progress(self, token, loop)
        try:
            await self.work_done_progress.create_async(token)
            progress.supported = True
        except Exception:  # the client does not do server-initiated progress: index silently
            log.info("client declined work-done progress; indexing without reports")
        try:
            workspace = await loop.run_in_executor(
                self.model_thread,
                lambda: engine.open_workspace(
                    root, store_dir="default" if self.config.context.persist else None, progress=progress
                ),
            )
        except Exception as error:
            log.exception("could not open workspace %s", root)
            self.window_show_message(
                types.ShowMessageParams(
                    type=types.MessageType.Warning,
                    message=f"nextab: no repository context for {root}: {error}",
                )
            )
            return
        for doc in list(self.documents.values()):
            if self.documents.get(doc.uri) is doc:  # still open
                workspace.open_document(workspace.relative(doc.uri), doc.text)
            # A millisecond or so each (parse, similar-code pool): with a thousand documents
            # open, one pass would hold every request for a second.
            await asyncio.sleep(0)

    def status(self) -> dict[str, Any]:
        """What editors show in a status line: the model and where it runs, whether it is
        loading, indexing progress, the last completion's latency."""
        future = self.engine_future
        state, model, error = "starting", {}, None
        large: dict[str, str] | None = None
        memory: dict[str, Any] = {"rssMb": _rss_mb()}
        if future is not None and future.done():
            failure = None if future.cancelled() else future.exception()
            if failure is not None or future.cancelled():
                state, error = "failed", str(failure or "cancelled")
            else:
                state = "ready"
                engine = future.result()
                info = engine.backend.info
                model = {"name": info.name, "device": info.device, "dtype": info.dtype}
                if engine.large is not None:
                    info = engine.large.info
                    large = {"name": info.name, "device": info.device, "dtype": info.dtype}
                memory["cached"] = {
                    name: {"documents": usage.documents, "tokens": usage.tokens}
                    for name, usage in engine.cache_usage().items()
                }
        elif future is not None:
            state = "loading"
        indexing = None
        if self.indexing is not None:
            done, total = self.indexing
            indexing = {"done": done, "total": max(total, 0), "finished": 0 <= total <= done}
        return {
            "version": __version__,
            "state": state,
            "error": error,
            "model": model,
            "decoding": self.config.decoding,
            # The large model of two-model decoding, where one is loaded (null otherwise).
            "largeModel": large,
            "largeModelLoading": self._large_loading,  # its spec while it loads
            "indexing": indexing,
            "lastLatencyMs": round(self.last_latency_ms, 1) if self.last_latency_ms is not None else None,
            # "model" or "typed-ahead": where the last completion came from.
            "lastSource": self.last_source,
            "acceptanceLog": str(self.acceptance.path) if self.config.acceptance_log else None,
            "cancelStopMs": _stop_stats(list(self.cancel_stops)),
            # Completions' tokens since start: generated, and decided by the large model; and
            # completions a two-model strategy answered with the small model alone, by why.
            "tokens": {"generated": self.tokens["generated"], "large": self.tokens["large"]},
            "fallbacks": {
                _camel(key.removeprefix("fallback:")): n
                for key, n in self.tokens.items()
                if key.startswith("fallback:")
            },
            # The process's resident memory, and the tokens the documents' caches hold per model.
            "memory": memory,
        }

    def history(self) -> EditHistory:
        workspace = self.workspace()
        return workspace.history if workspace is not None else self._history

    def workspace(self) -> Workspace | None:
        future = self.engine_future
        if future is None or not future.done() or future.cancelled() or future.exception():
            return None
        return future.result().workspace

    def schedule_reindex(self, doc: Document) -> None:
        """The index follows an open buffer after typing pauses, not on every keystroke."""
        workspace = self.workspace()
        if workspace is None:
            return

        def update() -> None:
            if self.documents.get(doc.uri) is doc:
                workspace.open_document(workspace.relative(doc.uri), doc.text)

        self._debounce(self._index_pending, doc.uri, _REINDEX_DELAY_S, update)

    def _debounce(
        self,
        pending: dict[str, asyncio.TimerHandle],
        uri: str,
        delay_s: float,
        action: Callable[[], None],
    ) -> None:
        """Run `action` once `delay_s` passed without another call for `uri`."""
        earlier = pending.pop(uri, None)
        if earlier is not None:
            earlier.cancel()

        def fire() -> None:
            pending.pop(uri, None)
            action()

        pending[uri] = asyncio.get_running_loop().call_later(delay_s, fire)

    async def engine(self) -> Engine | None:
        if self.engine_future is None:
            self.start_engine()
        assert self.engine_future is not None
        try:
            return await asyncio.shield(self.engine_future)
        except asyncio.CancelledError:
            raise
        except Exception:
            return None  # already reported once when loading failed

    def apply_settings(self, raw: Any) -> None:
        previous = self.config
        self.config, messages = load(raw, base=previous)
        for message in messages:
            self.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Warning, message=message)
            )
        if any(getattr(previous, k) != getattr(self.config, k) for k in _MODEL_KEYS):
            self.start_engine()
        elif self.engine_future is not None and self.engine_future.done():
            engine = self.engine_future.result() if not self.engine_future.exception() else None
            if engine is not None:
                applied = self.model_thread.submit(engine.reconfigure, self.config, load_large=False)
                self.load_large_later(engine, after=applied)

    def load_large_later(self, engine: Engine, after: Future[Any] | None = None) -> None:
        """Load the large model the settings name, if the engine lacks it, off the model
        thread; the model thread takes it between two requests."""
        spec = self.config.large_model
        if not self.config.needs_large or self._large_loading == spec:
            return
        self._large_loading = spec

        def load() -> None:
            try:
                if after is not None:
                    after.result()  # the settings are applied: the engine knows what it wants
                if engine.wants_large() != spec:
                    return
                large = engine.load_large(spec)
                taken = self.model_thread.submit(engine.attach_large, spec, large).result()
                if large is not None and not taken:
                    log.info("large model %s loaded after the settings moved on: let go", spec)
            except Exception:  # a server shutting down, a failed setting: the small model serves
                log.exception("loading the large model %s failed", spec)
            finally:
                self._large_loading = None

        self.large_loader.submit(load)

    def document(self, uri: str) -> Document:
        doc = self.documents.get(uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"document {uri} is not open")
        return doc

    async def _on_model(
        self,
        doc: Document,
        token: CancelToken,
        work: Callable[[Engine], _T],
        delay_s: float = 0.0,
    ) -> _T | None:
        """Run `work` on the model thread once the engine is up; None when superseded."""
        handed_over = False  # left running for the next keystroke's request to take over
        try:
            if delay_s:
                await asyncio.sleep(delay_s)
            engine = await self.engine()
            if engine is None or token.cancelled:
                return None
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(self.model_thread, self._timed(token, work), engine)
            finally:
                self._trim_heap()
                self._show_notices(engine)
        except asyncio.CancelledError:
            # The client's $/cancelRequest: stop the model thread too, unless the next
            # keystroke's request may still take this one over.
            if isinstance(token, CompletionWork) and token.agrees_with(doc.text):
                asyncio.get_running_loop().call_later(_ADOPT_S, _release, doc, token)
                handed_over = True
            else:
                token.cancel()
            raise
        except Cancelled:
            return None  # superseded by a newer request for this document
        finally:
            for kind, running in list(doc.inflight.items()):
                if running is token and not handed_over:
                    del doc.inflight[kind]

    def _show_notices(self, engine: Engine) -> None:
        """What the engine had to tell the user (a model moved off a full GPU), once each,
        even when the request that caused it failed."""
        for notice in engine.take_notices():
            self.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Warning, message=f"nextab: {notice}")
            )

    def _trim_heap(self) -> None:
        """After model work, at most every `_TRIM_EVERY_S`, give the C heap's free pages back
        (on the model thread, between requests: the allocations it frees are its own)."""
        now = time.monotonic()
        if now - self._trimmed_at >= _TRIM_EVERY_S:
            self._trimmed_at = now
            with contextlib.suppress(RuntimeError):  # the model thread is shut down: exiting
                self.model_thread.submit(heap.trim)

    def _timed(self, token: CancelToken, work: Callable[[Engine], _T]) -> Callable[[Engine], _T]:
        """`work`, noting how long it took to stop after a cancel that came while it ran: what
        a superseded request costs the next one (`cancelStopMs` in nextab/status)."""

        def run(engine: Engine) -> _T:
            started = time.monotonic()
            try:
                return work(engine)
            except Cancelled:
                cancelled_at = token.cancelled_at
                if cancelled_at is not None and cancelled_at > started:
                    self.cancel_stops.append((time.monotonic() - cancelled_at) * 1000)
                raise

        return run

    async def suggest(self, uri: str, position: types.Position) -> tuple[Document, int, Suggestion] | None:
        doc = self.document(uri)
        offset = _offset(doc, position)
        request = CompletionRequest(
            document=doc, offset=offset, text=doc.text, path=_display_path(uri)
        )
        token = _claim_completion(doc, request)
        suggestion = await self._on_model(
            doc, token, lambda engine: engine.complete(request, token), self.config.debounce_ms / 1000
        )
        if suggestion is None:
            return None
        m = suggestion.metrics
        self.last_latency_ms = m.total_ms
        self.last_source = m.source
        self.tokens.update(generated=m.generated_tokens, large=m.large_tokens)
        if m.fallback:
            self.tokens[f"fallback:{m.fallback}"] += 1
        self.served[uri] = m
        log.info(
            "%s:%d:%d %s %.0f ms (%s; prompt %d, context %d, reused %d, new %d; "
            "build %.1f ms, wait %.0f ms, prefill %.0f ms, decode %.0f ms)",
            _display_path(uri),
            position.line,
            position.character,
            suggestion.mode,
            m.total_ms,
            m.source,
            m.prompt_tokens,
            m.context_tokens,
            m.reused_tokens,
            m.generated_tokens,
            m.context_ms,
            m.wait_ms,
            m.prefill_ms,
            m.decode_ms,
        )
        return doc, offset, suggestion


    async def next_edit(self, uri: str, position: types.Position | None) -> tuple[Document, NextEditResult] | None:
        """Next-edit suggestions for a document; a newer request for it cancels this one."""
        doc = self.document(uri)
        offset = _offset(doc, position) if position is not None else None
        token = _claim(doc, "nextEdit")
        history = self.history()
        edits = tuple(history.edits(include_open=True))
        request = NextEditRequest(
            document=doc,
            text=doc.text,
            offset=offset if offset is not None else end_of_last_edit(edits, uri, doc.text),
            edits=edits,
            diffs=history.render(self.config.context.recent_edits_chars, include_open=True),
            path=_display_path(uri),
        )
        result = await self._on_model(doc, token, lambda engine: engine.next_edit(request, token))
        if result is None:
            return None
        m = result.metrics
        log.info(
            "%s next edit: %d suggestions, %d locations, %d model calls, %.0f ms",
            _display_path(uri), len(result.suggestions), m.locations, m.model_calls, m.total_ms,
        )
        return doc, result

    def schedule_push(self, doc: Document) -> None:
        """After an edit and a pause in typing, push the next-edit suggestion, if enabled."""
        settings = self.config.next_edit
        if not (settings.enabled and settings.push):
            return

        def push() -> None:
            if self.documents.get(doc.uri) is doc:
                task = asyncio.ensure_future(self._push(doc, doc.version))
                self._pushes.add(task)
                task.add_done_callback(self._pushes.discard)

        self._debounce(self._push_pending, doc.uri, settings.push_delay_ms / 1000, push)

    async def _push(self, doc: Document, version: int) -> None:
        try:
            found = await self.next_edit(doc.uri, None)
        except Exception:
            log.exception("next-edit push for %s failed", doc.uri)
            return
        if found is None or doc.version != version or not found[1].suggestions:
            return
        self.protocol.notify(
            NEXT_EDIT_PUSHED,
            {
                "textDocument": {"uri": doc.uri, "version": version},
                "suggestions": [suggestion_json(doc, s) for s in found[1].suggestions],
            },
        )


class _Progress:
    """Index progress from the indexing thread to `$/progress`, at most a few reports a second."""

    def __init__(self, ls: NextabServer, token: str, loop: asyncio.AbstractEventLoop) -> None:
        self.ls = ls
        self.token = token
        self.loop = loop
        self.supported = False
        self.began = False
        self.last = 0.0
        self.frozen_at = 0.0

    def __call__(self, done: int, total: int, message: str) -> None:
        self.ls.indexing = (done, total)
        now = time.monotonic()
        # An empty folder is indexed once its files are counted: 0 of 0.
        finished = 0 <= total <= done
        if finished or now - self.frozen_at >= _FREEZE_EVERY_S:
            self.frozen_at = now
            _freeze_long_lived()
        if not self.supported:
            return
        if self.began and not finished and now - self.last < 0.25:
            return
        self.last = now
        self.loop.call_soon_threadsafe(self._send, done, total, message, finished)

    def _send(self, done: int, total: int, message: str, finished: bool) -> None:
        percentage = int(100 * done / total) if total > 0 else 0
        counted = f"{done}/{total} files" if total >= 0 else ""
        text = ": ".join(part for part in (counted, message) if part)
        if not self.began:
            self.began = True
            self.ls.work_done_progress.begin(
                self.token,
                types.WorkDoneProgressBegin(
                    title="nextab: indexing", message=text, percentage=percentage
                ),
            )
        if finished:
            self.ls.work_done_progress.end(
                self.token, types.WorkDoneProgressEnd(message=f"{total} files indexed")
            )
            self.supported = False
        else:
            self.ls.work_done_progress.report(
                self.token, types.WorkDoneProgressReport(message=text, percentage=percentage)
            )


def _freeze_long_lived() -> None:
    # The model's modules and the index's symbols are millions of objects that live as long as
    # the server: each full collection walked them all (0.1-0.7 s with a 10,000-file index,
    # every thread stopped, requests included). Frozen, the collector skips them; they are
    # still freed by reference counting when dropped.
    gc.freeze()


def _camel(reason: str) -> str:
    # "no-large" -> "noLarge": a JSON key as the rest of the status's, and one that clients
    # mapping objects to attributes (pygls's namedtuples) keep instead of renaming it "_0".
    head, *rest = reason.split("-")
    return head + "".join(part.capitalize() for part in rest)


def _stop_stats(stops: list[float]) -> dict[str, Any]:
    ordered = sorted(stops)
    if not ordered:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    n = len(ordered)
    return {
        "n": n,
        "p50": round(ordered[n // 2], 1),
        "p99": round(ordered[min(n - 1, n * 99 // 100)], 1),
        "max": round(ordered[-1], 1),
    }


def _workspace_root(params: types.InitializeParams) -> str | None:
    if params.workspace_folders:
        return _display_path(params.workspace_folders[0].uri)
    if params.root_uri:
        return _display_path(params.root_uri)
    return params.root_path or None


def _display_path(uri: str) -> str:
    return uri.removeprefix("file://")


def _edit_range(doc: Document, offset: int, suggestion: Suggestion) -> types.Range:
    start = doc.position_at(offset)
    end = doc.position_at(offset + suggestion.replace)
    return types.Range(
        start=types.Position(start.line, start.character),
        end=types.Position(end.line, end.character),
    )


def _load_engine(config: Config) -> Engine:
    return Engine.load(config, large=False)  # the server loads the large one in the background


def create_server(config: Config, engine_factory: EngineFactory | None = None) -> NextabServer:
    server = NextabServer(config, engine_factory)

    @server.feature(types.INITIALIZE)
    def initialize(ls: NextabServer, params: types.InitializeParams) -> None:
        ls.config, ls.config_messages = load(params.initialization_options, base=ls.config)
        ls.workspace_root = _workspace_root(params)
        pid = params.process_id
        if pid is not None and pid != os.getpid() and os.name == "posix":
            threading.Thread(
                target=_exit_with_editor, args=(ls, pid), name="nextab-editor-watch", daemon=True
            ).start()

    @server.feature(types.INITIALIZED)
    def initialized(ls: NextabServer, params: types.InitializedParams) -> None:
        for message in ls.config_messages:
            ls.window_show_message(
                types.ShowMessageParams(type=types.MessageType.Warning, message=message)
            )
        ls.start_engine()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: NextabServer, params: types.DidOpenTextDocumentParams) -> None:
        item = params.text_document
        doc = Document(item.uri, item.text, item.language_id, item.version, encoding=_encoding(ls))
        ls.documents[item.uri] = doc
        workspace = ls.workspace()
        if workspace is not None:
            workspace.open_document(workspace.relative(item.uri), item.text)
        engine = ls.engine_future
        if engine is not None and engine.done() and not engine.cancelled() and not engine.exception():
            engine.result().warm(doc, path=_display_path(item.uri))

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: NextabServer, params: types.DidChangeTextDocumentParams) -> None:
        doc = ls.documents.get(params.text_document.uri)
        if doc is None:
            log.warning("didChange for %s, which is not open: ignored", params.text_document.uri)
            return
        version = params.text_document.version
        if version <= doc.version:
            # Versions only grow (the spec); an older one is a replayed or reordered change,
            # and applying it twice would corrupt the text.
            log.warning(
                "didChange for %s at version %d, not after %d: ignored", doc.uri, version, doc.version
            )
            return
        history = ls.history()
        for change in params.content_changes:
            before = doc.text
            if isinstance(change, types.TextDocumentContentChangePartial):
                r = change.range
                at = Range(
                    Position(r.start.line, r.start.character),
                    Position(r.end.line, r.end.character),
                )
                start = doc.offset_at(at.start, clamp=True)
                end = max(start, doc.offset_at(at.end, clamp=True))
                doc.apply_change(change.text, at)
            else:
                start, end = 0, len(before)
                doc.apply_change(change.text)
            history.record(doc.uri, before, start, end, change.text, version)
        doc.version = version
        ls.schedule_reindex(doc)
        ls.schedule_push(doc)
        # Their answers would be for text that no longer exists, except a completion that the
        # typing has followed so far: the next request takes its answer over.
        _cancel_all(doc, keep=lambda token: token.agrees_with(doc.text))

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: NextabServer, params: types.DidCloseTextDocumentParams) -> None:
        doc = ls.documents.pop(params.text_document.uri, None)
        ls.served.pop(params.text_document.uri, None)
        if doc is None:
            return
        _cancel_all(doc)
        ls.history().close_open_edits()
        pending = ls._push_pending.pop(doc.uri, None)
        if pending is not None:
            pending.cancel()
        workspace = ls.workspace()
        if workspace is not None:
            workspace.close_document(workspace.relative(doc.uri))
        if ls.engine_future is not None and ls.engine_future.done() and not ls.engine_future.exception():
            ls.model_thread.submit(ls.engine_future.result().forget, doc)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: NextabServer, params: types.DidChangeConfigurationParams) -> None:
        ls.apply_settings(params.settings)

    @server.feature(
        types.TEXT_DOCUMENT_INLINE_COMPLETION,
        types.InlineCompletionOptions(),
    )
    async def inline_completion(
        ls: NextabServer, params: types.InlineCompletionParams
    ) -> types.InlineCompletionList | None:
        found = await ls.suggest(params.text_document.uri, params.position)
        if found is None:
            return None
        doc, offset, suggestion = found
        if not suggestion.text:
            return types.InlineCompletionList(items=[])
        item = types.InlineCompletionItem(
            insert_text=suggestion.text, range=_edit_range(doc, offset, suggestion)
        )
        return types.InlineCompletionList(items=[item])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[]))
    async def completion(ls: NextabServer, params: types.CompletionParams) -> types.CompletionList | None:
        found = await ls.suggest(params.text_document.uri, params.position)
        if found is None:
            return None
        doc, offset, suggestion = found
        if not suggestion.text.strip():
            return types.CompletionList(is_incomplete=True, items=[])
        first_line = suggestion.text.strip().splitlines()[0]
        item = types.CompletionItem(
            label=first_line[:80],
            kind=types.CompletionItemKind.Text,
            detail="nextab",
            documentation=types.MarkupContent(
                kind=types.MarkupKind.Markdown, value=f"```\n{suggestion.text}\n```"
            ),
            text_edit=types.TextEdit(range=_edit_range(doc, offset, suggestion), new_text=suggestion.text),
            insert_text_format=types.InsertTextFormat.PlainText,
            sort_text="0",
        )
        # Incomplete: the next keystroke changes the suggestion, so the client must ask again.
        return types.CompletionList(is_incomplete=True, items=[item])

    @server.feature(NEXT_EDIT)
    async def next_edit(ls: NextabServer, params: Any) -> dict[str, Any] | None:
        """`nextab/nextEdit`: {textDocument: {uri}, position} -> {suggestions: [...]}; each
        suggestion has the `range` to replace, `newText`, `score`, `source`, `reason`, and
        `atCursor` (inline at the cursor's line) or not (a jump elsewhere)."""
        if not ls.config.next_edit.enabled:
            return {"suggestions": []}
        uri, position = _next_edit_params(params)
        found = await ls.next_edit(uri, position)
        if found is None:
            return None
        doc, result = found
        return {
            "suggestions": [suggestion_json(doc, s) for s in result.suggestions],
            "timings": {"totalMs": round(result.metrics.total_ms, 1)},
        }

    @server.feature(DEBUG_DOCUMENT)
    def debug_document(ls: NextabServer, params: Any) -> dict[str, Any]:
        uri = _field(params, "textDocument", "uri")
        if not isinstance(uri, str):
            raise JsonRpcInvalidParams(f"{DEBUG_DOCUMENT} needs textDocument.uri")
        doc = ls.document(uri)
        return {"text": doc.text, "version": doc.version}

    @server.feature(STATUS)
    def status(ls: NextabServer, params: Any) -> dict[str, Any]:
        """`nextab/status` (no params): version, state, model, decoding, indexing, latency."""
        return ls.status()

    @server.feature(OUTCOME)
    def suggestion_outcome(ls: NextabServer, params: Any) -> None:
        """`nextab/suggestionOutcome` (a notification): what became of a shown suggestion,
        {textDocument: {uri}, kind, outcome, shownChars, acceptedChars, latencyMs}; kept in
        the local acceptance log that `nextab stats` reads."""
        if not ls.config.acceptance_log:
            return
        uri = _field(params, "textDocument", "uri")
        doc = ls.documents.get(uri) if isinstance(uri, str) else None
        language = (doc.language_id if doc is not None else "") or _field(params, "languageId") or "unknown"
        status = ls.status()
        try:
            outcome = outcome_from_params(params, str(language), status["model"].get("name", ""))
        except ValueError as error:
            log.warning("nextab/suggestionOutcome ignored: %s", error)
            return
        served = ls.served.get(uri) if isinstance(uri, str) else None
        if outcome.kind == "completion" and served is not None:
            outcome = dataclasses.replace(outcome, stages=stages_of(served))
        ls.acceptance.append(outcome)

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: NextabServer, params: None) -> None:
        for doc in ls.documents.values():
            _cancel_all(doc)
        workspace = ls.workspace()
        if workspace is not None:
            # Saves the edit history and index; the watcher thread must not outlive the server.
            ls.engine_future.result().close_workspace()  # type: ignore[union-attr]
        ls.model_thread.shutdown(wait=False, cancel_futures=True)
        ls.large_loader.shutdown(wait=False, cancel_futures=True)

    return server


def _exit_with_editor(ls: NextabServer, pid: int) -> None:
    while _alive(pid):
        time.sleep(_PARENT_POLL_S)
    log.warning("the editor (process %d) is gone: saving and exiting", pid)
    saver = threading.Thread(target=_save_workspace, args=(ls,), daemon=True)
    saver.start()
    saver.join(_SAVE_ON_EXIT_S)
    subprocesses.end_all()  # os._exit skips the atexit hook that would end them
    os._exit(0)  # the event loop may be blocked on stdin, which a dead editor may never close


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # POSIX only: on Windows signal 0 is CTRL_C_EVENT
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it exists
    return True


def _save_workspace(ls: NextabServer) -> None:
    try:
        if ls.workspace() is not None:  # then the engine is loaded
            ls.engine_future.result().close_workspace()  # type: ignore[union-attr]
    except Exception:
        log.exception("saving the workspace on exit failed")


def _offset(doc: Document, position: types.Position) -> int:
    try:
        return doc.offset_at(Position(position.line, position.character))
    except PositionError as error:
        raise JsonRpcInvalidParams(str(error)) from None


def _claim(doc: Document, kind: str) -> CancelToken:
    """A new request of `kind` for `doc`: the one of that kind in flight is cancelled, its
    answer would be stale."""
    earlier = doc.inflight.get(kind)
    if earlier is not None:
        earlier.cancel()
    token = CancelToken()
    doc.inflight[kind] = token
    return token


class CompletionWork(CancelToken):
    """A completion's cancel handle, with the request it answers, and the earlier completions
    it waits behind because it will take over their answers."""

    def __init__(self, request: CompletionRequest) -> None:
        super().__init__()
        self.request = request
        self.earlier: list[CompletionWork] = []
        self.adopted = False

    def typed(self, text: str, offset: int | None = None) -> str | None:
        """What was typed at this request's cursor to make `text` (the cursor now after it)."""
        request = self.request
        if offset is None:
            offset = request.offset + len(text) - len(request.text)
        return typed_since(request.text, request.offset, text, offset)

    def agrees_with(self, text: str) -> bool:
        """Whether the answer may still be what was typed since, and more."""
        typed = self.typed(text)
        return typed is not None and not self.cancelled and agrees(self.partial, typed)

    def cancel_all(self) -> None:
        for work in (self, *self.earlier):
            work.cancel()


def _claim_completion(doc: Document, request: CompletionRequest) -> CompletionWork:
    """The cancel handle of a new completion for `doc`. The one in flight is cancelled, unless
    the new request's text is its text with characters typed at its cursor that agree with
    what it has written so far: then it runs on, and the new request, queued behind it on the
    model thread, is answered from its suggestion."""
    work = CompletionWork(request)
    earlier = doc.inflight.get("completion")
    if isinstance(earlier, CompletionWork):
        typed = earlier.typed(request.text, request.offset)
        if typed and not earlier.cancelled and agrees(earlier.partial, typed):
            earlier.adopted = True
            work.earlier = [w for w in (earlier, *earlier.earlier) if not w.cancelled]
        else:
            earlier.cancel_all()
    elif earlier is not None:
        earlier.cancel()
    doc.inflight["completion"] = work
    return work


def _release(doc: Document, work: CompletionWork) -> None:
    """A client-cancelled completion that no newer request took over stops."""
    if work.adopted:
        return
    work.cancel()
    if doc.inflight.get("completion") is work:
        del doc.inflight["completion"]


def _cancel_all(doc: Document, keep: Callable[[CompletionWork], bool] | None = None) -> None:
    for kind, token in list(doc.inflight.items()):
        if isinstance(token, CompletionWork):
            if keep is not None and keep(token):
                for earlier in token.earlier:
                    if not keep(earlier):
                        earlier.cancel()
                continue
            token.cancel_all()
        else:
            token.cancel()
        del doc.inflight[kind]


def _field(value: Any, *names: str) -> Any:
    # Custom requests arrive as plain JSON objects: dicts, or pygls's attribute objects.
    for name in names:
        value = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
        if value is None:
            return None
    return value


_UINTEGER_MAX = 2**31 - 1  # the LSP's uinteger


def _next_edit_params(params: Any) -> tuple[str, types.Position | None]:
    uri = _field(params, "textDocument", "uri")
    if not isinstance(uri, str):
        raise JsonRpcInvalidParams("nextab/nextEdit needs textDocument.uri")
    line, character = _field(params, "position", "line"), _field(params, "position", "character")
    if line is None and character is None:
        return uri, None  # at the end of the last edit
    if not all(type(v) is int and 0 <= v <= _UINTEGER_MAX for v in (line, character)):
        raise JsonRpcInvalidParams(
            "nextab/nextEdit: position needs line and character (integers in [0, 2^31 - 1])"
        )
    return uri, types.Position(line=line, character=character)


def suggestion_json(doc: Document, suggestion: EditSuggestion) -> dict[str, Any]:
    """A next-edit suggestion as `nextab/nextEdit` answers it (positions in `doc`'s encoding)."""
    start = doc.position_at(suggestion.edit.start)
    end = doc.position_at(suggestion.edit.end)
    return {
        "range": {
            "start": {"line": start.line, "character": start.character},
            "end": {"line": end.line, "character": end.character},
        },
        "newText": suggestion.edit.new_text,
        "score": round(suggestion.score, 4),
        "source": suggestion.source,
        "reason": suggestion.reason,
        "atCursor": suggestion.at_cursor,
        "lines": {"start": suggestion.start_line, "end": suggestion.end_line},
    }


def _encoding(ls: NextabServer) -> Any:
    chosen = ls.server_capabilities.position_encoding if ls.server_capabilities else None
    return str(chosen.value if hasattr(chosen, "value") else chosen or "utf-16")


def _rss_mb() -> float | None:
    """Resident memory of this process in MB, where /proc tells (Linux); None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None
