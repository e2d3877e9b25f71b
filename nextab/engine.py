"""The protocol-agnostic engine: a completion request in, a suggestion out.

The LSP server, `nextab complete`, batch jobs and the benchmarks all call `Engine.complete`, so
what is measured is what editors get. It runs on one model thread; callers keep it off their
event loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from nextab.config import Config, ContextConfig
from nextab.context.compress import CompressionCancelled, before_elision
from nextab.context.cursor import RequestedMode, decide_mode, surroundings
from nextab.context.document import Document
from nextab.context.history import Edit, EditHistory
from nextab.context.repository import Material
from nextab.context.secrets import SecretPaths, uri_path
from nextab.context.syntax import Snapshot
from nextab.context.window import WindowLimits, cut_window
from nextab.material import MaterialSwitch, slack_for
from nextab.models.backend import (
    Backend,
    Callbacks,
    Interrupted,
    KVCache,
    common_prefix_length,
    interruptible,
)
from nextab.models.batch_decoding import BatchItem, decode_batch
from nextab.models.decoding import (
    NEVER_CANCELLED,
    Cancelled,
    CancelToken,
    DecodeParams,
    Decoder,
    DecodeResult,
    GreedyDecoder,
    Healing,
    make_decoder,
    split_for_healing,
)
from nextab.models.drafting import engine_lookup
from nextab.models.fim import (
    ContextFile,
    FimInput,
    FimTemplate,
    choose_template,
    render,
    stop_token_ids,
)
from nextab.models.pairing import Partner
from nextab.models.rewrite import RewriteInput
from nextab.models.rewrite import render as render_rewrite
from nextab.models.rewrite import stop_check as rewrite_stop_check
from nextab.models.scoring import BackendScorer
from nextab.models.stopping import Mode, StopRules, Trimmed, finalize
from nextab.typeahead import Given, remainder

if TYPE_CHECKING:
    from nextab.context.workspace import ProgressFn, Workspace
    from nextab.nextedit import NextEditRequest, NextEditResult

log = logging.getLogger(__name__)

PREPARE_IDLE_S = 1.0  # background context preparation starts after this long without requests
# Warming pre-fills in pieces this small so that a keystroke's request waits at most one piece
# (~0.2-0.4 s on a 2-core CPU) for the model.
WARM_CHUNK = 48
WARM_DOCUMENTS = 2  # only the most recently opened documents are warmed


@dataclass(frozen=True)
class CompletionRequest:
    document: Document
    offset: int  # string index of the cursor in `text`
    text: str  # the document's text when the request was made (the document may move on)
    path: str | None = None  # shown to the model as the file's name
    mode: RequestedMode = "auto"
    max_tokens: int | None = None
    decoding: str | None = None  # a strategy other than the configured one (batch rows)


@dataclass(frozen=True)
class Metrics:
    context_tokens: int  # repository material in the prompt
    prompt_tokens: int
    reused_tokens: int
    generated_tokens: int
    prefill_ms: float
    decode_ms: float
    total_ms: float
    paused_steps: int = 0  # decoding steps that looked ahead (AdaDec) or searched (beam)
    evaluated_tokens: int = 0  # tokens the model ran after the prompt, lookahead included
    drafted_tokens: int = 0  # speculated tokens checked (prompt lookup, rewrite drafts)
    accepted_tokens: int = 0  # of which the model agreed with
    large_tokens: int = 0  # tokens the large model decided (two-model decoding)
    large_computed: int = 0  # tokens the large model ran, its catch-up included
    fallback: str = ""  # why a two-model strategy answered with the small model alone
    # Where the time went, the budget per stage: building the prompt (window, repository
    # context, template, tokens), waiting for the model, then pre-fill and decode above, then
    # trimming the text to what is shown.
    context_ms: float = 0.0
    wait_ms: float = 0.0
    post_ms: float = 0.0
    # "model", or "typed-ahead": the rest of an earlier suggestion the developer is typing.
    source: str = "model"


@dataclass(frozen=True)
class Suggestion:
    text: str  # inserted at the cursor
    replace: int  # characters after the cursor that it replaces (auto-closed brackets)
    mode: str
    stop_reason: str
    metrics: Metrics = field(compare=False)


class PrivateDocument(ValueError):
    """A prompt was asked for a document whose text must not reach the model."""


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]  # what the model reads, healing's token taken off
    healing: Healing | None
    mode: Mode
    rules: StopRules
    tree: Snapshot | None  # the request text's syntax tree, if its language has a grammar
    context_tokens: int  # repository material in it
    material: Material = field(default_factory=Material.empty, compare=False)  # that material


class Engine:
    def __init__(
        self,
        config: Config,
        backend: Backend,
        *,
        learned_threshold: float | None = None,
        model_path: Path | None = None,
        large: Backend | None = None,
    ) -> None:
        self.config = config
        self.backend = backend
        # The large model of two-model decoding (None: none loaded); its caches per document
        # in `Document.kv_large`, the most recent `pair.cachedDocuments` of them kept.
        self.large = large
        self.large_path: Path | None = None  # where it was loaded from (its calibration's key)
        self._cached_large: OrderedDict[int, weakref.ref[Document]] = OrderedDict()
        # AdaDec's entropy threshold from `nextab calibrate`, and where the model lives (the
        # calibration is kept per model directory).
        self.learned_threshold = learned_threshold
        self.model_path = model_path
        self.template: FimTemplate = choose_template(backend, config.fim_template)
        self.stop_ids = stop_token_ids(self.template, backend)
        self.rewrite_stop_ids = _rewrite_stop_ids(backend, self.stop_ids)
        self.decoder: Decoder = self._make_decoder(config)
        self._other_decoders: dict[str, Decoder] = {}  # per-request strategies (batch rows)
        # Completions' drafts from their prompt (None: off). Only where checking a draft in one
        # pass is exact: the output must be greedy's, token for token. On onnxruntime drafts
        # changed 3 of 150 single-line completions for ~5% of decode time, so none there.
        self.lookup = engine_lookup() if backend.info.exact_multi_token else None
        # One model, one thread at a time: the KV caches and the model are not thread-safe.
        self._lock = threading.Lock()
        self._cached: OrderedDict[int, weakref.ref[Document]] = OrderedDict()
        # Next-edit prompts share their start (instructions, recent edits) with each other,
        # not with any document's completion prompt: they get a cache of their own.
        self._rewrite_cache: KVCache | None = None
        self._locator: tuple[str, Backend] | None = None  # a separate location model, by spec
        self.workspace: Workspace | None = None
        # Completions waiting for the model: background preparation yields to them.
        self._waiting = 0
        self._preempt = Preemption(self._should_yield)
        self._wake = threading.Event()
        self._preparer: threading.Thread | None = None
        self._to_warm: OrderedDict[int, tuple[weakref.ref[Document], int, str | None]] = OrderedDict()
        # Documents whose large-model cache lags their small one (two-model decoding).
        self._behind: OrderedDict[int, weakref.ref[Document]] = OrderedDict()
        self._closing = False
        self._last_request = 0.0
        # Which repository material each document's prompt uses (nextab/material.py).
        self._switch = MaterialSwitch(slack_for(backend.info.device))
        self._secrets = SecretPaths(config.context.exclude)  # judges paths without a workspace
        self._notices: list[str] = []  # for the user, once each (take_notices)

    @classmethod
    def load(cls, config: Config, *, progress: bool = True, large: bool = True) -> Engine:
        """The engine for `config`, its model loaded; and the large model of two-model decoding
        where the strategy needs it, unless `large` is False (the caller loads it later, off
        the model thread: `load_large`, then `attach_large`)."""
        from nextab.models.calibration import load_threshold
        from nextab.models.loading import load_backend
        from nextab.models.resolve import resolve_model

        resolved = resolve_model(config.model, progress=progress)
        backend = load_backend(
            resolved,
            backend=config.backend,
            device=config.device,
            dtype=config.dtype,
            precision=config.precision,
            progress=progress,
        )
        learned = load_threshold(resolved.path, resolved.name)
        engine = cls(config, backend, learned_threshold=learned, model_path=resolved.path)
        if config.needs_large and large:
            engine.large = engine.load_large(config.large_model, progress=progress)
            engine.decoder = engine._make_decoder(config)  # with what was learned for the pair
        # A location model is loaded (or found missing) at start, not at the first request.
        engine._location_backend()
        return engine

    def load_large(self, spec: str, *, progress: bool = False) -> Backend | None:
        """The large model, on the small one's device and runtime, checked to share its
        vocabulary; one that cannot be loaded is reported once, and the small model decodes."""
        from nextab.models.loading import load_backend
        from nextab.models.pairing import PairMismatch, check_pair
        from nextab.models.resolve import ModelNotFoundError, resolve_model

        try:
            resolved = resolve_model(spec, progress=progress)
            large = load_backend(
                resolved,
                backend=self.config.backend,
                device=self.backend.info.device,
                dtype=self.config.dtype,
                precision=self.config.precision,
                progress=progress,
            )
            check_pair(self.backend, large)
            self.large_path = resolved.path
        except (ModelNotFoundError, PairMismatch, OSError, ValueError, RuntimeError) as error:
            message = (
                f"largeModel {spec!r} cannot be used ({error}): "
                f"{self.backend.info.name} decodes alone"
            )
            log.error("%s", message)
            self._notices.append(message)
            return None
        log.info("large model %s loaded on %s beside %s", large.info.name, large.info.device,
                 self.backend.info.name)  # fmt: skip
        return large

    def _make_decoder(self, config: Config) -> Decoder:
        settings = config.adadec
        threshold = settings.threshold
        if threshold is None:
            threshold = self.learned_threshold
        if config.decoding == "adadec" and threshold is None:
            log.warning(
                "AdaDec has no entropy threshold for %s: run `nextab calibrate` (or set "
                "adadec.threshold); decoding greedily until then",
                self.backend.info.name,
            )
        return make_decoder(
            config.decoding,
            threshold=math.inf if threshold is None else threshold,
            top_k=settings.top_k,
            lookahead=settings.lookahead,
            max_draft=config.speculative.max_draft,
            stop_threshold=config.speculative.stop_threshold,
            switch_threshold=self._switch_threshold(config),
            window=config.ead.window,
            min_run=config.ead.min_run,
            scorer=settings.scorer,
        )

    def _switch_threshold(self, config: Config) -> float:
        """EAD's threshold: the setting, else the one `nextab calibrate --large` learned for
        this pair, else none (the small model decodes alone, with a warning)."""
        threshold = config.ead.threshold
        large, paths = self.large, (self.model_path, self.large_path)
        if threshold is None and large is not None and paths[0] is not None and paths[1] is not None:
            from nextab.models.calibration import load_pair_threshold

            threshold = load_pair_threshold(
                (paths[0], self.backend.info.name), (paths[1], large.info.name)
            )
        if threshold is None:
            if config.decoding == "ead" and large is not None:
                log.warning(
                    "EAD has no entropy threshold for %s: run `nextab calibrate --large` (or "
                    "set ead.threshold); the small model decodes alone until then",
                    self.backend.info.name,
                )
            return math.inf
        return threshold

    def reconfigure(self, config: Config, *, load_large: bool = True) -> None:
        """Apply settings that do not need another model (the caller reloads for those); the
        large model of two-model decoding is let go here when the strategy no longer needs
        it, and loaded when it does, unless `load_large` is False (see `wants_large`)."""
        keep = config.needs_large and config.large_model == self.config.large_model
        if self.large is not None and not keep:
            with self._lock:  # the old one's memory goes before another loads
                self._drop_large_caches()
                self.large = None
        large = self.large
        if load_large and config.needs_large and large is None:
            large = self.load_large(config.large_model)
        with self._lock:
            self.large = large
            self.template = choose_template(self.backend, config.fim_template)
            self.stop_ids = stop_token_ids(self.template, self.backend)
            self.rewrite_stop_ids = _rewrite_stop_ids(self.backend, self.stop_ids)
            self.decoder = self._make_decoder(config)
            self._other_decoders = {}
            self.config = config
            if self._secrets.exclude != config.context.exclude:
                self._secrets = SecretPaths(config.context.exclude)
        if self.workspace is not None:
            self.workspace.settings = self._workspace_settings(config.context)

    def wants_large(self) -> str | None:
        """The large model the settings need and the engine does not hold yet (its spec)."""
        return self.config.large_model if self.config.needs_large and self.large is None else None

    def attach_large(self, spec: str, large: Backend | None) -> bool:
        """Take a large model loaded off the model thread (`load_large`), if the settings
        still want that one; True if taken. Until then, two-model strategies answer with the
        small model alone (the "no-large" fallback)."""
        if large is None or self.wants_large() != spec:
            return False
        with self._lock:
            self.large = large
            self.decoder = self._make_decoder(self.config)  # with what was learned for the pair
            self._other_decoders = {}
            recent = [d for d in (ref() for ref in self._cached.values()) if d is not None]
        for document in recent[-self.config.pair.cached_documents :]:
            self._fall_behind(document)  # it reads the open documents while the model is idle
        return True

    def open_workspace(
        self,
        root: str | Path,
        *,
        store_dir: Path | Literal["default"] | None = "default",
        progress: ProgressFn | None = None,
        start: bool = True,
    ) -> Workspace:
        """Serve completions with `root`'s repository context (one workspace per engine).

        The index and edit history persist under `store_dir`, by default a folder of the user
        cache named after the workspace's path; None keeps them in memory only.
        """
        from nextab.context.workspace import Workspace

        if store_dir == "default":
            store_dir = workspace_store(root)

        self.close_workspace()
        scorer = _LockedScorer(BackendScorer(self.backend, should_stop=self._should_yield), self)
        self.workspace = Workspace(
            root,
            self._workspace_settings(self.config.context),
            scorer=scorer,
            # On a CPU batching barely speeds scoring up, and one sequence at a time lets a
            # completion take the model between sequences.
            scoring_batch=1 if self.backend.info.device == "cpu" else 4,
            count_tokens=scorer.count_tokens,
            store_dir=store_dir,
            progress=progress,
        )
        if start:
            self.workspace.start()
        self._start_preparer()
        return self.workspace

    def _start_preparer(self) -> None:
        if self._preparer is not None and self._preparer.is_alive():
            return
        self._closing = False
        self._preparer = threading.Thread(
            target=self._prepare_loop, name="nextab-context", daemon=True
        )
        self._preparer.start()

    def warm(self, document: Document, offset: int | None = None, path: str | None = None) -> None:
        """Pre-compute the prompt for `offset` in `document` while the model is idle, so that
        the first request there costs only what changed since: the stable part of the prompt
        (repository context, the file's path, the code before the cursor) is in its cache.
        Yields to every completion; the latest requests win when several documents open.

        Without an offset (a document just opened: LSP does not say where the cursor is), the
        end of the first prompt window: the file's start up to there is what any request in
        it shares."""
        if offset is None:
            offset = self.config.completion.prefix_chars
        self._to_warm[id(document)] = (weakref.ref(document), offset, path)
        self._to_warm.move_to_end(id(document))
        while len(self._to_warm) > WARM_DOCUMENTS:
            self._to_warm.popitem(last=False)
        self._start_preparer()
        self._wake.set()

    def _warm_pending(self) -> None:
        while self._to_warm and not self._closing and not self._waiting:
            _, (ref, offset, path) = self._to_warm.popitem()
            document = ref()
            if document is None or self.is_private(path, document.uri):
                continue
            if document.kv is not None and document.kv.tokens:
                # A request got there first: its cache is the one to keep, and building a
                # prompt at the opening place would prepare material for a place left behind.
                continue
            text = document.text
            try:
                built = self._build_prompt(CompletionRequest(document, min(offset, len(text)), text, path))
            except Exception:  # a document the prompt cannot be built for is not warmed
                log.debug("warming %s skipped", document.uri, exc_info=True)
                continue
            started = time.perf_counter()
            with self._lock:
                if document.kv is not None and document.kv.tokens:
                    continue  # a request got there first: its cache is the one to keep
                cache = self._cache_for(document)
                self._switch.record(document, built.material)
                computed = self._prefill(cache, built.ids)
            log.debug(
                "warmed %s: %d of %d prompt tokens computed in %.0f ms",
                document.uri, computed, len(built.ids), (time.perf_counter() - started) * 1000,
            )
            if self.large is not None and getattr(self.decoder, "paired", False):
                self._fall_behind(document)

    def _fall_behind(self, document: Document) -> None:
        """Have the large model's cache of `document` caught up with its small one while the
        model is idle. Without this, a request that needs the large model on a document it
        has not read pays the whole prompt (seconds on a CPU) or, past
        `pair.catchUpTokens`, is answered by the small model alone until it has."""
        self._behind[id(document)] = weakref.ref(document)
        self._behind.move_to_end(id(document))
        while len(self._behind) > self.config.pair.cached_documents:
            self._behind.popitem(last=False)
        self._start_preparer()
        self._wake.set()

    def _catch_up_pending(self) -> None:
        while self._behind and not self._closing and not self._waiting:
            key, ref = self._behind.popitem()
            document = ref()
            if document is None:
                continue
            with self._lock:
                if self.large is None:
                    self._behind.clear()
                    return
                if document.kv is None:  # forgotten, or its cache made room for others
                    continue
                if not self._catch_up_large(document, tuple(document.kv.tokens)):
                    self._behind[key] = ref  # a request took the model: first again when idle
                    return

    def _catch_up_large(self, document: Document, tokens: Sequence[int]) -> bool:
        """Bring the large model's cache of `document` to `tokens` in preemptible pieces (the
        engine's lock held); False when a request took the model first."""
        assert self.large is not None
        started = time.perf_counter()
        cache = self._large_cache_for(document)
        reused = common_prefix_length(cache.tokens, tokens)
        self.large.truncate(cache, reused)
        done = reused
        with interruptible(self.large, self._preempt), suppress(Interrupted):
            while done < len(tokens) and not (self._waiting or self._closing):
                piece = tokens[done : done + WARM_CHUNK]
                self.large.forward(cache, piece)
                done += len(piece)
        log.debug(
            "large model caught up on %s: %d of %d tokens computed in %.0f ms",
            document.uri, done - reused, len(tokens) - reused, (time.perf_counter() - started) * 1000,
        )
        return done >= len(tokens)

    def close_workspace(self) -> None:
        workspace, self.workspace = self.workspace, None
        if self._preparer is not None:
            self._closing = True
            self._preempt.fire()
            self._wake.set()
            self._preparer.join(timeout=30)
            self._preparer = None
        if workspace is not None:
            workspace.stop()

    def _workspace_settings(self, settings: ContextConfig) -> ContextConfig:
        if settings.strategy == "auto":
            # BM25 on every device: LongCodeZip, which scores thousands of tokens per place with
            # the model (minutes on a 2-core CPU), chose no better material at the same budget
            # on the cross-file tasks (benchmarks/README.md, crossfile.py).
            settings = dataclasses.replace(settings, strategy="bm25")
        return settings

    def _prepare_loop(self) -> None:
        # Compression runs the model: it takes the lock per scoring call and gives up as soon
        # as a completion waits, so a keystroke never queues behind more than one call.
        while not self._closing:
            self._wake.wait(timeout=PREPARE_IDLE_S)
            self._wake.clear()
            workspace = self.workspace
            if workspace is not None:
                workspace.save_if_due()
            # Wait for a pause in typing: a scoring call started between two keystrokes would
            # hold the model when the next request arrives.
            while not self._closing and time.monotonic() - self._last_request < PREPARE_IDLE_S:
                time.sleep(0.05)
            self._warm_pending()
            self._refresh_pending()
            self._catch_up_pending()
            while workspace is not None and not self._closing and not self._waiting:
                try:
                    if not workspace.prepare_pending(should_stop=self._should_yield):
                        break
                except CompressionCancelled:
                    break
                except Exception:  # a bad file must not end background preparation
                    log.exception("preparing repository context failed")
                    break

    def _should_yield(self) -> bool:
        return self._closing or self._waiting > 0

    def _wait_for_model(self) -> None:
        """A request now waits for the lock: background work in a forward stops part-way."""
        self._waiting += 1
        self._preempt.fire()

    def is_private(self, *paths: str | None) -> bool:
        """Whether any of these paths or URIs names a document that must not reach a prompt:
        a secret, and in a workspace also a git-ignored file or one the exclude list names or
        a symlink takes out of the root (`context/secrets.py`, `WorkspaceIndex.is_private`)."""
        workspace = self.workspace
        # A request's path and its document's uri are mostly the same file: judged once.
        for path in dict.fromkeys(uri_path(p) for p in paths if p):
            if workspace is not None and workspace.is_private(path):
                return True
            if workspace is None and self._secrets.is_secret(path):
                return True
        return False

    def _refuses(self, request: CompletionRequest) -> bool:
        if not self.is_private(request.path, request.document.uri):
            return False
        # The path only: logging the text would be the very leak this avoids.
        log.info(
            "no completion in %s: a secret or excluded file", request.path or request.document.uri
        )
        return True

    def prompt_for(self, request: CompletionRequest) -> Prompt:
        """The prompt a completion at the request's position gets, and how it will stop."""
        if self.is_private(request.path, request.document.uri):
            raise PrivateDocument(f"{request.path or request.document.uri} is private")
        return self._build_prompt(request)

    def _build_prompt(self, request: CompletionRequest, material: Material | None = None) -> Prompt:
        """The prompt at the request's place: with `material` as its repository material, or
        the workspace's freshest for the place."""
        text, offset = request.text, request.offset
        if not 0 <= offset <= len(text):
            raise ValueError(f"cursor offset {offset} outside the document (0..{len(text)})")
        completion = self.config.completion
        syntax = request.document.syntax
        # The request's own text: the document may have moved on since it was made.
        tree = syntax.snapshot(text) if syntax is not None else None
        mode = decide_mode(
            text, offset, _requested_mode(request.mode, completion.multiline), tree=tree
        )
        rules = StopRules(
            mode=mode, around=surroundings(text, offset, tree=tree), max_lines=completion.max_lines
        )
        window = cut_window(
            text,
            offset,
            WindowLimits(
                completion.prefix_chars,
                completion.suffix_chars,
                middle_lines=completion.middle_lines,
            ),
        )
        repo = self._repository_material(request) if material is None else material
        fim = FimInput(
            prefix=window.prefix,
            middle=window.middle,
            suffix=window.suffix,
            path=self._shown_path(request.path),
            repo_name=self.workspace.root.name if self.workspace is not None else None,
            context_files=tuple(ContextFile(p.path, p.text) for p in repo.pieces),
        )
        ids, healing = split_for_healing(self.backend, render(self.template, self.backend, fim))
        return Prompt(tuple(ids), healing, mode, rules, tree, repo.tokens, repo)

    def complete(self, request: CompletionRequest, cancel: CancelToken = NEVER_CANCELLED) -> Suggestion:
        started = time.perf_counter()
        if self._refuses(request):
            return _nothing(started)
        ahead = self._typed_ahead(request, started)
        if ahead is not None:
            return ahead
        offset = request.offset
        built = self._build_prompt(request)
        kept = self._kept_prompt(request, built)
        prompted = time.perf_counter()
        # Completions come from one thread (the caller's model thread), so a plain counter is
        # enough; the preparer only reads it.
        self._wait_for_model()
        try:
            with self._lock:
                self._waiting -= 1
                locked = time.perf_counter()
                cancel.check()
                built = self._choose_material(request, built, kept)
                params = self._params(built, request)
                decoder = self._decoder_for(request.decoding)
                result = self._decode_or_recover(request.document, decoder, built, params, cancel)
            if self.large is not None and getattr(decoder, "paired", False):
                self._fall_behind(request.document)
        finally:
            self._last_request = time.monotonic()
            if (self.workspace is not None and self.workspace.pending()) or self._switch.pending():
                self._wake.set()
        decoded = time.perf_counter()
        suggestion = _suggestion(built, offset, result, 0.0)
        finished = time.perf_counter()
        suggestion = replace(
            suggestion,
            metrics=replace(
                suggestion.metrics,
                total_ms=(finished - started) * 1000,
                context_ms=(prompted - started) * 1000,
                wait_ms=(locked - prompted) * 1000,
                post_ms=(finished - decoded) * 1000,
            ),
        )
        request.document.given = Given(
            request.text,
            offset,
            suggestion.text,
            suggestion.replace,
            suggestion.mode,
            suggestion.stop_reason,
            _reuse_key(request),
        )
        log.debug("completion stages: %s", _stage_line(suggestion.metrics))
        return suggestion

    def _kept_prompt(self, request: CompletionRequest, fresh: Prompt) -> Prompt | None:
        """The prompt with the material the document's cached prompt was built with, where
        that differs from the fresh material and the cache holds something to keep."""
        document = request.document
        used = self._switch.used(document)
        if used is None or used.shows_as(fresh.material) or document.kv is None or not document.kv.tokens:
            return None
        return self._build_prompt(request, used)

    def _choose_material(self, request: CompletionRequest, fresh: Prompt, kept: Prompt | None) -> Prompt:
        """Fresh material unless it costs this keystroke a long pre-fill; then the material
        in use, while the fresh is pre-filled in the background (nextab/material.py). The
        engine's lock held."""
        document = request.document
        cached = document.kv.tokens if document.kv is not None else ()
        choice = self._switch.choose(
            document,
            cached,
            (fresh.material, fresh.ids),
            (kept.material, kept.ids) if kept is not None else None,
        )
        if choice.swap_in is not None:
            document.kv = choice.swap_in
        chosen = fresh if choice.use_fresh or kept is None else kept
        self._switch.record(document, chosen.material)
        if choice.refresh:
            self._switch.want(document, fresh.material, request.offset, request.path, self.backend.new_cache)
            self._start_preparer()
        return chosen

    def _prefill(self, cache: KVCache, ids: Sequence[int]) -> int:
        """Pre-fill `ids` into `cache` past the prefix it already holds, in WARM_CHUNK pieces
        that stop as soon as a request waits; the tokens computed. The engine's lock held."""
        reused = common_prefix_length(cache.tokens, ids)
        self.backend.truncate(cache, reused)
        computed = 0
        with interruptible(self.backend, self._preempt), suppress(Interrupted):
            for begin in range(reused, len(ids), WARM_CHUNK):
                if self._waiting or self._closing:
                    break
                piece = ids[begin : begin + WARM_CHUNK]
                self.backend.forward(cache, piece)
                computed += len(piece)
        return computed

    def _refresh_pending(self) -> None:
        """Pre-fill, in preemptible pieces, the prompt with the fresh material a request put
        off, into a cache of its own; complete, it becomes the document's cache."""
        upcoming = self._switch.pending()
        if upcoming is None or self._closing or self._waiting:
            return
        document = upcoming.document()
        if document is None or self.is_private(upcoming.path, document.uri):
            return
        text = document.text
        request = CompletionRequest(document, min(upcoming.offset, len(text)), text, upcoming.path)
        try:
            built = self._build_prompt(request, upcoming.material)
        except Exception:  # the document changed past what a prompt can be built for
            log.debug("refreshing %s skipped", document.uri, exc_info=True)
            self._switch.forget(document)
            return
        started = time.perf_counter()
        with self._lock:
            cache = upcoming.cache
            computed = self._prefill(cache, built.ids)
            complete = list(cache.tokens) == list(built.ids)
            if complete:
                self._switch.done(upcoming)
        log.debug(
            "new repository material for %s: %d of %d prompt tokens pre-filled in %.0f ms%s",
            document.uri, computed, len(built.ids),
            (time.perf_counter() - started) * 1000, ", swapped in" if complete else "",
        )

    def _decode_or_recover(
        self,
        document: Document,
        decoder: Decoder,
        built: Prompt,
        params: DecodeParams,
        cancel: CancelToken,
    ) -> DecodeResult:
        """Decode on the document's cache (the engine's lock held). A step that fails part-way
        may have written keys for tokens the cache never recorded, so a failure drops the
        document's cache: this request fails, the next starts clean. Out of memory drops every
        document's cache and tries once more, cold; out of memory again moves the model to the
        CPU where the backend can, and tries a last time there."""
        for attempt in (1, 2, 3):
            cache = self._cache_for(document)
            try:
                return decoder.decode(
                    self.backend, cache, built.ids, self._paired(document, decoder, params), cancel, built.healing
                )
            except Cancelled:
                raise
            except Exception as error:
                document.kv = None
                document.kv_large = None
                if not _out_of_memory(error) or not self._made_room(attempt, error):
                    raise
        raise AssertionError("unreachable")

    def _paired(self, document: Document, decoder: Decoder, params: DecodeParams) -> DecodeParams:
        """`params` with the large model and the document's cache of it, for a strategy that
        decodes with two models (`paired`), where the large one is loaded."""
        if self.large is None or not getattr(decoder, "paired", False):
            return params
        partner = Partner(self.large, self._large_cache_for(document), self.config.pair.catch_up_tokens)
        return replace(params, partner=partner)

    def _made_room(self, attempt: int, error: Exception) -> bool:
        """After the `attempt`-th try ran out of memory: whether memory was freed for another."""
        if attempt == 1:
            log.warning(
                "out of memory while decoding (%s): dropped the KV caches of %d documents "
                "and tried again",
                error, len(self._cached),
            )  # fmt: skip
            self._drop_caches()
            return True
        return attempt == 2 and self._fall_back_to_cpu(error)

    def _fall_back_to_cpu(self, error: Exception) -> bool:
        fall_back = getattr(self.backend, "fall_back_to_cpu", None)
        if fall_back is None or not fall_back():
            return False
        self._drop_caches()  # what they hold stayed on the device the model left
        message = (
            f"the GPU ran out of memory even with every cached prompt dropped ({error}): "
            f"{self.backend.info.name} now runs on the CPU, slower, until nextab restarts"
        )
        log.warning("%s", message)
        self._notices.append(message)
        if self.workspace is not None:  # what suits a GPU (LongCodeZip) takes minutes on a CPU
            self.workspace.settings = self._workspace_settings(self.config.context)
        return True

    def take_notices(self) -> list[str]:
        """Messages for the user (the editor shows them), each returned once."""
        # One swap: a notice the model thread adds meanwhile lands in one list or the other.
        notices, self._notices = self._notices, []
        return notices

    def cache_usage(self) -> dict[str, CacheUsage]:
        """What the per-document attention caches hold, per model: the memory that grows with
        use (a token is ~25 KB of the 0.5B's cache and ~57 KB of the 1.5B's in float32), each
        family bounded by its `cachedDocuments`."""
        return {"model": _usage(self._cached, "kv"), "large": _usage(self._cached_large, "kv_large")}

    def _drop_large_caches(self) -> None:
        _drop_all(self._cached_large, "kv_large")

    def _drop_caches(self) -> None:
        _drop_all(self._cached, "kv")
        self._switch.clear()
        self._drop_large_caches()
        self._rewrite_cache = None
        for backend in (self.backend, self.large):
            release = getattr(backend, "release_memory", None)
            if release is not None:
                release()

    def _typed_ahead(self, request: CompletionRequest, started: float) -> Suggestion | None:
        """The rest of the last suggestion for the document, if the developer has been typing
        it since (no model call); None otherwise."""
        given: Given | None = request.document.given
        if given is None or given.model != _reuse_key(request):
            return None
        rest = remainder(given, request.text, request.offset)
        if rest is None:
            return None
        request.document.given = replace(
            given, text=request.text, offset=request.offset, insert=rest
        )
        total = (time.perf_counter() - started) * 1000
        return Suggestion(
            text=rest,
            replace=given.replace,
            mode=given.mode,
            stop_reason=given.stop_reason,
            metrics=Metrics(0, 0, 0, 0, 0.0, 0.0, total, source="typed-ahead"),
        )

    def complete_batch(
        self,
        requests: Sequence[CompletionRequest],
        cancel: CancelToken = NEVER_CANCELLED,
        slots: int | None = None,
    ) -> list[Suggestion]:
        """Completions of independent requests (batch jobs), in their order.

        Greedy rows are decoded side by side, at most `slots` at once (continuous batching):
        the same tokens as one at a time, several rows per decoding step. Rows with another
        strategy run one at a time. No document's KV cache is read or kept.
        """
        started = time.perf_counter()
        refused = {i for i, request in enumerate(requests) if self._refuses(request)}
        built = {i: self._build_prompt(r) for i, r in enumerate(requests) if i not in refused}
        greedy = [
            i
            for i, r in enumerate(requests)
            if i not in refused and type(self._decoder_for(r.decoding)) is GreedyDecoder
        ]
        items = [
            BatchItem(built[i].ids, self._params(built[i], requests[i]), built[i].healing)
            for i in greedy
        ]
        found: dict[int, Suggestion] = {i: _nothing(started) for i in refused}
        self._wait_for_model()
        try:
            with self._lock:
                self._waiting -= 1
                cancel.check()
                results = decode_batch(self.backend, items, cancel, slots)
        finally:
            self._last_request = time.monotonic()
        for i, result in zip(greedy, results, strict=True):
            total_ms = result.prefill_ms + result.decode_ms
            found[i] = _suggestion(built[i], requests[i].offset, result, total_ms)
        for i, request in enumerate(requests):
            if i not in found:
                found[i] = self.complete(request, cancel)
        log.debug("batch of %d in %.0f ms", len(requests), (time.perf_counter() - started) * 1000)
        return [found[i] for i in range(len(requests))]

    def _params(self, built: Prompt, request: CompletionRequest) -> DecodeParams:
        offset = request.offset
        return DecodeParams(
            max_tokens=request.max_tokens or self.config.max_tokens,
            stop_ids=self.stop_ids,
            stop_check=built.rules,
            viable=lambda text, reason: _shows_all(_shown(built, offset, text, reason)),
            lookup=self.lookup,
        )

    def _decoder_for(self, name: str | None) -> Decoder:
        if name is None or name == self.config.decoding:
            return self.decoder
        # Made once per strategy (and settings): a batch may name one on every row.
        if name not in self._other_decoders:
            config = dataclasses.replace(self.config, decoding=name)
            self._other_decoders[name] = self._make_decoder(config)  # type: ignore[arg-type]
        return self._other_decoders[name]

    def next_edit(
        self, request: NextEditRequest, cancel: CancelToken = NEVER_CANCELLED
    ) -> NextEditResult:
        """Where the developer will likely edit next, and the edit (`nextab/nextedit.py`)."""
        from nextab.nextedit import NextEditMetrics, NextEditResult, predict

        if self.is_private(request.path, request.document.uri):
            log.info(
                "no next edit in %s: a secret or excluded file",
                request.path or request.document.uri,
            )
            metrics = NextEditMetrics(0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0.0)
            return NextEditResult((), (), metrics)
        try:
            return predict(
                self.config.next_edit, self._without_private_edits(request), self, cancel
            )
        finally:
            self._last_request = time.monotonic()

    def _without_private_edits(self, request: NextEditRequest) -> NextEditRequest:
        """The request without edits of private documents. A history filters them as they are
        recorded; this covers one that could not know the workspace's rules (the server's
        before the workspace opens, or with indexing off)."""
        verdicts: dict[str, bool] = {}
        kept: list[Edit] = []
        for edit in request.edits:
            if edit.uri not in verdicts:
                verdicts[edit.uri] = self.is_private(edit.uri)
            if not verdicts[edit.uri]:
                kept.append(edit)
        if len(kept) == len(request.edits):
            return request
        root = self.workspace.root if self.workspace is not None else None
        history = EditHistory(root=root, edits=kept, limit=len(kept), private=lambda _: False)
        diffs = history.render(self.config.context.recent_edits_chars) if request.diffs else ""
        return replace(request, edits=tuple(kept), diffs=diffs)

    def rewrite(self, material: RewriteInput, extra_tokens: int, cancel: CancelToken) -> DecodeResult:
        """The model rewrites a window for next-edit prediction, on a cache of its own (the
        prompts for one edit's candidate locations share their start, not a document's)."""
        prompt = render_rewrite(self.backend, material)
        params = DecodeParams(
            max_tokens=len(prompt.draft) + extra_tokens,
            stop_ids=self.rewrite_stop_ids,
            stop_check=rewrite_stop_check,
            draft=prompt.draft,
        )
        self._wait_for_model()
        try:
            with self._lock:
                self._waiting -= 1
                cancel.check()
                if self._rewrite_cache is None:
                    self._rewrite_cache = self.backend.new_cache()
                return self.decoder.decode(self.backend, self._rewrite_cache, prompt.ids, params, cancel)
        finally:
            if self.workspace is not None and self.workspace.pending():
                self._wake.set()

    def copy_logprobs(self, materials: Sequence[RewriteInput], cancel: CancelToken) -> list[float]:
        """Per window, log P(the rewrite is the window unchanged) under the location model:
        teacher-forced, one sequence per call so that a newer request can take the model in
        between."""
        found = []
        for material in materials:
            self._wait_for_model()
            try:
                with self._lock:
                    self._waiting -= 1
                    cancel.check()
                    backend = self._location_backend()
                    prompt = render_rewrite(backend, material)
                    (logprobs,) = backend.token_logprobs(
                        [[*prompt.ids, *prompt.draft]], [len(prompt.ids)]
                    )
            finally:
                if self.workspace is not None and self.workspace.pending():
                    self._wake.set()
            found.append(float(np.sum(logprobs, dtype=np.float64)))
        return found

    def _location_backend(self) -> Backend:
        """The location model: the edit model unless `nextEdit.locationModel` names another,
        loaded once (on the edit model's device) and replaced when the setting changes. One
        that cannot be loaded is reported once, and the edit model ranks instead."""
        spec = self.config.next_edit.location_model
        if not spec or spec == self.config.model:
            self._locator = None
            return self.backend
        if self._locator is None or self._locator[0] != spec:
            from nextab.models.loading import load_backend
            from nextab.models.resolve import ModelNotFoundError, resolve_model

            self._locator = None  # the old one's memory goes before the new one loads
            device = self.backend.info.device
            try:
                resolved = resolve_model(spec, progress=False)
                located = load_backend(
                    resolved,
                    backend=self.config.backend,
                    device=device,
                    dtype=self.config.dtype,
                    precision=self.config.precision,
                    progress=False,
                )
            except (ModelNotFoundError, OSError, ValueError, RuntimeError) as error:
                log.error("nextEdit.locationModel %r cannot be loaded (%s): ranking with %s",
                          spec, error, self.backend.info.name)
                located = self.backend
            else:
                log.info("location model %s loaded on %s", resolved.name, device)
            self._locator = (spec, located)
        return self._locator[1]

    def ranks_locations(self, setting: str) -> bool:
        return setting == "on" or (setting == "auto" and self.backend.info.device != "cpu")

    def _shown_path(self, path: str | None) -> str | None:
        # Inside a workspace the model sees the same relative paths as for the other files.
        if path is None or self.workspace is None:
            return path
        return self.workspace.relative(path)

    def _repository_material(self, request: CompletionRequest) -> Material:
        workspace = self.workspace
        if workspace is None or not request.path:
            return Material.empty()
        return workspace.material(workspace.relative(request.path), request.text, request.offset)

    def forget(self, document: Document) -> None:
        """Drop what the engine holds for a closed document."""
        with self._lock:
            document.kv = None
            document.kv_large = None
            document.given = None
            self._cached.pop(id(document), None)
            self._cached_large.pop(id(document), None)
            self._switch.forget(document)

    def _cache_for(self, document: Document) -> KVCache:
        if document.kv is None:
            document.kv = self.backend.new_cache()
        # Each cache holds megabytes per thousand tokens: keep only the most recent documents'.
        _keep_recent(self._cached, document, self.config.cached_documents, "kv")
        return document.kv

    def _large_cache_for(self, document: Document) -> KVCache:
        assert self.large is not None
        if document.kv_large is None:
            document.kv_large = self.large.new_cache()
        _keep_recent(self._cached_large, document, self.config.pair.cached_documents, "kv_large")
        return document.kv_large


@dataclass(frozen=True)
class CacheUsage:
    documents: int
    tokens: int


def _usage(cached: OrderedDict[int, weakref.ref[Document]], attribute: str) -> CacheUsage:
    # Read without the engine's lock (status must not wait for a completion): a count taken
    # while a cache changes is off by a step, never wrong for long.
    caches = [getattr(d, attribute, None) for d in (ref() for ref in list(cached.values()))]
    held = [c for c in caches if c is not None]
    return CacheUsage(len(held), sum(len(c.tokens) for c in held))


def _drop_all(cached: OrderedDict[int, weakref.ref[Document]], attribute: str) -> None:
    """Drop the cache (`attribute`) of every document in `cached`."""
    for ref in cached.values():
        document = ref()
        if document is not None:
            setattr(document, attribute, None)
    cached.clear()


def _keep_recent(
    cached: OrderedDict[int, weakref.ref[Document]], document: Document, most: int, attribute: str
) -> None:
    """Mark `document` the most recently used of `cached`; drop the cache (`attribute`) of
    the least recently used beyond `most`."""
    key = id(document)
    cached[key] = weakref.ref(document)
    cached.move_to_end(key)
    while len(cached) > most:
        _, ref = cached.popitem(last=False)
        evicted = ref()
        if evicted is not None:
            setattr(evicted, attribute, None)


def _out_of_memory(error: BaseException) -> bool:
    # torch.OutOfMemoryError (CUDA, MPS), onnxruntime's failed allocations, MemoryError: by
    # name, so the engine needs neither runtime imported.
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or (
        "Failed to allocate memory" in str(error)
    )


def _nothing(started: float) -> Suggestion:
    """The empty suggestion for a document that must not reach the model."""
    total_ms = (time.perf_counter() - started) * 1000
    metrics = Metrics(0, 0, 0, 0, 0.0, 0.0, total_ms, source="private")
    return Suggestion(text="", replace=0, mode="line", stop_reason="private", metrics=metrics)


def _suggestion(built: Prompt, offset: int, result: DecodeResult, total_ms: float) -> Suggestion:
    trimmed, _ = _shown(built, offset, result.text, result.stop_reason)
    return Suggestion(
        text=trimmed.text,
        replace=trimmed.replace,
        mode=built.mode,
        stop_reason=result.stop_reason,
        metrics=Metrics(
            context_tokens=built.context_tokens,
            prompt_tokens=result.prompt_tokens,
            reused_tokens=result.reused_tokens,
            generated_tokens=len(result.tokens),
            prefill_ms=result.prefill_ms,
            decode_ms=result.decode_ms,
            total_ms=total_ms,
            paused_steps=result.paused_steps,
            evaluated_tokens=result.evaluated_tokens,
            drafted_tokens=result.drafted_tokens,
            accepted_tokens=result.accepted_tokens,
            large_tokens=result.large_tokens,
            large_computed=result.large_computed,
            fallback=result.fallback,
        ),
    )


def _reuse_key(request: CompletionRequest) -> tuple[object, ...]:
    # A suggestion made under other options is not the answer to this request.
    return (request.mode, request.max_tokens, request.decoding)


def _stage_line(m: Metrics) -> str:
    return (
        f"context {m.context_ms:.0f} ms, wait {m.wait_ms:.0f} ms, prefill {m.prefill_ms:.0f} ms "
        f"({m.prompt_tokens - m.reused_tokens} new of {m.prompt_tokens} tokens), decode "
        f"{m.decode_ms:.0f} ms ({m.generated_tokens} tokens, {m.accepted_tokens}/"
        f"{m.drafted_tokens} drafted accepted), post {m.post_ms:.1f} ms, total {m.total_ms:.0f} ms"
    )


def _shows_all(shown: tuple[Trimmed, bool]) -> bool:
    """Whether the editor gets all of what the model wrote: not cut by the syntax check, and
    not dropped by the stop rules (a line that only repeats the code below it)."""
    trimmed, cut = shown
    return not cut and bool(trimmed.text.strip())


def _shown(prompt: Prompt, offset: int, text: str, stop_reason: str) -> tuple[Trimmed, bool]:
    """What the editor is shown of a decoded completion, and whether the syntax check had to
    cut it back (the suggestion then shows less than the model wrote, perhaps nothing)."""
    if prompt.material.pieces:
        kept = before_elision(text)
        if kept != text:
            text, stop_reason = kept, "stop"
    finalized = finalize(text, prompt.rules)
    trimmed = _without_cut_line(finalized, text, prompt.mode, stop_reason)
    # What is left ends a line the model finished: a stop, or the cut-off line dropped.
    ends_whole = stop_reason == "stop" or trimmed != finalized
    whole_line = _inserts_whole_line(prompt.mode, prompt.rules, ends_whole, trimmed.text)
    if whole_line:
        trimmed = Trimmed(trimmed.text + "\n", trimmed.replace)
    if prompt.tree is None or not trimmed.text:
        return trimmed, False
    keep = prompt.tree.check_insertion(offset, offset + trimmed.replace, trimmed.text)
    if keep >= len(trimmed.text):
        return trimmed, False
    # A shortened suggestion no longer ends where the auto-closed rest of the line did.
    cut = trimmed.text[:keep].rstrip()
    return Trimmed(cut + "\n" if whole_line and cut else cut, replace=0), True


def _without_cut_line(trimmed: Trimmed, decoded: str, mode: str, stop_reason: str) -> Trimmed:
    """A block that the token limit cut off mid-line ends with its last whole line: a dangling
    `print` or `if x ==` under complete lines is worse than one line less."""
    if mode != "block" or stop_reason != "length" or decoded.endswith("\n") or trimmed.replace:
        return trimmed
    head, newline, last = trimmed.text.rpartition("\n")
    cut_here = decoded.rstrip().endswith(last.rstrip())  # not already ended by the stop rules
    return Trimmed(head.rstrip(), 0) if newline and head.strip() and cut_here else trimmed


def workspace_store(root: str | Path) -> Path:
    from nextab.models.resolve import cache_dir

    resolved = str(Path(root).resolve())
    digest = hashlib.sha256(resolved.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return cache_dir() / "workspaces" / f"{Path(resolved).name or 'root'}-{digest}"


class _LockedScorer:
    """The compressor's view of the model: one scoring call at a time, under the engine's lock."""

    def __init__(self, scorer: BackendScorer, engine: Engine) -> None:
        self._scorer = scorer
        self._engine = engine

    def count_tokens(self, text: str) -> int:
        return self._scorer.count_tokens(text)  # the tokenizer is thread-safe and model-free

    def nll_batch(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        with self._engine._lock, self._stoppable():
            return self._scorer.nll_batch(pairs)

    def line_nll_batch(self, pairs: Sequence[tuple[str, str]]) -> list[list[float]]:
        with self._engine._lock, self._stoppable():
            return self._scorer.line_nll_batch(pairs)

    @contextmanager
    def _stoppable(self) -> Iterator[None]:
        engine = self._engine
        with _cancelled_when_interrupted(), interruptible(engine.backend, engine._preempt):
            yield


class Preemption:
    """A cancel signal for the engine's background model work (warming a prompt, scoring
    context): it reads as cancelled while a request waits for the model, and `fire` stops a
    forward in progress, so that the request waits milliseconds rather than a chunk's
    seconds on a CPU. Unlike a request's CancelToken it re-arms when nobody waits."""

    def __init__(self, should_yield: Callable[[], bool]) -> None:
        self._should_yield = should_yield
        self._callbacks = Callbacks()
        self.fire = self._callbacks.fire

    @property
    def cancelled(self) -> bool:
        return self._should_yield()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self._callbacks.add(callback)


@contextmanager
def _cancelled_when_interrupted() -> Iterator[None]:
    # A scoring call that gave the model up to a completion ends the compression run; what
    # was scored before it stays cached for the next run.
    try:
        yield
    except Interrupted as exc:
        raise CompressionCancelled from exc


def _rewrite_stop_ids(backend: Backend, fim_stops: frozenset[int]) -> frozenset[int]:
    # A chat model ends its answer with <|im_end|>; the FIM stops (end of text, file
    # separators) end a rewrite as well.
    end = backend.special_token_id("<|im_end|>")
    return fim_stops | ({end} if end is not None else set())


def _requested_mode(requested: RequestedMode, multiline: str) -> RequestedMode:
    if requested != "auto":
        return requested
    return {"always": "block", "never": "line"}.get(multiline, "auto")  # type: ignore[return-value]


def _inserts_whole_line(mode: str, rules: StopRules, ends_whole: bool, text: str) -> bool:
    """At column 0 before existing code, a suggestion is new lines above that code: it must end
    with a line end, or its last line would run into the code (and the syntax check would
    then cut the whole suggestion away)."""
    around = rules.around
    if not (text.strip() and around.line_prefix == "" and around.rest_of_line.strip()):
        return False
    if text.endswith("\n"):
        return False
    # A line cut short by the token limit is no line to insert; a block's earlier lines are.
    return ends_whole or (mode == "block" and "\n" in text)
