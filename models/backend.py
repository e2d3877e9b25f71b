"""The narrow interface every model runtime implements; decoding strategies sit above it."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

# Lone halves of a UTF-16 surrogate pair: valid in a Python str and in JSON, never in UTF-8.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class ModelInfo:
    """What the layers above need to know about a loaded model."""

    name: str
    model_type: str  # the config's model_type, e.g. "qwen2"
    device: str
    dtype: str
    vocab_size: int
    eos_token_ids: frozenset[int]
    max_context: int
    # Whether a forward of k tokens gives the logits k one-token forwards give (up to float
    # noise that never flips an argmax in practice): what makes checking drafted tokens in one
    # pass exact. onnxruntime's int8-activation kernels round a k-token pass differently (up
    # to ~0.3 in the logits), enough to flip near-ties.
    exact_multi_token: bool = True


class CancelSignal(Protocol):
    """What a backend needs of a request's cancel handle to stop a forward part-way."""

    @property
    def cancelled(self) -> bool: ...

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (on the cancelling thread) when cancelled; returns the function
        that removes it, after which it is never called."""
        ...


class Callbacks:
    """What to call when a signal is cancelled. One removed is never called after its removal
    returns (the calls hold the same lock): a late call would stop another request's forward."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def add(self, callback: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._callbacks.append(callback)

        def remove() -> None:
            with self._lock:
                self._callbacks.remove(callback)

        return remove

    def fire(self) -> None:
        with self._lock:
            for callback in self._callbacks:
                callback()


@contextmanager
def interruptible(backend: object, signal: CancelSignal) -> Iterator[None]:
    """While inside, a forward of `backend` stops part-way, raising Interrupted, once `signal`
    is cancelled, if the backend can (`stop_on`); others finish the forward they are in.

    A cold prompt is pre-filled in chunks of seconds on a CPU; stopping inside one is what
    lets a superseded request give the model back within milliseconds.
    """
    stop_on = getattr(backend, "stop_on", None)
    if stop_on is None:
        yield
        return
    with stop_on(signal):
        yield


class KVCache(Protocol):
    """A backend's attention cache plus the exact token ids it holds.

    Keeping the ids beside the cache is what lets a caller find the longest common prefix with
    the next prompt and compute only the tokens after it.
    """

    @property
    def tokens(self) -> Sequence[int]: ...

    @property
    def tree_size(self) -> int:
        """Tree nodes held after `tokens` (see Backend.forward_tree); 0 outside lookahead."""
        ...


class BatchCache(Protocol):
    """Attention caches of several independent sequences, run side by side (batch jobs).

    Rows are left-padded to a common length; the padding is masked and never attended to.
    """

    @property
    def rows(self) -> int: ...


