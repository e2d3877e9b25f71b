"""HumanEval infilling through the engine: exact match, pass@1 and latency per task.

Every task goes through `Engine.complete` the way an editor request arrives (a fresh document
holding the file with the hole removed, the cursor in the hole), so the figures are what editors
get, trimming and stop rules included. Prints one JSON summary on stdout; progress on stderr.

    python benchmarks/fim_humaneval.py --set single --out /tmp/bench-single-line.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from nextab.context.cursor import RequestedMode
from nextab.context.document import Document
from nextab.engine import CompletionRequest
from nextab.models.decoding import DECODERS

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "humaneval-infilling"
DATA_DIR_ENV = "NEXTAB_DATA_DIR"

SETS: dict[str, str] = {
    "single": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}

CHECK_TIMEOUT_S = 10.0

# llama.cpp with the same model (Qwen2.5-Coder-0.5B) and a plain FIM prompt, measured on these
# machines over the set the project reports: single-line, every 6th task, 150 tasks.
BASELINE: dict[str, Any] = {
    "source": "llama.cpp, Qwen2.5-Coder-0.5B, plain FIM prompt",
    "set": "single",
    "every": 6,
    "limit": 150,
    "exact_match": 0.447,
    "pass_at_1": 0.547,
    "latency_p50_ms": 1130.0,
}

CheckStatus = Literal["pass", "fail", "timeout"]


@dataclass(frozen=True)
class Task:
    task_id: str
    prompt: str  # code before the hole
    suffix: str  # code after it
    canonical: str  # the hole
    test: str  # defines check(candidate)
    entry_point: str


@dataclass
class TaskResult:
    task_id: str
    completion: str  # what the suggestion inserts at the cursor
    canonical: str
    exact: bool
    exact_indented: bool
    passed: bool | None  # None until the check has run
    check: CheckStatus | None
    total_ms: float
    prompt_tokens: int
    reused_tokens: int
    generated_tokens: int
    prefill_ms: float
    decode_ms: float
    stop_reason: str
    mode: str
    replace: int
    decoding: str = "greedy"
    paused_steps: int = 0
    evaluated_tokens: int = 0
    drafted_tokens: int = 0  # prompt-lookup drafts checked (models/drafting.py)
    accepted_tokens: int = 0  # and taken
    large_tokens: int = 0  # tokens the large model decided (two-model decoding)
    large_computed: int = 0  # tokens the large model ran, catching up included
    fallback: str = ""  # why a two-model strategy answered with the small model alone


# --- tasks ------------------------------------------------------------------------------------


def data_dir(cli_value: str | None = None) -> Path:
    """The flag wins, then the environment, then the shared data beside the checkout."""
    if cli_value:
        return Path(cli_value)
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    return DEFAULT_DATA_DIR


def read_tasks(path: Path) -> list[Task]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [
        Task(
            task_id=r["task_id"],
            prompt=r["prompt"],
            suffix=r["suffix"],
            canonical=r["canonical_solution"],
            test=r["test"],
            entry_point=r["entry_point"],
        )
        for r in rows
    ]


def select(rows: Sequence[Task], every: int, limit: int | None) -> list[Task]:
    """`rows[::every][:limit]`: a stride spreads the sample over all 164 problems."""
    if every < 1:
        raise ValueError("--every must be at least 1")
    chosen = list(rows[::every])
    return chosen if limit is None else chosen[:limit]


def load_tasks(set_name: str, every: int, limit: int | None, directory: Path) -> list[Task]:
    return select(read_tasks(directory / SETS[set_name]), every, limit)


# --- one task through the engine -------------------------------------------------------------


def default_mode(set_name: str) -> RequestedMode:
    # The single-line set defines a one-line hole, so it asks for exactly that; the other sets'
    # holes span lines, where the engine's own choice is what is being measured.
    return "line" if set_name == "single" else "auto"


def apply_suggestion(text: str, offset: int, inserted: str, replace: int) -> str:
    return text[:offset] + inserted + text[offset + replace :]


def run_task(
    engine: Any,
    task: Task,
    mode: RequestedMode = "auto",
    max_tokens: int | None = None,
    decoding: str | None = None,
) -> TaskResult:
    # A fresh document per task, like a newly opened file: no cache carried between tasks.
    document = task_document(task)
    try:
        return complete_in(engine, task, document, mode, max_tokens, decoding)
    finally:
        engine.forget(document)


def task_document(task: Task) -> Document:
    """The task's file with the hole taken out, as an editor would have it open."""
    uri = f"file:///humaneval/{task.task_id.replace('/', '_')}.py"
    return Document(uri, task.prompt + task.suffix, "python")


