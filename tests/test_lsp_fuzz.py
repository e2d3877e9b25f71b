"""Fuzzing the real `nextab serve` over stdio (issue 10): random incremental edits checked
against the client's own copy of the text, garbage and malformed messages, random positions.

A few hundred cases run with the suite; `NEXTAB_FUZZ_EXAMPLES=5000 pytest -m fuzz` is the long
run. The shadow copy below follows the LSP spec on its own (line ends \\n, \\r\\n and \\r; UTF-16
columns; positions past a line's or the document's end clamped), so a server that got any of
it wrong drifts from it and `nextab/debugDocument` shows where.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.rawlsp import RawServer

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("NEXTAB_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ANSWER_S = 10.0  # every request is answered within this, or the client would hang

INVALID_PARAMS = -32602
_uris = itertools.count()


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[RawServer]:
    env = {**os.environ, "NEXTAB_BACKEND": "torch"}
    raw = RawServer.nextab("--model", str(tiny_model_dir), "--device", "cpu", env=env)
    capabilities = raw.initialize({"maxTokens": 4, "debounceMs": 0})["capabilities"]
    assert capabilities["experimental"]["nextab"]["debugDocument"] is True
    yield raw
    # It served every case: it must still shut down cleanly, not merely be alive.
    assert raw.process.poll() is None, raw.describe()
    assert raw.close() == 0, raw.describe()


def _uri(suffix: str = ".py") -> str:
    return f"file:///fuzz/doc{next(_uris)}{suffix}"


# --- the client's copy of a document, per the spec ----------------------------------------------

LINE_END = re.compile(r"\r\n|\r|\n")


def _utf16(c: str) -> int:
    return 2 if ord(c) > 0xFFFF else 1


def spec_offset(text: str, line: int, character: int) -> int:
    """Offset of an LSP position in `text` (UTF-16 columns), clamped as the spec asks for
    edits; a column inside a surrogate pair means the character's start."""
    starts = [0, *(m.end() for m in LINE_END.finditer(text))]
    if line >= len(starts):
        return len(text)
    start = starts[line]
    end = len(text) if line + 1 == len(starts) else starts[line + 1]
    content = LINE_END.sub("", text[start:end])
    units = 0
    for i, c in enumerate(content):
        if units + _utf16(c) > character:
            return start + i
        units += _utf16(c)
    return start + len(content)


@dataclass
class Shadow:
    text: str
    version: int

    def apply(self, change: dict[str, Any]) -> None:
        if "range" not in change:
            self.text = change["text"]
            return
        r = change["range"]
        start = spec_offset(self.text, r["start"]["line"], r["start"]["character"])
        end = max(start, spec_offset(self.text, r["end"]["line"], r["end"]["character"]))
        self.text = self.text[:start] + change["text"] + self.text[end:]


# --- strategies -----------------------------------------------------------------------------------

PIECES = [
    "a",
    "b",
    "x",
    " ",
    "\t",
    "(",
    ")",
    ":",
    "def f",
    "    ",
    "\n",
    "\r\n",
    "\r",
    "é",
    "中",
    "\U0001f600",
    "\U0001d11e",
    "\u200d",
    "\x00",
    "\ufeff",
]
texts = st.lists(st.sampled_from(PIECES), max_size=30).map("".join)
# Lone surrogates are valid JSON ("\ud800") though no editor sends them.
odd_texts = st.one_of(
    texts, st.text(max_size=12), st.sampled_from(["\ud800", "a\udfff", "\udbff\n"])
)
coordinates = st.one_of(st.integers(0, 8), st.integers(0, 200))
positions = st.fixed_dictionaries({"line": coordinates, "character": coordinates})
ranged = st.fixed_dictionaries(
    {"range": st.fixed_dictionaries({"start": positions, "end": positions}), "text": odd_texts}
)
changes = st.one_of(ranged, ranged, ranged, st.fixed_dictionaries({"text": texts}))


