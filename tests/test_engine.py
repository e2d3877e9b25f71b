"""nextab/engine.py: a completion request in, a suggestion out, with per-document KV reuse."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pytest

from nextab.config import CompletionConfig, Config
from nextab.context.document import Document
from nextab.engine import CompletionRequest, Engine, Suggestion
from nextab.models.backend import common_prefix_length
from nextab.models.decoding import Cancelled, CancelToken
from nextab.models.fim import QWEN, FimInput, NoFimTemplateError, render
from tests.tiny import build_model_dir

SOURCE = (
    "import os\n\n\n"
    "def add(a, b):\n"
    "    return a + b\n\n\n"
    "def main():\n"
    "    total = add(1, 2)\n"
    "    print(tot\n"
    "\n"
    "main()\n"
)
CURSOR = SOURCE.index("tot\n") + 3  # after "print(tot"


def request(doc: Document, offset: int | None = None, **kwargs) -> CompletionRequest:
    return CompletionRequest(
        document=doc,
        offset=CURSOR if offset is None else offset,
        text=doc.text,
        **kwargs,
    )


def expected_prompt(backend, text: str, offset: int, path: str | None = None) -> list[int]:
    # Short documents fit the default window whole; CLASSIC splits the FIM at the cursor.
    return render(QWEN, backend, FimInput(text[:offset], text[offset:], path=path))


CLASSIC = Config(completion=CompletionConfig(middle_lines=0))


@pytest.fixture
def engine(tiny_backend):
    return Engine(CLASSIC, tiny_backend)


def test_split_layout_makes_a_keystroke_cost_a_few_tokens(tiny_backend):
    """With the FIM split on a line grid, typing appends to the prompt; at the cursor it does not."""
    costs = {}
    for name, config in {"split": Config(), "classic": CLASSIC}.items():
        engine = Engine(config, tiny_backend)
        doc = Document("file:///a.py", SOURCE)
        engine.complete(request(doc))
        doc.apply_change(SOURCE[:CURSOR] + "a" + SOURCE[CURSOR:])
        typed = engine.complete(CompletionRequest(document=doc, offset=CURSOR + 1, text=doc.text))
        costs[name] = typed.metrics.prompt_tokens - typed.metrics.reused_tokens
    suffix_tokens = len(tiny_backend.tokenize(SOURCE[CURSOR:]))
    assert costs["split"] <= 3
    assert costs["classic"] > suffix_tokens


def test_complete_returns_a_suggestion(engine, tiny_backend):
    doc = Document("file:///a.py", SOURCE)
    suggestion = engine.complete(request(doc))
    assert isinstance(suggestion, Suggestion)
    assert isinstance(suggestion.text, str)
    assert suggestion.mode == "line"  # mid-line
    assert suggestion.stop_reason in {"eos", "stop", "length"}
    assert suggestion.replace == 0
    m = suggestion.metrics
    assert m.prompt_tokens == len(expected_prompt(tiny_backend, SOURCE, CURSOR))
    assert m.reused_tokens == 0
    assert 0 <= m.generated_tokens <= Config().max_tokens
    assert m.total_ms >= m.prefill_ms >= 0
    # The document now holds the cache for this prompt.
    assert doc.kv is not None
    prompt = expected_prompt(tiny_backend, SOURCE, CURSOR)
    assert list(doc.kv.tokens[: len(prompt)]) == prompt


def test_second_identical_request_reuses_the_prompt(engine):
    doc = Document("file:///a.py", SOURCE)
    first = engine.complete(request(doc))
    second = engine.complete(request(doc))
    assert second.metrics.prompt_tokens == first.metrics.prompt_tokens
    assert second.metrics.reused_tokens >= second.metrics.prompt_tokens - 1
    assert second.text == first.text


def test_typing_one_character_reuses_most_of_the_prompt(engine, tiny_backend):
    doc = Document("file:///a.py", SOURCE)
    engine.complete(request(doc))
    old_prompt = expected_prompt(tiny_backend, SOURCE, CURSOR)
    doc.apply_change("a", _range_at(doc, CURSOR), version=1)
    assert doc.text == SOURCE[:CURSOR] + "a" + SOURCE[CURSOR:]
    new_prompt = expected_prompt(tiny_backend, doc.text, CURSOR + 1)
    second = engine.complete(request(doc, CURSOR + 1))
    m = second.metrics
    assert m.prompt_tokens == len(new_prompt)
    assert m.reused_tokens >= common_prefix_length(old_prompt, new_prompt)
    assert m.reused_tokens >= m.prompt_tokens // 2
    # Only the tokens from the edit point on were recomputed: about the suffix and a few more.
    suffix_tokens = len(tiny_backend.tokenize(SOURCE[CURSOR:])) + 2
    assert m.prompt_tokens - m.reused_tokens <= suffix_tokens + 4


def _range_at(doc: Document, offset: int):
    from nextab.context.document import Range

    pos = doc.position_at(offset)
    return Range(pos, pos)


def test_path_adds_a_header(engine, tiny_backend):
    doc = Document("file:///a.py", SOURCE)
    suggestion = engine.complete(request(doc, path="src/a.py"))
    prompt = expected_prompt(tiny_backend, SOURCE, CURSOR, path="src/a.py")
    assert suggestion.metrics.prompt_tokens == len(prompt)
    assert tiny_backend.special_token_id("<|file_sep|>") in prompt


def test_cached_documents_bound_evicts_the_least_recent(tiny_backend):
    engine = Engine(Config(cached_documents=2), tiny_backend)
    docs = [Document(f"file:///{i}.py", SOURCE) for i in range(4)]
    engine.complete(request(docs[0]))
    engine.complete(request(docs[1]))
    assert docs[0].kv is not None and docs[1].kv is not None
    engine.complete(request(docs[2]))
    assert docs[0].kv is None  # least recently used
    assert docs[1].kv is not None and docs[2].kv is not None
    # Using docs[1] again makes docs[2] the least recent one.
    engine.complete(request(docs[1]))
    engine.complete(request(docs[3]))
    assert docs[2].kv is None
    assert docs[1].kv is not None and docs[3].kv is not None
    # An evicted document starts cold again.
    again = engine.complete(request(docs[0]))
    assert again.metrics.reused_tokens == 0
    assert docs[1].kv is None


def test_forget_drops_the_cache(engine):
    doc = Document("file:///a.py", SOURCE)
    engine.complete(request(doc))
    assert doc.kv is not None
    engine.forget(doc)
    assert doc.kv is None
    assert engine.complete(request(doc)).metrics.reused_tokens == 0


def test_forget_an_unknown_document(engine):
    doc = Document("file:///never.py", "x")
    engine.forget(doc)
    assert doc.kv is None


@pytest.mark.parametrize("offset", [-1, len(SOURCE) + 1])
def test_offset_outside_the_text(engine, offset):
    doc = Document("file:///a.py", SOURCE)
    with pytest.raises(ValueError):
        engine.complete(request(doc, offset))


@pytest.mark.parametrize("offset", [0, len(SOURCE)])
def test_offset_at_the_edges(engine, offset):
    doc = Document("file:///a.py", SOURCE)
    assert isinstance(engine.complete(request(doc, offset)), Suggestion)


def test_empty_document(engine):
    doc = Document("file:///a.py", "")
    assert isinstance(engine.complete(request(doc, 0)), Suggestion)


def test_cancelled_token_raises(engine):
    doc = Document("file:///a.py", SOURCE)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        engine.complete(request(doc), token)


def test_model_without_fim_tokens(tmp_path):
    from nextab.models.torch_backend import TorchBackend

    path = build_model_dir(tmp_path, specials=["<|endoftext|>"])
    backend = TorchBackend.load(path, "plain", device="cpu", dtype="float32")
    with pytest.raises(NoFimTemplateError):
        Engine(Config(), backend)


@pytest.mark.parametrize(
    ("requested", "multiline", "expected"),
    [
        ("auto", "auto", "block"),
        ("line", "auto", "line"),
        ("auto", "never", "line"),
        ("auto", "always", "block"),
        ("block", "never", "block"),
    ],
)
def test_mode_selection(tiny_backend, requested, multiline, expected):
    text = "def f():\n    "
    config = Config(completion=CompletionConfig(multiline=multiline))
    engine = Engine(config, tiny_backend)
    doc = Document("file:///a.py", text)
    assert engine.complete(request(doc, len(text), mode=requested)).mode == expected


# --- a scripted backend: the real tokenizer, a model that types a given text ---------------


@dataclasses.dataclass
class ListCache:
    tokens: list[int] = dataclasses.field(default_factory=list)


class Scripted:
    """Backend whose model, after the prompt's <|fim_middle|>, emits `script` then eos."""

    def __init__(self, tiny, script: str) -> None:
        self.tiny = tiny
        self.info = tiny.info
        self.middle = tiny.special_token_id("<|fim_middle|>")
        eos = min(tiny.info.eos_token_ids)
        self.script = [*tiny.tokenize(script), eos]
        self.forwards = 0

    def tokenize(self, text: str) -> list[int]:
        return self.tiny.tokenize(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tiny.detokenize(ids)

    def special_token_id(self, token: str) -> int | None:
        return self.tiny.special_token_id(token)

    def new_cache(self) -> ListCache:
        return ListCache()

    def truncate(self, cache: ListCache, length: int) -> None:
        del cache.tokens[max(length, 0) :]

    def forward(self, cache: ListCache, tokens: Sequence[int], every: bool = False) -> np.ndarray:
        self.forwards += 1
        start = len(cache.tokens)
        cache.tokens.extend(tokens)
        ends = range(start + 1, len(cache.tokens) + 1) if every else [len(cache.tokens)]
        rows = [self._after(cache.tokens[:end]) for end in ends]  # logits after each token
        return np.stack(rows) if every else rows[-1]

    def _after(self, tokens: Sequence[int]) -> np.ndarray:
        logits = np.zeros(self.info.vocab_size, dtype=np.float32)
        if self.middle in tokens:
            last_middle = len(tokens) - 1 - list(tokens)[::-1].index(self.middle)
            step = len(tokens) - 1 - last_middle
            logits[self.script[min(step, len(self.script) - 1)]] = 1.0
        return logits


def complete_with(
    tiny, script: str, text: str, offset: int, uri: str = "file:///a.py", **kwargs
) -> Suggestion:
    # The script starts right after <|fim_middle|>: the classic layout puts the cursor there.
    engine = Engine(dataclasses.replace(CLASSIC, **kwargs), Scripted(tiny, script))
    doc = Document(uri, text)
    return engine.complete(CompletionRequest(document=doc, offset=offset, text=text))


def test_line_completion_stops_at_the_newline(tiny_backend):
    text = "x = \n"
    s = complete_with(tiny_backend, "compute(1)\ny = 2\n", text, 4)
    assert (s.text, s.replace, s.mode, s.stop_reason) == ("compute(1)", 0, "line", "stop")


def test_line_completion_ending_with_eos(tiny_backend):
    s = complete_with(tiny_backend, "compute(1)", "x = ", 4)
    assert (s.text, s.stop_reason) == ("compute(1)", "eos")
    assert s.metrics.generated_tokens == len(tiny_backend.tokenize("compute(1)"))


def test_auto_closed_bracket_is_replaced(tiny_backend):
    text = "x = foo()\n"
    offset = text.index(")")  # the editor auto-closed the bracket: rest of line is ")"
    s = complete_with(tiny_backend, "a, b)\n", text, offset)
    assert (s.text, s.replace) == ("a, b)", 1)


def test_unmatched_bracket_cut(tiny_backend):
    s = complete_with(tiny_backend, "foo(a))\n", "x = \n", 4)
    assert s.text == "foo(a)"


def test_whole_line_inserted_above_code(tiny_backend):
    text = "x = 1\nprint(x)\n"
    offset = text.index("print")
    s = complete_with(tiny_backend, "y = 2\nprint(x)\n", text, offset)
    assert s.mode == "line"
    assert s.text == "y = 2\n"  # a new line above "print(x)"


def test_block_inserted_above_code_ends_with_a_line_end(tiny_backend):
    # HumanEval's multi-line holes: the cursor at column 0 of the line after the hole. The
    # block is new lines above that code; without a final line end its last line would run
    # into the code, and the syntax check would cut the whole block away.
    text = 'def f(xs):\n    """Sum."""\n\n    return total\n'
    offset = text.index("    return")
    script = "    total = 0\n    for x in xs:\n        total += x\n    return total\n"

    def block(max_tokens: int | None = None) -> Suggestion:
        engine = Engine(CLASSIC, Scripted(tiny_backend, script))
        doc = Document("file:///a.py", text, "python")
        return engine.complete(CompletionRequest(doc, offset, text, mode="block", max_tokens=max_tokens))

    s = block()
    assert s.mode == "block" and s.stop_reason == "stop"
    assert s.text == "    total = 0\n    for x in xs:\n        total += x\n"
    # Cut short by the token limit: the whole lines before the cut stay, as lines.
    s = block(max_tokens=14)
    assert s.stop_reason == "length"
    assert s.text.endswith("\n") and "    total = 0\n" in s.text and s.text.count("\n") >= 1
    filled = text[:offset] + s.text + text[offset:]
    compile(filled, "f.py", "exec")


def test_block_cut_by_the_token_limit_ends_with_its_last_whole_line(tiny_backend):
    text = "def fizzbuzz(n):\n    \n"
    offset = text.index("    \n") + 4
    script = 'for i in range(1, n + 1):\n        word = str(i)\n        print(word, "FizzBuzz")\n'
    engine = Engine(CLASSIC, Scripted(tiny_backend, script))
    doc = Document("file:///a.py", text, "python")
    whole = script.split("\n")
    shown = {}
    for limit in range(2, len(tiny_backend.tokenize(script)) - 1):
        s = engine.complete(CompletionRequest(doc, offset, text, mode="block", max_tokens=limit))
        assert s.stop_reason == "length"
        shown[limit] = s.text
        lines = s.text.split("\n")
        # Whole lines of the script, or (a header whose body was cut) nothing; never `print(`.
        assert s.text == "" or lines == whole[: len(lines)], (limit, s.text)
    assert any(t.count("\n") == 1 for t in shown.values())  # the `for` and its first line
    # The stop rules' own end is no cut: the last line stays.
    s = engine.complete(CompletionRequest(doc, offset, text, mode="block"))
    assert s.stop_reason != "length" and s.text == script.rstrip()


def test_block_completion_stops_at_the_dedent(tiny_backend):
    text = "def f(xs):\n    \n\nprint(f([1]))\n"
    offset = text.index("    \n") + 4
    script = "total = sum(xs)\n    return total\nprint(f([2]))\n"
    s = complete_with(tiny_backend, script, text, offset)
    assert s.mode == "block"
    assert s.stop_reason == "stop"
    assert s.text == "total = sum(xs)\n    return total"


def test_block_completion_respects_max_lines(tiny_backend):
    text = "def f():\n    "
    script = "".join(f"    a{i} = {i}\n" for i in range(10))[4:]
    s = complete_with(
        tiny_backend, script, text, len(text), completion=CompletionConfig(max_lines=3, middle_lines=0)
    )
    assert s.text == "a0 = 0\n    a1 = 1\n    a2 = 2"


def test_request_max_tokens_overrides_the_config(tiny_backend):
    text = "x = "
    engine = Engine(Config(max_tokens=50), Scripted(tiny_backend, "a + b + c + d + e + f"))
    doc = Document("file:///a.py", text)
    s = engine.complete(CompletionRequest(document=doc, offset=4, text=text, max_tokens=3))
    assert s.metrics.generated_tokens == 3
    assert s.stop_reason == "length"


def test_identical_request_after_a_generation_reuses_the_prompt(tiny_backend):
    # Here the cache also holds generated tokens after the prompt.
    engine = Engine(CLASSIC, Scripted(tiny_backend, "compute(1)\n"))
    doc = Document("file:///a.py", "x = \n")
    first = engine.complete(CompletionRequest(document=doc, offset=4, text=doc.text))
    assert len(doc.kv.tokens) > first.metrics.prompt_tokens
    second = engine.complete(CompletionRequest(document=doc, offset=4, text=doc.text))
    assert second.metrics.reused_tokens == second.metrics.prompt_tokens - 1
    assert second.text == first.text == "compute(1)"


def test_block_completion_ending_with_eos_after_a_dedent(tiny_backend):
    text = "def f(xs):\n    \n"
    offset = text.index("    \n") + 4
    s = complete_with(tiny_backend, "return sum(xs)\nprint(f([1]))", text, offset)
    assert s.mode == "block"
    assert s.stop_reason == "eos"
    assert s.text == "return sum(xs)"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        # .py has a tree-sitter grammar: the second line would leave an unclosed "(".
        ("file:///a.py", "total = sum(xs)"),
        # Plain text has no tree, so nothing is syntax-checked.
        ("file:///notes.txt", "total = sum(xs)\n    return max(total,"),
    ],
)
def test_block_cut_before_a_line_that_breaks_the_syntax(tiny_backend, uri, expected):
    text = "def f(xs):\n    \n\nprint(f([1]))\n"
    offset = text.index("    \n") + 4
    script = "total = sum(xs)\n    return max(total,\nprint(2)\n"
    s = complete_with(tiny_backend, script, text, offset, uri=uri)
    assert s.mode == "block"
    assert s.text == expected


