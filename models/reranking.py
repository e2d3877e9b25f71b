"""AdaDec's pause with the large model as judge: the small model proposes, the large one picks.

At an uncertain step AdaDec rolls out a short greedy continuation after each of the small
model's top candidates (models/decoding.py). Here the large model scores those branches
instead, teacher-forced: each branch's mean log-probability under the large model, one pass
per branch over the large model's cache of the document, caught up lazily to the step. The
large model runs only at pauses, a few percent of the steps.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .decoding import AdaDecDecoder, Lookahead, Run, log_softmax
from .pairing import Partner, catch_up


class LargeScoredAdaDec(AdaDecDecoder):
    """AdaDec whose pauses are decided by the large model (`params.partner`); without one, or
    where its cache is too far behind (`Partner.catch_up_limit`), by the small model, and the
    result says why."""

    paired = True  # the engine hands it the large model (DecodeParams.partner)

    def rescore(self, run: Run, logits: np.ndarray, branches: list[Lookahead]) -> list[Lookahead]:
        partner = run.params.partner
        if partner is None or run.fallback:
            run.fallback = run.fallback or "no-large"
            return branches
        caught = catch_up(partner, [*run.prompt, *run.generated], run.cancel, run.params.prefill_chunk)
        if caught is None:
            run.fallback = "catch-up"
            return branches
        run.large_computed += caught.computed
        run.large_tokens += 1  # the token the pause takes is the large model's choice
        first = log_softmax(caught.logits)
        return [self._scored(run, partner, first, branch) for branch in branches]

    def _scored(self, run: Run, partner: Partner, first: np.ndarray, branch: Lookahead) -> Lookahead:
        """`branch` with the large model's log-probability of each of its tokens."""
        logprobs = [float(first[branch.token])]
        continuation = list(branch.continuation)
        if continuation:
            run.cancel.check()
            base = len(partner.cache.tokens)
            rows = partner.backend.forward(partner.cache, [branch.token, *continuation[:-1]], every=True)
            partner.backend.truncate(partner.cache, base)
            run.large_computed += len(continuation)
            logprobs += [float(log_softmax(row)[token]) for row, token in zip(rows, continuation, strict=True)]
        return replace(branch, logprobs=tuple(logprobs))
