"""Typed-ahead: the rest of a suggestion the developer is typing, served without the model."""

from __future__ import annotations

import pytest

from nextab.config import CompletionConfig, Config
from nextab.context.document import Document
from nextab.engine import CompletionRequest, Engine
from nextab.typeahead import Given, agrees, remainder, typed_since

TEXT = "def f(x):\n    return \n\nprint(f(2))\n"
CURSOR = TEXT.index("return ") + len("return ")


def given(insert: str = "x * 2", replace: int = 0) -> Given:
    return Given(TEXT, CURSOR, insert, replace, "line", "stop", None)


def typed(chars: str) -> tuple[str, int]:
    return TEXT[:CURSOR] + chars + TEXT[CURSOR:], CURSOR + len(chars)


@pytest.mark.parametrize(
    ("chars", "rest"),
    [("x", " * 2"), ("x ", "* 2"), ("x *", " 2"), ("y", None), ("x * 2", None), ("", None)],
)
def test_remainder_after_typing(chars: str, rest: str | None) -> None:
    assert remainder(given(), *typed(chars)) == rest


def test_a_whitespace_only_rest_goes_to_the_model() -> None:
    assert remainder(given("x\n"), *typed("x")) is None


def test_any_other_change_is_not_typing_ahead() -> None:
    text, offset = typed("x")
    assert remainder(given(), text, offset + 1) is None  # cursor moved on
    assert remainder(given(), text.replace("print", "paint"), offset) is None  # edit elsewhere
    assert remainder(given(), TEXT[: CURSOR - 1] + TEXT[CURSOR:], CURSOR - 1) is None  # backspace
    assert typed_since(TEXT, CURSOR, *typed("ab")) == "ab"


def test_agrees() -> None:
    assert agrees("x * 2", "x *")
    assert agrees("x", "x * ")  # not written that far yet
    assert not agrees("y + 1", "x")


@pytest.fixture(scope="module")
def lively(tiny_backend):
    """A tiny model whose greedy output varies, so that it suggests something to type."""
    from nextab.models.torch_backend import TorchBackend
    from tests.tiny import lively_model

    tokenizer = tiny_backend.tokenizer
    model = lively_model(len(tokenizer), tokenizer.eos_token_id, seed=1)
    return TorchBackend(model, tokenizer, "lively", "cpu")


def suggesting(engine: Engine, starts: list[str]) -> tuple[Document, object]:
    """A document the model suggests at least two characters for, at its end."""
    for start in starts:
        doc = Document("file:///a.py", start)
        first = engine.complete(CompletionRequest(doc, len(doc.text), doc.text))
        if len(first.text.rstrip()) >= 2 and first.text.strip():
            return doc, first
    raise AssertionError("the model suggested nothing to type for any start")


STARTS = [
    "def add(a, b):\n    return a + b\n\n\ndef main():\n    total = ",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = ",
    "for i in range(10):\n    print(",
    "import os\nimport sys\n\nif __name__ == ",
    "x = 1\ny = ",
]


class CountingBackend:
    """The tiny backend, counting forward passes."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.forwards = 0

    def forward(self, *args, **kwargs):
        self.forwards += 1
        return self.inner.forward(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_engine_serves_the_rest_without_a_model_call(lively) -> None:
    backend = CountingBackend(lively)
    engine = Engine(Config(completion=CompletionConfig(multiline="never")), backend)
    doc, first = suggesting(engine, STARTS)
    assert first.metrics.source == "model" and backend.forwards > 0
    text, offset = doc.text, len(doc.text)
    before = backend.forwards
    previous = doc.given
    for count in range(1, len(first.text.rstrip())):
        now = text + first.text[:count]
        # A new Document each time: what carries over is only the record of what was given.
        doc = Document("file:///a.py", now)
        doc.given = previous
        got = engine.complete(CompletionRequest(doc, offset + count, now))
        assert got.text == first.text[count:]
        assert got.replace == first.replace
        assert got.metrics.source == "typed-ahead"
        previous = doc.given
    assert backend.forwards == before  # the model was never asked
    # Typing something else goes back to the model.
    other = text + ("z" if first.text[0] != "z" else "y")
    doc = Document("file:///a.py", other)
    doc.given = previous
    got = engine.complete(CompletionRequest(doc, offset + 1, other))
    assert got.metrics.source == "model" and backend.forwards > before


def test_same_document_object_follows_the_typing(lively) -> None:
    engine = Engine(Config(completion=CompletionConfig(multiline="never")), lively)
    doc, first = suggesting(engine, STARTS)
    doc.apply_change(doc.text + first.text[0])
    got = engine.complete(CompletionRequest(doc, len(doc.text), doc.text))
    assert (got.metrics.source, got.text) == ("typed-ahead", first.text[1:])
    # Options other than the ones it was made under are answered by the model.
    doc.apply_change(doc.text)
    other = engine.complete(CompletionRequest(doc, len(doc.text), doc.text, max_tokens=3))
    assert other.metrics.source == "model"