def test_the_decoder_learns_which_endings_the_editor_would_not_get(tiny_backend):
    from nextab.models.decoding import DecodeResult

    class Spy:
        def decode(self, backend, cache, prompt, params, cancel, healing=None) -> DecodeResult:
            self.params = params
            return DecodeResult((), "", "eos", len(prompt), 0, 0.0, 0.0)

    spy = Spy()
    engine = Engine(CLASSIC, tiny_backend)
    engine.decoder = spy  # type: ignore[assignment]
    text = "def f(items):\n    total = 0\n    return total\n"
    doc = Document("file:///a.py", text, "python")
    engine.complete(CompletionRequest(doc, text.index("    total"), text))
    viable = spy.params.viable
    assert viable("    items = list(items)", "stop")
    assert not viable("    if not items:", "stop")  # a block opener with no body: the syntax check cuts it
    assert not viable("    total = 0", "stop")  # only repeats the line below: the stop rules drop it
    assert not viable("   ", "eos")


def test_warming_precomputes_the_prompt_while_idle(tiny_backend):
    import time

    engine = Engine(Config(), tiny_backend)
    doc = Document("file:///a.py", SOURCE)
    built = engine.prompt_for(request(doc))
    try:
        engine.warm(doc, CURSOR)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (doc.kv is None or len(doc.kv.tokens) < len(built.ids)):
            time.sleep(0.05)
        assert doc.kv is not None and list(doc.kv.tokens) == list(built.ids)
        suggestion = engine.complete(request(doc))
        # Only the one token whose logits a cache does not keep is computed again.
        assert suggestion.metrics.reused_tokens == suggestion.metrics.prompt_tokens - 1
    finally:
        engine.close_workspace()  # stops the background thread


