"""models/decoding.py and models/torch_backend.py: prefix KV reuse, greedy decoding, stopping."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch

from nextab.models.decoding import (
    NEVER_CANCELLED,
    AdaDecDecoder,
    BeamDecoder,
    Cancelled,
    CancelToken,
    DecodeParams,
    GreedyDecoder,
    entropy,
    log_softmax,
    make_decoder,
    prefill,
)

CODE = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = "
OTHER = "for i in range(10):\n    print(i)\n"


@pytest.fixture(scope="module")
def lively(tiny_backend):
    """A tiny model whose greedy output varies (tests/tiny.py's lively_model)."""
    from nextab.models.torch_backend import TorchBackend
    from tests.tiny import lively_model

    tokenizer = tiny_backend.tokenizer
    model = lively_model(len(tokenizer), tokenizer.eos_token_id, seed=1)
    return TorchBackend(model, tokenizer, "lively", "cpu")


class ReplayByRerun:
    """A CUDA graph's contract on a CPU: `capture(step)` gives a replay that reruns `step`,
    which reads its inputs from the tensors it closed over (as a graph reads fixed addresses)."""

    def __init__(self) -> None:
        self.captures = 0
        self.replays = 0

    def __call__(self, step):
        self.captures += 1

        def replay():
            self.replays += 1
            return step()

        return replay


@pytest.fixture(params=["tiny", "lively", "static"])
def backend(request, tiny_backend, lively, monkeypatch):
    if request.param == "static":
        # The GPU path on the CPU: a static cache small enough to grow in every test, and
        # decode steps replayed through the captured-step machinery.
        from nextab.models import static_decode
        from nextab.models.torch_backend import TorchBackend

        monkeypatch.setattr(static_decode, "MIN_CAPACITY", 16)
        return TorchBackend(lively.model, lively.tokenizer, "static", "cpu", static=True, capture=ReplayByRerun())
    return tiny_backend if request.param == "tiny" else lively


@torch.inference_mode()
def cold_logits(backend, prompt: Sequence[int]) -> np.ndarray:
    """The last position's logits from one plain forward pass, no cache involved."""
    return backend.model(torch.tensor([list(prompt)])).logits[0, -1].float().numpy()


def manual_greedy(backend, prompt: Sequence[int], steps: int) -> list[int]:
    """Argmax decoding by re-running the whole sequence every step."""
    ids = list(prompt)
    out = []
    for _ in range(steps):
        token = int(np.argmax(cold_logits(backend, ids)))
        out.append(token)
        ids.append(token)
    return out


def params(max_tokens: int = 12, stop_ids=frozenset(), stop_check=None, chunk: int = 256):
    return DecodeParams(
        max_tokens=max_tokens,
        stop_ids=frozenset(stop_ids),
        stop_check=stop_check,
        prefill_chunk=chunk,
    )


def kv_length(cache) -> int:
    return cache.kv.get_seq_length()


class Wrapped:
    """A backend that delegates to another and calls `hook(call_number, tokens)` per forward."""

    def __init__(self, inner, hook: Callable[[int, Sequence[int]], None] = lambda n, t: None):
        self.inner = inner
        self.info = inner.info
        self.hook = hook
        self.calls: list[int] = []  # number of tokens of each forward
        self.tree_calls: list[int] = []  # and of each forward_tree

    def tokenize(self, text):
        return self.inner.tokenize(text)

    def detokenize(self, ids):
        return self.inner.detokenize(ids)

    def special_token_id(self, token):
        return self.inner.special_token_id(token)

    def new_cache(self):
        return self.inner.new_cache()

    def truncate(self, cache, length):
        self.inner.truncate(cache, length)

    def forward(self, cache, tokens, every=False):
        self.calls.append(len(tokens))
        self.hook(len(self.calls), tokens)
        return self.inner.forward(cache, tokens, every=every)

    def forward_tree(self, cache, tokens, parents):
        self.tree_calls.append(len(tokens))
        return self.inner.forward_tree(cache, tokens, parents)


# --- prefill ------------------------------------------------------------------------------


def test_prefill_cold(backend):
    prompt = backend.tokenize(CODE)
    cache = backend.new_cache()
    logits, reused = prefill(backend, cache, prompt, NEVER_CANCELLED)
    assert reused == 0
    assert list(cache.tokens) == prompt
    assert kv_length(cache) == len(prompt)
    assert logits.shape == (backend.info.vocab_size,)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, cold_logits(backend, prompt), atol=1e-5, rtol=1e-5)


def test_prefill_same_prompt_recomputes_exactly_one_token(backend):
    prompt = backend.tokenize(CODE)
    cache = backend.new_cache()
    prefill(backend, cache, prompt, NEVER_CANCELLED)
    wrapped = Wrapped(backend)
    logits, reused = prefill(wrapped, cache, prompt, NEVER_CANCELLED)
    assert reused == len(prompt) - 1
    assert wrapped.calls == [1]
    assert list(cache.tokens) == prompt
    assert kv_length(cache) == len(prompt)
    np.testing.assert_allclose(logits, cold_logits(backend, prompt), atol=1e-5, rtol=1e-5)


