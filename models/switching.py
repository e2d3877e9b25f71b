"""Entropy-adaptive switching between two models (EAD: Simonds, 2025).

The small model decodes; where the rolling mean of the next-token entropy passes a threshold,
the large model decides the tokens until the mean falls again. Easy stretches of code (a
closing bracket, the rest of a name) cost the small model's steps; the uncertain ones get the
large model's judgement. The output may differ from the large model's: that is the trade,
and the threshold sets it (infinite: the small model's greedy output; zero: the large one's).

The window holds the entropies of whichever model decided each token, so the large model
hands back as soon as it is sure. A switch needs the model deciding now to have decided
`min_run` tokens in a row (the first token may switch at once). The tokens the large model
decides are committed to the small model's cache in one pass, its catch-up.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .decoding import GreedyDecoder, Run, entropy
from .pairing import catch_up


@dataclass
class _Switch:
    window: deque[float]
    large: bool = False  # whether the large model decides now
    run: int = 0  # tokens the model deciding now has decided in a row
    off: bool = False  # the large model is out of reach for this call
    switches: list[int] = field(default_factory=list)  # where the large model took over

    def push(self, value: float) -> float:
        self.window.append(value)
        self.run += 1
        return sum(self.window) / len(self.window)


class EadDecoder(GreedyDecoder):
    """Greedy with two models: the small one, or the large one (`params.partner`) where the
    rolling entropy passes `threshold` (nats). Without a partner, or where its cache is too
    far behind (`Partner.catch_up_limit`), the small model goes on alone and the result
    says why."""

    paired = True  # the engine hands it the large model (DecodeParams.partner)

    def __init__(self, threshold: float, window: int = 3, min_run: int = 2) -> None:
        if window < 1 or min_run < 1 or threshold < 0:
            raise ValueError("EAD needs threshold >= 0, window >= 1 and min_run >= 1")
        self.threshold = threshold
        self.window = window
        self.min_run = min_run

    def _switch(self, run: Run) -> _Switch:
        if run.state is None:
            run.state = _Switch(deque(maxlen=self.window), run=self.min_run)
        return run.state

    def choose(self, run: Run, logits: np.ndarray) -> list[int]:
        state = self._switch(run)
        token = int(np.argmax(logits))
        if state.off or self.threshold == float("inf"):
            return [token]
        mean = state.push(entropy(logits))
        if mean <= self.threshold or state.run < self.min_run:
            return [token]
        return self._large_decides(run, state) or [token]

    def agreed(self, run: Run, rows: np.ndarray, draft: Sequence[int]) -> int:
        """Drafted tokens (prompt lookup) are taken only while the small model would go on
        deciding; the window takes in the steps taken, as `choose` would have."""
        state = self._switch(run)
        agreed = super().agreed(run, rows, draft)
        if state.off or self.threshold == float("inf"):
            return agreed
        for i in range(agreed):
            mean = state.push(entropy(rows[i]))
            if mean > self.threshold and state.run >= self.min_run:
                state.window.pop()  # `choose` sees this step again, from the same logits
                state.run -= 1
                return i
        return agreed

    def _large_decides(self, run: Run, state: _Switch) -> list[int]:
        """The large model's tokens from here until its rolling entropy falls below the
        threshold (after `min_run` of them), the completion ends, or room runs out; [] if it
        cannot be caught up."""
        partner = run.params.partner
        if partner is None:
            state.off, run.fallback = True, "no-large"
            return []
        caught = catch_up(partner, [*run.prompt, *run.generated], run.cancel, run.params.prefill_chunk)
        if caught is None:
            state.off, run.fallback = True, "catch-up"
            return []
        run.large_computed += caught.computed
        state.switches.append(len(run.generated))
        state.large, state.run = True, 0
        state.window.pop()  # the step is the large model's now: its entropy replaces the small's
        logits = caught.logits
        tokens: list[int] = []
        room = run.params.max_tokens - len(run.generated)
        while True:
            token = int(np.argmax(logits))
            tokens.append(token)
            mean = state.push(entropy(logits))
            if run.ends(tokens) or len(tokens) >= room:
                break
            if mean <= self.threshold and state.run >= self.min_run:
                state.large, state.run = False, 0
                break
            run.cancel.check()
            logits = partner.backend.forward(partner.cache, [token])
            run.large_computed += 1
        run.large_tokens += sum(token not in run.params.stop_ids for token in tokens)
        return tokens
