"""models/speculative.py: the small model drafts, the large one checks; the large one's output."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from nextab.models.decoding import NEVER_CANCELLED, DecodeParams, GreedyDecoder, split_for_healing
from nextab.models.pairing import Partner
from nextab.models.speculative import ModelDrafter, SpeculativeDecoder, top_probability
from tests.test_decoding import Wrapped
from tests.test_drafting import PROMPTS


def _backend(model, tokenizer, name):
    from nextab.models.torch_backend import TorchBackend

    return TorchBackend(model, tokenizer, name, "cpu")


@pytest.fixture(scope="module")
def pairs(tiny_backend):
    """The large model, and small ones that agree with it always, often, and by chance."""
    from tests.tiny import lively_model

    tokenizer = tiny_backend.tokenizer
    eos = tokenizer.eos_token_id
    large_model = lively_model(len(tokenizer), eos, seed=1)
    noisy = copy.deepcopy(large_model)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for weight in noisy.parameters():
            weight.add_(torch.randn(weight.shape, generator=generator) * 0.05)
    large = _backend(large_model, tokenizer, "large")
    return {
        "same": (_backend(large_model, tokenizer, "same"), large),
        "noisy": (_backend(noisy, tokenizer, "noisy"), large),
        "unrelated": (_backend(lively_model(len(tokenizer), eos, seed=2), tokenizer, "other"), large),
    }


def _run(decoder, small, large, prompt, healing=None, *, limit=None, large_cache=None, **fields):
    small_calls, large_calls = Wrapped(small), Wrapped(large)
    partner = Partner(large_calls, large_cache if large_cache is not None else large.new_cache(), limit)
    params = DecodeParams(**{"max_tokens": 24, "stop_ids": frozenset(), "partner": partner, **fields})
    result = decoder.decode(small_calls, small.new_cache(), prompt, params, NEVER_CANCELLED, healing)
    return result, small_calls, large_calls


def _greedy(backend, prompt, healing=None, **fields):
    params = DecodeParams(**{"max_tokens": 24, "stop_ids": frozenset(), **fields})
    return GreedyDecoder().decode(backend, backend.new_cache(), prompt, params, NEVER_CANCELLED, healing)


def _same(a, b) -> None:
    assert (a.tokens, a.text, a.stop_reason) == (b.tokens, b.text, b.stop_reason)


@pytest.mark.parametrize("pair", ["same", "noisy", "unrelated"])
def test_speculative_is_the_large_models_greedy_token_for_token(pairs, pair) -> None:
    small, large = pairs[pair]
    eos = frozenset({large.tokenizer.eos_token_id})
    drafted = accepted = 0
    for text in PROMPTS:
        for max_tokens in (1, 24):
            for heal in (False, True):
                prompt = large.tokenize(text)
                healing = None
                if heal and len(prompt) > 1:
                    prompt, healing = split_for_healing(large, prompt)
                expected = _greedy(large, prompt, healing, max_tokens=max_tokens, stop_ids=eos)
                result, _, _ = _run(
                    SpeculativeDecoder(), small, large, prompt, healing, max_tokens=max_tokens, stop_ids=eos
                )
                _same(result, expected)
                assert result.large_tokens == len(result.tokens) and result.fallback == ""
                drafted += result.drafted_tokens
                accepted += result.accepted_tokens
    assert drafted > 0
    if pair == "same":
        assert accepted > 0.9 * drafted  # a draft model equal to the large one is always right
    elif pair == "noisy":
        assert 0 < accepted < drafted  # some drafts taken, some refused: both paths ran


def test_drafts_save_the_large_model_passes(pairs) -> None:
    small, large = pairs["same"]
    prompt = large.tokenize(PROMPTS[0])
    alone, _, large_alone = _run(SpeculativeDecoder(max_draft=0), small, large, prompt)
    # Random weights are unsure of every token: drafts run to max_draft only with h near 1.
    sure = SpeculativeDecoder(max_draft=8, stop_threshold=0.999)
    drafted, small_calls, large_drafted = _run(sure, small, large, prompt)
    _same(alone, drafted)
    assert len(large_drafted.calls) <= len(large_alone.calls) / 3
    assert small_calls.calls  # the small model drafted


def test_max_draft_zero_is_the_large_model_alone(pairs) -> None:
    small, large = pairs["noisy"]
    prompt = large.tokenize(PROMPTS[1])
    result, small_calls, large_calls = _run(SpeculativeDecoder(max_draft=0), small, large, prompt)
    _same(result, _greedy(large, prompt))
    assert small_calls.calls == [] and result.drafted_tokens == 0
    assert large_calls.calls == [len(prompt), *[1] * (len(result.tokens) - 1)]


@pytest.mark.parametrize("cut", [1, 4, 9])
def test_speculative_holds_the_stop_rules(pairs, cut) -> None:
    small, large = pairs["noisy"]
    stop = lambda text: cut if len(text) >= cut else None  # noqa: E731
    for text in PROMPTS[:4]:
        prompt = large.tokenize(text)
        result, _, _ = _run(SpeculativeDecoder(), small, large, prompt, stop_check=stop)
        _same(result, _greedy(large, prompt, stop_check=stop))


def test_without_a_partner_the_small_model_decodes_alone(pairs) -> None:
    small, large = pairs["unrelated"]
    prompt = large.tokenize(PROMPTS[0])
    params = DecodeParams(max_tokens=12, stop_ids=frozenset())
    result = SpeculativeDecoder().decode(small, small.new_cache(), prompt, params, NEVER_CANCELLED)
    _same(result, _greedy(small, prompt, max_tokens=12))
    assert result.fallback == "no-large" and result.large_tokens == 0


def test_a_large_cache_too_cold_to_catch_up_falls_back_and_is_left_alone(pairs) -> None:
    small, large = pairs["unrelated"]
    prompt = large.tokenize(PROMPTS[0])
    cache = large.new_cache()
    result, _, large_calls = _run(SpeculativeDecoder(), small, large, prompt, limit=len(prompt) - 1, large_cache=cache)
    _same(result, _greedy(small, prompt))
    assert result.fallback == "catch-up" and large_calls.calls == [] and list(cache.tokens) == []
    # Warm (the prompt minus what was typed since): the keystroke's few tokens are within reach.
    from nextab.models.decoding import prefill

    prefill(large, cache, prompt[:-2], NEVER_CANCELLED)
    result, _, large_calls = _run(SpeculativeDecoder(), small, large, prompt, limit=2, large_cache=cache)
    _same(result, _greedy(large, prompt))
    assert result.fallback == "" and result.large_computed >= 2 and large_calls.calls[0] == 2


class Confident:
    """A fake draft model: always the next token id, with probability `p`."""

    def __init__(self, p: float, vocab: int = 50) -> None:
        self.vocab = vocab
        rest = (1.0 - p) / (vocab - 1)
        self.spread = np.log(np.full(vocab, rest))
        self.top = np.log(p)

    def new_cache(self):
        return type("Cache", (), {"tokens": [], "tree_size": 0})()

    def truncate(self, cache, length):
        del cache.tokens[length:]

    def forward(self, cache, tokens, every=False):
        cache.tokens.extend(tokens)
        logits = self.spread.copy()
        logits[(cache.tokens[-1] + 1) % self.vocab] = self.top
        return logits.astype(np.float32)


@pytest.mark.parametrize(("p", "threshold", "length"), [(0.9, 0.3, 4), (0.99, 0.3, 8), (0.5, 0.3, 1), (0.9, 0.5, 7)])
def test_drafts_stop_once_a_rejection_gets_likely(p, threshold, length) -> None:
    # 1 - 0.9**4 = 0.34 is the first past 0.3; 0.99**8 is 0.92 (max_draft cuts); 0.9**7 = 0.478.
    model = Confident(p)
    assert top_probability(model.forward(model.new_cache(), [3])) == pytest.approx(p)
    params = DecodeParams(max_tokens=24, stop_ids=frozenset())
    drafter = ModelDrafter(model, model.new_cache(), [1, 2, 3], params, NEVER_CANCELLED, 8, threshold)
    draft = drafter.propose([4], room=20)
    assert draft == [5, 6, 7, 8, 9, 10, 11, 12][:length]
    assert drafter.propose([4], room=2) == [5, 6][: min(2, length)]


def test_a_draft_ends_at_an_end_token() -> None:
    model = Confident(0.999)
    params = DecodeParams(max_tokens=24, stop_ids=frozenset({7}))
    drafter = ModelDrafter(model, model.new_cache(), [1, 2, 3], params, NEVER_CANCELLED, 8)
    assert drafter.propose([4], room=20) == [5, 6, 7]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="max_draft"):
        SpeculativeDecoder(max_draft=-1)
    with pytest.raises(ValueError, match="stop_threshold"):
        SpeculativeDecoder(stop_threshold=1.0)
