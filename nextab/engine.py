"""The protocol-agnostic engine: a completion request in, a suggestion out.

The LSP server, `nextab complete`, batch jobs and the benchmarks all call `Engine.complete`, so
what is measured is what editors get. It runs on one model thread; callers keep it off their
event loop.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

from nextab.config import Config
from nextab.context.cursor import RequestedMode, decide_mode, surroundings
from nextab.context.document import Document
from nextab.context.window import WindowLimits, cut_window
from nextab.models.backend import Backend, KVCache
from nextab.models.decoding import (
    NEVER_CANCELLED,
    CancelToken,
    DecodeParams,
    Decoder,
    make_decoder,
    split_for_healing,
)
from nextab.models.fim import FimInput, FimTemplate, choose_template, render, stop_token_ids
from nextab.models.stopping import StopRules, finalize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletionRequest:
    document: Document
    offset: int  # string index of the cursor in `text`
    text: str  # the document's text when the request was made (the document may move on)
    path: str | None = None  # shown to the model as the file's name
    mode: RequestedMode = "auto"
    max_tokens: int | None = None


@dataclass(frozen=True)
class Metrics:
    prompt_tokens: int
    reused_tokens: int
    generated_tokens: int
    prefill_ms: float
    decode_ms: float
    total_ms: float


@dataclass(frozen=True)
class Suggestion:
    text: str  # inserted at the cursor
    replace: int  # characters after the cursor that it replaces (auto-closed brackets)
    mode: str
    stop_reason: str
    metrics: Metrics = field(compare=False)


class Engine:
    def __init__(self, config: Config, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.template: FimTemplate = choose_template(backend, config.fim_template)
        self.stop_ids = stop_token_ids(self.template, backend)
        self.decoder: Decoder = make_decoder(config.decoding)
        # One model, one thread at a time: the KV caches and the model are not thread-safe.
        self._lock = threading.Lock()
        self._cached: OrderedDict[int, weakref.ref[Document]] = OrderedDict()

    @classmethod
    def load(cls, config: Config, *, progress: bool = True) -> Engine:
        from nextab.models.resolve import resolve_model
        from nextab.models.torch_backend import TorchBackend

        resolved = resolve_model(config.model, progress=progress)
        backend = TorchBackend.load(resolved.path, resolved.name, config.device, config.dtype)
        return cls(config, backend)

    def reconfigure(self, config: Config) -> None:
        """Apply settings that do not need another model (the caller reloads for those)."""
        with self._lock:
            self.template = choose_template(self.backend, config.fim_template)
            self.stop_ids = stop_token_ids(self.template, self.backend)
            self.decoder = make_decoder(config.decoding)
            self.config = config

    def complete(self, request: CompletionRequest, cancel: CancelToken = NEVER_CANCELLED) -> Suggestion:
        started = time.perf_counter()
        text, offset = request.text, request.offset
        if not 0 <= offset <= len(text):
            raise ValueError(f"cursor offset {offset} outside the document (0..{len(text)})")
        completion = self.config.completion
        mode = decide_mode(text, offset, _requested_mode(request.mode, completion.multiline))
        rules = StopRules(mode=mode, around=surroundings(text, offset), max_lines=completion.max_lines)
        window = cut_window(
            text,
            offset,
            WindowLimits(
                completion.prefix_chars,
                completion.suffix_chars,
                middle_lines=completion.middle_lines,
            ),
        )
        material = FimInput(
            prefix=window.prefix, middle=window.middle, suffix=window.suffix, path=request.path
        )
        prompt, healing = split_for_healing(
            self.backend, render(self.template, self.backend, material)
        )
        params = DecodeParams(
            max_tokens=request.max_tokens or self.config.max_tokens,
            stop_ids=self.stop_ids,
            stop_check=rules,
        )
        with self._lock:
            cancel.check()
            cache = self._cache_for(request.document)
            result = self.decoder.decode(self.backend, cache, prompt, params, cancel, healing)
        trimmed = finalize(result.text, rules)
        inserted = trimmed.text
        if _inserts_whole_line(mode, rules, result.stop_reason, inserted):
            inserted += "\n"
        return Suggestion(
            text=inserted,
            replace=trimmed.replace,
            mode=mode,
            stop_reason=result.stop_reason,
            metrics=Metrics(
                prompt_tokens=result.prompt_tokens,
                reused_tokens=result.reused_tokens,
                generated_tokens=len(result.tokens),
                prefill_ms=result.prefill_ms,
                decode_ms=result.decode_ms,
                total_ms=(time.perf_counter() - started) * 1000,
            ),
        )

    def forget(self, document: Document) -> None:
        """Drop what the engine holds for a closed document."""
        with self._lock:
            document.kv = None
            self._cached.pop(id(document), None)

    def _cache_for(self, document: Document) -> KVCache:
        key = id(document)
        if document.kv is None:
            document.kv = self.backend.new_cache()
        self._cached[key] = weakref.ref(document)
        self._cached.move_to_end(key)
        # Each cache holds megabytes per thousand tokens: keep only the most recent documents'.
        while len(self._cached) > self.config.cached_documents:
            _, ref = self._cached.popitem(last=False)
            evicted = ref()
            if evicted is not None:
                evicted.kv = None
        return document.kv


def _requested_mode(requested: RequestedMode, multiline: str) -> RequestedMode:
    if requested != "auto":
        return requested
    return {"always": "block", "never": "line"}.get(multiline, "auto")  # type: ignore[return-value]


def _inserts_whole_line(mode: str, rules: StopRules, stop_reason: str, text: str) -> bool:
    # At column 0 before existing code, a one-line suggestion is a new line above that code.
    around = rules.around
    return (
        mode == "line"
        and stop_reason == "stop"
        and bool(text.strip())
        and around.line_prefix == ""
        and bool(around.rest_of_line.strip())
    )