def _open(server: RawServer, uri: str, text: str, language: str = "python") -> None:
    server.notify(
        "textDocument/didOpen",
        {"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}},
    )


def _server_copy(server: RawServer, uri: str) -> dict[str, Any]:
    return server.result("nextab/debugDocument", {"textDocument": {"uri": uri}}, timeout=ANSWER_S)


# --- the text stays in step -----------------------------------------------------------------------


@FUZZ
@given(
    initial=texts,
    language=st.sampled_from(["python", "javascript", "c", "plaintext"]),
    steps=st.lists(
        st.tuples(st.lists(changes, min_size=1, max_size=3), st.integers(0, 9)), max_size=12
    ),
)
def test_the_server_text_equals_the_client_text_after_any_edits(
    server: RawServer, initial: str, language: str, steps: list[tuple[list[dict[str, Any]], int]]
) -> None:
    uri = _uri()
    shadow = Shadow(initial, 1)
    _open(server, uri, initial, language)
    for content_changes, roll in steps:
        # One didChange in ten repeats the current version: a replay, which must be ignored.
        version = shadow.version if roll == 0 else shadow.version + 1
        server.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": uri, "version": version}, "contentChanges": content_changes},
        )
        if version > shadow.version:
            for change in content_changes:
                shadow.apply(change)
            shadow.version = version
    copy = _server_copy(server, uri)
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    assert copy == {"text": shadow.text, "version": shadow.version}


def test_a_range_past_the_line_end_means_the_line_end(server: RawServer) -> None:
    # Hypothesis's first find: pygls's own copy of the document moved such a range's end in
    # place before nextab's handler saw it, deleting one character too few.
    uri = _uri()
    _open(server, uri, "ab\ncd")
    end = {"line": 0, "character": 9}
    server.notify(
        "textDocument/didChange",
        {
            "textDocument": {"uri": uri, "version": 2},
            "contentChanges": [
                {"range": {"start": {"line": 0, "character": 1}, "end": end}, "text": ""}
            ],
        },
    )
    assert _server_copy(server, uri) == {"text": "a\ncd", "version": 2}


def test_the_shadow_copy_follows_the_spec() -> None:
    # The reference itself, on the cases the spec spells out.
    text = "ab\r\ncd\ref\n😀x"
    assert spec_offset(text, 1, 1) == 5
    assert spec_offset(text, 0, 9) == 2  # past a CRLF line's end: before its \r
    assert spec_offset(text, 3, 1) == 10  # inside the surrogate pair: the emoji's start
    assert spec_offset(text, 3, 2) == 11
    assert spec_offset(text, 9, 0) == len(text)


# --- garbage --------------------------------------------------------------------------------------

# Everything the server registers, plus unknown ones; never exit/shutdown/initialize (they end
# or reset the session) or didChangeConfiguration (random valid settings could load a model).
METHODS = [
    "textDocument/didOpen",
    "textDocument/didChange",
    "textDocument/didClose",
    "textDocument/inlineCompletion",
    "textDocument/completion",
    "nextab/nextEdit",
    "nextab/status",
    "nextab/suggestionOutcome",
    "nextab/debugDocument",
    "$/cancelRequest",
    "$/setTrace",
    "workspace/didChangeWatchedFiles",
    "textDocument/hover",
    "no/such",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | odd_texts,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Params that look almost right: the right keys, values of the wrong type or out of range.
near_params = st.fixed_dictionaries(
    {
        "textDocument": st.one_of(
            st.fixed_dictionaries(
                {"uri": st.one_of(st.just("file:///fuzz/missing.py"), json_values)}
            ),
            json_values,
        ),
        "position": st.one_of(
            st.fixed_dictionaries({"line": json_values, "character": json_values}), json_values
        ),
        "contentChanges": st.lists(json_values, max_size=3),
        "context": st.one_of(st.fixed_dictionaries({"triggerKind": json_values}), json_values),
    }
)


@st.composite
def bad_messages(draw: st.DrawFn) -> tuple[bytes, Any]:
    """A message body and the id the server must answer (None: nothing to answer)."""
    kind = draw(st.sampled_from(["bytes", "json", "request", "notification"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64)), None
    if kind == "json":
        value = draw(json_values)
        return json.dumps(value).encode(), None
    method = draw(st.sampled_from(METHODS))
    params = draw(st.one_of(near_params, json_values))
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if kind == "notification":
        return json.dumps(message).encode(), None
    msg_id = f"bad-{next(_uris)}"
    message["id"] = msg_id
    return json.dumps(message).encode(), msg_id


@FUZZ
@given(messages=st.lists(bad_messages(), min_size=1, max_size=8))
def test_garbage_gets_answers_and_the_server_goes_on(
    server: RawServer, messages: list[tuple[bytes, Any]]
) -> None:
    waiting = []
    for body, msg_id in messages:
        if msg_id is not None:
            server.expect(msg_id)
            waiting.append(msg_id)
        server.send_bytes(body)
    for msg_id in waiting:
        response = server.wait(msg_id, timeout=ANSWER_S)  # every request answered
        assert "result" in response or "error" in response
    # Still serving, with its documents intact.
    uri = _uri()
    _open(server, uri, "x = 1\n")
    assert _server_copy(server, uri) == {"text": "x = 1\n", "version": 1}
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})


