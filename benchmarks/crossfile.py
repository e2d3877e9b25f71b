"""Cross-file completion: what repository context buys the model, source by source.

Tasks come from real multi-file projects (benchmarks/crossfile_tasks.py) in four kinds: the
arguments of a call to a function defined in another file, the attribute after `Name.` or
`self.`, the name of an imported function, and a whole statement. Every task runs through
`Engine.complete` (what editors get) once per condition:

- `alone`: the file opened by itself, in an empty folder that is the workspace;
- any other condition: the project opened as the workspace (indexed by the same
  `WorkspaceIndex` the server uses; the current file is the open buffer, without the rest of
  the line), with the condition's `context` settings over the defaults, e.g.
  `none={"strategy": "none"}` or `similar={"sources": ["similar"]}`.

The editor's session is replayed in order: before each task the developer has been at the
places of the project's earlier tasks (what `viewed` draws on). Scores: exact match of the
line (stripped) and edit similarity (1 - Levenshtein / longer length); for each condition, the
tasks it wins and loses against `alone`, per kind. Latency is the request's own with the
material ready (`metrics.total_ms`; every condition starts from a cold prompt).

Identical prompts give identical greedy completions, so a condition whose prompt for a task
equals one already run (a source that found nothing) reuses that answer and its latency; with
`--cache FILE` answers are kept across runs, keyed by the model and the prompt's tokens.

    python benchmarks/crossfile.py --per-kind 5 --records /tmp/xf.jsonl --out /tmp/xf.json \\
        --conditions alone default 'none={"strategy": "none"}'
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crossfile_tasks import DEFAULT_PROJECTS, HELD_OUT_PROJECTS, KINDS, Task, load_tasks
from similarity import edit_similarity

from nextab.config import Config, load, to_settings
from nextab.context.document import Document
from nextab.engine import CompletionRequest, Engine

DEFAULT_CONDITIONS = ("alone", "none", "default")
ALONE = "alone"


@dataclass(frozen=True)
class Condition:
    name: str
    settings: dict[str, Any]  # `context` settings over the base configuration's


def parse_condition(spec: str) -> Condition:
    """`alone`, `default`, `none`, or NAME=JSON (context settings)."""
    name, _, raw = spec.partition("=")
    if not raw:
        if name in (ALONE, "default"):
            return Condition(name, {})
        if name == "none":
            return Condition(name, {"strategy": "none"})
        raise SystemExit(f"unknown condition {spec!r}: use alone, default, none or NAME=JSON")
    settings = json.loads(raw)
    if not isinstance(settings, dict):
        raise SystemExit(f"condition {name}: settings must be a JSON object")
    return Condition(name, settings)


def first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip()


@dataclass(frozen=True)
class Result:
    task_id: str
    kind: str
    condition: str
    completion: str
    target: str
    exact: bool
    edit_similarity: float
    context_tokens: int
    prompt_tokens: int
    latency_ms: float
    reused: bool  # the same prompt was already answered (this run or --cache)


class Answers:
    """Completions by prompt: the same tokens for the same model give the same answer."""

    def __init__(self, model: str, path: Path | None) -> None:
        self.model = model
        self.path = path
        self.known: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line:
                    row = json.loads(line)
                    self.known[row["key"]] = row

    def key(self, ids: Sequence[int], mode: str) -> str:
        digest = hashlib.sha256(f"{self.model}|{mode}|{','.join(map(str, ids))}".encode())
        return digest.hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        return self.known.get(key)

    def put(self, key: str, row: dict[str, Any]) -> None:
        row = {"key": key, **row}
        self.known[key] = row
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(json.dumps(row) + "\n")


def condition_config(base: Config, condition: Condition) -> Config:
    config, messages = load({"context": condition.settings}, base=base)
    if messages:
        raise SystemExit(f"condition {condition.name}: {'; '.join(messages)}")
    return config


def complete(
    engine: Engine, answers: Answers, task: Task, text: str, path: str, uri: str
) -> tuple[str, int, int, float, bool]:
    """(first line, context tokens, prompt tokens, latency ms, reused) of one completion."""
    document = Document(uri, text, language_id="python")
    # Scored on its first line: line mode decodes only that (the same greedy tokens).
    request = CompletionRequest(document, task.offset, text, path=path, mode="line")
    prompt = engine.prompt_for(request)
    key = answers.key(prompt.ids, prompt.mode)
    known = answers.get(key)
    if known is not None:
        return known["completion"], prompt.context_tokens, len(prompt.ids), known["latency_ms"], True
    suggestion = engine.complete(request)
    engine.forget(document)  # every condition starts from a cold prompt, as a new place does
    completion = first_line(suggestion.text)
    answers.put(key, {"completion": completion, "latency_ms": suggestion.metrics.total_ms})
    return completion, prompt.context_tokens, len(prompt.ids), suggestion.metrics.total_ms, False


def result(task: Task, condition: str, got: tuple[str, int, int, float, bool]) -> Result:
    completion, context_tokens, prompt_tokens, latency_ms, reused = got
    return Result(
        task_id=task.task_id,
        kind=task.kind,
        condition=condition,
        completion=completion,
        target=task.target,
        exact=completion.strip() == task.target.strip(),
        edit_similarity=round(edit_similarity(completion.strip(), task.target.strip()), 4),
        context_tokens=context_tokens,
        prompt_tokens=prompt_tokens,
        latency_ms=round(latency_ms, 1),
        reused=reused,
    )


def run_project(
    engine: Engine,
    answers: Answers,
    tasks: Sequence[Task],
    conditions: Sequence[Condition],
    base: Config,
) -> list[Result]:
    """Every task of one project under every condition, in the session's order."""
    results: list[Result] = []
    in_workspace = [c for c in conditions if c.name != ALONE]
    if in_workspace:
        workspace = engine.open_workspace(tasks[0].root, store_dir=None)
        workspace.index.wait_ready(timeout=600)
        for task in tasks:
            text = task.document_text()
            uri = (Path(task.root) / task.path).as_uri()
            # As in an editor: the open buffer (without the line being written) replaces the file.
            workspace.open_document(task.path, text)
            try:
                for condition in in_workspace:
                    engine.reconfigure(condition_config(base, condition))
                    # As after the background preparation an editor's pause gives it
                    # (LongCodeZip's compression runs there); then the request finds it ready.
                    workspace.prepare(task.path, text, task.offset)
                    got = complete(engine, answers, task, text, task.path, uri)
                    results.append(result(task, condition.name, got))
            finally:
                workspace.close_document(task.path)
            _progress(task, results)
        engine.close_workspace()
    if any(c.name == ALONE for c in conditions):
        engine.reconfigure(base)
        for task in tasks:
            with tempfile.TemporaryDirectory() as parent:
                # Named as the project's folder: the repository's name in the prompt is the
                # same, and reruns give the same prompt.
                folder = Path(parent) / Path(task.root).name
                folder.mkdir()
                text = task.document_text()
                path = folder / Path(task.path).name
                path.write_text(text, encoding="utf-8")
                workspace = engine.open_workspace(folder, store_dir=None)
                workspace.index.wait_ready(timeout=60)
                workspace.open_document(path.name, text)
                try:
                    got = complete(engine, answers, task, text, str(path), path.as_uri())
                finally:
                    engine.close_workspace()
            results.append(result(task, ALONE, got))
            _progress(task, results)
    return results


