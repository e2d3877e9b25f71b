"""models/reranking.py: AdaDec's pauses decided by the large model's scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nextab.models.decoding import (
    NEVER_CANCELLED,
    AdaDecDecoder,
    DecodeParams,
    GreedyDecoder,
    log_softmax,
)
from nextab.models.pairing import Partner
from nextab.models.reranking import LargeScoredAdaDec
from tests.test_decoding import CODE, OTHER, Wrapped, cold_logits


@pytest.fixture(scope="module")
def pair(tiny_backend):
    from nextab.models.torch_backend import TorchBackend
    from tests.tiny import lively_model

    tokenizer = tiny_backend.tokenizer
    eos = tokenizer.eos_token_id
    small, large = (
        TorchBackend(lively_model(len(tokenizer), eos, seed=seed), tokenizer, f"lively{seed}", "cpu") for seed in (2, 1)
    )
    return small, large


def _large_scores(small, large, prompt, top_k: int, length: int) -> dict[int, float]:
    """Each of the small model's top-k candidates, with the small model's greedy continuation,
    scored by the large model's mean log-probability: plain full-sequence forwards."""
    first = log_softmax(cold_logits(small, prompt))
    large_first = log_softmax(cold_logits(large, prompt))
    scores = {}
    for token in np.argsort(-first, kind="stable")[:top_k]:
        ids, logprobs = [*prompt, int(token)], [float(large_first[token])]
        for _ in range(length):
            ids.append(int(np.argmax(cold_logits(small, ids))))
            logprobs.append(float(log_softmax(cold_logits(large, ids[:-1]))[ids[-1]]))
        scores[int(token)] = sum(logprobs) / len(logprobs)
    return scores


def test_a_pause_takes_the_branch_the_large_model_scores_best(pair) -> None:
    small, large = pair
    overruled = 0
    for text in (CODE, OTHER, "def f(a, b):\n    return", "x = ["):
        prompt = small.tokenize(text)
        expected = _large_scores(small, large, prompt, top_k=3, length=4)
        cache = large.new_cache()
        params = DecodeParams(max_tokens=1, stop_ids=frozenset(), partner=Partner(large, cache))
        result = LargeScoredAdaDec(-math.inf, top_k=3, lookahead=4).decode(
            small, small.new_cache(), prompt, params, NEVER_CANCELLED
        )
        assert result.paused_steps == 1 and result.large_tokens == 1
        assert result.tokens[0] == max(expected, key=expected.get)
        assert list(cache.tokens) == prompt  # the branches' passes are truncated away
        small_pick = AdaDecDecoder(-math.inf, top_k=3, lookahead=4).decode(
            small, small.new_cache(), prompt, DecodeParams(max_tokens=1, stop_ids=frozenset()), NEVER_CANCELLED
        )
        overruled += small_pick.tokens[0] != result.tokens[0]
    assert overruled > 0  # the large model's judgement differs somewhere: the test can tell


def test_an_infinite_threshold_is_the_small_models_greedy(pair) -> None:
    small, large = pair
    prompt = small.tokenize(CODE)
    wrapped = Wrapped(large)
    params = DecodeParams(max_tokens=12, stop_ids=frozenset(), partner=Partner(wrapped, large.new_cache()))
    result = LargeScoredAdaDec(math.inf).decode(small, small.new_cache(), prompt, params, NEVER_CANCELLED)
    expected = GreedyDecoder().decode(
        small, small.new_cache(), prompt, DecodeParams(max_tokens=12, stop_ids=frozenset()), NEVER_CANCELLED
    )
    assert result.tokens == expected.tokens and wrapped.calls == [] and result.large_tokens == 0


def test_without_a_large_model_the_small_one_scores(pair) -> None:
    small, _ = pair
    prompt = small.tokenize(OTHER)
    params = DecodeParams(max_tokens=4, stop_ids=frozenset())
    result = LargeScoredAdaDec(-math.inf, lookahead=3).decode(small, small.new_cache(), prompt, params, NEVER_CANCELLED)
    alone = AdaDecDecoder(-math.inf, lookahead=3).decode(small, small.new_cache(), prompt, params, NEVER_CANCELLED)
    assert result.tokens == alone.tokens and result.fallback == "no-large"
