"""Cross-file completion: what repository context, and its compression, buys a small model.

Tasks come from real multi-file projects (benchmarks/crossfile_tasks.py): the cursor sits before
the first use of a name imported from another file of the project, and the model must write the
rest of the line. Every task runs through `Engine.complete` with the project open as the
workspace, once per condition:

- `none`: the current file only;
- `full`: every retrieved candidate, uncompressed, up to the context window (`--window`);
- `bm25@Nx`: the top candidates by BM25 alone, within window/N tokens;
- `lcz@Nx`: LongCodeZip (coarse function ranking by conditional perplexity, then knapsack over
  perplexity-segmented blocks) within window/N tokens.

Scores: exact match of the line and edit similarity (1 - Levenshtein / longer length). Latency
is the request's own time with its repository context ready (an editor gets it prepared in the
background); the time to prepare (retrieve and compress) is reported separately.

    python benchmarks/crossfile.py --per-project 8 --out /tmp/crossfile.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from crossfile_tasks import DEFAULT_PROJECTS, Task, load_tasks
from similarity import edit_similarity

from nextab.config import Config, load
from nextab.context.document import Document
from nextab.engine import CompletionRequest, Engine

DEFAULT_CONDITIONS = ("none", "full", "bm25@4x", "lcz@2x", "lcz@4x", "lcz@8x")


@dataclass(frozen=True)
class Condition:
    name: str
    strategy: str  # "none", "full", "bm25", "longcodezip"
    budget_tokens: int


def parse_condition(name: str, window: int) -> Condition:
    if name in ("none", "full"):
        return Condition(name, name, 0 if name == "none" else window)
    kind, _, ratio = name.partition("@")
    strategy = {"bm25": "bm25", "lcz": "longcodezip"}.get(kind)
    if strategy is None or not ratio.endswith("x"):
        raise SystemExit(f"unknown condition {name!r}: use none, full, bm25@Nx or lcz@Nx")
    return Condition(name, strategy, max(1, int(window / float(ratio[:-1]))))


def first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip()


@dataclass(frozen=True)
class Result:
    task_id: str
    condition: str
    completion: str
    target: str
    exact: bool
    edit_similarity: float
    context_tokens: int
    prompt_tokens: int
    latency_ms: float
    prepare_ms: float


def condition_config(base: Config, condition: Condition, window: int) -> Config:
    context = replace(
        base.context,
        strategy=condition.strategy,
        pool_tokens=window,
        budget_tokens=condition.budget_tokens,
    )
    return replace(base, context=context)


def run_task(engine: Engine, task: Task, conditions: Sequence[Condition], base: Config,
             window: int) -> list[Result]:
    text = task.document_text()
    uri = (Path(task.root) / task.path).as_uri()
    document = Document(uri, text, language_id="python")
    workspace = engine.workspace
    assert workspace is not None
    # As in an editor: the open buffer (without the line being written) replaces the file.
    workspace.open_document(task.path, text)
    results = []
    try:
        for condition in conditions:
            engine.reconfigure(condition_config(base, condition, window))
            started = time.perf_counter()
            material = workspace.prepare(task.path, text, task.offset)
            prepare_ms = (time.perf_counter() - started) * 1000
            suggestion = engine.complete(
                CompletionRequest(document, task.offset, text, path=task.path, mode="line")
            )
            completion = first_line(suggestion.text)
            results.append(
                Result(
                    task_id=task.task_id,
                    condition=condition.name,
                    completion=completion,
                    target=task.target,
                    exact=completion.strip() == task.target.strip(),
                    edit_similarity=edit_similarity(completion.strip(), task.target.strip()),
                    context_tokens=material.tokens,
                    prompt_tokens=suggestion.metrics.prompt_tokens,
                    latency_ms=suggestion.metrics.total_ms,
                    prepare_ms=prepare_ms,
                )
            )
            engine.forget(document)  # each condition starts from a cold prompt, as a new file does
    finally:
        workspace.close_document(task.path)
    return results


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def summarise(results: Sequence[Result], conditions: Sequence[Condition]) -> dict[str, Any]:
    table = {}
    for condition in conditions:
        rows = [r for r in results if r.condition == condition.name]
        if not rows:
            continue
        table[condition.name] = {
            "tasks": len(rows),
            "exact_match": round(sum(r.exact for r in rows) / len(rows), 3),
            "edit_similarity": round(statistics.fmean(r.edit_similarity for r in rows), 3),
            "context_tokens_mean": round(statistics.fmean(r.context_tokens for r in rows), 1),
            "prompt_tokens_mean": round(statistics.fmean(r.prompt_tokens for r in rows), 1),
            "latency_p50_ms": round(percentile([r.latency_ms for r in rows], 0.5), 1),
            "latency_p95_ms": round(percentile([r.latency_ms for r in rows], 0.95), 1),
            "prepare_p50_ms": round(percentile([r.prepare_ms for r in rows], 0.5), 1),
        }
    if "none" in table:
        base = table["none"]
        for row in table.values():
            row["latency_p50_vs_none"] = round(row["latency_p50_ms"] / base["latency_p50_ms"], 2)
    return table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", nargs="*", default=list(DEFAULT_PROJECTS))
    parser.add_argument("--per-project", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conditions", nargs="*", default=list(DEFAULT_CONDITIONS))
    parser.add_argument("--window", type=int, default=4096,
                        help="tokens of repository context in the uncompressed condition")
    parser.add_argument("--sdist-dir", default=str(Path.home() / ".cache" / "nextab" / "sdists"))
    parser.add_argument("--settings", default="{}", help="JSON settings applied first")
    parser.add_argument("--out", help="also write the summary and per-task records here")
    parser.add_argument(
        "--records", help="append each task's records here as JSON lines, as they finish"
    )
    parser.add_argument(
        "--summarize", metavar="RECORDS", help="only summarize a --records file (even unfinished)"
    )
    return parser.parse_args(argv)


def summarize_records(path: Path, conditions: Sequence[str], window: int) -> dict[str, Any]:
    results = [Result(**json.loads(line)) for line in path.read_text().splitlines() if line]
    parsed = [parse_condition(c, window) for c in conditions]
    return {"tasks": len({r.task_id for r in results}), "conditions": summarise(results, parsed)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        summary = summarize_records(Path(args.summarize), args.conditions, args.window)
        print(json.dumps(summary, indent=2))
        return 0
    config, messages = load(json.loads(args.settings))
    for message in messages:
        print(message, file=sys.stderr)
    tasks = load_tasks(args.projects, Path(args.sdist_dir), args.per_project, args.seed)
    conditions = [parse_condition(c, args.window) for c in args.conditions]
    print(f"{len(tasks)} tasks x {len(conditions)} conditions", file=sys.stderr)
    engine = Engine.load(config, progress=True)
    results: list[Result] = []
    for root in sorted({t.root for t in tasks}):
        workspace = engine.open_workspace(root, store_dir=None)
        workspace.index.wait_ready(timeout=600)
        for i, task in enumerate(t for t in tasks if t.root == root):
            rows = run_task(engine, task, conditions, config, args.window)
            results.extend(rows)
            if args.records:
                with open(args.records, "a", encoding="utf-8") as records:
                    records.writelines(json.dumps(asdict(r)) + "\n" for r in rows)
            marks = " ".join(f"{r.condition}={'Y' if r.exact else '.'}" for r in rows)
            print(f"[{i}] {task.task_id} {marks}", file=sys.stderr)
        engine.close_workspace()
    summary = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "model": config.model,
        "window_tokens": args.window,
        "projects": args.projects,
        "tasks": len(tasks),
        "conditions": summarise(results, conditions),
    }
    if args.out:
        Path(args.out).write_text(
            json.dumps({**summary, "records": [asdict(r) for r in results]}, indent=1)
        )
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