class FailingBackend:
    """The tiny backend, whose forward raises `error` on its `fail_at`-th call from now."""

    def __init__(self, backend, error: Exception) -> None:
        self._backend = backend
        self.error = error
        self.fail_at: int | None = None
        self.calls = 0
        self.released = 0

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def forward(self, cache, tokens, every=False):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            # Part-way, as a real failure can be: the cache already holds the new keys.
            self._backend.forward(cache, tokens, every)
            raise self.error
        return self._backend.forward(cache, tokens, every)

    def release_memory(self) -> None:
        self.released += 1


def test_a_failed_generation_fails_cleanly_and_the_next_request_works(tiny_backend):
    failing = FailingBackend(tiny_backend, RuntimeError("kernel failure"))
    engine = Engine(CLASSIC, failing)
    doc = Document("file:///a.py", SOURCE)
    first = engine.complete(request(doc))
    failing.calls, failing.fail_at = 0, 1  # the next request's first forward, after its keys
    edited = "# edited\n" + SOURCE
    doc.apply_change(edited)
    typed = CompletionRequest(document=doc, offset=CURSOR + 9, text=edited)
    with pytest.raises(RuntimeError, match="kernel failure"):
        engine.complete(typed)
    assert failing.calls == 1 and doc.kv is None  # what the failed step left in it is gone
    failing.fail_at = None
    again = engine.complete(typed)
    fresh = Engine(CLASSIC, tiny_backend).complete(
        CompletionRequest(document=Document("file:///a.py", edited), offset=CURSOR + 9, text=edited)
    )
    assert again.text == fresh.text and first.text is not None