@runtime_checkable
class Backend(Protocol):
    info: ModelInfo

    def tokenize(self, text: str) -> list[int]:
        """Ids for plain text; special-token strings inside `text` stay plain text."""
        ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def special_token_id(self, token: str) -> int | None:
        """Id of a special/added token by its string, or None if the vocabulary lacks it."""
        ...

    def new_cache(self) -> KVCache: ...

    def forward(self, cache: KVCache, tokens: Sequence[int], every: bool = False) -> np.ndarray:
        """Run `tokens` after what `cache` holds, extend it, return the last position's logits.

        The logits are float32 of shape (vocab_size,), on the host; with `every`, those after
        each of `tokens`, shape (len(tokens), vocab_size): what checking drafted tokens needs.
        """
        ...

    def truncate(self, cache: KVCache, length: int) -> None:
        """Drop everything after the first `length` tokens of `cache`, tree nodes included."""
        ...

    def forward_tree(
        self, cache: KVCache, tokens: Sequence[int], parents: Sequence[int]
    ) -> np.ndarray:
        """Next-token logits after each of `tokens`, new nodes of a token tree hanging off the
        end of `cache`.

        `parents[i]` is the index of token i's parent among the tree's nodes (those added by
        earlier calls since the tree began, then these, in order), or -1 for a child of the
        cache's last token. A node attends to the cached tokens and to its own ancestors only,
        so sibling branches share the cached prefix without copying it: several lookahead
        branches or beams advance in one batched forward. The nodes stay in the attention
        cache, outside `cache.tokens`, until the next `forward` or `truncate` drops the tree.
        Returns float32 logits of shape (len(tokens), vocab), on the host.
        """
        ...

    def new_batch(self) -> BatchCache: ...

    def add_rows(self, batch: BatchCache, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """Pre-fill each prompt and join it to the batch as a new last row; return their
        next-token logits, float32 of shape (len(prompts), vocab_size), on the host.

        Each prompt is computed on its own, so no work is spent on padding; rows of different
        lengths then sit side by side, left-padded (the padding is masked).
        """
        ...

    def forward_batch(self, batch: BatchCache, tokens: Sequence[int]) -> np.ndarray:
        """One more token for every row, in one forward pass; each row's next-token logits,
        float32 of shape (rows, vocab_size), on the host."""
        ...

    def keep_rows(self, batch: BatchCache, rows: Sequence[int]) -> None:
        """Keep only these rows (indices into the current rows, in order): finished sequences
        leave the batch, so that the others' steps do not pay for them and new rows can join."""
        ...

    def token_logprobs(
        self,
        sequences: Sequence[Sequence[int]],
        starts: Sequence[int],
        should_stop: Callable[[], bool] | None = None,
    ) -> list[np.ndarray]:
        """Log-probability of each token of `sequences[i][starts[i]:]` given the tokens before it.

        The sequences are independent of each other and of every KV cache (none is read or
        changed); this is the scoring path for context selection, not for decoding. Each start
        must be at least 1, since the first token has nothing to be predicted from. Returns one
        float32 array of length `len(sequences[i]) - starts[i]` per sequence, on the host.
        Raises Interrupted when `should_stop()` turns true between two pieces of the work, so
        that a completion waiting for the model does not wait for a whole long sequence.
        """
        ...

    def token_stats(
        self, sequences: Sequence[Sequence[int]], starts: Sequence[int]
    ) -> list[TokenStats]:
        """As `token_logprobs`, with each position's entropy and whether the actual token was
        the model's first choice: the data `nextab calibrate` fits AdaDec's threshold to."""
        ...


@dataclass(frozen=True)
class TokenStats:
    """Per scored token: what calibrating a decoding strategy needs to know."""

    logprobs: np.ndarray  # float32, of the actual token
    entropies: np.ndarray  # float32, of the next-token distribution, in nats
    greedy: np.ndarray  # bool, the actual token was the argmax
    argmax: np.ndarray | None = None  # int64, the model's first choice (pairing two models)

    @classmethod
    def from_rows(cls, rows: np.ndarray) -> TokenStats:
        """From (n, 4) rows: log-probability, entropy, 1.0 where greedy, argmax (as float32,
        exact for vocabularies under 2**24)."""
        return cls(rows[:, 0], rows[:, 1], rows[:, 2] > 0.5, rows[:, 3].astype(np.int64))


class Interrupted(Exception):
    """Work given up part-way because its caller asked it to stop: a scoring call between two
    pieces, or a forward inside one (`interruptible`; the cache then holds exactly what it held
    before the call)."""


class HfTokens:
    """Tokens through a Hugging Face tokenizer (`self.tokenizer`, `self._special`): what the
    torch and onnxruntime backends share."""

    tokenizer: Any
    _special: dict[str, int]

    def tokenize(self, text: str) -> list[int]:
        if not text:
            return []
        if not text.isascii():
            # A lone surrogate (valid JSON, so an editor may send one) is no UTF-8: the Rust
            # tokenizer refuses the whole text. It stands for nothing; U+FFFD keeps offsets.
            text = _LONE_SURROGATE.sub("\ufffd", text)
        # split_special_tokens keeps "<|fim_prefix|>" typed in a user's file from becoming a
        # control token: only the template may place those.
        return list(
            self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        )

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def special_token_id(self, token: str) -> int | None:
        return self._special.get(token)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