def _progress(task: Task, results: Sequence[Result]) -> None:
    rows = [r for r in results if r.task_id == task.task_id]
    marks = " ".join(f"{r.condition}={'Y' if r.exact else '.'}" for r in rows)
    print(f"{task.task_id} {marks}", file=sys.stderr, flush=True)


class LspRun:
    """The same tasks through `nextab serve` driven over stdio by a real LSP client, as an
    editor drives it: one server per project (its folder, or an empty folder for `alone`), each
    condition's settings sent as `workspace/didChangeConfiguration`, each task's file opened,
    completed at the cursor and closed (so every condition starts from a cold prompt)."""

    def __init__(self, model: str, device: str, settings: dict[str, Any]) -> None:
        self.model = model
        self.device = device
        self.settings = settings

    async def run_project(self, tasks: Sequence[Task], conditions: Sequence[Condition]) -> list[Result]:
        results: list[Result] = []
        in_workspace = [c for c in conditions if c.name != ALONE]
        if in_workspace:
            server = await self._start(tasks[0].root)
            try:
                for task in tasks:
                    for condition in in_workspace:
                        self._configure(server, condition)
                        text = task.document_text()
                        uri = (Path(task.root) / task.path).as_uri()
                        results.append(result(task, condition.name, await _ask(server, task, text, uri)))
                    _progress(task, results)
            finally:
                await server.stop()
        if any(c.name == ALONE for c in conditions):
            with tempfile.TemporaryDirectory() as parent:
                folder = Path(parent) / Path(tasks[0].root).name
                folder.mkdir()
                server = await self._start(str(folder))
                try:
                    for task in tasks:
                        text = task.document_text()
                        path = folder / Path(task.path).name
                        path.write_text(text, encoding="utf-8")
                        try:
                            got = await _ask(server, task, text, path.as_uri())
                        finally:
                            path.unlink()
                        results.append(result(task, ALONE, got))
                        _progress(task, results)
                finally:
                    await server.stop()
        return results

    async def _start(self, root: str) -> Any:
        from nextab.bench_accept import LspServer

        options = {**self.settings, "context": {**self.settings.get("context", {}), "persist": False}}
        return await LspServer.start(self.model, self.device, options, root=root)

    def _configure(self, server: Any, condition: Condition) -> None:
        """Each condition over the defaults: what an earlier condition set does not linger."""
        from lsprotocol import types

        context = {
            **to_settings(Config())["context"],
            **self.settings.get("context", {}),
            **condition.settings,
            "persist": False,
        }
        server.client.workspace_did_change_configuration(
            types.DidChangeConfigurationParams(settings={"nextab": {"context": context}})
        )