def test_out_of_memory_drops_every_cache_and_tries_once_more(tiny_backend, caplog):
    class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError, by name
        pass

    failing = FailingBackend(tiny_backend, OutOfMemoryError("CUDA out of memory"))
    engine = Engine(CLASSIC, failing)
    other = Document("file:///other.py", SOURCE)
    engine.complete(request(other))
    assert other.kv is not None
    doc = Document("file:///a.py", SOURCE)
    failing.calls, failing.fail_at = 0, 1
    suggestion = engine.complete(request(doc))
    assert suggestion.text == Engine(CLASSIC, tiny_backend).complete(
        request(Document("file:///a.py", SOURCE))
    ).text
    assert other.kv is None and failing.released == 1
    assert [r.levelname for r in caplog.records if "out of memory" in r.getMessage()] == ["WARNING"]
    # Out of memory twice in a row: the request fails, the engine goes on.
    failing.calls, failing.fail_at = 0, None
    failing.forward = lambda cache, tokens, every=False: (_ for _ in ()).throw(OutOfMemoryError("again"))
    with pytest.raises(OutOfMemoryError):
        engine.complete(request(Document("file:///b.py", SOURCE)))


def test_an_elision_mark_copied_from_the_material_ends_the_suggestion(tiny_backend, tmp_path):
    # Material marks where it cut a file (`# …`); a model that writes the mark is ending the
    # code it copied, and the editor must not insert the mark.
    (tmp_path / "lib.py").write_text("def helper(x):\n    return x * 2\n")
    text = "from lib import helper\n\n\ndef run():\n    \n"
    offset = text.index("    \n") + 4
    engine = Engine(CLASSIC, Scripted(tiny_backend, "value = helper(1)\n    # …\n    return value\n"))
    workspace = engine.open_workspace(tmp_path, store_dir=None)
    try:
        assert workspace.index.wait_ready(timeout=30)
        doc = Document((tmp_path / "app.py").as_uri(), text)
        s = engine.complete(CompletionRequest(doc, offset, text, path=str(tmp_path / "app.py")))
    finally:
        engine.close_workspace()
    assert s.metrics.context_tokens > 0
    assert s.text.rstrip() == "value = helper(1)"
