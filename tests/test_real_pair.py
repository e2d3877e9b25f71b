"""Two-model decoding with the real pair (Qwen2.5-Coder 0.5B and 1.5B, both embedded): slower,
marked `model`; CI runs it too (it fetches the 1.5B, ~1.1 GB, into the cache once).

On torch's float weights, where a pass over k tokens computes what k one-token passes do, so
that speculative decoding must give the 1.5B's greedy output exactly."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nextab.config import CompletionConfig, Config, EadConfig, PairConfig
from nextab.context.document import Document
from nextab.engine import CompletionRequest, Engine

pytestmark = pytest.mark.model

PROMPTS = [
    "def add(a, b):\n    return ",
    "import os\n\n\ndef home():\n    return os.path.",
    "def mean(xs):\n    if not xs:\n        return 0.0\n    return ",
    "def fizzbuzz(n):\n    for i in range(1, n + 1):\n        if i % 15 == 0:\n            print(",
]


def _config(**extra) -> Config:
    base = Config(model="embedded", device="cpu", backend="torch", max_tokens=12,
                  completion=CompletionConfig(middle_lines=0), pair=PairConfig(catch_up_tokens=None))  # fmt: skip
    return replace(base, **extra)


@pytest.fixture(scope="module")
def pair() -> Engine:
    return Engine.load(_config(decoding="speculative"), progress=False)


@pytest.fixture(scope="module")
def large_alone(pair: Engine) -> Engine:
    assert pair.large is not None
    return Engine(_config(), pair.large)


def _complete(engine: Engine, text: str, decoding: str | None = None, doc: Document | None = None):
    doc = doc or Document("file:///t.py", text)
    return engine.complete(CompletionRequest(doc, len(text), text, path="t.py", mode="line", decoding=decoding))


def test_the_embedded_pair_loads_and_shares_its_token_ids(pair: Engine) -> None:
    assert pair.large is not None and "1.5B" in pair.large.info.name
    assert pair.take_notices() == []  # check_pair found nothing to report


@pytest.mark.parametrize("text", PROMPTS)
def test_speculative_decoding_writes_the_large_models_greedy_output(pair: Engine, large_alone: Engine, text: str) -> None:
    got = _complete(pair, text)
    expected = _complete(large_alone, text)
    assert (got.text, got.stop_reason) == (expected.text, expected.stop_reason)
    assert got.metrics.fallback == "" and got.metrics.large_tokens == got.metrics.generated_tokens > 0
    assert got.metrics.drafted_tokens > 0


def test_ead_spans_the_small_and_the_large_models_greedy_outputs(pair: Engine, large_alone: Engine) -> None:
    small_alone = Engine(_config(), pair.backend)
    text = PROMPTS[2]
    for threshold, like in ((0.0, large_alone), (1e9, small_alone)):
        pair.reconfigure(_config(decoding="ead", ead=EadConfig(threshold=threshold)))
        got = _complete(pair, text, "ead")
        assert got.text == _complete(like, text).text
    pair.reconfigure(_config(decoding="speculative"))


def test_the_large_model_catches_up_in_the_background(pair: Engine) -> None:
    import time

    pair.reconfigure(_config(decoding="speculative", pair=PairConfig(catch_up_tokens=4)))
    try:
        text = PROMPTS[3]
        doc = Document("file:///t.py", text)
        assert _complete(pair, text, doc=doc).metrics.fallback == "catch-up"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (doc.kv_large is None or len(doc.kv_large.tokens) < len(doc.kv.tokens)):
            time.sleep(0.1)
        # Asked again (nothing typed: the model answers), the large model now takes part.
        got = _complete(pair, text, doc=doc)
        assert got.metrics.fallback == "" and got.metrics.large_tokens == got.metrics.generated_tokens > 0
    finally:
        pair.close_workspace()
        pair.reconfigure(_config(decoding="speculative"))
