"""A cancelled pre-fill stops inside a forward, and the cache it leaves is the one it had.

A cold prompt's pre-fill chunk takes seconds on a CPU; a superseded request must give the model
thread back within a layer, and the document's cache must stay usable by the next keystroke.
The onnxruntime half of this is in tests/test_onnx_backend.py (it needs that file's export).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from nextab.models.backend import Interrupted, interruptible
from nextab.models.decoding import Cancelled, CancelToken, prefill

PROMPTS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
]


class CancelAfter:
    """A cancel signal that reads as cancelled from its `after`-th look on: a cancel landing
    part-way through a forward, at a known layer."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.looks = 0

    @property
    def cancelled(self) -> bool:
        self.looks += 1
        return self.looks >= self.after

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        return lambda: None


def _layer_lengths(cache) -> list[int]:
    return [int(layer.get_seq_length()) for layer in cache.kv.layers]


def test_a_torch_forward_stops_at_a_layer_and_leaves_the_cache_as_it_was(tiny_backend) -> None:
    ids = tiny_backend.tokenize(PROMPTS[0] + PROMPTS[1])
    head, tail = ids[:6], ids[6:]
    cache = tiny_backend.new_cache()
    tiny_backend.forward(cache, head)
    signal = CancelAfter(after=2)  # the second layer's check
    with tiny_backend.stop_on(signal), pytest.raises(Interrupted):
        tiny_backend.forward(cache, tail)
    assert signal.looks == 2
    assert list(cache.tokens) == head
    assert set(_layer_lengths(cache)) == {len(head)}
    # The same cache goes on to the same logits as a fresh one.
    fresh = tiny_backend.new_cache()
    expected = tiny_backend.forward(fresh, ids)
    np.testing.assert_allclose(tiny_backend.forward(cache, tail), expected, atol=1e-5)


def test_outside_stop_on_a_cancelled_signal_changes_nothing(tiny_backend) -> None:
    ids = tiny_backend.tokenize(PROMPTS[0])
    signal = CancelAfter(after=1)
    with tiny_backend.stop_on(signal):
        pass
    cache = tiny_backend.new_cache()
    tiny_backend.forward(cache, ids)  # no longer watched: runs to the end
    assert signal.looks == 0
    assert list(cache.tokens) == ids


def test_prefill_turns_an_interrupted_forward_into_cancelled(tiny_backend) -> None:
    ids = tiny_backend.tokenize(PROMPTS[1])
    cache = tiny_backend.new_cache()
    token = CancelToken()
    original = tiny_backend.forward
    calls = 0

    def forward_cancelled_inside(cache, tokens, every=False):
        nonlocal calls
        calls += 1
        if calls == 2:
            token.cancel()  # lands while the second chunk runs, as from the event loop
        return original(cache, tokens, every)

    tiny_backend.forward = forward_cancelled_inside
    try:
        with pytest.raises(Cancelled):
            prefill(tiny_backend, cache, ids, token, chunk=4)
    finally:
        del tiny_backend.forward
    assert calls == 2  # stopped inside the second chunk, not after it
    assert list(cache.tokens) == ids[:4]
    logits, reused = prefill(tiny_backend, cache, ids, CancelToken(), chunk=4)
    assert reused == 4
    np.testing.assert_allclose(
        logits, tiny_backend.forward(tiny_backend.new_cache(), ids), atol=1e-5
    )


def test_a_backend_without_stop_on_runs_its_forwards_to_the_end() -> None:
    class Plain:
        pass

    token = CancelToken()
    token.cancel()
    with interruptible(Plain(), token):
        entered = True
    assert entered


def test_cancel_calls_callbacks_until_they_are_removed() -> None:
    token = CancelToken()
    calls: list[str] = []
    remove_a = token.on_cancel(lambda: calls.append("a"))
    token.on_cancel(lambda: calls.append("b"))
    remove_a()
    token.cancel()
    assert calls == ["b"]
    assert token.cancelled


def test_a_callback_is_never_called_after_its_removal_returns() -> None:
    # The onnxruntime backend's callback sets the terminate flag of whatever run is current:
    # called late, it would stop the next request's run.
    token = CancelToken()
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow() -> None:
        entered.set()
        release.wait(5)
        calls.append("slow")

    remove = token.on_cancel(slow)
    canceller = threading.Thread(target=token.cancel)
    canceller.start()
    assert entered.wait(5)
    removed = threading.Event()
    remover = threading.Thread(target=lambda: (remove(), removed.set()))
    remover.start()
    assert not removed.wait(0.2)  # waits for the callback in progress
    release.set()
    remover.join(5)
    canceller.join(5)
    assert removed.is_set() and calls == ["slow"]


def test_warming_a_prompt_stops_inside_a_forward_when_a_request_waits(tiny_backend) -> None:
    import weakref

    from nextab.config import Config
    from nextab.context.document import Document
    from nextab.engine import WARM_CHUNK, CompletionRequest, Engine

    text = PROMPTS[1] * 30
    engine = Engine(Config(), tiny_backend)
    doc = Document("file:///a.py", text)
    built = engine.prompt_for(CompletionRequest(doc, len(text), text))
    assert len(built.ids) > 3 * WARM_CHUNK
    calls = 0
    original = tiny_backend.forward

    def forward(cache, tokens, every=False):
        nonlocal calls
        calls += 1
        if calls == 2:
            engine._wait_for_model()  # a completion asks for the model during the 2nd chunk
        return original(cache, tokens, every)

    # The preparer's loop, run here rather than on its thread, so the test steers it.
    engine._to_warm[id(doc)] = (weakref.ref(doc), len(text), None)
    tiny_backend.forward = forward
    try:
        engine._warm_pending()
    finally:
        del tiny_backend.forward
        engine._waiting -= 1
    assert calls == 2
    assert list(doc.kv.tokens) == list(built.ids[:WARM_CHUNK])  # the 2nd chunk did not finish
    assert set(_layer_lengths(doc.kv)) == {WARM_CHUNK}
    warmed = engine.complete(CompletionRequest(doc, len(text), text))
    fresh = Engine(Config(), tiny_backend).complete(
        CompletionRequest(Document("file:///b.py", text), len(text), text)
    )
    assert warmed.metrics.reused_tokens == WARM_CHUNK
    assert warmed.text == fresh.text
