"""`nextab`: serve over LSP, complete one position, suggest next edits, manage the model."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from nextab import __version__, heap
from nextab.config import Config, from_env, load, to_settings


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help='"embedded" (default), a model directory, a .gguf file or a hub id')
    parser.add_argument("--device", help='"auto" (default), "cpu", "cuda", "cuda:N" or "mps"')
    parser.add_argument("--dtype", help='"auto" (default), "float32", "bfloat16" or "float16"')
    parser.add_argument("--backend", help='"auto" (default), "onnx", "split" or "torch"')
    parser.add_argument("--max-tokens", type=int, help="most tokens one suggestion may have")
    parser.add_argument("--decoding", help='decoding strategy: "greedy", "adadec", "beam", "speculative" or "ead"')
    parser.add_argument(
        "--settings", help="JSON object of settings, as an editor sends in initializationOptions"
    )


def build_config(args: argparse.Namespace) -> Config:
    """Defaults, then NEXTAB_* variables, then --settings JSON, then individual flags."""
    config, messages = load(from_env())
    if args.settings:
        try:
            raw = json.loads(args.settings)
        except json.JSONDecodeError as error:
            raise SystemExit(f"nextab: --settings is not valid JSON: {error}") from None
        config, more = load(raw, base=config)
        messages += more
    flags = {
        "model": args.model,
        "device": args.device,
        "dtype": args.dtype,
        "backend": args.backend,
        "maxTokens": args.max_tokens,
        "decoding": args.decoding,
    }
    config, more = load({k: v for k, v in flags.items() if v is not None}, base=config)
    for message in messages + more:
        print(message, file=sys.stderr)
    return config


def parse_location(spec: str) -> tuple[Path, int, int]:
    """FILE:LINE:COL with 1-based line and column, as compilers and editors print them."""
    try:
        path, line, col = spec.rsplit(":", 2)
        return Path(path), int(line), int(col)
    except ValueError:
        raise SystemExit(f"nextab: expected FILE:LINE:COL (1-based), got {spec!r}") from None


def cmd_complete(args: argparse.Namespace) -> int:
    from nextab.context.document import Document, Position, PositionError
    from nextab.engine import CompletionRequest, Engine
    from nextab.models.resolve import ModelNotFoundError

    path, line, col = parse_location(args.location)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        print(f"nextab: cannot read {path}: {error}", file=sys.stderr)
        return 2
    doc = Document(path.resolve().as_uri(), text, encoding="utf-32")
    try:
        offset = doc.offset_at(Position(line - 1, col - 1))
    except PositionError as error:
        print(f"nextab: {args.location}: {error}", file=sys.stderr)
        return 2
    config = build_config(args)
    started = time.perf_counter()
    try:
        engine = Engine.load(config)
    except ModelNotFoundError as error:
        print(f"nextab: {error}", file=sys.stderr)
        return 3
    loaded = time.perf_counter()
    shown_path = path.name
    if args.workspace:
        shown_path = _open_workspace(engine, Path(args.workspace), path, text, offset)
    request = CompletionRequest(
        document=doc, offset=offset, text=text, path=shown_path, mode=args.mode
    )
    try:
        suggestion = engine.complete(request)
        if args.warm:
            # A second request at the same spot: the keystroke-path cost with the prompt cached.
            suggestion = engine.complete(request)
    finally:
        engine.close_workspace()
    if args.json:
        info = engine.backend.info
        print(
            json.dumps(
                {
                    "completion": suggestion.text,
                    "replace": suggestion.replace,
                    "mode": suggestion.mode,
                    "stop_reason": suggestion.stop_reason,
                    "model": info.name,
                    "device": info.device,
                    "dtype": info.dtype,
                    "load_ms": round((loaded - started) * 1000, 1),
                    "metrics": {
                k: round(v, 1) if isinstance(v, float) else v
                for k, v in vars(suggestion.metrics).items()
            },
                },
                indent=2,
            )
        )
    else:
        m = suggestion.metrics
        print(suggestion.text)
        print(
            f"-- {m.total_ms:.0f} ms ({m.prompt_tokens} prompt tokens, {m.reused_tokens} reused, "
            f"{m.generated_tokens} generated; model load {(loaded - started):.1f} s)",
            file=sys.stderr,
        )
    return 0


def cmd_next_edit(args: argparse.Namespace) -> int:
    from nextab.context.document import Document, Position, PositionError
    from nextab.context.history import EditHistory, hunks_between
    from nextab.engine import Engine
    from nextab.models.resolve import ModelNotFoundError
    from nextab.nextedit import NextEditRequest, end_of_last_edit, predict

    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
        before = (
            Path(args.before).read_text(encoding="utf-8") if args.before else _git_version(path, args.rev)
        )
    except (OSError, UnicodeDecodeError, ValueError) as error:
        print(f"nextab: {error}", file=sys.stderr)
        return 2
    uri = path.resolve().as_uri()
    history = EditHistory(root=path.resolve().parent)
    # The changes since that version, as if typed top to bottom just now.
    history.replay(uri, before, hunks_between(before, text), now=time.time() - 60)
    edits = tuple(history.edits())
    if not edits:
        print(f"nextab: {path} has no changes since {args.before or args.rev}: nothing to follow", file=sys.stderr)
        return 1
    doc = Document(uri, text, encoding="utf-32")
    if args.at:
        try:
            line, _, col = args.at.partition(":")
            offset = doc.offset_at(Position(int(line) - 1, int(col or 1) - 1))
        except (ValueError, PositionError) as error:
            print(f"nextab: --at {args.at}: {error}", file=sys.stderr)
            return 2
    else:
        offset = end_of_last_edit(edits, uri, text)
    config = build_config(args)
    request = NextEditRequest(
        document=doc,
        text=text,
        offset=offset,
        edits=edits,
        diffs=history.render(config.context.recent_edits_chars),
        path=path.name,
        model=False if args.no_model else None,
    )
    if args.no_model:
        result = predict(config.next_edit, request, None)
    else:
        try:
            engine = Engine.load(config)
        except ModelNotFoundError as error:
            print(f"nextab: {error}", file=sys.stderr)
            return 3
        result = engine.next_edit(request)
    if args.json:
        from nextab.lsp_server.server import suggestion_json

        metrics = {k: round(v, 1) for k, v in vars(result.metrics).items()}
        print(json.dumps({"suggestions": [suggestion_json(doc, s) for s in result.suggestions],
                          "metrics": metrics}, indent=2))
        return 0
    lines = text.splitlines(keepends=True)
    for s in result.suggestions:
        where = "at the cursor" if s.at_cursor else "elsewhere"
        print(f"{path}:{s.start_line + 1}: {s.source} ({where}, score {s.score:.3f}): {s.reason}")
        for old in lines[s.start_line : s.end_line]:
            print("-" + old.rstrip("\n"))
        for new in s.new_lines.splitlines():
            print("+" + new)
    m = result.metrics
    print(
        f"-- {len(result.suggestions)} suggestions from {m.locations} locations, "
        f"{m.model_calls} model rewrites, {m.total_ms:.0f} ms",
        file=sys.stderr,
    )
    return 0


def _git_version(path: Path, rev: str) -> str:
    """The file as it was at `rev` in its git repository."""
    import subprocess

    folder = path.resolve().parent
    shown = subprocess.run(
        ["git", "-C", str(folder), "show", f"{rev}:./{path.name}"],
        capture_output=True,
        text=True,
        encoding="utf-8",
    )
    if shown.returncode != 0:
        raise ValueError(
            f"no earlier version of {path} to compare with: git show {rev} failed "
            f"({shown.stderr.strip() or 'git not found'}); pass --before FILE"
        )
    return shown.stdout


def _open_workspace(engine: Any, root: Path, path: Path, text: str, offset: int) -> str:
    """Index `root` and prepare this place's repository material before completing.

    One-shot use waits for what an editor gets prepared in the background; on a CPU, with
    LongCodeZip, that is the model scoring a few thousand tokens.
    """
    started = time.perf_counter()
    workspace = engine.open_workspace(root)
    workspace.index.wait_ready(timeout=600)
    relative = workspace.relative(str(path))
    workspace.open_document(relative, text)
    material = workspace.prepare(relative, text, offset)
    print(
        f"-- workspace {root}: {len(workspace.index.files())} files indexed, "
        f"{material.candidates} candidates -> {material.tokens} tokens of context "
        f"({material.strategy}) in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return relative


def cmd_serve(args: argparse.Namespace) -> int:
    from nextab.lsp_server.server import create_server

    config = build_config(args)
    server = create_server(config)
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        server.start_tcp(host or "127.0.0.1", int(port))
    else:
        server.start_io()
    return 0


def cmd_model_fetch(args: argparse.Namespace) -> int:
    from nextab.models.resolve import ModelNotFoundError, resolve_model

    try:
        resolved = resolve_model(args.spec)
    except ModelNotFoundError as error:
        print(f"nextab: {error}", file=sys.stderr)
        return 3
    print(resolved.path)
    return 0


def cmd_model_export(args: argparse.Namespace) -> int:
    from nextab.models.loading import onnx_available
    from nextab.models.onnx_export import ExportError, export_model
    from nextab.models.resolve import ModelNotFoundError, resolve_model

    if not onnx_available():
        print("nextab: exporting needs onnxruntime, onnxruntime-genai and onnx (pip install .)", file=sys.stderr)
        return 3
    try:
        resolved = resolve_model(args.spec)
        exported = export_model(
            resolved, args.precision, args.provider, force=args.force
        )
    except (ModelNotFoundError, ExportError) as error:
        print(f"nextab: {error}", file=sys.stderr)
        return 3
    print(exported.path)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from nextab.calibrate import calibrate
    from nextab.engine import Engine
    from nextab.models.calibration import save_calibration
    from nextab.models.resolve import ModelNotFoundError

    config = build_config(args)
    try:
        engine = Engine.load(config)
    except ModelNotFoundError as error:
        print(f"nextab: {error}", file=sys.stderr)
        return 3
    assert engine.model_path is not None

    def progress(done: int, total: int) -> None:
        if done % 8 == 0 or done == total:
            print(f"calibrating: {done}/{total} spans", file=sys.stderr)

    if args.large is not None:
        return _calibrate_pair(engine, args, progress)
    try:
        fit, details = calibrate(engine, args.spans, args.seed, progress)
    except ValueError as error:
        print(f"nextab: calibration failed: {error}", file=sys.stderr)
        return 1
    saved = save_calibration(engine.model_path, engine.backend.info.name, fit, details)
    print(json.dumps({"model": engine.backend.info.name, "saved": str(saved),
                      **dataclasses.asdict(fit), **details}, indent=2))
    return 0


def _calibrate_pair(engine: Any, args: argparse.Namespace, progress: Any) -> int:
    """EAD's threshold for the model and the large model (`--large`, default `largeModel`)."""
    from nextab.calibrate import calibrate_pair
    from nextab.models.calibration import save_pair_calibration

    spec = args.large or engine.config.large_model
    reuse = engine.large is not None and spec == engine.config.large_model  # loaded for `decoding`
    large = engine.large if reuse else engine.load_large(spec, progress=True)
    if large is None or engine.large_path is None:
        print(f"nextab: {engine.take_notices()[-1]}", file=sys.stderr)
        return 3
    window = engine.config.ead.window
    try:
        fit, details = calibrate_pair(engine, large, args.spans, args.seed, window, progress)
    except ValueError as error:
        print(f"nextab: pair calibration failed: {error}", file=sys.stderr)
        return 1
    small = (engine.model_path, engine.backend.info.name)
    saved = save_pair_calibration(small, (engine.large_path, large.info.name), fit, details)
    print(json.dumps({"pair": [small[1], large.info.name], "saved": str(saved),
                      **dataclasses.asdict(fit), **details}, indent=2))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from nextab.acceptance import AcceptanceLog, summarize

    acceptance = AcceptanceLog(Path(args.log) if args.log else None)
    outcomes, skipped = acceptance.read()
    since = time.time() - args.days * 86400 if args.days else 0.0
    outcomes = [o for o in outcomes if o.time >= since]
    summary = {"log": str(acceptance.path), "outcomes": len(outcomes), "skipped_lines": skipped,
               **summarize(outcomes)}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{acceptance.path}: {len(outcomes)} suggestions" + (f", {skipped} unreadable lines" if skipped else ""))
    for kind in ("completion", "nextEdit"):
        if kind not in summary:
            continue
        print(f"\n{kind}")
        print(f"  {'language':<14}{'shown':>7}{'accepted':>10}{'+partial':>10}{'chars':>8}{'p50 ms':>9}{'p95 ms':>9}")
        rows = {"all": summary[kind]["all"], **summary[kind]["by_language"]}
        for language, t in rows.items():
            rate = f"{t['acceptance_rate']:.1%}" if t["acceptance_rate"] is not None else "-"
            anyrate = f"{t['any_acceptance_rate']:.1%}" if t["any_acceptance_rate"] is not None else "-"
            p50, p95 = t["latency_ms"]["p50"], t["latency_ms"]["p95"]
            print(f"  {language:<14}{t['shown']:>7}{rate:>10}{anyrate:>10}{t['chars_accepted']:>8}"
                  f"{p50 if p50 is not None else '-':>9}{p95 if p95 is not None else '-':>9}")
        stages = summary[kind]["all"].get("server_ms")
        if stages:
            share = summary[kind]["all"]["typed_ahead_share"]
            print(f"  server time per stage, ms (p50 / p95; {share:.0%} served typed-ahead):")
            print("    " + ", ".join(f"{name} {v['p50']} / {v['p95']}" for name, v in stages.items()))
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from nextab.batch import cmd_batch as run_batch

    return run_batch(args, build_config(args))