def test_prefill_extended_prompt_reuses_all_of_the_old_one(backend):
    prompt = backend.tokenize(CODE)
    longer = prompt + backend.tokenize("x\n")
    cache = backend.new_cache()
    prefill(backend, cache, prompt, NEVER_CANCELLED)
    wrapped = Wrapped(backend)
    logits, reused = prefill(wrapped, cache, longer, NEVER_CANCELLED)
    assert reused == len(prompt)
    assert sum(wrapped.calls) == len(longer) - len(prompt)
    assert list(cache.tokens) == longer
    np.testing.assert_allclose(logits, cold_logits(backend, longer), atol=1e-5, rtol=1e-5)


def test_prefill_diverging_prompt_reuses_the_common_prefix(backend):
    prompt = backend.tokenize(CODE)
    k = len(prompt) // 2
    changed = prompt[:k] + backend.tokenize(OTHER)
    assert changed[k] != prompt[k]
    cache = backend.new_cache()
    prefill(backend, cache, prompt, NEVER_CANCELLED)
    logits, reused = prefill(backend, cache, changed, NEVER_CANCELLED)
    assert reused == k
    assert list(cache.tokens) == changed
    assert kv_length(cache) == len(changed)
    np.testing.assert_allclose(logits, cold_logits(backend, changed), atol=1e-5, rtol=1e-5)


def test_prefill_shorter_prompt(backend):
    prompt = backend.tokenize(CODE)
    shorter = prompt[:7]
    cache = backend.new_cache()
    prefill(backend, cache, prompt, NEVER_CANCELLED)
    logits, reused = prefill(backend, cache, shorter, NEVER_CANCELLED)
    assert reused == 6
    assert list(cache.tokens) == shorter
    assert kv_length(cache) == 7
    np.testing.assert_allclose(logits, cold_logits(backend, shorter), atol=1e-5, rtol=1e-5)


def test_prefill_unrelated_prompt_reuses_nothing(backend):
    cache = backend.new_cache()
    prefill(backend, cache, backend.tokenize(CODE), NEVER_CANCELLED)
    other = backend.tokenize(OTHER)
    logits, reused = prefill(backend, cache, other, NEVER_CANCELLED)
    assert reused == 0
    assert list(cache.tokens) == other
    np.testing.assert_allclose(logits, cold_logits(backend, other), atol=1e-5, rtol=1e-5)


def test_prefill_in_chunks(backend):
    prompt = backend.tokenize(CODE)
    wrapped = Wrapped(backend)
    logits, _ = prefill(wrapped, backend.new_cache(), prompt, NEVER_CANCELLED, chunk=5)
    assert wrapped.calls == [5] * (len(prompt) // 5) + (
        [len(prompt) % 5] if len(prompt) % 5 else []
    )
    assert len(wrapped.calls) == math.ceil(len(prompt) / 5)
    np.testing.assert_allclose(logits, cold_logits(backend, prompt), atol=1e-5, rtol=1e-5)


def test_prefill_single_token_prompt(backend):
    cache = backend.new_cache()
    logits, reused = prefill(backend, cache, [5], NEVER_CANCELLED)
    assert reused == 0
    logits, reused = prefill(backend, cache, [5], NEVER_CANCELLED)
    assert reused == 0  # the one token is always recomputed
    np.testing.assert_allclose(logits, cold_logits(backend, [5]), atol=1e-5, rtol=1e-5)


def test_prefill_empty_prompt(tiny_backend):
    with pytest.raises(ValueError):
        prefill(tiny_backend, tiny_backend.new_cache(), [], NEVER_CANCELLED)


# --- torch backend: forward and truncate ----------------------------------------------------


def test_truncate_then_forward_equals_cold(backend):
    prompt = backend.tokenize(CODE)
    cache = backend.new_cache()
    backend.forward(cache, prompt)
    backend.truncate(cache, 5)
    assert list(cache.tokens) == prompt[:5]
    assert kv_length(cache) == 5
    logits = backend.forward(cache, prompt[5:])
    np.testing.assert_allclose(logits, cold_logits(backend, prompt), atol=1e-5, rtol=1e-5)


def test_truncate_past_the_end_is_a_no_op(tiny_backend):
    prompt = tiny_backend.tokenize(CODE)
    cache = tiny_backend.new_cache()
    tiny_backend.forward(cache, prompt)
    tiny_backend.truncate(cache, len(prompt) + 3)
    assert list(cache.tokens) == prompt
    assert kv_length(cache) == len(prompt)


def test_truncate_to_zero(tiny_backend):
    prompt = tiny_backend.tokenize(CODE)
    cache = tiny_backend.new_cache()
    tiny_backend.forward(cache, prompt)
    tiny_backend.truncate(cache, 0)
    assert list(cache.tokens) == []
    assert kv_length(cache) == 0
    logits = tiny_backend.forward(cache, prompt[:4])
    np.testing.assert_allclose(logits, cold_logits(tiny_backend, prompt[:4]), atol=1e-5)


def test_forward_needs_tokens(tiny_backend):
    with pytest.raises(ValueError):
        tiny_backend.forward(tiny_backend.new_cache(), [])