def test_malformed_messages_get_the_json_rpc_errors(server: RawServer) -> None:
    before = len(server.unmatched)
    server.send_bytes(b"{not json")
    server.send_bytes(b"[1, 2]")
    assert _server_copy_or_none(server) is None  # a round trip: the two answers came first
    codes = [m["error"]["code"] for m in server.unmatched[before:]]
    assert codes == [-32700, -32600]
    assert all(m["id"] is None for m in server.unmatched[before:])
    # Wrong param types on a known request: Invalid Params, not silence.
    uri = _uri()
    _open(server, uri, "def f():\n    return 1\n")
    response = server.request(
        "textDocument/inlineCompletion",
        {
            "textDocument": {"uri": uri},
            "position": {"line": "one", "character": 0},
            "context": {"triggerKind": 1},
        },
        timeout=ANSWER_S,
    )
    assert response["error"]["code"] == INVALID_PARAMS
    response = server.request(
        "nextab/debugDocument", {"textDocument": {"uri": 5}}, timeout=ANSWER_S
    )
    assert response["error"]["code"] == INVALID_PARAMS
    # After didClose the document is gone, and the server says so.
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    response = server.request(
        "nextab/debugDocument", {"textDocument": {"uri": uri}}, timeout=ANSWER_S
    )
    assert (
        response["error"]["code"] == INVALID_PARAMS and "not open" in response["error"]["message"]
    )


def _server_copy_or_none(server: RawServer) -> Any:
    response = server.request("nextab/debugDocument", {"textDocument": {"uri": "file:///none"}})
    return response.get("result")


# --- random positions -----------------------------------------------------------------------------

DOC = "import os\n\ndef greet(name):\n    # 😀 hi\n    return name\r\n\rend"
huge = st.one_of(st.integers(-3, 12), st.integers(2**31 - 2, 2**31 + 2), st.just(2**53))


@settings(
    max_examples=max(20, EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from(
        ["textDocument/inlineCompletion", "textDocument/completion", "nextab/nextEdit"]
    ),
    line=huge,
    character=huge,
)
def test_any_position_gets_a_suggestion_or_invalid_params(
    server: RawServer, method: str, line: int, character: int
) -> None:
    uri = _uri()
    _open(server, uri, DOC)
    params: dict[str, Any] = {
        "textDocument": {"uri": uri},
        "position": {"line": line, "character": character},
    }
    if method == "textDocument/inlineCompletion":
        params["context"] = {"triggerKind": 2}
    response = server.request(method, params, timeout=ANSWER_S)
    server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    lines = LINE_END.split(DOC)
    inside = 0 <= line < len(lines) and 0 <= character <= sum(_utf16(c) for c in lines[line])
    if inside:
        assert "result" in response, response
    else:
        assert response.get("error", {}).get("code") == INVALID_PARAMS, response
