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
class Healing:
    """Token healing: the prompt's last token, taken off because the prompt ends mid-word.

    The first tokens generated must spell its text again (in any tokenization), so the model is
    never asked to continue from a token boundary it rarely saw in training ("ret" + "urn").
    """

    text: str
    token: int  # the token that was taken off, the fallback when no candidate fits

    def pick(self, backend: Backend, logits: np.ndarray, pending: str, top_k: int = 64) -> int:
        """The most likely token consistent with the text still pending."""
        candidates = np.argpartition(logits, -top_k)[-top_k:]
        for token in candidates[np.argsort(-logits[candidates])]:
            piece = backend.detokenize([int(token)])
            if piece and (piece.startswith(pending) or pending.startswith(piece)):
                return int(token)
        return self.token


def split_for_healing(backend: Backend, prompt: Sequence[int]) -> tuple[list[int], Healing | None]:
    """Take the last token off a prompt that ends inside a line, for the decoder to heal.

    Mid-word ("ret") and trailing indentation ("    ", where the model's own tokenization is
    "   " + " total") both leave the model at a token boundary it rarely saw in training, and it
    answers with the wrong word or one space too many. A prompt that ends with a special token
    or a newline is at a natural boundary and stays whole.
    """
    if not prompt:
        return list(prompt), None
    last = prompt[-1]
    piece = backend.detokenize([last])
    if not piece or "\ufffd" in piece or piece.endswith("\n") or _is_special(backend, piece):
        return list(prompt), None
    return list(prompt[:-1]), Healing(text=piece, token=last)


def _is_special(backend: Backend, piece: str) -> bool:
    return backend.special_token_id(piece) is not None


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
        healing: Healing | None = None,
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
        healing: Healing | None = None,
    ) -> DecodeResult:
        started = time.perf_counter()
        logits, reused = prefill(backend, cache, prompt, cancel, params.prefill_chunk)
        prefilled = time.perf_counter()
        generated: list[int] = []
        healed = healing.text if healing else ""
        full = ""  # everything generated, healed text included
        text = ""
        reason = "length"
        while len(generated) < params.max_tokens:
            if healing and len(full) < len(healed):
                token = healing.pick(backend, logits, healed[len(full) :])
            else:
                token = int(np.argmax(logits))
            if token in params.stop_ids:
                reason = "eos"
                break
            generated.append(token)
            full = backend.detokenize(generated)
            if len(full) < len(healed):
                cancel.check()
                logits = backend.forward(cache, [token])
                continue
            text = full[len(healed) :]
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
