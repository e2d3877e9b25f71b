"""The language server: LSP in, engine requests out, suggestions back as LSP.

Everything the model does runs on one worker thread, so the event loop keeps reading messages
(didChange, $/cancelRequest) while a suggestion is computed. Each document has at most one
request in flight: a newer one cancels it, and so does the client's $/cancelRequest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from nextab import __version__
from nextab.config import Config, load
from nextab.context.document import Document, Position, PositionError, Range
from nextab.engine import CompletionRequest, Engine, Suggestion
from nextab.models.decoding import Cancelled, CancelToken

log = logging.getLogger(__name__)

EngineFactory = Callable[[Config], Engine]

# Settings that need the model reloaded when they change.
_MODEL_KEYS = ("model", "device", "dtype")


class NextabServer(LanguageServer):
    def __init__(self, config: Config, engine_factory: EngineFactory = Engine.load) -> None:
        super().__init__("nextab", __version__)
        self.config = config
        self.engine_factory = engine_factory
        self.documents: dict[str, Document] = {}
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nextab-model")
        self.engine_future: asyncio.Future[Engine] | None = None
        self.config_messages: list[str] = []

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
        info = future.result().backend.info
        self.window_log_message(
            types.LogMessageParams(
                type=types.MessageType.Info,
                message=f"nextab: {info.name} ready on {info.device} ({info.dtype})",
            )
        )

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
                self.model_thread.submit(engine.reconfigure, self.config)

    def document(self, uri: str) -> Document:
        doc = self.documents.get(uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"document {uri} is not open")
        return doc

    async def suggest(self, uri: str, position: types.Position) -> tuple[Document, int, Suggestion] | None:
        doc = self.document(uri)
        try:
            offset = doc.offset_at(Position(position.line, position.character))
        except PositionError as error:
            raise JsonRpcInvalidParams(str(error)) from None
        if doc.inflight is not None:
            doc.inflight.cancel()
        token = CancelToken()
        doc.inflight = token
        request = CompletionRequest(
            document=doc, offset=offset, text=doc.text, path=_display_path(uri)
        )
        try:
            if self.config.debounce_ms:
                await asyncio.sleep(self.config.debounce_ms / 1000)
            engine = await self.engine()
            if engine is None or token.cancelled:
                return None
            loop = asyncio.get_running_loop()
            suggestion = await loop.run_in_executor(self.model_thread, engine.complete, request, token)
        except asyncio.CancelledError:
            token.cancel()  # the client's $/cancelRequest: stop the model thread too
            raise
        except Cancelled:
            return None  # superseded by a newer request for this document
        finally:
            if doc.inflight is token:
                doc.inflight = None
        m = suggestion.metrics
        log.info(
            "%s:%d:%d %s %.0f ms (prompt %d, reused %d, new %d) -> %r",
            _display_path(uri),
            position.line,
            position.character,
            suggestion.mode,
            m.total_ms,
            m.prompt_tokens,
            m.reused_tokens,
            m.generated_tokens,
            suggestion.text[:60],
        )
        return doc, offset, suggestion


def _display_path(uri: str) -> str:
    return uri.removeprefix("file://")


def _edit_range(doc: Document, offset: int, suggestion: Suggestion) -> types.Range:
    start = doc.position_at(offset)
    end = doc.position_at(offset + suggestion.replace)
    return types.Range(
        start=types.Position(start.line, start.character),
        end=types.Position(end.line, end.character),
    )


def create_server(config: Config, engine_factory: EngineFactory = Engine.load) -> NextabServer:
    server = NextabServer(config, engine_factory)

    @server.feature(types.INITIALIZE)
    def initialize(ls: NextabServer, params: types.InitializeParams) -> None:
        ls.config, ls.config_messages = load(params.initialization_options, base=ls.config)

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
        ls.documents[item.uri] = Document(
            item.uri, item.text, item.language_id, item.version, encoding=_encoding(ls)
        )

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: NextabServer, params: types.DidChangeTextDocumentParams) -> None:
        doc = ls.documents.get(params.text_document.uri)
        if doc is None:
            log.warning("didChange for %s, which is not open: ignored", params.text_document.uri)
            return
        for change in params.content_changes:
            if isinstance(change, types.TextDocumentContentChangePartial):
                r = change.range
                doc.apply_change(
                    change.text,
                    Range(
                        Position(r.start.line, r.start.character),
                        Position(r.end.line, r.end.character),
                    ),
                )
            else:
                doc.apply_change(change.text)
        doc.version = params.text_document.version
        if doc.inflight is not None:
            doc.inflight.cancel()  # its answer would be for text that no longer exists

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: NextabServer, params: types.DidCloseTextDocumentParams) -> None:
        doc = ls.documents.pop(params.text_document.uri, None)
        if doc is None:
            return
        if doc.inflight is not None:
            doc.inflight.cancel()
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

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: NextabServer, params: None) -> None:
        for doc in ls.documents.values():
            if doc.inflight is not None:
                doc.inflight.cancel()
        ls.model_thread.shutdown(wait=False, cancel_futures=True)

    return server


def _encoding(ls: NextabServer) -> Any:
    chosen = ls.server_capabilities.position_encoding if ls.server_capabilities else None
    return str(chosen.value if hasattr(chosen, "value") else chosen or "utf-16")