async def _ask(server: Any, task: Task, text: str, uri: str) -> tuple[str, int, int, float, bool]:
    import time

    from nextab.bench_accept import Position

    server.open(uri, "python", text)
    line = text.count("\n", 0, task.offset)
    character = task.offset - (text.rfind("\n", 0, task.offset) + 1)
    started = time.perf_counter()
    try:
        answer = await server.suggest(uri, Position(line, character))
    finally:
        server.close(uri)
    completion = answer if isinstance(answer, str) else answer[0]
    return first_line(completion), 0, 0, (time.perf_counter() - started) * 1000, False


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _scores(rows: Sequence[Result]) -> dict[str, Any]:
    return {
        "tasks": len(rows),
        "exact_match": round(sum(r.exact for r in rows) / len(rows), 3),
        "edit_similarity": round(statistics.fmean(r.edit_similarity for r in rows), 3),
    }


def summarise(results: Sequence[Result], conditions: Sequence[str]) -> dict[str, Any]:
    by_task = {(r.task_id, r.condition): r for r in results}
    table: dict[str, Any] = {}
    for name in conditions:
        rows = [r for r in results if r.condition == name]
        if not rows:
            continue
        row: dict[str, Any] = {
            **_scores(rows),
            "context_tokens_mean": round(statistics.fmean(r.context_tokens for r in rows), 1),
            "prompt_tokens_mean": round(statistics.fmean(r.prompt_tokens for r in rows), 1),
            "latency_p50_ms": round(percentile([r.latency_ms for r in rows], 0.5), 1),
            "latency_p95_ms": round(percentile([r.latency_ms for r in rows], 0.95), 1),
            "kinds": {},
        }
        for kind in KINDS:
            of_kind = [r for r in rows if r.kind == kind]
            if not of_kind:
                continue
            entry = _scores(of_kind)
            alone = [by_task.get((r.task_id, ALONE)) for r in of_kind]
            if name != ALONE and all(a is not None for a in alone):
                entry["won"] = sum(r.exact and not a.exact for r, a in zip(of_kind, alone, strict=True))  # type: ignore[union-attr]
                entry["lost"] = sum(a.exact and not r.exact for r, a in zip(of_kind, alone, strict=True))  # type: ignore[union-attr]
            row["kinds"][kind] = entry
        alone = [by_task.get((r.task_id, ALONE)) for r in rows]
        if name != ALONE and all(a is not None for a in alone):
            row["won"] = sum(e["won"] for e in row["kinds"].values())
            row["lost"] = sum(e["lost"] for e in row["kinds"].values())
            row["exact_match_vs_alone"] = round(
                (sum(r.exact for r in rows) - sum(a.exact for a in alone)) / len(rows), 3  # type: ignore[union-attr]
            )
        table[name] = row
    if ALONE in table:
        base = table[ALONE]["latency_p50_ms"]
        for row in table.values():
            row["latency_p50_vs_alone"] = round(row["latency_p50_ms"] / base, 2) if base else None
    return table