def test_forward_token_by_token_equals_cold(lively):
    prompt = lively.tokenize(OTHER)
    cache = lively.new_cache()
    for token in prompt:
        logits = lively.forward(cache, [token])
    np.testing.assert_allclose(logits, cold_logits(lively, prompt), atol=1e-5, rtol=1e-5)


# --- greedy decoding ------------------------------------------------------------------------


def test_greedy_equals_a_manual_argmax_loop(backend):
    prompt = backend.tokenize(CODE)
    result = GreedyDecoder().decode(
        backend, backend.new_cache(), prompt, params(12), NEVER_CANCELLED
    )
    assert list(result.tokens) == manual_greedy(backend, prompt, 12)
    assert result.text == backend.detokenize(result.tokens)
    assert result.stop_reason == "length"
    assert result.prompt_tokens == len(prompt)
    assert result.reused_tokens == 0
    assert result.prefill_ms >= 0 and result.decode_ms >= 0


def test_lively_model_really_varies(lively):
    # Guard for the tests below: they are only meaningful if greedy output is not constant.
    tokens = manual_greedy(lively, lively.tokenize(CODE), 12)
    assert len(set(tokens)) > 3


@pytest.mark.parametrize("text", [CODE, OTHER, "x"])
def test_greedy_equals_transformers_generate(backend, text):
    prompt = backend.tokenize(text)
    steps = 16
    result = GreedyDecoder().decode(
        backend, backend.new_cache(), prompt, params(steps), NEVER_CANCELLED
    )
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        generated = backend.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=steps,
            min_new_tokens=0,
            eos_token_id=None,
            pad_token_id=backend.tokenizer.pad_token_id,
        )
    assert list(result.tokens) == generated[0, len(prompt) :].tolist()


def test_greedy_reuses_the_cache_on_a_second_call(lively):
    prompt = lively.tokenize(CODE)
    cache = lively.new_cache()
    first = GreedyDecoder().decode(lively, cache, prompt, params(10), NEVER_CANCELLED)
    assert first.reused_tokens == 0
    # The cache now holds the prompt and the generated tokens but the last one.
    assert list(cache.tokens) == prompt + list(first.tokens[:-1])
    assert kv_length(cache) == len(cache.tokens)
    second = GreedyDecoder().decode(lively, cache, prompt, params(10), NEVER_CANCELLED)
    assert second.reused_tokens == len(prompt) - 1
    assert second.tokens == first.tokens
    # Accepting the suggestion and asking again continues from it.
    accepted = prompt + list(first.tokens)
    third = GreedyDecoder().decode(lively, cache, accepted, params(4), NEVER_CANCELLED)
    assert third.reused_tokens == len(accepted) - 1
    assert list(third.tokens) == manual_greedy(lively, accepted, 4)


def _reference(backend, prompt, steps=16) -> list[int]:
    return manual_greedy(backend, prompt, steps)


def test_stop_id_ends_with_eos(lively):
    prompt = lively.tokenize(CODE)
    ref = _reference(lively, prompt)
    k = next(i for i in range(2, len(ref)) if ref[i] not in ref[:i])
    result = GreedyDecoder().decode(
        lively, lively.new_cache(), prompt, params(16, stop_ids={ref[k]}), NEVER_CANCELLED
    )
    assert result.stop_reason == "eos"
    assert list(result.tokens) == ref[:k]  # the stop token itself is not part of the output
    assert result.text == lively.detokenize(ref[:k])


def test_stop_id_as_the_first_token(lively):
    prompt = lively.tokenize(CODE)
    ref = _reference(lively, prompt, 1)
    result = GreedyDecoder().decode(
        lively, lively.new_cache(), prompt, params(16, stop_ids={ref[0]}), NEVER_CANCELLED
    )
    assert result.stop_reason == "eos"
    assert result.tokens == ()
    assert result.text == ""


def test_tiny_model_stops_on_fim_middle_repeat(tiny_backend):
    # The shared tiny model repeats its last token: after <|fim_middle|> it predicts it again,
    # and that is a stop id for the Qwen template.
    from nextab.models.fim import QWEN, FimInput, render, stop_token_ids

    prompt = render(QWEN, tiny_backend, FimInput("def f():\n    return ", "\n"))
    stops = stop_token_ids(QWEN, tiny_backend)
    expected_first = int(np.argmax(cold_logits(tiny_backend, prompt)))
    result = GreedyDecoder().decode(
        tiny_backend, tiny_backend.new_cache(), prompt, params(8, stops), NEVER_CANCELLED
    )
    if expected_first in stops:
        assert (result.tokens, result.stop_reason) == ((), "eos")
    else:
        assert result.tokens[0] == expected_first


@pytest.mark.parametrize("max_tokens", [1, 5])
def test_max_tokens_ends_with_length(lively, max_tokens):
    prompt = lively.tokenize(CODE)
    wrapped = Wrapped(lively)
    result = GreedyDecoder().decode(
        wrapped, lively.new_cache(), prompt, params(max_tokens), NEVER_CANCELLED
    )
    assert result.stop_reason == "length"
    assert list(result.tokens) == _reference(lively, prompt, max_tokens)
    # One prefill call, then one forward per token but the last (its logits are never needed).
    assert len(wrapped.calls) == 1 + (max_tokens - 1)


