"""Two-model decoding through the engine: both models resident, a cache per model per document,
the large one caught up lazily, its caches bounded, and a large model that cannot load."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nextab.config import (
    AdaDecConfig,
    CompletionConfig,
    Config,
    EadConfig,
    PairConfig,
    SpeculativeConfig,
    load,
)
from nextab.context.document import Document
from nextab.engine import CompletionRequest, Engine
from nextab.models.decoding import GreedyDecoder
from nextab.models.speculative import SpeculativeDecoder
from nextab.models.torch_backend import TorchBackend

SOURCE = (
    "def area(w, h):\n    return w * h\n\n\n"
    "def volume(w, h, d):\n    return w * h * d\n\n\n"
    "def perimeter(w, h):\n    return "
)


@pytest.fixture(scope="module")
def models(tiny_backend):
    from tests.tiny import lively_model

    tokenizer = tiny_backend.tokenizer
    eos = tokenizer.eos_token_id
    small = TorchBackend(lively_model(len(tokenizer), eos, seed=2), tokenizer, "small", "cpu")
    large = TorchBackend(lively_model(len(tokenizer), eos, seed=1), tokenizer, "large", "cpu")
    return small, large


def _config(**extra) -> Config:
    # No catch-up limit unless a test sets one: a cold document is then the large model's to read.
    extra.setdefault("pair", PairConfig(catch_up_tokens=None))
    return Config(decoding="speculative", completion=CompletionConfig(middle_lines=0), **extra)


def _wait_for(condition, seconds: float = 30.0) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not condition():
        time.sleep(0.05)
    return condition()


def _ask(engine: Engine, doc: Document, text: str):
    # The engine reads the request's text; the document carries the caches.
    return engine.complete(CompletionRequest(doc, len(text), text, mode="block"))


def test_speculative_completions_are_the_large_models_greedy_ones(models) -> None:
    small, large = models
    paired = Engine(_config(), small, large=large)
    alone = Engine(Config(completion=CompletionConfig(middle_lines=0)), large)
    for text in (SOURCE, SOURCE + "2 * (w + h)\n\n\ndef "):
        got = _ask(paired, Document("file:///a.py", text), text)
        expected = _ask(alone, Document("file:///a.py", text), text)
        assert (got.text, got.stop_reason) == (expected.text, expected.stop_reason)
        assert got.metrics.large_tokens == got.metrics.generated_tokens > 0
        assert got.metrics.fallback == "" and got.metrics.drafted_tokens > 0


def test_a_keystroke_costs_the_large_model_only_its_new_tokens(models) -> None:
    small, large = models
    engine = Engine(_config(), small, large=large)
    doc = Document("file:///a.py", SOURCE)
    first = _ask(engine, doc, SOURCE)
    assert first.metrics.prompt_tokens - first.metrics.reused_tokens == first.metrics.prompt_tokens
    typed = SOURCE + "2"
    second = _ask(engine, doc, typed)
    # The large model's cache held the prompt (and what it wrote after it): only the typed
    # character's token(s) and a re-run of the last one are new.
    assert second.metrics.prompt_tokens - second.metrics.reused_tokens <= 3
    assert doc.kv_large is not None and doc.kv is not None
    usage = engine.cache_usage()
    assert (usage["model"].documents, usage["model"].tokens) == (1, len(doc.kv.tokens))
    assert (usage["large"].documents, usage["large"].tokens) == (1, len(doc.kv_large.tokens))


def test_large_caches_are_kept_for_the_most_recent_documents_only(models) -> None:
    small, large = models
    engine = Engine(_config(pair=PairConfig(cached_documents=2)), small, large=large)
    docs = [Document(f"file:///{n}.py", SOURCE) for n in range(3)]
    for doc in docs:
        _ask(engine, doc, SOURCE)
    assert docs[0].kv_large is None and docs[1].kv_large is not None and docs[2].kv_large is not None
    assert docs[0].kv is not None  # the small model keeps its own count (cachedDocuments 4)
    engine.forget(docs[2])
    assert docs[2].kv_large is None and docs[2].kv is None


def test_a_cold_document_over_the_catch_up_limit_is_answered_by_the_small_model(models) -> None:
    small, large = models
    limited = Engine(_config(pair=PairConfig(catch_up_tokens=4)), small, large=large)
    alone = Engine(Config(completion=CompletionConfig(middle_lines=0)), small)
    got = _ask(limited, Document("file:///a.py", SOURCE), SOURCE)
    expected = _ask(alone, Document("file:///a.py", SOURCE), SOURCE)
    assert got.metrics.fallback == "catch-up" and got.metrics.large_tokens == 0
    assert got.text == expected.text


def test_the_large_model_catches_up_while_idle_and_then_takes_part(models) -> None:
    small, large = models
    engine = Engine(_config(pair=PairConfig(catch_up_tokens=4)), small, large=large)
    expected = _ask(Engine(Config(completion=CompletionConfig(middle_lines=0)), large), Document("file:///b.py", SOURCE), SOURCE)
    doc = Document("file:///a.py", SOURCE)
    try:
        first = _ask(engine, doc, SOURCE)
        assert first.metrics.fallback == "catch-up"
        # The model idle, the large model reads what the small one holds, in the background.
        assert _wait_for(lambda: doc.kv_large is not None and list(doc.kv_large.tokens) == list(doc.kv.tokens))
        second = _ask(engine, doc, SOURCE)
        assert second.metrics.fallback == "" and second.metrics.large_tokens == second.metrics.generated_tokens
        # Within the 4-token limit now: the caught-up cache held all but the last token.
        assert second.text == expected.text
    finally:
        engine.close_workspace()


def test_a_request_takes_the_model_from_the_large_models_catch_up(models) -> None:
    small, large = models
    engine = Engine(_config(pair=PairConfig(catch_up_tokens=4)), small, large=large)
    doc = Document("file:///a.py", SOURCE)
    try:
        _ask(engine, doc, SOURCE)
        engine._behind.clear()  # the background thread leaves this document to the test
        engine._waiting += 1  # as a request does the moment it arrives
        with engine._lock:
            assert not engine._catch_up_large(doc, tuple(doc.kv.tokens))
        engine._waiting -= 1
        with engine._lock:
            assert engine._catch_up_large(doc, tuple(doc.kv.tokens))
        assert list(doc.kv_large.tokens) == list(doc.kv.tokens)
    finally:
        engine.close_workspace()


def test_greedy_requests_leave_the_large_model_alone(models) -> None:
    small, large = models
    engine = Engine(Config(completion=CompletionConfig(middle_lines=0)), small, large=large)
    doc = Document("file:///a.py", SOURCE)
    result = _ask(engine, doc, SOURCE)
    assert result.metrics.large_tokens == 0 and result.metrics.fallback == ""
    assert doc.kv_large is None


def test_a_large_model_that_cannot_load_leaves_the_small_one_serving(models) -> None:
    small, _ = models
    engine = Engine(_config(), small)
    assert engine.load_large("/nonexistent/model") is None
    notices = engine.take_notices()
    assert len(notices) == 1 and "largeModel '/nonexistent/model' cannot be used" in notices[0]
    result = _ask(engine, Document("file:///a.py", SOURCE), SOURCE)
    assert result.metrics.fallback == "no-large" and result.text == _ask(
        Engine(Config(completion=CompletionConfig(middle_lines=0)), small), Document("file:///b.py", SOURCE), SOURCE
    ).text


def test_reconfiguring_away_from_two_models_lets_the_large_one_go(models) -> None:
    small, large = models
    engine = Engine(_config(), small, large=large)
    doc = Document("file:///a.py", SOURCE)
    _ask(engine, doc, SOURCE)
    assert doc.kv_large is not None
    engine.reconfigure(Config(max_tokens=5, completion=CompletionConfig(middle_lines=0)))
    assert engine.large is None and doc.kv_large is None
    assert engine.config.max_tokens == 5 and type(engine.decoder) is GreedyDecoder


def test_reconfiguring_into_two_models_loads_the_large_one(tiny_backend, tiny_model_dir) -> None:
    engine = Engine(Config(completion=CompletionConfig(middle_lines=0)), tiny_backend)
    engine.reconfigure(_config(large_model=str(tiny_model_dir)))
    assert engine.large is not None and engine.large_path is not None
    assert isinstance(engine.decoder, SpeculativeDecoder)
    result = _ask(engine, Document("file:///a.py", SOURCE), SOURCE)
    assert result.metrics.fallback == "" and result.metrics.large_tokens == result.metrics.generated_tokens


def test_a_large_model_loaded_off_the_model_thread_is_attached_once_wanted(models) -> None:
    small, large = models
    spec = "the/large-one"  # loaded by the caller (the server's loader thread), here: given
    engine = Engine(Config(completion=CompletionConfig(middle_lines=0)), small)
    engine.reconfigure(_config(large_model=spec), load_large=False)
    assert engine.large is None and engine.wants_large() == spec
    # Meanwhile the small model answers alone.
    doc = Document("file:///a.py", SOURCE)
    assert _ask(engine, doc, SOURCE).metrics.fallback == "no-large"
    assert not engine.attach_large("another/model", large) and engine.large is None
    try:
        assert engine.attach_large(spec, large) and engine.wants_large() is None
        # Once attached, it reads the document the small model has been serving, while idle.
        assert _wait_for(lambda: doc.kv_large is not None and list(doc.kv_large.tokens) == list(doc.kv.tokens))
    finally:
        engine.close_workspace()
    got = _ask(engine, Document("file:///b.py", SOURCE), SOURCE)
    assert got.metrics.fallback == "" and got.metrics.large_tokens == got.metrics.generated_tokens > 0
    # Settings that moved on to greedy decoding do not take a large model that arrives late.
    engine.reconfigure(Config(completion=CompletionConfig(middle_lines=0)))
    assert engine.large is None and not engine.attach_large(spec, large) and engine.large is None


def test_two_model_settings() -> None:
    config, errors = load({"decoding": "speculative", "speculative": {"maxDraft": 4}, "pair": {"catchUpTokens": None}})
    assert errors == [] and config.needs_large and config.speculative.max_draft == 4
    assert config.pair.catch_up_tokens is None and config.large_model == "qwen2.5-coder-1.5b"
    config, errors = load({"pair": {"catchUpTokens": 64}, "largeModel": ""})
    assert errors == [] and config.pair.catch_up_tokens == 64 and not config.needs_large
    config, errors = load({"speculative": {"stopThreshold": 1.5, "maxDraft": 40}})
    assert config.speculative == SpeculativeConfig()
    assert len(errors) == 2
    assert "'speculative.stopThreshold'" in errors[0] and "between 0 and 1" in errors[0] and "0.3" in errors[0]
    assert "'speculative.maxDraft'" in errors[1] and "from 0 to 32" in errors[1]
    config, errors = load({"decoding": "speculative"})
    assert config.needs_large and not load({"decoding": "greedy"})[0].needs_large


def test_ead_through_the_engine_spans_the_two_models(models, caplog) -> None:
    small, large = models
    alone = {
        name: _ask(Engine(Config(completion=CompletionConfig(middle_lines=0)), backend), Document("file:///a.py", SOURCE), SOURCE)
        for name, backend in (("small", small), ("large", large))
    }
    for threshold, like in ((0.0, "large"), (None, "small")):
        config = _config(ead=EadConfig(threshold=threshold))
        engine = Engine(replace(config, decoding="ead"), small, large=large)
        got = _ask(engine, Document("file:///a.py", SOURCE), SOURCE)
        assert got.text == alone[like].text
        assert got.metrics.large_tokens == (got.metrics.generated_tokens if like == "large" else 0)
    assert "EAD has no entropy threshold" in caplog.text


def test_adadec_with_the_large_model_as_judge_through_the_engine(models) -> None:
    small, large = models
    config = Config(
        decoding="adadec", adadec=AdaDecConfig(threshold=0.0, scorer="large"), completion=CompletionConfig(middle_lines=0),
        pair=PairConfig(catch_up_tokens=None),
    )
    assert config.needs_large and not replace(config, adadec=AdaDecConfig(threshold=0.0)).needs_large
    doc = Document("file:///a.py", SOURCE)
    got = _ask(Engine(config, small, large=large), doc, SOURCE)
    assert got.metrics.paused_steps > 0 and got.metrics.large_tokens == got.metrics.paused_steps
    assert doc.kv_large is not None and got.metrics.fallback == ""
