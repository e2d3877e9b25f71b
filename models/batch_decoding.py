"""Greedy decoding of many independent prompts at once, for batch jobs.

A decoding step reads all the weights whether it advances one sequence or several, so a batch
job that decodes its prompts side by side gets several tokens for the price of about one step. Every row follows exactly the rules of
`GreedyDecoder.generate`: token healing, end tokens, the caller's stop check, the token limit;
a finished row leaves the batch. Prompts are not shared with any document's KV cache.
"""

from __future__ import annotations

import time
from collections import deque
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
    backend: Backend,
    items: Sequence[BatchItem],
    cancel: CancelToken = NEVER_CANCELLED,
    slots: int | None = None,
) -> list[DecodeResult]:
    """Greedy completions of `items`, in their order, at most `slots` decoded at once
    (continuous batching: a finished row leaves, the next waiting one joins).

    Each row is pre-filled on its own, so padding costs no compute, and joins the running
    batch. Rows join in groups (a quarter of the slots at a time), because joining copies the
    batch's KV cache. A row's `prefill_ms` is its own pre-fill, its `decode_ms` the time from
    then until it finished: what that row waited for.
    """
    if not items:
        return []
    if any(not item.prompt for item in items):
        raise ValueError("empty prompt")
    size = len(items) if slots is None else max(1, slots)
    rows = [_Row(item) for item in items]
    waiting = deque(range(len(items)))
    batch = backend.new_batch()
    active: list[int] = []
    logits: dict[int, np.ndarray] = {}
    joined: dict[int, tuple[float, float]] = {}  # row -> (pre-fill started, pre-fill ended)
    while waiting or active:
        free = size - len(active)
        if waiting and (not active or free >= max(1, size // 4)):
            cancel.check()
            group = [waiting.popleft() for _ in range(min(free, len(waiting)))]
            started = time.perf_counter()
            out = backend.add_rows(batch, [items[i].prompt for i in group])
            ended = time.perf_counter()
            for i, row_logits in zip(group, out, strict=True):
                logits[i] = row_logits
                joined[i] = (started, ended)
            active.extend(group)
        fed: dict[int, int] = {}
        for i in active:
            row = rows[i]
            if row.item.params.max_tokens <= 0:
                row.done = True
            else:
                token = row.next_token(backend, logits[i])
                row.take(backend, token)
                fed[i] = token
            if row.done:
                row.finished_at = time.perf_counter()
        still = [position for position, i in enumerate(active) if not rows[i].done]
        backend.keep_rows(batch, still)
        active = [active[position] for position in still]
        if not active:
            continue
        cancel.check()
        out = backend.forward_batch(batch, [fed[i] for i in active])
        for i, row_logits in zip(active, out, strict=True):
            logits[i] = row_logits
    return [
        DecodeResult(
            tokens=tuple(row.generated),
            text=row.text,
            stop_reason=row.reason,
            prompt_tokens=len(row.item.prompt),
            reused_tokens=0,
            prefill_ms=(joined[i][1] - joined[i][0]) * 1000,
            decode_ms=(row.finished_at - joined[i][1]) * 1000,
            evaluated_tokens=len(row.generated),
        )
        for i, row in enumerate(rows)
    ]