def test_stop_check_cuts_the_text(lively):
    prompt = lively.tokenize(CODE)
    ref = _reference(lively, prompt, 16)
    seen: list[str] = []

    def stop_check(text: str) -> int | None:
        seen.append(text)
        return 4 if len(text) >= 6 else None

    result = GreedyDecoder().decode(
        lively, lively.new_cache(), prompt, params(16, stop_check=stop_check), NEVER_CANCELLED
    )
    j = next(j for j in range(1, 17) if len(lively.detokenize(ref[:j])) >= 6)
    assert result.stop_reason == "stop"
    assert list(result.tokens) == ref[:j]
    assert result.text == lively.detokenize(ref[:j])[:4]
    # Called once per generated token with the whole text so far.
    assert seen == [lively.detokenize(ref[:i]) for i in range(1, j + 1)]


def test_stop_check_keep_zero(lively):
    prompt = lively.tokenize(CODE)
    result = GreedyDecoder().decode(
        lively, lively.new_cache(), prompt, params(16, stop_check=lambda t: 0), NEVER_CANCELLED
    )
    assert result.stop_reason == "stop"
    assert result.text == ""
    assert len(result.tokens) == 1


def test_stop_id_beyond_max_tokens_is_never_reached(lively):
    prompt = lively.tokenize(CODE)
    ref = _reference(lively, prompt, 3)
    assert ref[2] not in ref[:2]
    result = GreedyDecoder().decode(
        lively, lively.new_cache(), prompt, params(2, stop_ids={ref[2]}), NEVER_CANCELLED
    )
    # Two tokens requested, both generated before the stop id would come: "length".
    assert result.stop_reason == "length"
    assert list(result.tokens) == ref[:2]


# --- cancellation --------------------------------------------------------------------------


def test_cancel_token():
    token = CancelToken()
    assert not token.cancelled
    token.check()
    token.cancel()
    assert token.cancelled
    with pytest.raises(Cancelled):
        token.check()
    assert not NEVER_CANCELLED.cancelled


def test_cancelled_before_decoding(lively):
    token = CancelToken()
    token.cancel()
    wrapped = Wrapped(lively)
    with pytest.raises(Cancelled):
        GreedyDecoder().decode(wrapped, lively.new_cache(), lively.tokenize(CODE), params(8), token)
    assert wrapped.calls == []  # no forward pass was run


def test_cancelled_during_prefill(lively):
    token = CancelToken()
    prompt = lively.tokenize(CODE)

    def hook(n, tokens):
        if n == 1:
            token.cancel()

    wrapped = Wrapped(lively, hook)
    cache = lively.new_cache()
    with pytest.raises(Cancelled):
        prefill(wrapped, cache, prompt, token, chunk=4)
    assert wrapped.calls == [4]  # the cancel landed within one chunk
    assert list(cache.tokens) == prompt[:4]
    assert kv_length(cache) == 4


def test_cancelled_from_a_stop_check(lively):
    token = CancelToken()
    prompt = lively.tokenize(CODE)
    calls = []

    def stop_check(text):
        calls.append(text)
        if len(calls) == 3:
            token.cancel()
        return None

    cache = lively.new_cache()
    with pytest.raises(Cancelled):
        GreedyDecoder().decode(lively, cache, prompt, params(16, stop_check=stop_check), token)
    assert len(calls) == 3
    # The cache is still consistent and reusable after the cancel.
    assert kv_length(cache) == len(cache.tokens)
    assert list(cache.tokens[: len(prompt)]) == prompt
    again = GreedyDecoder().decode(lively, cache, prompt, params(8), NEVER_CANCELLED)
    assert again.reused_tokens == len(prompt) - 1
    assert list(again.tokens) == _reference(lively, prompt, 8)


def test_cancelled_mid_generation_by_the_backend(lively):
    token = CancelToken()
    prompt = lively.tokenize(CODE)

    def hook(n, tokens):
        if n == 5:  # prefill, then the 4th single-token step
            token.cancel()

    wrapped = Wrapped(lively, hook)
    with pytest.raises(Cancelled):
        GreedyDecoder().decode(wrapped, lively.new_cache(), prompt, params(16), token)
    assert len(wrapped.calls) == 5


# --- token healing ---------------------------------------------------------------------------


def test_split_for_healing_takes_off_a_mid_word_token(tiny_backend):
    from nextab.models.decoding import split_for_healing

    ids = tiny_backend.tokenize("def add(a, b):\n    ret")
    kept, healing = split_for_healing(tiny_backend, ids)
    assert healing is not None
    assert kept == ids[:-1]
    assert healing.token == ids[-1]
    assert tiny_backend.detokenize(kept) + healing.text == "def add(a, b):\n    ret"


@pytest.mark.parametrize("ending", ["x = 1\n", "<|fim_middle|>"])
def test_split_for_healing_leaves_natural_boundaries_alone(tiny_backend, ending):
    from nextab.models.decoding import split_for_healing

    if ending.startswith("<|"):
        ids = [*tiny_backend.tokenize("x = "), tiny_backend.special_token_id(ending)]
    else:
        ids = tiny_backend.tokenize(ending)
    kept, healing = split_for_healing(tiny_backend, ids)
    assert healing is None and kept == ids