def cmd_config(args: argparse.Namespace) -> int:
    print(json.dumps(to_settings(build_config(args)), indent=2))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nextab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nextab {__version__}")
    levels = ["debug", "info", "warning", "error"]
    parser.add_argument("--log-level", default="info", choices=levels)
    # Also after the subcommand (`nextab serve --log-level debug`, as editors' argument settings
    # put it); suppressed there so that an absent one keeps the value given before.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--log-level", default=argparse.SUPPRESS, choices=levels)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[after], help="run the language server (stdio unless --tcp)")
    serve.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (default)")
    serve.add_argument("--tcp", metavar="HOST:PORT", help="listen for one LSP client on TCP instead")
    _add_model_flags(serve)
    serve.set_defaults(func=cmd_serve)

    complete = sub.add_parser("complete", parents=[after], help="print the completion at FILE:LINE:COL (1-based)")
    complete.add_argument("location", metavar="FILE:LINE:COL")
    complete.add_argument("--mode", default="auto", choices=["auto", "line", "block"])
    complete.add_argument("--json", action="store_true", help="print the result and timings as JSON")
    complete.add_argument("--warm", action="store_true", help="complete twice; report the second")
    complete.add_argument(
        "--workspace",
        metavar="DIR",
        help="index DIR and show the model its repository context (settings: context.*)",
    )
    _add_model_flags(complete)
    complete.set_defaults(func=cmd_complete)

    next_edit = sub.add_parser(
        "next-edit", parents=[after], help="suggest the next edits to FILE from its changes since a git revision"
    )
    next_edit.add_argument("file", metavar="FILE")
    source = next_edit.add_mutually_exclusive_group()
    source.add_argument("--rev", default="HEAD", help="git revision the changes are counted from")
    source.add_argument("--before", metavar="OLD", help="the file's earlier version, instead of git")
    next_edit.add_argument("--at", metavar="LINE[:COL]", help="cursor (1-based; default: end of the last change)")
    next_edit.add_argument("--no-model", action="store_true", help="the repeat-edit proposer only")
    next_edit.add_argument("--json", action="store_true", help="print the suggestions as LSP ranges")
    _add_model_flags(next_edit)
    next_edit.set_defaults(func=cmd_next_edit)

    model = sub.add_parser("model", parents=[after], help="manage models")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    fetch = model_sub.add_parser("fetch", parents=[after], help="download, verify and convert a model; print its path")
    fetch.add_argument("spec", nargs="?", default="embedded")
    fetch.set_defaults(func=cmd_model_fetch)
    export = model_sub.add_parser(
        "export",
        parents=[after],
        help="export a model to onnxruntime (weight-only quantized), cache it, print its path",
    )
    export.add_argument("spec", nargs="?", default="embedded")
    export.add_argument("--precision", choices=["int4", "int8", "fp16", "fp32"], help="default: int4 on cpu, fp16 on cuda")
    export.add_argument("--provider", choices=["cpu", "cuda"], default="cpu", help="execution provider (default cpu)")
    export.add_argument("--force", action="store_true", help="export again even if a current export exists")
    export.set_defaults(func=cmd_model_export)

    calibrate = sub.add_parser(
        "calibrate", parents=[after], help="learn the model's AdaDec entropy threshold from real code"
    )
    calibrate.add_argument("--spans", type=int, default=64, help="code spans to learn from")
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument(
        "--large", nargs="?", const="", default=None, metavar="MODEL",
        help="learn EAD's threshold for the model and this large model instead (default: the "
        "largeModel setting); used where ead.threshold is null",
    )  # fmt: skip
    _add_model_flags(calibrate)
    calibrate.set_defaults(func=cmd_calibrate)

    stats = sub.add_parser("stats", parents=[after], help="acceptance rate and latency from the local acceptance log")
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--days", type=float, help="only the last N days")
    stats.add_argument("--log", help="another log file (default: the one the server writes)")
    stats.set_defaults(func=cmd_stats)

    batch = sub.add_parser(
        "batch", parents=[after], help="complete the positions of a JSON-lines file (locally or on Ray)"
    )
    from nextab import batch as batch_job

    batch_job.add_arguments(batch)
    _add_model_flags(batch)
    batch.set_defaults(func=cmd_batch)

    bench = sub.add_parser("bench", parents=[after], help="benchmarks of what a person typing gets")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    accept = bench_sub.add_parser(
        "accept", parents=[after], help="acceptance rate: replay typing real files through the server"
    )
    from nextab import bench_accept

    bench_accept.add_arguments(accept)
    accept.set_defaults(func=bench_accept.run)

    config = sub.add_parser("config", parents=[after], help="print the effective settings")
    _add_model_flags(config)
    config.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> Any:
    heap.tune_allocator()  # before the threads and buffers it is for exist
    args = make_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.log_level != "debug":
        # pygls logs every message it sends at INFO: megabytes of stderr an editor files away.
        logging.getLogger("pygls").setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
