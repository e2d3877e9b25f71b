"""`nextab serve` as a subprocess, driven by a real LSP client (pygls's) over stdio."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.client import LanguageClient

URI = "file:///work/example.py"
TEXT = "import os\n\n\ndef greet(name):\n    # say hi 😀😀\n    return \n"


class Client(LanguageClient):
    def __init__(self) -> None:
        super().__init__("nextab-test-client", "1")
        self.messages: list[types.ShowMessageParams] = []
        self.logs: list[str] = []


async def _start(
    model_dir: Path, options: dict[str, Any], env: dict[str, str] | None = None, process_id: int | None = None
) -> Client:
    client = Client()

    @client.feature(types.WINDOW_SHOW_MESSAGE)
    def show_message(ls: Client, params: types.ShowMessageParams) -> None:
        ls.messages.append(params)

    @client.feature(types.WINDOW_LOG_MESSAGE)
    def log_message(ls: Client, params: types.LogMessageParams) -> None:
        ls.logs.append(params.message)

    await client.start_io(
        sys.executable, "-m", "nextab", "serve", "--model", str(model_dir), "--device", "cpu",
        env={**os.environ, **(env or {})},
    )
    result = await client.initialize_async(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(),
            initialization_options=options,
            process_id=process_id,
        )
    )
    client.server_info = result
    client.initialized(types.InitializedParams())
    return client


@pytest_asyncio.fixture
async def client(tiny_model_dir: Path) -> AsyncIterator[Client]:
    c = await _start(tiny_model_dir, {"maxTokens": 8, "maxLines": 3, "bogusKey": 1, "decoding": "nope"})
    yield c
    if not c.stopped:
        await c.shutdown_async(None)
        c.exit(None)
        await c.stop()


def _open(client: Client, text: str = TEXT, uri: str = URI) -> None:
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)
        )
    )


def _inline(line: int, character: int, uri: str = URI) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri),
        position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )


async def test_capabilities_and_completion(client: Client) -> None:
    caps = client.server_info.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    sync = caps.text_document_sync
    assert sync.change == types.TextDocumentSyncKind.Incremental

    _open(client)
    result = await client.text_document_inline_completion_async(_inline(5, 11))
    assert isinstance(result, types.InlineCompletionList)
    for item in result.items:
        assert item.range.start == types.Position(5, 11)
        assert isinstance(item.insert_text, str) and item.insert_text

    completion = await client.text_document_completion_async(
        types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(5, 11)
        )
    )
    assert isinstance(completion, types.CompletionList) and completion.is_incomplete


async def test_invalid_settings_are_reported_once_each(client: Client) -> None:
    for _ in range(50):
        if len(client.messages) >= 3:
            break
        await asyncio.sleep(0.1)
    texts = [m.message for m in client.messages]
    assert any("'decoding'" in t and "greedy" in t for t in texts), texts
    assert any("bogusKey" in t for t in texts), texts
    assert any("maxLines" in t for t in texts), texts  # belongs under "completion"
    assert len(texts) == 3, texts


async def test_incremental_changes_with_utf16_positions(client: Client) -> None:
    _open(client)
    col_hi = "    # say hi ".index("hi")  # "hi" comes before the emoji: same column in any encoding
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(types.Position(4, col_hi), types.Position(4, col_hi + 2)),
                    text="hello",
                ),
                # Delete the first emoji: two UTF-16 units. A server counting code points would
                # delete both emoji and leave a line two units shorter.
                types.TextDocumentContentChangePartial(
                    range=types.Range(types.Position(4, 16), types.Position(4, 18)), text=""
                ),
            ],
        )
    )
    # Now "    # say hello 😀": 18 UTF-16 units. A position past the end is refused with
    # InvalidParams, not a crash, and the server keeps serving.
    for past_end in (19, 40):
        with pytest.raises(JsonRpcException) as refused:
            await client.text_document_inline_completion_async(_inline(4, past_end))
        assert refused.value.code == types.ErrorCodes.InvalidParams
    result = await client.text_document_inline_completion_async(_inline(4, 18))
    assert isinstance(result, types.InlineCompletionList)
    for item in result.items:
        assert item.range.start == types.Position(4, 18)


async def test_unknown_document_is_invalid_params(client: Client) -> None:
    with pytest.raises(JsonRpcException) as refused:
        await client.text_document_inline_completion_async(_inline(0, 0, uri="file:///nope.py"))
    assert refused.value.code == types.ErrorCodes.InvalidParams


async def test_cancel_request_and_supersede(client: Client) -> None:
    _open(client)
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"nextab": {"debounceMs": 3000}})
    )
    # $/cancelRequest while the request is waiting: the server answers RequestCancelled.
    pending = client.protocol.send_request_async(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, _inline(5, 11), msg_id="cancel-me"
    )
    await asyncio.sleep(0.3)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcException) as cancelled:
        await asyncio.wait_for(pending, 2)
    assert cancelled.value.code == types.LSPErrorCodes.RequestCancelled

    # A newer request for the same document supersedes the older one, which returns nothing.
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"nextab": {"debounceMs": 300}})
    )
    first = asyncio.ensure_future(client.text_document_inline_completion_async(_inline(5, 11)))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(client.text_document_inline_completion_async(_inline(5, 11)))
    assert await asyncio.wait_for(first, 10) is None
    assert isinstance(await asyncio.wait_for(second, 10), types.InlineCompletionList)


async def test_a_superseded_generation_stops_and_the_server_counts_how_fast(tiny_model_dir: Path) -> None:
    c = await _start(tiny_model_dir, {"maxTokens": 2000, "maxLines": 200, "debounceMs": 0})
    try:
        for _ in range(300):  # the model loaded, so that the first request decodes at once
            if _get(await c.protocol.send_request_async("nextab/status", None), "state") == "ready":
                break
            await asyncio.sleep(0.1)
        _open(c)
        first = asyncio.ensure_future(c.text_document_inline_completion_async(_inline(5, 11)))
        await asyncio.sleep(0.5)  # decoding by now: 2,000 tokens take the tiny model seconds
        second = asyncio.ensure_future(c.text_document_inline_completion_async(_inline(5, 11)))
        assert await asyncio.wait_for(first, 30) is None
        await asyncio.wait_for(second, 60)
        status = await c.protocol.send_request_async("nextab/status", None)
        stops = _get(status, "cancelStopMs")
        assert _get(stops, "n") == 1 and _get(stops, "p50") >= 0
    finally:
        await c.shutdown_async(None)
        c.exit(None)
        await c.stop()


async def test_shutdown_and_exit(tiny_model_dir: Path) -> None:
    c = await _start(tiny_model_dir, {})
    _open(c)
    await c.text_document_inline_completion_async(_inline(5, 11))
    await c.shutdown_async(None)
    c.exit(None)
    process = c._server
    assert process is not None
    code = await asyncio.wait_for(process.wait(), 10)
    assert code == 0
    await c.stop()


@pytest.mark.skipif(os.name != "posix", reason="the editor's process is watched on POSIX")
async def test_the_server_exits_when_the_editor_process_is_gone(tiny_model_dir: Path) -> None:
    editor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        c = await _start(tiny_model_dir, {}, process_id=editor.pid)
        _open(c)
        assert await c.text_document_inline_completion_async(_inline(5, 11)) is not None
        # An editor killed outright: no shutdown, no exit, and (here) stdin left open.
        editor.kill()
        editor.wait()
        process = c._server
        assert process is not None
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        editor.kill()
    await c.stop()


async def test_missing_model_is_reported_and_server_keeps_serving(tmp_path: Path) -> None:
    c = await _start(tmp_path / "no-such-model", {})
    _open(c)
    result = await c.text_document_inline_completion_async(_inline(5, 11))
    assert result is None
    errors = [m for m in c.messages if m.type == types.MessageType.Error]
    assert len(errors) == 1 and "no-such-model" in errors[0].message
    await c.shutdown_async(None)
    c.exit(None)
    await c.stop()


async def test_workspace_is_indexed_with_progress_and_edits_persist(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "geometry.py").write_text("def area(r):\n    return 3.14 * r * r\n")
    app = root / "app.py"
    app.write_text("from pkg.geometry import area\n\nx = \n")
    cache = tmp_path / "cache"

    client = Client()
    progress: list[object] = []
    created: list[object] = []

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def create(ls: Client, params: types.WorkDoneProgressCreateParams) -> None:
        created.append(params.token)

    @client.feature(types.PROGRESS)
    def on_progress(ls: Client, params: types.ProgressParams) -> None:
        progress.append(params.value)

    env = {**os.environ, "NEXTAB_CACHE_DIR": str(cache)}
    await client.start_io(
        sys.executable, "-m", "nextab", "serve", "--model", str(tiny_model_dir), "--device", "cpu",
        env=env,
    )
    await client.initialize_async(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(
                window=types.WindowClientCapabilities(work_done_progress=True)
            ),
            root_uri=root.as_uri(),
            workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name="project")],
            initialization_options={"maxTokens": 4, "context": {"strategy": "full"}},
            process_id=None,
        )
    )
    client.initialized(types.InitializedParams())
    try:
        for _ in range(300):
            if any(isinstance(p, dict) and p.get("kind") == "end" for p in progress):
                break
            await asyncio.sleep(0.1)
        kinds = [p.get("kind") for p in progress if isinstance(p, dict)]
        assert created and kinds[0] == "begin" and kinds[-1] == "end", progress

        uri = app.as_uri()
        text = app.read_text()
        _open(client, text, uri)
        client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
                content_changes=[
                    types.TextDocumentContentChangePartial(
                        range=types.Range(types.Position(2, 4), types.Position(2, 4)),
                        text="area(2)\n",
                    )
                ],
            )
        )
        result = await client.text_document_inline_completion_async(_inline(3, 0, uri))
        assert isinstance(result, types.InlineCompletionList)
    finally:
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()
    # The edit history outlives the server, in the cache folder the environment names.
    stores = list((cache / "workspaces").glob("project-*/history.msgpack"))
    assert len(stores) == 1
    assert b"area(2)" in stores[0].read_bytes()


async def test_an_empty_folder_is_indexed_at_once(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Nothing to index is finished, not "indexing" forever in the editor's status line.
    root = tmp_path / "empty"
    root.mkdir()
    client = Client()
    progress: list[object] = []

    @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
    def create(ls: Client, params: types.WorkDoneProgressCreateParams) -> None:
        return None

    @client.feature(types.PROGRESS)
    def on_progress(ls: Client, params: types.ProgressParams) -> None:
        progress.append(params.value)

    await client.start_io(
        sys.executable, "-m", "nextab", "serve", "--model", str(tiny_model_dir), "--device", "cpu",
        env={**os.environ, "NEXTAB_CACHE_DIR": str(tmp_path / "cache")},
    )
    await client.initialize_async(
        types.InitializeParams(
            capabilities=types.ClientCapabilities(
                window=types.WindowClientCapabilities(work_done_progress=True)
            ),
            root_uri=root.as_uri(),
            initialization_options={"maxTokens": 4},
            process_id=None,
        )
    )
    client.initialized(types.InitializedParams())
    try:
        indexing = None
        for _ in range(300):
            indexing = _get(await client.protocol.send_request_async("nextab/status", None), "indexing")
            if indexing is not None and _get(indexing, "finished"):
                break
            await asyncio.sleep(0.1)
        assert indexing is not None and _get(indexing, "finished"), indexing
        assert _get(indexing, "total") == 0
        for _ in range(50):
            if any(isinstance(p, dict) and p.get("kind") == "end" for p in progress):
                break
            await asyncio.sleep(0.1)
        assert [p.get("kind") for p in progress if isinstance(p, dict)][-1] == "end", progress
    finally:
        await client.shutdown_async(None)
        client.exit(None)
        await client.stop()


# --- next edit -----------------------------------------------------------------------------

SHOP = "def total(items):\n    count = 0\n    for item in items:\n        count += item.price\n    return count\n"


def _get(value: Any, *names: str) -> Any:
    """A field of a custom request's result, whichever way the client decoded the JSON."""
    for name in names:
        value = value[name] if isinstance(value, dict) else getattr(value, name)
    return value


def _rename_count(client: Client, uri: str) -> None:
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[
                types.TextDocumentContentChangePartial(
                    range=types.Range(types.Position(1, 4), types.Position(1, 9)), text="subtotal"
                )
            ],
        )
    )


async def test_next_edit_follows_a_rename(tiny_model_dir: Path) -> None:
    c = await _start(tiny_model_dir, {"nextEdit": {"modelLocations": 1, "extraTokens": 4}})
    try:
        assert _get(c.server_info.capabilities.experimental, "nextab", "nextEdit") is True
        uri = "file:///work/shop.py"
        _open(c, SHOP, uri)
        _rename_count(c, uri)
        result = await c.protocol.send_request_async(
            "nextab/nextEdit",
            {"textDocument": {"uri": uri}, "position": {"line": 1, "character": 12}},
        )
        suggestions = _get(result, "suggestions")
        renames = [s for s in suggestions if _get(s, "source") == "rename"]
        # The two other uses of `count`, nearest first, each as the minimal range edit.
        assert [(_get(s, "range", "start", "line"), _get(s, "range", "start", "character"),
                 _get(s, "range", "end", "character"), _get(s, "newText")) for s in renames] == [
            (3, 8, 13, "subtotal"),
            (4, 11, 16, "subtotal"),
        ]  # fmt: skip
        assert _get(suggestions[0], "source") == "rename"
        assert all(_get(s, "atCursor") is False for s in renames)

        # Bad input gets InvalidParams, and the server goes on serving.
        for bad in ({"textDocument": {}}, {"textDocument": {"uri": uri}, "position": {"line": -1, "character": 0}},
                    {"textDocument": {"uri": uri}, "position": {"line": 99, "character": 0}}):  # fmt: skip
            with pytest.raises(JsonRpcException) as refused:
                await c.protocol.send_request_async("nextab/nextEdit", bad)
            assert refused.value.code == types.ErrorCodes.InvalidParams
        again = await c.protocol.send_request_async("nextab/nextEdit", {"textDocument": {"uri": uri}})
        assert [_get(s, "newText") for s in _get(again, "suggestions")][:2] == ["subtotal", "subtotal"]
    finally:
        await c.shutdown_async(None)
        c.exit(None)
        await c.stop()


async def test_next_edit_is_pushed_after_a_pause_when_asked_for(tiny_model_dir: Path) -> None:
    c = await _start(
        tiny_model_dir, {"nextEdit": {"push": True, "pushDelayMs": 200, "modelStep": False}}
    )
    pushed: list[Any] = []

    @c.feature("nextab/nextEditSuggestion")
    def on_pushed(ls: Client, params: Any) -> None:
        pushed.append(params)

    try:
        assert _get(c.server_info.capabilities.experimental, "nextab", "nextEditPush") is True
        uri = "file:///work/shop.py"
        _open(c, SHOP, uri)
        _rename_count(c, uri)
        # Up to 30 s: on a loaded 2-core machine the model thread may be slow to get to it.
        for _ in range(300):
            if pushed:
                break
            await asyncio.sleep(0.1)
        assert pushed, "no suggestion was pushed"
        assert _get(pushed[0], "textDocument", "version") == 2
        assert [_get(s, "newText") for s in _get(pushed[0], "suggestions")] == ["subtotal", "subtotal"]
    finally:
        await c.shutdown_async(None)
        c.exit(None)
        await c.stop()


async def test_status_and_the_acceptance_log(tiny_model_dir: Path, tmp_path: Path) -> None:
    c = await _start(tiny_model_dir, {"maxTokens": 4}, env={"NEXTAB_CACHE_DIR": str(tmp_path)})
    try:
        flags = _get(c.server_info.capabilities.experimental, "nextab")
        assert _get(flags, "status") is True and _get(flags, "suggestionOutcome") is True
        _open(c)
        # A completion waits for the model: after it the status is "ready" with its latency.
        await c.text_document_inline_completion_async(_inline(5, 11))
        status = await c.protocol.send_request_async("nextab/status", None)
        assert _get(status, "state") == "ready" and _get(status, "version")
        assert _get(status, "model", "device") == "cpu" and _get(status, "lastLatencyMs") > 0
        assert _get(status, "lastSource") == "model"
        shown = {"textDocument": {"uri": URI}, "kind": "completion", "shownChars": 12}
        c.protocol.notify("nextab/suggestionOutcome", {**shown, "outcome": "accepted", "acceptedChars": 12, "latencyMs": 80})
        c.protocol.notify("nextab/suggestionOutcome", {**shown, "outcome": "partial", "acceptedChars": 5, "latencyMs": 120})
        c.protocol.notify("nextab/suggestionOutcome", {**shown, "outcome": "dismissed", "acceptedChars": 0})
        c.protocol.notify("nextab/suggestionOutcome", {**shown, "outcome": "loved", "acceptedChars": 0})  # bad: skipped
        await c.protocol.send_request_async("nextab/status", None)  # notifications before it are handled
    finally:
        await c.shutdown_async(None)
        c.exit(None)
        await c.stop()
    stats = subprocess.run(
        [sys.executable, "-m", "nextab", "stats", "--json"],
        env={**os.environ, "NEXTAB_CACHE_DIR": str(tmp_path)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    summary = json.loads(stats.stdout)
    python = summary["completion"]["by_language"]["python"]
    assert summary["outcomes"] == 3 and python["shown"] == 3
    assert (python["accepted"], python["partial"], python["chars_accepted"]) == (1, 1, 17)
    assert python["acceptance_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert python["latency_ms"] == {"p50": 100.0, "p95": 118.0}
    # The server's own time per stage for the suggestion the outcomes are about.
    stages = python["server_ms"]
    assert set(stages) == {"context", "wait", "prefill", "decode", "post", "total"}
    # Rounded to 0.1 ms: a tiny model's pre-fill of a warmed prompt may round to 0.
    assert stages["total"]["p50"] > 0 and stages["prefill"]["p50"] >= 0
    assert stages["decode"]["p50"] + stages["prefill"]["p50"] <= stages["total"]["p50"] + 0.2
    assert python["typed_ahead_share"] == 0.0
    text = subprocess.run(
        [sys.executable, "-m", "nextab", "stats"],
        env={**os.environ, "NEXTAB_CACHE_DIR": str(tmp_path)}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "server time per stage" in text and "prefill" in text


async def _status_when(client: Client, ready: Callable[[Any], bool]) -> Any:
    for _ in range(300):
        status = await client.protocol.send_request_async("nextab/status", None)
        if ready(status):
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"status never became as expected: {status}")


async def test_two_model_decoding_loads_the_large_model_and_lets_it_go(tiny_model_dir: Path) -> None:
    # No catch-up limit: the first request, on a document just opened, is the large model's too.
    options = {"decoding": "speculative", "largeModel": str(tiny_model_dir), "maxTokens": 8, "pair": {"catchUpTokens": None}}
    c = await _start(tiny_model_dir, options)
    try:
        # The large model loads beside the model thread, after the small one is ready.
        status = await _status_when(c, lambda s: _get(s, "state") == "ready" and _get(s, "largeModel") is not None)
        assert _get(status, "largeModel", "device") == "cpu" and _get(status, "largeModelLoading") is None
        _open(c)
        assert await c.text_document_inline_completion_async(_inline(5, 11)) is not None
        tokens = _get(await c.protocol.send_request_async("nextab/status", None), "tokens")
        # The tiny model paired with itself: the large model decided every token.
        assert _get(tokens, "generated") > 0 and _get(tokens, "large") == _get(tokens, "generated")
        memory = _get(await c.protocol.send_request_async("nextab/status", None), "memory")
        assert _get(memory, "rssMb") > 0
        for family in ("model", "large"):  # one document, its prompt in both models' caches
            assert _get(memory, "cached", family, "documents") == 1 and _get(memory, "cached", family, "tokens") > 10
        c.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"decoding": "greedy"}))
        status = await _status_when(c, lambda s: _get(s, "largeModel") is None)
        assert _get(status, "memory", "cached", "large", "documents") == 0
        assert await c.text_document_inline_completion_async(_inline(5, 11)) is not None
    finally:
        await c.shutdown_async(None)
        c.exit(None)
        await c.stop()


async def test_a_large_model_that_cannot_load_is_said_once_and_the_small_one_answers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    options = {"decoding": "ead", "largeModel": str(tmp_path / "missing"), "maxTokens": 4}
    c = await _start(tiny_model_dir, options)
    try:
        await _status_when(c, lambda s: _get(s, "state") == "ready" and _get(s, "largeModelLoading") is None)
        _open(c)
        assert await c.text_document_inline_completion_async(_inline(5, 11)) is not None
        status = await c.protocol.send_request_async("nextab/status", None)
        # Counted under a key a client can read back as an attribute.
        assert _get(status, "fallbacks", "noLarge") == 1 and _get(status, "largeModel") is None
        # Said once, as a warning (the small model serves): after the request that found it.
        for _ in range(50):
            said = [m.message for m in c.messages if "cannot be used" in m.message]
            if said:
                break
            await asyncio.sleep(0.1)
        assert await c.text_document_inline_completion_async(_inline(5, 11)) is not None
        said = [m for m in c.messages if "cannot be used" in m.message]
        assert len(said) == 1 and said[0].type == types.MessageType.Warning and "decodes alone" in said[0].message
    finally:
        await c.shutdown_async(None)
        c.exit(None)
