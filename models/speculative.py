"""Speculative decoding: the small model drafts, the large model checks the draft in one pass.

The output is the large model's greedy output, token for token, on a backend whose k-token
pass gives the logits of k one-token passes (`ModelInfo.exact_multi_token`); only the number
of the large model's passes changes. `GreedyDecoder.generate` already checks drafts (prompt
lookup uses it): here the draft comes from the small model instead of from the text.

How long a draft: SpecDec++ (Huang, Guo and Wang, 2024) shows that the best policy stops
drafting once the chance that at least one drafted token is rejected passes a threshold h.
The chance each token is accepted is estimated by the draft model's own top probability
there, and h = 0.3 is the value the paper works with; `max_draft` bounds it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .backend import Backend, KVCache
from .decoding import (
    CancelToken,
    DecodeParams,
    DecodeResult,
    GreedyDecoder,
    Healing,
    Run,
    prefill,
)
from .pairing import catch_up

STOP_THRESHOLD = 0.3


def top_probability(logits: np.ndarray) -> float:
    shifted = np.exp(logits.astype(np.float64) - float(np.max(logits)))
    return float(1.0 / shifted.sum())


class ModelDrafter:
    """Greedy drafts from the small model, which keeps its own cache of the same text.

    Its cache is caught up at each proposal (usually the one or two tokens the large model
    wrote since), so a rejected draft costs nothing to undo: the next proposal's pre-fill
    keeps the common prefix and drops the rest.
    """

    def __init__(
        self,
        backend: Backend,
        cache: KVCache,
        prompt: Sequence[int],
        params: DecodeParams,
        cancel: CancelToken,
        max_draft: int,
        stop_threshold: float = STOP_THRESHOLD,
    ) -> None:
        self.backend = backend
        self.cache = cache
        self.prompt = list(prompt)
        self.params = params
        self.cancel = cancel
        self.max_draft = max_draft
        self.stop_threshold = stop_threshold
        self.steps = 0  # the small model's passes, catch-ups included

    def propose(self, generated: Sequence[int], room: int) -> list[int]:
        most = min(room, self.max_draft)
        if most <= 0:
            return []
        logits, _ = prefill(
            self.backend, self.cache, [*self.prompt, *generated], self.cancel, self.params.prefill_chunk
        )
        self.steps += 1
        draft: list[int] = []
        accepted = 1.0  # estimated chance the large model takes the whole draft
        while True:
            token = int(np.argmax(logits))
            draft.append(token)
            accepted *= top_probability(logits)
            if (
                len(draft) == most
                or token in self.params.stop_ids
                or 1.0 - accepted > self.stop_threshold
            ):
                return draft
            self.cancel.check()
            logits = self.backend.forward(self.cache, [token])
            self.steps += 1

    def taken(self, proposed: int, agreed: int) -> None:
        pass  # the next proposal's pre-fill drops what was rejected

    def finish(self, generated: Sequence[int]) -> None:
        pass


class SpeculativeDecoder(GreedyDecoder):
    """The large model's greedy output, checked in passes over the small model's drafts.

    Called with the small model and its cache, as every strategy is; the large model comes in
    `params.partner`. Without one, or where catching its cache up would compute more than the
    partner's limit, the small model decodes alone (greedy) and the result says why.
    `max_draft=0` is the large model alone.
    """

    paired = True  # the engine hands it the large model (DecodeParams.partner)

    def __init__(self, max_draft: int = 8, stop_threshold: float = STOP_THRESHOLD) -> None:
        if max_draft < 0 or not 0.0 < stop_threshold < 1.0:
            raise ValueError("speculative decoding needs max_draft >= 0 and 0 < stop_threshold < 1")
        self.max_draft = max_draft
        self.stop_threshold = stop_threshold

    def decode(
        self,
        backend: Backend,
        cache: KVCache,
        prompt: Sequence[int],
        params: DecodeParams,
        cancel: CancelToken,
        healing: Healing | None = None,
    ) -> DecodeResult:
        partner = params.partner
        if partner is None:
            return replace(super().decode(backend, cache, prompt, params, cancel, healing), fallback="no-large")
        started = time.perf_counter()
        caught = catch_up(partner, prompt, cancel, params.prefill_chunk)
        if caught is None:
            return replace(super().decode(backend, cache, prompt, params, cancel, healing), fallback="catch-up")
        prefilled = time.perf_counter()
        # The large model's own pass over drafts replaces prompt lookup's.
        own = replace(params, lookup=None, partner=None)
        drafter = (
            ModelDrafter(backend, cache, prompt, own, cancel, self.max_draft, self.stop_threshold)
            if self.max_draft
            else None
        )
        healed = healing.text if healing else ""
        run = Run(partner.backend, partner.cache, own, cancel, healed, [], prompt=prompt, drafter=drafter)
        generated = self.generate(run, caught.logits, healing)
        run.large_tokens = len(generated[0])
        run.large_computed = caught.computed + run.evaluated
        return self.result(run, generated, len(prompt) - caught.computed, started, prefilled)