def complete_in(
    engine: Any,
    task: Task,
    document: Document,
    mode: RequestedMode = "auto",
    max_tokens: int | None = None,
    decoding: str | None = None,
) -> TaskResult:
    """One request at the task's hole in `document`, whose caches the caller keeps or drops."""
    text = task.prompt + task.suffix
    request = CompletionRequest(
        document=document,
        offset=len(task.prompt),
        text=text,
        mode=mode,
        max_tokens=max_tokens,
        decoding=decoding,
    )
    suggestion = engine.complete(request)
    m = suggestion.metrics
    return TaskResult(
        task_id=task.task_id,
        completion=suggestion.text,
        canonical=task.canonical,
        exact=is_exact(suggestion.text, task.canonical),
        exact_indented=is_exact_indented(suggestion.text, task.canonical),
        passed=None,
        check=None,
        total_ms=m.total_ms,
        prompt_tokens=m.prompt_tokens,
        reused_tokens=m.reused_tokens,
        generated_tokens=m.generated_tokens,
        prefill_ms=m.prefill_ms,
        decode_ms=m.decode_ms,
        stop_reason=suggestion.stop_reason,
        mode=suggestion.mode,
        replace=suggestion.replace,
        decoding=decoding or getattr(getattr(engine, "config", None), "decoding", "greedy"),
        paused_steps=m.paused_steps,
        evaluated_tokens=m.evaluated_tokens,
        drafted_tokens=m.drafted_tokens,
        accepted_tokens=m.accepted_tokens,
        large_tokens=m.large_tokens,
        large_computed=m.large_computed,
        fallback=m.fallback,
    )


def final_file(task: Task, result: TaskResult) -> str:
    return apply_suggestion(
        task.prompt + task.suffix, len(task.prompt), result.completion, result.replace
    )


# --- scoring ----------------------------------------------------------------------------------


def is_exact(completion: str, canonical: str) -> bool:
    return completion.strip() == canonical.strip()


def is_exact_indented(completion: str, canonical: str) -> bool:
    """Exact match that also counts the indentation, which `is_exact` (the usual metric) strips.

    In Python a right line at the wrong depth is a wrong program; blank lines before it are not.
    """

    def significant(text: str) -> str:
        lines = text.rstrip().split("\n")
        while lines and not lines[0].strip():
            lines.pop(0)
        return "\n".join(line.rstrip() for line in lines)

    return significant(completion) == significant(canonical)


def check_program(code: str, task: Task) -> str:
    return f"{code}\n{task.test}\ncheck({task.entry_point})\n"


def _nice_prefix() -> list[str]:
    # A wrong completion can loop until the timeout, burning a core that the model needs: on a
    # 2-core machine that would show up as model latency, so checks run at the lowest priority.
    nice = shutil.which("nice")
    return [nice, "-n", "19"] if nice else []