@pytest.mark.parametrize("ending", ["def f():\n    ", "foo(", "a, "])
def test_split_for_healing_heals_inside_a_line(tiny_backend, ending):
    from nextab.models.decoding import split_for_healing

    ids = tiny_backend.tokenize(ending)
    kept, healing = split_for_healing(tiny_backend, ids)
    assert healing is not None and kept == ids[:-1]
    assert tiny_backend.detokenize(kept) + healing.text == ending


def test_healed_generation_respells_the_word_and_hides_it(tiny_backend):
    from nextab.models.decoding import split_for_healing

    prompt, healing = split_for_healing(tiny_backend, tiny_backend.tokenize("for i in ran"))
    assert healing is not None
    params = DecodeParams(max_tokens=8, stop_ids=frozenset())
    result = GreedyDecoder().decode(
        tiny_backend, tiny_backend.new_cache(), prompt, params, NEVER_CANCELLED, healing
    )
    spelt = tiny_backend.detokenize(result.tokens)
    # The generated tokens start by re-spelling "ran" (however tokenized); the visible
    # completion is what comes after it.
    assert spelt.startswith(healing.text)
    assert result.text == spelt[len(healing.text) :]


def test_healing_picks_the_likeliest_consistent_token(tiny_backend):
    from nextab.models.decoding import Healing

    logits = np.zeros(tiny_backend.info.vocab_size, dtype=np.float32)
    wanted = tiny_backend.tokenize("return")
    other = tiny_backend.tokenize("x")[0]
    logits[other] = 9.0  # likelier, but does not spell the pending text
    logits[wanted[0]] = 5.0
    first = tiny_backend.detokenize([wanted[0]])
    pick = Healing(text="ret", token=other).pick(tiny_backend, logits, "ret")
    assert pick == wanted[0] and ("ret".startswith(first) or first.startswith("ret"))


# --- token trees (lookahead branches and beams share the cached prefix) ---------------------


def test_tree_nodes_see_the_prefix_and_their_ancestors_only(backend) -> None:
    prompt = backend.tokenize(CODE)
    a, b, c = backend.tokenize(" x")[0], backend.tokenize(" y")[0], backend.tokenize(" z")[0]
    cache = backend.new_cache()
    backend.forward(cache, prompt)
    # Two branches under the prompt, then one child under each, over two calls.
    first = backend.forward_tree(cache, [a, b], [-1, -1])
    second = backend.forward_tree(cache, [c, c], [0, 1])
    assert cache.tree_size == 4 and list(cache.tokens) == prompt
    for got, branch in [
        (first[0], [a]), (first[1], [b]), (second[0], [a, c]), (second[1], [b, c])
    ]:
        np.testing.assert_allclose(got, cold_logits(backend, prompt + branch), atol=1e-4)
    # The next plain forward drops the tree and continues from the committed prompt.
    after = backend.forward(cache, [b])
    assert cache.tree_size == 0 and list(cache.tokens) == [*prompt, b]
    np.testing.assert_allclose(after, cold_logits(backend, [*prompt, b]), atol=1e-4)


def test_truncate_drops_the_tree_too(backend) -> None:
    prompt = backend.tokenize(CODE)
    cache = backend.new_cache()
    backend.forward(cache, prompt)
    backend.forward_tree(cache, prompt[:3], [-1, 0, 1])
    backend.truncate(cache, len(prompt) - 2)
    assert cache.tree_size == 0 and list(cache.tokens) == prompt[:-2]
    np.testing.assert_allclose(
        backend.forward(cache, prompt[-2:]), cold_logits(backend, prompt), atol=1e-4
    )


def test_tree_arguments_are_checked(tiny_backend) -> None:
    cache = tiny_backend.new_cache()
    with pytest.raises(ValueError):
        tiny_backend.forward_tree(cache, [1], [-1])  # nothing cached to hang from
    tiny_backend.forward(cache, [1, 2])
    with pytest.raises(ValueError):
        tiny_backend.forward_tree(cache, [3], [0])  # no node 0 yet
    with pytest.raises(ValueError):
        tiny_backend.forward_tree(cache, [3, 4], [-1])


# --- AdaDec ---------------------------------------------------------------------------------


def test_entropy_of_known_distributions() -> None:
    assert entropy(np.zeros(8)) == pytest.approx(math.log(8))
    assert entropy(np.array([0.0, -1e9, -1e9])) == pytest.approx(0.0, abs=1e-6)
    two = np.log(np.array([0.25, 0.75]))
    assert entropy(two) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert entropy(two + 123.0) == pytest.approx(entropy(two))  # shift-invariant, no overflow


def test_adadec_with_an_infinite_threshold_is_greedy_token_for_token(lively) -> None:
    prompt = lively.tokenize(CODE)
    greedy = GreedyDecoder().decode(lively, lively.new_cache(), prompt, params(16), NEVER_CANCELLED)
    wrapped = Wrapped(lively)
    ada = AdaDecDecoder(threshold=math.inf).decode(
        wrapped, lively.new_cache(), prompt, params(16), NEVER_CANCELLED
    )
    assert ada.tokens == greedy.tokens and ada.text == greedy.text
    assert ada.paused_steps == 0 and wrapped.tree_calls == []


