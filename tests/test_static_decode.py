"""models/static_decode.py through the torch backend: static caches and captured decode steps
(the GPU path), run on the CPU with a capture that replays by rerunning the step."""

from __future__ import annotations

import numpy as np
import pytest

from nextab.models import static_decode
from nextab.models.torch_backend import TorchBackend
from tests.test_decoding import CODE, ReplayByRerun


@pytest.fixture
def pair(tiny_backend, monkeypatch):
    from tests.tiny import lively_model

    monkeypatch.setattr(static_decode, "MIN_CAPACITY", 16)
    tokenizer = tiny_backend.tokenizer
    model = lively_model(len(tokenizer), tokenizer.eos_token_id, seed=2)
    graphs = ReplayByRerun()
    static = TorchBackend(model, tokenizer, "static", "cpu", static=True, capture=graphs)
    return TorchBackend(model, tokenizer, "dynamic", "cpu"), static, graphs


def test_capacity_is_a_power_of_two_from_the_minimum() -> None:
    assert static_decode.capacity_for(1) == static_decode.MIN_CAPACITY
    assert static_decode.capacity_for(static_decode.MIN_CAPACITY + 1) == 2 * static_decode.MIN_CAPACITY
    assert static_decode.capacity_for(5000) == 8192


def test_decode_steps_replay_one_capture_per_cache_size(pair) -> None:
    dynamic, static, graphs = pair
    prompt = dynamic.tokenize(CODE)[:12]
    ref, cache = dynamic.new_cache(), static.new_cache()
    np.testing.assert_allclose(static.forward(cache, prompt), dynamic.forward(ref, prompt), atol=1e-5)
    assert graphs.captures == 0  # a pre-fill is eager
    token, steps = prompt[-1], 0
    while len(cache.tokens) < 40:  # past 16 and 32 slots: the cache moves twice
        got = static.forward(cache, [token])
        want = dynamic.forward(ref, [token])
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert cache.tokens == ref.tokens and cache.step is not None
        token, steps = int(np.argmax(want)), steps + 1
    assert static_decode.capacity(cache.kv) == 64
    # The first step at each size is eager (the warm-up the capture needs), the rest replay.
    assert graphs.captures == 3 and graphs.replays == steps - 3
    # Truncation keeps the buffers and the graph: it only moves the cache's length back.
    kept = cache.step
    static.truncate(cache, 10)
    dynamic.truncate(ref, 10)
    np.testing.assert_allclose(static.forward(cache, [token]), dynamic.forward(ref, [token]), atol=1e-5)
    assert cache.step is kept and graphs.captures == 3
    static.truncate(cache, 0)
    assert cache.tokens == [] and static_decode.held(cache.kv) == 0
    np.testing.assert_allclose(
        static.forward(cache, prompt), dynamic.forward(dynamic.new_cache(), prompt), atol=1e-5
    )


def test_a_capture_that_fails_leaves_steps_eager(pair, caplog) -> None:
    dynamic, static, _ = pair

    def broken(step):
        raise RuntimeError("operation not permitted when stream is capturing")

    static._capture = broken
    prompt = dynamic.tokenize(CODE)[:10]
    ref, cache = dynamic.new_cache(), static.new_cache()
    static.forward(cache, prompt)
    dynamic.forward(ref, prompt)
    for token in prompt[:4]:
        np.testing.assert_allclose(static.forward(cache, [token]), dynamic.forward(ref, [token]), atol=1e-5)
    assert cache.step is None and static._capture is None
    assert "capturing one failed" in caplog.text


def test_warm_up_leaves_no_trace(pair) -> None:
    dynamic, static, graphs = pair
    static.warm_up()
    assert graphs.captures == 1 and graphs.replays >= 1
    prompt = dynamic.tokenize(CODE)
    np.testing.assert_allclose(
        static.forward(static.new_cache(), prompt), dynamic.forward(dynamic.new_cache(), prompt), atol=1e-5
    )


def test_the_cpu_default_is_dynamic(tiny_backend) -> None:
    assert not tiny_backend.static
    assert not isinstance(tiny_backend.new_cache().kv, type(static_decode.new_static_cache(tiny_backend.model, 16)))