def run_check(program: str, timeout_s: float = CHECK_TIMEOUT_S) -> CheckStatus:
    """Run a test program in an isolated interpreter in a scratch directory; pass = exit 0."""
    with tempfile.TemporaryDirectory(prefix="nextab-check-") as scratch:
        path = Path(scratch) / "check.py"
        path.write_text(program, encoding="utf-8")
        try:
            done = subprocess.run(
                [*_nice_prefix(), sys.executable, "-I", str(path)],
                cwd=scratch,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "timeout"
    return "pass" if done.returncode == 0 else "fail"


def score(task: Task, result: TaskResult, timeout_s: float = CHECK_TIMEOUT_S) -> TaskResult:
    result.check = run_check(check_program(final_file(task, result), task), timeout_s)
    result.passed = result.check == "pass"
    return result


# --- the run ----------------------------------------------------------------------------------


def run_benchmark(
    engine: Any,
    tasks: Iterable[Task],
    mode: str,
    max_tokens: int | None = None,
    workers: int = 2,
    progress: bool = True,
    check_timeout_s: float = CHECK_TIMEOUT_S,
    decodings: Sequence[str] = (),
) -> list[TaskResult]:
    """Complete every task in turn; the checks run beside the model, `workers` at a time.

    With several `decodings`, each task is completed once per strategy, one right after the
    other, so that the strategies' latencies see the same machine state. Each request names
    its strategy: switching the engine's would load and drop a two-model strategy's large
    model at every task.

    Threads suffice for the pool: each one only waits on its `python -I` child, and a
    process pool would fork a copy of the loaded model.
    """
    from dataclasses import replace

    from tqdm import tqdm

    tasks = list(tasks)
    config = getattr(engine, "config", None)
    if config is not None and not config.needs_large:
        # The large model is loaded once, for the whole run, if any strategy needs it.
        paired = [c for c in (replace(config, decoding=d) for d in decodings) if c.needs_large]
        if paired:
            engine.reconfigure(paired[0])
    results: list[TaskResult] = []
    futures: list[Future[TaskResult]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="check") as pool:
        for task in tqdm(
            tasks, desc="complete", unit="task", file=sys.stderr, disable=not progress
        ):
            for decoding in decodings or [None]:
                result = run_task(engine, task, mode, max_tokens, decoding)
                results.append(result)
                futures.append(pool.submit(score, task, result, check_timeout_s))
        for future in tqdm(
            futures, desc="check", unit="task", file=sys.stderr, disable=not progress
        ):
            future.result()
    return results


def warm_up(engine: Any) -> None:
    """One throwaway request, so one-time start-up costs do not land on the first task."""
    run_task(engine, Task("warm-up", "def add(a, b):\n", "\n", "", "", ""), "line", 4)


# --- summary ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 3) if theirs else None


def baseline_block(
    summary: dict[str, Any], set_name: str, every: int, limit: int | None
) -> dict[str, Any]:
    latency = summary["latency_ms"]
    return {
        **BASELINE,
        # The ratios only mean something over the same tasks the baseline was measured on.
        "comparable": (set_name, every, limit, summary["n"])
        == (BASELINE["set"], BASELINE["every"], BASELINE["limit"], BASELINE["limit"]),
        "ratios": {
            "exact_match": _ratio(summary["exact_match"], BASELINE["exact_match"]),
            "pass_at_1": _ratio(summary["pass_at_1"], BASELINE["pass_at_1"]),
            "latency_p50": _ratio(latency["p50"], BASELINE["latency_p50_ms"]),
        },
    }


def summarise(results: Sequence[TaskResult]) -> dict[str, Any]:
    n = len(results)
    totals = [r.total_ms for r in results]
    return {
        "n": n,
        "exact_match": round(sum(r.exact for r in results) / n, 4) if n else 0.0,
        "exact_match_indented": round(sum(r.exact_indented for r in results) / n, 4) if n else 0.0,
        "pass_at_1": round(sum(bool(r.passed) for r in results) / n, 4) if n else 0.0,
        "check_timeouts": sum(r.check == "timeout" for r in results),
        "latency_ms": {
            "p50": round(percentile(totals, 50), 1),
            "p95": round(percentile(totals, 95), 1),
            "mean": round(_mean(totals), 1),
        },
        "tokens": {
            "prompt_mean": round(_mean([r.prompt_tokens for r in results]), 1),
            "reused_mean": round(_mean([r.reused_tokens for r in results]), 1),
            "generated_mean": round(_mean([r.generated_tokens for r in results]), 2),
        },
        "prefill_ms_mean": round(_mean([r.prefill_ms for r in results]), 1),
        "decode_ms_mean": round(_mean([r.decode_ms for r in results]), 1),
        "decoding": {
            # Per generated token: how often the strategy stopped to compare candidates, and
            # how many tokens the model ran after the prompt (just under 1 for greedy, which
            # never runs its last token).
            "paused_per_token": round(
                sum(r.paused_steps for r in results) / max(1, sum(r.generated_tokens for r in results)), 4
            ),
            "evaluated_per_token": round(
                sum(r.evaluated_tokens for r in results)
                / max(1, sum(r.generated_tokens for r in results)),
                3,
            ),
            # Prompt lookup: the share of drafted tokens the model took, and of generated
            # tokens that came from taken drafts.
            "draft_acceptance": round(
                sum(r.accepted_tokens for r in results) / max(1, sum(r.drafted_tokens for r in results)), 4
            ),
            "accepted_per_token": round(
                sum(r.accepted_tokens for r in results) / max(1, sum(r.generated_tokens for r in results)), 4
            ),
            # Two-model decoding: the share of generated tokens the large model decided, and
            # the completions where it could not take part.
            "large_share": round(
                sum(r.large_tokens for r in results) / max(1, sum(r.generated_tokens for r in results)), 4
            ),
            "fallbacks": dict(Counter(r.fallback for r in results if r.fallback)),
        },
        "stop_reasons": dict(Counter(r.stop_reason for r in results)),
        "modes": dict(Counter(r.mode for r in results)),
        "empty_completions": sum(not r.completion.strip() for r in results),
    }


def _summaries(results: Sequence[TaskResult], decodings: Sequence[str] | None) -> dict[str, Any]:
    if not decodings or len(decodings) == 1:
        return summarise(results)
    by = {d: summarise([r for r in results if r.decoding == d]) for d in decodings}
    base = by[decodings[0]]
    return {
        "by_decoding": by,
        # Each strategy against the first one named, measured on the same tasks in the same run.
        f"vs_{decodings[0]}": {
            d: {
                "pass_at_1": round(s["pass_at_1"] - base["pass_at_1"], 4),
                "exact_match": round(s["exact_match"] - base["exact_match"], 4),
                "latency_p50_ratio": _ratio(s["latency_ms"]["p50"], base["latency_ms"]["p50"]),
                "latency_p95_ratio": _ratio(s["latency_ms"]["p95"], base["latency_ms"]["p95"]),
                "decode_ms_ratio": _ratio(s["decode_ms_mean"], base["decode_ms_mean"]),
            }
            for d, s in by.items()
        },
    }


def task_records(results: Iterable[TaskResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", choices=list(SETS), default="single", dest="set_name")
    p.add_argument("--every", type=int, default=6, help="take every Nth task (default 6)")
    p.add_argument("--limit", type=int, default=150, help="at most this many tasks (default 150)")
    p.add_argument("--model", default="embedded", help='as the "model" setting (default embedded)')
    p.add_argument(
        "--mode",
        choices=["auto", "line", "block"],
        default=None,
        help="requested completion mode (default: line for --set single, auto otherwise)",
    )
    p.add_argument("--max-tokens", type=int, default=None, help="per request (default: config's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "split"])
    p.add_argument(
        "--settings",
        default=None,
        help='JSON settings as an editor sends them, e.g. \'{"completion": {"middleLines": 0}}\'',
    )
    p.add_argument("--workers", type=int, default=2, help="test programs run at once (default 2)")
    p.add_argument("--out", type=Path, default=None, help="write the summary and per-task records")
    p.add_argument(
        "--data-dir",
        default=None,
        help=f"default: ${DATA_DIR_ENV}, else {DEFAULT_DATA_DIR}",
    )
    p.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the llama.cpp comparison block (default on)",
    )
    p.add_argument(
        "--decoding",
        nargs="+",
        choices=list(DECODERS),
        default=None,
        help="compare these strategies task by task in one run (default: the config's one)",
    )
    p.add_argument(
        "--lookup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="prompt-lookup drafts for completions (default on; --no-lookup: plain decoding)",
    )
    p.add_argument(
        "--oracle",
        action="store_true",
        help="score the canonical solutions instead of the model (checks the harness: all pass)",
    )
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> Any:
    from nextab.config import Config, load

    config = Config(model=args.model, device=args.device, dtype=args.dtype, backend=args.backend)
    if args.settings:
        config, errors = load(json.loads(args.settings), base=config)
        if errors:
            raise SystemExit("\n".join(errors))
    return config


def oracle_results(tasks: Sequence[Task], workers: int) -> list[TaskResult]:
    def canonical(task: Task) -> TaskResult:
        return TaskResult(
            task.task_id, task.canonical, task.canonical, True, True, None, None,
            0.0, 0, 0, 0, 0.0, 0.0, "oracle", "oracle", 0,
        )  # fmt: skip

    results = [canonical(t) for t in tasks]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(score, tasks, results))
    return results


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not on Windows
        return None


def _command_line(argv: Sequence[str] | None) -> str:
    words = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "benchmarks/fim_humaneval.py", *words])