def _lookahead_scores(backend, prompt, top_k: int, length: int) -> dict[int, float]:
    """Each top-k candidate's mean log-probability with its greedy continuation, by plain
    full-sequence forwards (no cache, no tree)."""
    first = log_softmax(cold_logits(backend, prompt))
    scores = {}
    for token in np.argsort(-first, kind="stable")[:top_k]:
        ids, logprobs = [*prompt, int(token)], [float(first[token])]
        for _ in range(length):
            step = log_softmax(cold_logits(backend, ids))
            ids.append(int(np.argmax(step)))
            logprobs.append(float(step[ids[-1]]))
        scores[int(token)] = sum(logprobs) / len(logprobs)
    return scores


def test_a_forced_pause_takes_the_candidate_with_the_best_lookahead(lively) -> None:
    # Several prompts, so that somewhere the best lookahead is not the argmax.
    prompts = [lively.tokenize(t) for t in (CODE, OTHER, "def f(a, b):\n    return", "x = [")]
    beaten = 0
    for prompt in prompts:
        expected = _lookahead_scores(lively, prompt, top_k=3, length=4)
        result = AdaDecDecoder(threshold=-math.inf, top_k=3, lookahead=4).decode(
            lively, lively.new_cache(), prompt, params(1), NEVER_CANCELLED
        )
        assert result.paused_steps == 1
        assert result.tokens[0] == max(expected, key=expected.get)
        beaten += result.tokens[0] != int(np.argmax(cold_logits(lively, prompt)))
    assert beaten > 0


def test_a_pause_never_turns_a_completion_into_an_empty_one(lively, monkeypatch) -> None:
    import nextab.models.decoding as decoding

    # A runner-up that ends the completion at once is scored by its own log-probability
    # alone and beats the greedy branch's mean over six tokens: it must not win the pause.
    branches = [
        decoding.Lookahead(5, (6, 7, 8, 9, 10), (-0.9, -1.5, -2.0, -1.0, -0.5, -0.4), (0.1,) * 5),
        decoding.Lookahead(0, (), (-1.0,), (), rejected=True),
        decoding.Lookahead(11, (12,), (-1.2, -1.3), (0.2,)),
    ]
    assert branches[1].score > branches[0].score > branches[2].score
    monkeypatch.setattr(decoding, "look_ahead", lambda run, logits, top_k, length: branches)
    run = decoding.Run(lively, lively.new_cache(), params(8), NEVER_CANCELLED, "", [])
    taken = AdaDecDecoder(threshold=-math.inf).choose(run, np.zeros(4, np.float32))
    assert taken == [5] and run.paused == 1  # (its lookahead is not sure enough to take: threshold -inf)
    # When greedy itself ends the completion, that is still its to decide.
    branches[0], branches[1] = branches[1], branches[0]
    assert AdaDecDecoder(threshold=-math.inf).choose(run, np.zeros(4, np.float32)) == [0]


def test_ended_branches_know_whether_they_wrote_anything(lively) -> None:
    import nextab.models.decoding as decoding

    prompt = lively.tokenize(CODE)
    logits = cold_logits(lively, prompt)
    top = [int(t) for t in np.argsort(-logits)[:3]]
    cache = lively.new_cache()
    prefill(lively, cache, prompt, NEVER_CANCELLED)
    # The runner-up is an end token: its branch ends at once with nothing written.
    run = decoding.Run(lively, cache, params(8, stop_ids=[top[1]]), NEVER_CANCELLED, "", [])
    found = {b.token: b for b in decoding.look_ahead(run, logits, 3, 4)}
    assert found[top[1]].rejected and found[top[1]].continuation == ()
    assert not found[top[0]].rejected and not found[top[2]].rejected


def test_ended_branches_the_caller_would_cut_are_rejected(lively) -> None:
    import dataclasses

    import nextab.models.decoding as decoding

    prompt = lively.tokenize(CODE)
    logits = cold_logits(lively, prompt)
    top = [int(t) for t in np.argsort(-logits)[:3]]
    cache = lively.new_cache()
    prefill(lively, cache, prompt, NEVER_CANCELLED)
    # Every branch ends after its second token; the caller would cut the runner-up's text.
    seen: list[tuple[str, str]] = []
    ends_at_two = params(8, stop_check=lambda text: len(text) if len(lively.tokenize(text)) >= 2 else None)

    def viable(text: str, reason: str) -> bool:
        seen.append((text, reason))
        return not text.startswith(lively.detokenize([top[1]]))

    run = decoding.Run(lively, cache, dataclasses.replace(ends_at_two, viable=viable), NEVER_CANCELLED, "", [])
    found = {b.token: b for b in decoding.look_ahead(run, logits, 3, 4)}
    assert [found[t].rejected for t in top] == [False, True, False]
    assert len(seen) == 3 and all(reason == "stop" for _, reason in seen)