def markdown(table: dict[str, Any]) -> str:
    """The summary as the table benchmarks/README.md shows."""
    kinds = [k for k in KINDS if any(k in row["kinds"] for row in table.values())]
    head = ["condition", "exact match", "vs alone", "won / lost", "edit sim.", *kinds,
            "context tok.", "p50 ms (x alone)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in table.items():
        cells = [
            f"`{name}`",
            f"{row['exact_match']:.3f}",
            f"{row.get('exact_match_vs_alone', 0):+.3f}" if name != ALONE else "",
            f"{row['won']} / {row['lost']}" if "won" in row else "",
            f"{row['edit_similarity']:.3f}",
        ]
        for kind in kinds:
            entry = row["kinds"].get(kind)
            if entry is None:
                cells.append("")
            elif "won" in entry:
                cells.append(f"{entry['exact_match']:.2f} (+{entry['won']}/-{entry['lost']})")
            else:
                cells.append(f"{entry['exact_match']:.2f}")
        ratio = row.get("latency_p50_vs_alone")
        cells += [f"{row['context_tokens_mean']:.0f}",
                  f"{row['latency_p50_ms']:.0f}" + (f" (x{ratio:.2f})" if ratio else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", nargs="*", default=None,
                        help="NAME==VERSION sdists (default: the tuning projects)")
    parser.add_argument("--held-out", action="store_true",
                        help="the held-out projects instead of the tuning ones")
    parser.add_argument("--per-kind", type=int, default=5, help="tasks per kind per project")
    parser.add_argument("--kinds", nargs="*", default=list(KINDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conditions", nargs="*", default=list(DEFAULT_CONDITIONS),
                        help="alone, default, none, or NAME=JSON context settings")
    parser.add_argument("--sdist-dir", default=str(Path.home() / ".cache" / "nextab" / "sdists"))
    parser.add_argument("--settings", default="{}", help="JSON settings under every condition")
    parser.add_argument("--cache", help="answers by prompt, kept across runs (JSON lines)")
    parser.add_argument("--lsp", action="store_true",
                        help="through `nextab serve` over LSP (as editors do) instead of in-process")
    parser.add_argument("--model", default="embedded", help="with --lsp: the model to serve")
    parser.add_argument("--out", help="also write the summary and per-task records here")
    parser.add_argument("--records", help="append each result here as a JSON line")
    parser.add_argument("--summarize", metavar="RECORDS", help="only summarize a --records file")
    return parser.parse_args(argv)


def summarize_records(path: Path, conditions: Sequence[str] | None) -> dict[str, Any]:
    results = [Result(**json.loads(line)) for line in path.read_text().splitlines() if line]
    names = list(conditions) if conditions else list(dict.fromkeys(r.condition for r in results))
    names = [n.partition("=")[0] for n in names]
    return {"tasks": len({r.task_id for r in results}), "conditions": summarise(results, names)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        summary = summarize_records(Path(args.summarize), None)
        print(json.dumps(summary, indent=2))
        print(markdown(summary["conditions"]))
        return 0
    config, messages = load(json.loads(args.settings))
    for message in messages:
        print(message, file=sys.stderr)
    projects = args.projects or list(HELD_OUT_PROJECTS if args.held_out else DEFAULT_PROJECTS)
    tasks = load_tasks(projects, Path(args.sdist_dir), args.per_kind, args.seed, args.kinds)
    conditions = [parse_condition(c) for c in args.conditions]
    print(f"{len(tasks)} tasks x {len(conditions)} conditions", file=sys.stderr)
    results: list[Result] = []
    if args.lsp:
        lsp = LspRun(args.model, "cpu", json.loads(args.settings))
        model = f"{args.model} (over LSP)"
    else:
        engine = Engine.load(config, progress=True)
        info = engine.backend.info
        model = f"{info.name} ({info.dtype})"
        answers = Answers(f"{info.name}|{info.dtype}", Path(args.cache) if args.cache else None)
    for project in projects:
        of_project = [t for t in tasks if t.project == project]
        if args.lsp:
            rows = asyncio.run(lsp.run_project(of_project, conditions))
        else:
            rows = run_project(engine, answers, of_project, conditions, config)
        results.extend(rows)
        if args.records:
            with open(args.records, "a", encoding="utf-8") as records:
                records.writelines(json.dumps(asdict(r)) + "\n" for r in rows)
    names = [c.name for c in conditions]
    summary = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "model": model,
        "projects": projects,
        "tasks": len(tasks),
        "conditions": summarise(results, names),
    }
    if args.out:
        Path(args.out).write_text(
            json.dumps({**summary, "records": [asdict(r) for r in results]}, indent=1)
        )
    print(json.dumps(summary, indent=2))
    print(markdown(summary["conditions"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
