"""Conditional negative log-likelihoods of text from a model backend, for context compression.

Implements nextab.context.compress.Scorer over `Backend.token_logprobs`. Every sequence starts
with the model's document separator (<|endoftext|> for Qwen), the way training documents
start, so the first token of a target is scored like any other. Context and target are
tokenized separately and joined as ids, so the target's tokens, and with them its per-line
split, do not depend on what it is conditioned on.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from nextab.models.backend import Backend

_SEPARATOR = "\n\n"
_DOCUMENT_STARTS = ("<|endoftext|>", "<s>", "<|begin_of_text|>")


class BackendScorer:
    """nextab.context.compress.Scorer on a model backend.

    batch_size          sequences per backend call (sorted by length, so little padding)
    max_context_tokens  a longer context keeps only its end, the part next to the target
    should_stop         asked inside long backend calls; when it turns true they raise
                        nextab.models.backend.Interrupted
    """

    def __init__(
        self,
        backend: Backend,
        batch_size: int = 4,
        max_context_tokens: int = 2048,
        token_cache: int = 8192,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.backend = backend
        self.should_stop = should_stop
        self.batch_size = max(1, batch_size)
        self.max_context_tokens = max_context_tokens
        self._start = _document_start(backend)
        self._token_cache: OrderedDict[str, int] = OrderedDict()
        self._token_cache_size = token_cache

    # -- Scorer ---------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        count = self._token_cache.get(text)
        if count is None:
            count = len(self.backend.tokenize(text))
            self._token_cache[text] = count
            while len(self._token_cache) > self._token_cache_size:
                self._token_cache.popitem(last=False)
        else:
            self._token_cache.move_to_end(text)
        return count

    def nll_batch(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        logprobs = self._logprobs([(self.backend.tokenize(t), c) for t, c in pairs])
        return [_nan_mean(-lp) for lp in logprobs]

    def line_nll_batch(self, pairs: Sequence[tuple[str, str]]) -> list[list[float]]:
        targets = [self.backend.tokenize(text) for text, _ in pairs]
        logprobs = self._logprobs([(ids, c) for ids, (_, c) in zip(targets, pairs, strict=True)])
        return [
            self._per_line(text, ids, lp)
            for (text, _), ids, lp in zip(pairs, targets, logprobs, strict=True)
        ]

    # -- single-item conveniences -----------------------------------------------------------

    def nll(self, target: str, context: str = "") -> float:
        return self.nll_batch([(target, context)])[0]

    def line_nlls(self, text: str, context: str = "") -> list[float]:
        return self.line_nll_batch([(text, context)])[0]

    # -- internals ----------------------------------------------------------------------------

    def _logprobs(self, requests: Sequence[tuple[list[int], str]]) -> list[np.ndarray]:
        """Log-prob of each target id after the document start and its context, aligned with
        the target: NaN where a token could not be scored (the very first one when there is
        neither a document start nor a context; the tail of a target longer than the model's
        window)."""
        limit = self.backend.info.max_context
        sequences: list[list[int]] = []
        starts: list[int] = []
        prefixes: list[int] = []
        for target, context in requests:
            target = target[: max(1, limit - len(self._start))]
            context_ids = self._context_ids(context)
            room = max(0, limit - len(self._start) - len(target))
            prefix = [*self._start, *context_ids[len(context_ids) - min(room, len(context_ids)) :]]
            sequences.append(prefix + target)
            starts.append(max(1, len(prefix)))
            prefixes.append(len(prefix))
        out = [np.full(len(ids), np.nan, dtype=np.float32) for ids, _ in requests]
        todo = sorted(
            (i for i in range(len(requests)) if len(sequences[i]) > starts[i]),
            key=lambda i: len(sequences[i]),
        )
        for begin in range(0, len(todo), self.batch_size):
            group = todo[begin : begin + self.batch_size]
            results = self.backend.token_logprobs(
                [sequences[i] for i in group], [starts[i] for i in group], self.should_stop
            )
            for i, lp in zip(group, results, strict=True):
                skipped = starts[i] - prefixes[i]  # 1 when nothing precedes the target
                out[i][skipped : skipped + len(lp)] = lp
        return out

    def _context_ids(self, context: str) -> list[int]:
        if not context:
            return []
        ids = self.backend.tokenize(context + _SEPARATOR)
        return ids[-self.max_context_tokens :] if self.max_context_tokens > 0 else []

    def _per_line(self, text: str, ids: Sequence[int], logprobs: np.ndarray) -> list[float]:
        # "\n" only, as the chunks' lines are split (str.splitlines also splits at \f...).
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()
        sums = [0.0] * len(lines)
        counts = [0] * len(lines)
        line = 0
        for token, logprob in zip(ids, logprobs, strict=True):
            if math.isfinite(logprob) and line < len(lines):
                sums[line] -= float(logprob)
                counts[line] += 1
            # "\n" is one byte and never part of a multi-byte character, so counting it in
            # each token's own text is exact even where a token holds half a character.
            line += self.backend.detokenize([token]).count("\n")
        return [
            s / n if n and lines[i].strip() else math.nan
            for i, (s, n) in enumerate(zip(sums, counts, strict=True))
        ]


def _document_start(backend: Backend) -> list[int]:
    for token in _DOCUMENT_STARTS:
        token_id = backend.special_token_id(token)
        if token_id is not None:
            return [token_id]
    eos = sorted(backend.info.eos_token_ids)
    return eos[:1]


def _nan_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan
