"""A big workspace and many open documents: do requests wait while the server indexes?

    python benchmarks/workspace_load.py --files 10000 --open 1000
    python benchmarks/workspace_load.py --model /path/to/tiny-model   # the model is not the point

A workspace of `--files` generated Python modules (a few functions each, in folders of 100,
importing each other), plus a 10 MB data file and a file with one 1 MB line (not indexed: over
the size limit), is opened by `nextab serve` over stdio as an editor opens a folder; the client
then opens `--open` of the modules (didOpen each) while the index is being built, and all the
while asks `nextab/status` and `nextab/debugDocument` every `--probe-ms` and a completion in the
last opened document every second. Reported: how long indexing took (the server's own progress),
the latency of those requests while indexing (p50/p99/max), and the server's RSS at the end.
The issue's target: no request blocked for more than a second, read on the requests the event
loop answers itself (status, debugDocument); a completion's time is the model's, mostly (a cold
prompt takes seconds on a CPU), and is reported beside them.

Output: one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # soak.py, beside this script

from soak import pcts, process_sample

from nextab.bench_accept import BASE_OPTIONS, _get, merge


def make_workspace(root: Path, files: int) -> list[Path]:
    modules = []
    for n in range(files):
        folder = root / f"pkg{n // 100}"
        folder.mkdir(exist_ok=True)
        other = (n + 1) % files
        path = folder / f"mod{n}.py"
        path.write_text(
            f"from pkg{other // 100}.mod{other} import helper_{other}\n\n\n"
            f"def helper_{n}(value):\n    return helper_{other}(value) + {n}\n\n\n"
            f"class Thing{n}:\n    def method(self, x):\n        return helper_{n}(x) * 2\n"
        )
        modules.append(path)
    (root / "data.csv").write_text("a,b,c\n" * 1_700_000)  # ~10 MB
    (root / "bundle.py").write_text("x = [" + "1," * 500_000 + "]\n")  # one 1 MB line
    return modules


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from lsprotocol import types
    from pygls.lsp.client import LanguageClient

    with tempfile.TemporaryDirectory(prefix="nextab-workspace-") as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        modules = make_workspace(root, args.files)
        made_s = time.perf_counter() - started
        client = LanguageClient("nextab-workspace-load", "1")

        @client.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def progress_create(ls: Any, params: Any) -> None:
            return None

        @client.feature(types.PROGRESS)
        def progress(ls: Any, params: Any) -> None:
            return None

        await client.start_io(
            sys.executable, "-m", "nextab", "serve", "--model", args.model, "--device", args.device
        )
        pid = client._server.pid  # type: ignore[union-attr]
        drain = asyncio.create_task(_drain(client._server.stderr))  # type: ignore[union-attr]
        options = merge(BASE_OPTIONS, {})  # nothing persisted: no cache of the scratch workspace
        await client.initialize_async(
            types.InitializeParams(
                capabilities=types.ClientCapabilities(),
                initialization_options=options,
                process_id=os.getpid(),
                root_uri=root.as_uri(),
                workspace_folders=[types.WorkspaceFolder(root.as_uri(), root.name)],
            )
        )
        client.initialized(types.InitializedParams())
        protocol = client.protocol
        status_ms: list[float] = []
        document_ms: list[float] = []
        completion_ms: list[float] = []
        opened: list[str] = []
        begun = time.perf_counter()
        indexed_s = None
        indexed = None
        next_completion = 0.0
        try:
            while time.perf_counter() - begun < args.timeout_s:
                for _ in range(args.open // 50 if len(opened) < args.open else 0):
                    path = modules[len(opened) * (len(modules) // args.open)]
                    uri = path.as_uri()
                    client.text_document_did_open(
                        types.DidOpenTextDocumentParams(
                            text_document=types.TextDocumentItem(uri, "python", 1, path.read_text())
                        )
                    )
                    opened.append(uri)
                t = time.perf_counter()
                status = await protocol.send_request_async("nextab/status", None)
                status_ms.append((time.perf_counter() - t) * 1000)
                if opened:
                    t = time.perf_counter()
                    await protocol.send_request_async(
                        "nextab/debugDocument", {"textDocument": {"uri": opened[-1]}}
                    )
                    document_ms.append((time.perf_counter() - t) * 1000)
                if (
                    opened
                    and time.perf_counter() >= next_completion
                    and _get(status, "state") == "ready"
                ):
                    next_completion = time.perf_counter() + 1.0
                    t = time.perf_counter()
                    await client.text_document_inline_completion_async(
                        types.InlineCompletionParams(
                            text_document=types.TextDocumentIdentifier(opened[-1]),
                            position=types.Position(4, 4),
                            context=types.InlineCompletionContext(
                                trigger_kind=types.InlineCompletionTriggerKind.Automatic
                            ),
                        )
                    )
                    completion_ms.append((time.perf_counter() - t) * 1000)
                indexing = _get(status, "indexing")
                if _get(indexing, "finished") and len(opened) >= args.open:
                    indexed_s = round(time.perf_counter() - begun, 1)
                    indexed = _get(indexing, "done")
                    break
                await asyncio.sleep(args.probe_ms / 1000)
            rss = process_sample(pid, 0).rss_mb
        finally:
            await client.shutdown_async(None)
            client.exit(None)
            await client.stop()
            drain.cancel()
    # A completion's time is mostly the model's (a cold prompt is seconds on a CPU): what
    # shows requests blocked by indexing is how long the event loop's own answers wait.
    slowest = max(status_ms + document_ms, default=None)
    return {
        "command": "python benchmarks/workspace_load.py " + " ".join(sys.argv[1:]),
        "files": args.files,
        "opened": len(opened),
        "workspace_made_s": round(made_s, 1),
        "indexed_s": indexed_s,
        "walked_files": indexed,  # source files the index went through (skipped ones too)
        "status_ms": pcts(status_ms),
        "debug_document_ms": pcts(document_ms),
        "completion_ms": pcts(completion_ms),
        "rss_mb_end": rss,
        "targets": {"no_request_blocked_over_1_s": slowest is not None and slowest < 1000},
    }


async def _drain(stream: Any) -> None:
    while await stream.readline():
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--open", type=int, default=1000, help="documents opened while indexing")
    parser.add_argument("--probe-ms", type=float, default=50.0)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.open > args.files or args.open < 50:
        parser.error("--open must be between 50 and --files")
    sys.stdout.write(json.dumps(asyncio.run(run(args)), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
