"""models/switching.py: EAD, the large model deciding where the small one's entropy is high."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from nextab.models.decoding import NEVER_CANCELLED, DecodeParams, GreedyDecoder, entropy
from nextab.models.drafting import Lookup
from nextab.models.pairing import Partner
from nextab.models.switching import EadDecoder
from tests.test_decoding import Wrapped
from tests.test_drafting import PROMPTS

VOCAB = 64
SURE, UNSURE = 30.0, 1.0  # the chosen token's logit over zeros: ~0 nats and ~3.4 nats


class Scripted:
    """A fake model: after `length` tokens it writes `step(last)`, sure or unsure as
    `unsure(length)` says."""

    def __init__(self, step: Callable[[int], int], unsure: Callable[[int], bool]) -> None:
        self.step = step
        self.unsure = unsure
        self.info = type("Info", (), {"name": "scripted", "exact_multi_token": True})()

    def new_cache(self):
        return type("Cache", (), {"tokens": [], "tree_size": 0})()

    def truncate(self, cache, length: int) -> None:
        del cache.tokens[length:]

    def _logits(self, tokens: Sequence[int]) -> np.ndarray:
        logits = np.zeros(VOCAB, dtype=np.float32)
        logits[self.step(tokens[-1]) % VOCAB] = UNSURE if self.unsure(len(tokens)) else SURE
        return logits

    def forward(self, cache, tokens, every: bool = False):
        rows = []
        for token in tokens:
            cache.tokens.append(int(token))
            rows.append(self._logits(cache.tokens))
        return np.stack(rows) if every else rows[-1]

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(chr(0x41 + i % 26) for i in ids)

    def special_token_id(self, token: str) -> None:
        return None


PROMPT = [1, 2, 3, 4]


def _ead(small, large, decoder, max_tokens: int = 12, lookup: Lookup | None = None, prompt=PROMPT):
    large_calls = Wrapped(large)
    partner = Partner(large_calls, large.new_cache())
    params = DecodeParams(max_tokens=max_tokens, stop_ids=frozenset(), partner=partner, lookup=lookup)
    result = decoder.decode(small, small.new_cache(), prompt, params, NEVER_CANCELLED)
    return result, large_calls


def _positions(unsure_at: set[int]) -> Callable[[int], bool]:
    # Positions count generated tokens: 0 is the first token after the prompt.
    return lambda length: length - len(PROMPT) in unsure_at


def test_the_large_model_decides_where_the_small_one_is_unsure() -> None:
    small = Scripted(lambda t: t + 1, _positions({3, 7}))
    large = Scripted(lambda t: t + 10, lambda length: False)
    result, _ = _ead(small, large, EadDecoder(threshold=1.0, window=1, min_run=1))
    steps = np.diff([PROMPT[-1], *result.tokens]).tolist()
    assert steps == [1, 1, 1, 10, 1, 1, 1, 10, 1, 1, 1, 1]
    assert result.large_tokens == 2 and result.fallback == ""


def test_a_model_decides_min_run_tokens_before_the_other_takes_over() -> None:
    small = Scripted(lambda t: t + 1, _positions({3}))
    large = Scripted(lambda t: t + 10, lambda length: False)
    result, _ = _ead(small, large, EadDecoder(threshold=1.0, window=1, min_run=3))
    assert np.diff([PROMPT[-1], *result.tokens]).tolist() == [1, 1, 1, 10, 10, 10, 1, 1, 1, 1, 1, 1]
    assert result.large_tokens == 3


def test_the_window_averages_the_entropies_of_whichever_model_decided() -> None:
    # One unsure step in a window of 3 sure ones lifts the mean over 1.0 nats at once; the
    # step is then the large model's, and its sure entropy replaces the small one's in the
    # window, which hands back after its one token (min_run 1).
    small = Scripted(lambda t: t + 1, _positions({2}))
    large = Scripted(lambda t: t + 10, lambda length: False)
    unsure = entropy(np.array([UNSURE, *[0.0] * (VOCAB - 1)]))
    assert unsure / 3 > 1.0
    result, _ = _ead(small, large, EadDecoder(threshold=1.0, window=3, min_run=1))
    assert np.diff([PROMPT[-1], *result.tokens]).tolist() == [1, 1, 10, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    # With a threshold over a third of it, one unsure step in three never switches.
    result, large_calls = _ead(small, large, EadDecoder(threshold=unsure / 3 + 0.01, window=3, min_run=1))
    assert result.large_tokens == 0 and large_calls.calls == []


def test_an_infinite_threshold_is_the_small_models_greedy_and_never_runs_the_large(lively_pair) -> None:
    small, large = lively_pair
    for text in PROMPTS[:4]:
        prompt = small.tokenize(text)
        params = DecodeParams(max_tokens=16, stop_ids=frozenset())
        expected = GreedyDecoder().decode(small, small.new_cache(), prompt, params, NEVER_CANCELLED)
        wrapped = Wrapped(large)
        paired = DecodeParams(max_tokens=16, stop_ids=frozenset(), partner=Partner(wrapped, large.new_cache()))
        result = EadDecoder(float("inf")).decode(small, small.new_cache(), prompt, paired, NEVER_CANCELLED)
        assert result.tokens == expected.tokens and wrapped.calls == [] and result.large_tokens == 0


def test_a_zero_threshold_is_the_large_models_greedy(lively_pair) -> None:
    small, large = lively_pair
    for text in PROMPTS[:4]:
        prompt = large.tokenize(text)
        params = DecodeParams(max_tokens=16, stop_ids=frozenset())
        expected = GreedyDecoder().decode(large, large.new_cache(), prompt, params, NEVER_CANCELLED)
        paired = DecodeParams(max_tokens=16, stop_ids=frozenset(), partner=Partner(large, large.new_cache()))
        result = EadDecoder(0.0).decode(small, small.new_cache(), prompt, paired, NEVER_CANCELLED)
        assert result.tokens == expected.tokens
        assert result.large_tokens == len(result.tokens)


def test_no_drafted_token_is_taken_where_the_large_model_would_decide() -> None:
    # The small model cycles 1 2 3 4, as the prompt does, so prompt lookup drafts its steps;
    # it is unsure at one of them, where the large model must decide.
    prompt = [1, 2, 3, 4, 1, 2, 3, 4]
    small = Scripted(lambda t: t % 4 + 1, lambda length: length - len(prompt) == 5)
    large = Scripted(lambda t: t + 10, lambda length: False)
    decoder = EadDecoder(threshold=1.0, window=1, min_run=1)
    plain, _ = _ead(small, large, decoder, prompt=prompt)
    drafted, _ = _ead(small, large, decoder, prompt=prompt, lookup=Lookup(min_ngram=1, start=1, grow=4))
    assert drafted.drafted_tokens > 0 and drafted.accepted_tokens > 0
    assert drafted.tokens == plain.tokens and drafted.large_tokens == plain.large_tokens == 1
    assert plain.tokens[5] == plain.tokens[4] + 10


def test_without_a_large_model_the_small_one_goes_on_and_says_why() -> None:
    small = Scripted(lambda t: t + 1, _positions({3}))
    params = DecodeParams(max_tokens=8, stop_ids=frozenset())
    result = EadDecoder(1.0, window=1, min_run=1).decode(small, small.new_cache(), PROMPT, params, NEVER_CANCELLED)
    assert np.diff([PROMPT[-1], *result.tokens]).tolist() == [1] * 8 and result.fallback == "no-large"


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="EAD"):
        EadDecoder(1.0, window=0)
    with pytest.raises(ValueError, match="EAD"):
        EadDecoder(-1.0)


@pytest.fixture(scope="module")
def lively_pair(tiny_backend):
    from nextab.models.torch_backend import TorchBackend
    from tests.tiny import lively_model

    tokenizer = tiny_backend.tokenizer
    eos = tokenizer.eos_token_id
    return tuple(
        TorchBackend(lively_model(len(tokenizer), eos, seed=seed), tokenizer, f"lively{seed}", "cpu") for seed in (2, 1)
    )
