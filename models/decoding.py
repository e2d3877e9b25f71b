"""Decoding strategies over the backend protocol, with prefix KV reuse and cancellation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from nextab.models.backend import Backend, KVCache, common_prefix_length


class Cancelled(Exception):
    """The request was superseded or cancelled by the client."""


class CancelToken:
    """Set from the event loop, checked by the model thread between forward passes."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled


NEVER_CANCELLED = CancelToken()

# Called with the text generated so far; returns the length to keep when generation must stop.
StopCheck = Callable[[str], int | None]


@dataclass(frozen=True)
class DecodeParams:
    max_tokens: int
    stop_ids: frozenset[int]
    stop_check: StopCheck | None = None
    prefill_chunk: int = 256


@dataclass(frozen=True)
class DecodeResult:
    tokens: tuple[int, ...]
    text: str
    stop_reason: str  # "eos" | "stop" | "length"
    prompt_tokens: int
    reused_tokens: int
    prefill_ms: float
    decode_ms: float


class Decoder(Protocol):
    def decode(
        self,
        backend: Backend,
        cache: KVCache,
        prompt: Sequence[int],
        params: DecodeParams,
        cancel: CancelToken,
    ) -> DecodeResult: ...


def prefill(
    backend: Backend,
    cache: KVCache,
    prompt: Sequence[int],
    cancel: CancelToken,
    chunk: int = 256,
) -> tuple[np.ndarray, int]:
    """Bring `cache` to exactly `prompt` and return the next-token logits and the reused length.

    Only the tokens after the longest common prefix with what the cache already holds are
    computed. At least one token is always re-run, because the logits of a cached position are
    not kept. The work is chunked so that a cancel lands within one chunk.
    """
    if not prompt:
        raise ValueError("empty prompt")
    reused = min(common_prefix_length(cache.tokens, prompt), len(prompt) - 1)
    backend.truncate(cache, reused)
    logits: np.ndarray | None = None
    for start in range(reused, len(prompt), chunk):
        cancel.check()
        logits = backend.forward(cache, prompt[start : start + chunk])
    assert logits is not None
    return logits, reused


class GreedyDecoder:
    """Argmax at every step: the baseline strategy, and the one the stop rules are tested on."""

    def decode(
        self,
        backend: Backend,
        cache: KVCache,
        prompt: Sequence[int],
        params: DecodeParams,
        cancel: CancelToken,
    ) -> DecodeResult:
        started = time.perf_counter()
        logits, reused = prefill(backend, cache, prompt, cancel, params.prefill_chunk)
        prefilled = time.perf_counter()
        generated: list[int] = []
        text = ""
        reason = "length"
        while len(generated) < params.max_tokens:
            token = int(np.argmax(logits))
            if token in params.stop_ids:
                reason = "eos"
                break
            generated.append(token)
            text = backend.detokenize(generated)
            if params.stop_check is not None:
                keep = params.stop_check(text)
                if keep is not None:
                    text = text[:keep]
                    reason = "stop"
                    break
            if len(generated) == params.max_tokens:
                break
            cancel.check()
            logits = backend.forward(cache, [token])
        finished = time.perf_counter()
        return DecodeResult(
            tokens=tuple(generated),
            text=text,
            stop_reason=reason,
            prompt_tokens=len(prompt),
            reused_tokens=reused,
            prefill_ms=(prefilled - started) * 1000,
            decode_ms=(finished - prefilled) * 1000,
        )


DECODERS: dict[str, Callable[[], Decoder]] = {"greedy": GreedyDecoder}


def make_decoder(name: str) -> Decoder:
    try:
        return DECODERS[name]()
    except KeyError:
        raise ValueError(f"unknown decoding strategy {name!r}; known: {', '.join(DECODERS)}") from None