def test_lookahead_reuses_the_cached_prompt(lively) -> None:
    prompt = lively.tokenize(CODE)
    wrapped = Wrapped(lively)
    result = AdaDecDecoder(threshold=-math.inf, top_k=3, lookahead=5).decode(
        wrapped, lively.new_cache(), prompt, params(6), NEVER_CANCELLED
    )
    steps = len(result.tokens)
    assert result.paused_steps == steps
    # The prompt is encoded once; after it, one token per committed step and at most
    # top_k per lookahead forward, lookahead forwards per pause.
    assert wrapped.calls[0] == len(prompt) and all(n == 1 for n in wrapped.calls[1:])
    assert all(n <= 3 for n in wrapped.tree_calls) and len(wrapped.tree_calls) <= 5 * steps
    assert result.evaluated_tokens == sum(wrapped.calls[1:]) + sum(wrapped.tree_calls)
    # And it decodes what the same choices would give without any cache.
    check = list(prompt)
    for token in result.tokens:
        expected = _lookahead_scores(lively, check, top_k=3, length=5)
        assert token == max(expected, key=expected.get)
        check.append(token)


def test_lookahead_branches_stop_where_the_completion_would(lively) -> None:
    # A stop rule that ends the completion at any token: every branch is one token long, so
    # the pause costs no lookahead forward at all and the likeliest token wins.
    prompt = lively.tokenize(CODE)
    wrapped = Wrapped(lively)
    result = AdaDecDecoder(threshold=-math.inf).decode(
        wrapped, lively.new_cache(), prompt, params(4, stop_check=lambda text: len(text)),
        NEVER_CANCELLED,
    )
    assert wrapped.tree_calls == [] and result.stop_reason == "stop"
    assert result.tokens == (int(np.argmax(cold_logits(lively, prompt))),)


def test_decoders_are_made_from_their_settings() -> None:
    assert isinstance(make_decoder("greedy"), GreedyDecoder)
    ada = make_decoder("adadec", threshold=1.5, top_k=4, lookahead=2)
    assert isinstance(ada, AdaDecDecoder) and (ada.threshold, ada.top_k, ada.lookahead) == (
        1.5, 4, 2
    )
    assert isinstance(make_decoder("beam", top_k=2), BeamDecoder)
    with pytest.raises(ValueError, match="unknown decoding strategy"):
        make_decoder("nucleus")


# --- beam search ----------------------------------------------------------------------------


def test_beam_of_width_one_is_greedy(lively) -> None:
    prompt = lively.tokenize(CODE)
    greedy = GreedyDecoder().decode(lively, lively.new_cache(), prompt, params(10), NEVER_CANCELLED)
    beam = BeamDecoder(width=1).decode(lively, lively.new_cache(), prompt, params(10), NEVER_CANCELLED)
    assert beam.tokens == greedy.tokens and beam.text == greedy.text


def _mean_logprob(backend, prompt, tokens) -> float:
    ids, total = list(prompt), 0.0
    for token in tokens:
        total += float(log_softmax(cold_logits(backend, ids))[token])
        ids.append(token)
    return total / len(tokens)


def test_beam_finds_a_sequence_at_least_as_likely_as_greedy(lively) -> None:
    for text in (CODE, OTHER, "x = ["):
        prompt = lively.tokenize(text)
        greedy = GreedyDecoder().decode(lively, lively.new_cache(), prompt, params(6), NEVER_CANCELLED)
        wrapped = Wrapped(lively)
        cache = lively.new_cache()
        beam = BeamDecoder(width=3).decode(wrapped, cache, prompt, params(6), NEVER_CANCELLED)
        assert len(beam.tokens) == 6
        assert _mean_logprob(lively, prompt, beam.tokens) >= _mean_logprob(
            lively, prompt, greedy.tokens
        ) - 1e-4
        # One prompt encoding, then one batched forward of at most `width` beams per step.
        assert wrapped.calls == [len(prompt)]
        assert len(wrapped.tree_calls) == 5 and all(n <= 3 for n in wrapped.tree_calls)
        assert cache.tree_size == 0 and list(cache.tokens) == prompt


def test_beam_stops_with_the_stop_rules_and_end_tokens(lively) -> None:
    prompt = lively.tokenize(CODE)
    result = BeamDecoder(width=3).decode(
        lively, lively.new_cache(), prompt, params(8, stop_check=lambda t: 0 if len(t) > 3 else None),
        NEVER_CANCELLED,
    )
    assert result.stop_reason == "stop" and result.text == ""
    first = int(np.argmax(cold_logits(lively, prompt)))
    ended = BeamDecoder(width=1).decode(
        lively, lively.new_cache(), prompt, params(8, stop_ids={first}), NEVER_CANCELLED
    )
    assert ended.stop_reason == "eos" and ended.tokens == () and ended.text == ""


def _slow_adadec(backend, prompt, threshold: float, steps: int) -> list[int]:
    """AdaDec by its definition, every distribution from a full forward of the sequence."""
    ids, out = list(prompt), []
    for _ in range(steps):
        logits = cold_logits(backend, ids)
        if entropy(logits) <= threshold:
            token = int(np.argmax(logits))
        else:
            scores = _lookahead_scores(backend, ids, top_k=3, length=5)
            token = max(scores, key=scores.get)
        out.append(token)
        ids.append(token)
    return out