def main(
    argv: Sequence[str] | None = None,
    load_engine: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    args = parse_args(argv)
    mode = args.mode or default_mode(args.set_name)
    directory = data_dir(args.data_dir)
    tasks = load_tasks(args.set_name, args.every, args.limit, directory)
    started = time.perf_counter()
    load_before = _load_average()
    engine_info: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    if args.oracle:
        results = oracle_results(tasks, args.workers)
    else:
        from nextab.config import to_settings
        from nextab.engine import Engine

        config = build_config(args)
        engine = (load_engine or Engine.load)(config)
        if not args.lookup:
            engine.lookup = None
        info = engine.backend.info
        engine_info = {"model": info.name, "device": info.device, "dtype": info.dtype}
        settings = to_settings(engine.config)
        engine_info["load_s"] = round(time.perf_counter() - started, 1)
        warm_up(engine)
        run_started = time.perf_counter()
        if "adadec" in (args.decoding or [engine.config.decoding]):
            threshold = engine.config.adadec.threshold or engine.learned_threshold
            if threshold is None:
                raise SystemExit("AdaDec has no threshold for this model: run `nextab calibrate`")
            engine_info["adadec_threshold"] = threshold
        results = run_benchmark(
            engine, tasks, mode, args.max_tokens, args.workers, decodings=args.decoding or ()
        )
        engine_info["run_s"] = round(time.perf_counter() - run_started, 1)
    summary = {
        "set": args.set_name,
        "file": str(directory / SETS[args.set_name]),
        "every": args.every,
        "limit": args.limit,
        "mode": mode,
        "max_tokens": args.max_tokens or settings.get("maxTokens"),
        **_summaries(results, args.decoding),
        "wall_s": round(time.perf_counter() - started, 1),
        "engine": engine_info,
        # Latency is only as good as the machine was quiet: other work shows in the load average.
        "host": {"cpus": os.cpu_count(), "load_avg_1m": [load_before, _load_average()]},
        "config": settings,
        "oracle": args.oracle,
        "command": _command_line(argv),
    }
    if args.baseline:
        first = summary["by_decoding"][args.decoding[0]] if "by_decoding" in summary else summary
        summary["baseline"] = baseline_block(first, args.set_name, args.every, args.limit)
    if args.out is not None:
        args.out.write_text(
            json.dumps({"summary": summary, "tasks": task_records(results)}, indent=1) + "\n",
            encoding="utf-8",
        )
    return summary


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
