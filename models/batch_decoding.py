"""Greedy decoding of many independent prompts at once, for batch jobs.

On any device a decoding step costs about the same for one sequence as for several (it reads
all the weights either way), so a batch job that decodes its prompts side by side gets several
completions for the price of one step. Every row follows exactly the rules of
`GreedyDecoder.generate`: token healing, end tokens, the caller's stop check, the token limit;
a finished row leaves the batch. Prompts are not shared with any document's KV cache.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nextab.models.backend import Backend
from nextab.models.decoding import (
    NEVER_CANCELLED,
    CancelToken,
    DecodeParams,
    DecodeResult,
    Healing,
)


@dataclass(frozen=True)
class BatchItem:
    prompt: tuple[int, ...]
    params: DecodeParams
    healing: Healing | None = None


@dataclass
class _Row:
    item: BatchItem
    generated: list[int] = field(default_factory=list)
    full: str = ""  # everything generated, healed text included
    text: str = ""
    reason: str = "length"
    done: bool = False
    finished_at: float = 0.0

    @property
    def healed(self) -> str:
        return self.item.healing.text if self.item.healing else ""

    def next_token(self, backend: Backend, logits: np.ndarray) -> int:
        healing = self.item.healing
        if healing and len(self.full) < len(self.healed):
            return healing.pick(backend, logits, self.healed[len(self.full) :])
        return int(np.argmax(logits))

    def take(self, backend: Backend, token: int) -> None:
        """Append a token and decide whether the row is done, as GreedyDecoder does."""
        params = self.item.params
        if token in params.stop_ids:
            self.reason, self.done = "eos", True
            return
        self.generated.append(token)
        self.full = backend.detokenize(self.generated)
        if len(self.full) >= len(self.healed):
            self.text = self.full[len(self.healed) :]
            if params.stop_check is not None:
                keep = params.stop_check(self.text)
                if keep is not None:
                    self.text, self.reason, self.done = self.text[:keep], "stop", True
                    return
        if len(self.generated) >= params.max_tokens:
            self.done = True


def decode_batch(
    backend: Backend, items: Sequence[BatchItem], cancel: CancelToken = NEVER_CANCELLED
) -> list[DecodeResult]:
    """Greedy completions of `items`, in their order; each row's `decode_ms` is the time until
    that row finished, `prefill_ms` the batch's shared pre-fill."""
    if not items:
        return []
    if any(not item.prompt for item in items):
        raise ValueError("empty prompt")
    started = time.perf_counter()
    rows = [_Row(item) for item in items]
    batch = backend.new_batch()
    cancel.check()
    logits = backend.forward_batch(batch, [item.prompt for item in items])
    prefilled = time.perf_counter()
    active = [i for i, row in enumerate(rows) if row.item.params.max_tokens > 0]
    for i, row in enumerate(rows):
        if i not in active:
            row.done, row.finished_at = True, prefilled
    while active:
        fed: list[int] = []
        for position, i in enumerate(active):
            row = rows[i]
            token = row.next_token(backend, logits[position])
            row.take(backend, token)
            fed.append(token)
            if row.done:
                row.finished_at = time.perf_counter()
        still = [position for position, i in enumerate(active) if not rows[i].done]
        if not still:
            break
        cancel.check()
        backend.keep_rows(batch, still)
        active = [active[position] for position in still]
        logits = backend.forward_batch(batch, [[fed[position]] for position in still])
    return [
        DecodeResult(
            tokens=tuple(row.generated),
            text=row.text,
            stop_reason=row.reason,
            prompt_tokens=len(row.item.prompt),
            reused_tokens=0,
            prefill_ms=(prefilled - started) * 1000,
            decode_ms=(row.finished_at - prefilled) * 1000,
            evaluated_tokens=len(row.generated),
        )
        for row in rows
    ]