def test_adadec_takes_the_winner_s_sure_lookahead_at_once_and_decodes_as_defined(lively) -> None:
    batched = 0
    for text in (CODE, OTHER, "x = ["):
        prompt = lively.tokenize(text)
        path = manual_greedy(lively, prompt, 10)
        spreads = [entropy(cold_logits(lively, prompt + path[:i])) for i in range(10)]
        threshold = float(np.median(spreads))  # some steps pause, some do not
        wrapped = Wrapped(lively)
        result = AdaDecDecoder(threshold).decode(
            wrapped, lively.new_cache(), prompt, params(10), NEVER_CANCELLED
        )
        assert list(result.tokens) == _slow_adadec(lively, prompt, threshold, 10)
        batched += sum(n > 1 for n in wrapped.calls[1:])
    assert batched > 0  # some winners' continuations were committed in one pass


def test_beam_does_not_stop_at_early_endings_while_a_better_beam_is_unfinished(lively) -> None:
    # An end token that is likely but not the best next token finishes a hypothesis at once;
    # the greedy path, which beam search also follows, scores better, so the search must go on.
    prompt = lively.tokenize(CODE)
    first = log_softmax(cold_logits(lively, prompt))
    early_end = int(np.argsort(-first)[1])
    greedy = manual_greedy(lively, prompt, 6)
    assert early_end not in greedy
    assert _mean_logprob(lively, prompt, greedy) > float(first[early_end])  # the premise
    result = BeamDecoder(width=3).decode(
        lively, lively.new_cache(), prompt, params(6, stop_ids={early_end}), NEVER_CANCELLED
    )
    assert result.stop_reason != "eos" and len(result.tokens) == 6
    assert _mean_logprob(lively, prompt, result.tokens) >= _mean_logprob(lively, prompt, greedy) - 1e-4


# --- drafting from text the output copies ----------------------------------------------------


def _greedy(backend, prompt, max_tokens=24, **extra):
    wrapped = Wrapped(backend)
    cache = wrapped.new_cache()
    result = GreedyDecoder().decode(
        wrapped, cache, prompt, DecodeParams(max_tokens, frozenset(), **extra), NEVER_CANCELLED
    )
    return result, wrapped, cache


def test_forward_every_gives_each_position_s_logits(lively) -> None:
    prompt = lively.tokenize(CODE)
    cache = lively.new_cache()
    lively.forward(cache, prompt[:3])
    every = lively.forward(cache, prompt[3:], every=True)
    assert every.shape == (len(prompt) - 3, lively.info.vocab_size)
    for row in (0, len(prompt) - 4):
        np.testing.assert_allclose(every[row], cold_logits(lively, prompt[: 4 + row]), atol=1e-4)


def test_a_draft_of_the_output_itself_is_taken_in_few_passes(lively) -> None:
    prompt = lively.tokenize(CODE)
    plain, plain_backend, _ = _greedy(lively, prompt)
    drafted, drafted_backend, cache = _greedy(lively, prompt, draft=plain.tokens, draft_length=8)
    assert drafted.tokens == plain.tokens and drafted.text == plain.text
    # Prefill, then each pass checks a token and the next 8 drafted ones: 24 tokens in 3.
    assert len(plain_backend.calls) == 24
    assert len(drafted_backend.calls) <= 4
    # The cache holds the prompt and (most of) the output, checked drafts included.
    assert len(cache.tokens) >= len(prompt) + len(plain.tokens) - 1
    assert list(cache.tokens) == [*prompt, *plain.tokens][: len(cache.tokens)]


@pytest.mark.parametrize("change", ["unrelated", "one token off"])
def test_a_wrong_draft_changes_nothing_but_the_passes(lively, change) -> None:
    prompt = lively.tokenize(CODE)
    plain, plain_backend, _ = _greedy(lively, prompt)
    if change == "unrelated":
        draft = tuple(lively.tokenize(OTHER))
    else:
        draft = (*plain.tokens[:10], (plain.tokens[10] + 1) % lively.info.vocab_size, *plain.tokens[11:])
    drafted, drafted_backend, cache = _greedy(lively, prompt, draft=draft)
    assert drafted.tokens == plain.tokens
    if change == "one token off":
        assert len(drafted_backend.calls) < len(plain_backend.calls) / 2
    # What the cache holds is still exactly what the model read: rejected drafts are gone.
    assert list(cache.tokens) == [*prompt, *plain.tokens][: len(cache.tokens)]
    lively.truncate(cache, len(prompt) + len(plain.tokens) - 1)
    more = lively.forward(cache, [plain.tokens[-1]])
    np.testing.assert_allclose(more, cold_logits(lively, [*prompt, *plain.tokens]), atol=1e-4)


def test_stop_rules_hold_inside_a_draft(lively) -> None:
    prompt = lively.tokenize(CODE)
    plain, _, _ = _greedy(lively, prompt)
    cut = len(lively.detokenize(plain.tokens[:7]))
    stop = lambda text: cut if len(text) >= cut else None  # noqa: E731
    expected, _, _ = _greedy(lively, prompt, stop_check=stop)
    drafted, _, _ = _greedy(lively, prompt, stop_check=stop, draft=plain.tokens)
    assert (drafted.text, drafted.stop_reason) == (expected.text, "stop")
    assert drafted.tokens == expected.tokens
