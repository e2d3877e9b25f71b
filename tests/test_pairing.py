"""models/pairing.py: the large model's cache caught up lazily; the check that two models pair."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nextab.models.decoding import NEVER_CANCELLED, prefill
from nextab.models.pairing import PairMismatch, Partner, catch_up, check_pair, uncached
from tests.test_decoding import CODE, OTHER, Wrapped, backend, cold_logits, kv_length, lively  # noqa: F401


def _edits(large, prompt: list[int]) -> dict[str, list[int]]:
    """What the document became while the small model served keystrokes alone."""
    typed = large.tokenize("x\n        self.z = ")
    return {
        "typed": prompt + typed,
        "edited_earlier": prompt[: len(prompt) // 2] + large.tokenize(OTHER) + prompt[len(prompt) // 2 :],
        "deleted": prompt[:-3],
        "unchanged": prompt,
    }


@pytest.mark.parametrize("edit", ["typed", "edited_earlier", "deleted", "unchanged"])
def test_catch_up_equals_a_full_recompute_and_computes_only_the_new_tokens(backend, edit) -> None:  # noqa: F811
    prompt = backend.tokenize(CODE)
    cache = backend.new_cache()
    prefill(backend, cache, prompt, NEVER_CANCELLED)
    now = _edits(backend, prompt)[edit]
    wrapped = Wrapped(backend)
    expected = uncached(Partner(backend, cache), now)

    caught = catch_up(Partner(wrapped, cache), now, NEVER_CANCELLED)

    assert caught is not None
    assert list(cache.tokens) == now and kv_length(cache) == len(now)
    np.testing.assert_allclose(caught.logits, cold_logits(backend, now), atol=1e-5, rtol=1e-5)
    kept = min(len(prompt), len(now) - 1) if edit != "edited_earlier" else len(prompt) // 2
    assert caught.computed == expected == len(now) - kept == sum(wrapped.calls)


def test_catch_up_after_the_small_model_decoded_alone(lively) -> None:  # noqa: F811
    """The large model last saw the prompt; the small one then generated and the user typed."""
    prompt = lively.tokenize(CODE)
    cache = lively.new_cache()
    prefill(lively, cache, prompt, NEVER_CANCELLED)
    generated = [int(np.argmax(cold_logits(lively, prompt)))]
    now = prompt + generated + lively.tokenize("\n")
    caught = catch_up(Partner(lively, cache, catch_up_limit=len(now) - len(prompt)), now, NEVER_CANCELLED)
    assert caught is not None and caught.computed == len(now) - len(prompt)
    np.testing.assert_allclose(caught.logits, cold_logits(lively, now), atol=1e-5, rtol=1e-5)


def test_catch_up_over_the_limit_computes_nothing(lively) -> None:  # noqa: F811
    prompt = lively.tokenize(CODE)
    cache = lively.new_cache()
    prefill(lively, cache, prompt[:5], NEVER_CANCELLED)
    wrapped = Wrapped(lively)
    needed = uncached(Partner(lively, cache), prompt)
    assert needed == len(prompt) - 5

    assert catch_up(Partner(wrapped, cache, catch_up_limit=needed - 1), prompt, NEVER_CANCELLED) is None
    assert wrapped.calls == [] and list(cache.tokens) == prompt[:5] and kv_length(cache) == 5

    caught = catch_up(Partner(wrapped, cache, catch_up_limit=needed), prompt, NEVER_CANCELLED)
    assert caught is not None and caught.computed == needed == sum(wrapped.calls)


def test_a_cold_cache_counts_the_whole_prompt(lively) -> None:  # noqa: F811
    partner = Partner(lively, lively.new_cache())
    assert uncached(partner, [1, 2, 3]) == 3 and uncached(partner, []) == 0


class Renamed(Wrapped):
    """A model that spells some things differently from the one it wraps."""

    def __init__(self, inner, *, shift: bool = False, missing: str | None = None, vocab: int | None = None):
        super().__init__(inner)
        self.info = replace(inner.info, name="other", vocab_size=vocab or inner.info.vocab_size)
        self.shift = shift
        self.missing = missing

    def tokenize(self, text):
        ids = self.inner.tokenize(text)
        return [i + 1 for i in ids] if self.shift else ids

    def special_token_id(self, token):
        return None if token == self.missing else self.inner.special_token_id(token)


def test_models_sharing_a_tokenizer_pair(tiny_backend, lively) -> None:  # noqa: F811
    check_pair(tiny_backend, lively)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"shift": True}, "tokenized differently"),
        ({"missing": "<|fim_middle|>"}, "<|fim_middle|>"),
        ({"vocab": 7}, "vocabulary sizes"),
    ],
)
def test_models_that_spell_ids_differently_are_refused(lively, changes, named) -> None:  # noqa: F811
    assert lively.special_token_id("<|fim_middle|>") is not None  # the tiny vocabulary has it
    with pytest.raises(PairMismatch, match="cannot decode together") as refused:
        check_pair(lively, Renamed(lively, **changes))
    assert named in str(refused.value)
