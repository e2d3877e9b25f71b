"""Two-model decoding against each model alone: quality and latency in one table.

    python benchmarks/two_model_table.py humaneval --set single --every 3 --limit 50 --out single.json
    python benchmarks/two_model_table.py humaneval --set multi --every 12 --limit 30 --out multi.json
    python benchmarks/two_model_table.py replay --positions 4 --out replay.json
    python benchmarks/two_model_table.py table single.json multi.json replay.json

The variants (`--variants`, default all): `small` (the 0.5B greedy), `small-adadec` (the
0.5B's AdaDec), `large` (the 1.5B greedy: the speculative strategy with no drafts, so it is
the same engine path, the 1.5B's own cache per document), `speculative` (the 0.5B drafts, the
1.5B checks), `ead-T` (entropy-adaptive switching at threshold T nats; `--ead` names the
thresholds) and `adadec-large` (the 0.5B's AdaDec with the 1.5B scoring its branches).

`humaneval`: HumanEval infilling through the engine (`fim_humaneval.py`'s tasks, scoring and
summary). Both models are loaded once. Each task is a keystroke: the document is opened as it
stood one keystroke before the hole (Enter, where the hole starts a new line; else its last
character) and both models read it (two untimed one-token requests; the first time is the
file's cold read, reported apart as `prime_ms`). Then each variant in turn types the keystroke
and completes the hole, after the two models are brought back to the text before it, and with
no suggestion left that typing ahead could serve: the latency is a *warm keystroke* the model
has to answer (the keystroke's few tokens, then the decoding), where an editor's waits are,
one sample per task and variant, each on the same prompt.

`replay`: the typing replay of `latency.py` (a real `nextab serve` per variant, driven over
LSP by a typing client, cancellation included), one server per variant, each with
`decoding` and the variant's settings in its initializationOptions; its `warm_single` figures
are the warm-keystroke latency the two-model issue is judged on. No llama.cpp peer.

`table`: the JSON files of the other two merged into one markdown table on stdout.

Each prints one JSON object on stdout (the table: markdown), progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fim_humaneval as fh

from nextab.bench_accept import merge

DEFAULT_EAD = (0.5, 0.75, 1.0, 1.66)
BASE_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "small": ("greedy", {}),
    "small-adadec": ("adadec", {}),
    "large": ("speculative", {"speculative": {"maxDraft": 0}}),
    "speculative": ("speculative", {}),
    "adadec-large": ("adadec", {"adadec": {"scorer": "large"}}),
}
# The table's row order: each model alone, then the pair.
ORDER = ("small", "small-adadec", "large", "speculative", "ead-", "adadec-large")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    decoding: str
    settings: dict[str, Any]  # merged over the run's own settings

    def options(self, base: dict[str, Any]) -> dict[str, Any]:
        """initializationOptions for a server running this variant."""
        return merge(merge(base, self.settings), {"decoding": self.decoding})


def ead_name(threshold: float) -> str:
    return f"ead-{threshold:g}"


def variants(names: Sequence[str] | None, ead: Sequence[float]) -> list[Variant]:
    """The named variants in table order (all by default); `ead-T` for any T is accepted."""
    known = {name: Variant(name, *spec) for name, spec in BASE_VARIANTS.items()}
    for t in ead:
        known[ead_name(t)] = Variant(ead_name(t), "ead", {"ead": {"threshold": t}})
    chosen = list(known) if not names else list(names)
    out = []
    for name in chosen:
        if name in known:
            out.append(known[name])
        elif name.startswith("ead-"):
            try:
                threshold = float(name[4:])
            except ValueError:
                raise SystemExit(f"{name}: ead- takes a threshold in nats, e.g. ead-1.0") from None
            out.append(Variant(name, "ead", {"ead": {"threshold": threshold}}))
        else:
            raise SystemExit(f"unknown variant {name!r}: one of {', '.join(known)} or ead-T")
    return sorted(out, key=_row_key)


def _row_key(v: Variant) -> tuple[int, float]:
    for i, prefix in enumerate(ORDER):
        if v.name == prefix or (prefix.endswith("-") and v.name.startswith(prefix)):
            # EAD from the highest threshold (closest to the small model) down.
            return i, -float(v.name[4:]) if prefix == "ead-" else 0.0
    return len(ORDER), 0.0


# --- HumanEval --------------------------------------------------------------------------------


def variant_config(base: Any, variant: Variant) -> Any:
    """The engine's config while `variant` runs. Its strategy stays a two-model one whatever
    the variant's, so that switching settings between variants never drops the large model;
    the variant's strategy goes with each request."""
    from nextab.config import load

    config, errors = load(variant.settings, base=base)
    if errors:
        raise SystemExit("\n".join(errors))
    return dataclasses.replace(config, decoding="speculative")


def keystroke_cut(prompt: str) -> int:
    """Where the document stood one keystroke before the hole: before the line break when the
    hole starts a new line (Enter, the editor indenting), else before the last character."""
    line_start = prompt.rfind("\n") + 1
    if line_start and not prompt[line_start:].strip():
        return line_start - 1
    return max(0, len(prompt) - 1)


def prime(engine: Any, task: fh.Task, document: Any, cut: int, mode: str) -> None:
    """A one-token request each at `cut`: the small model's reads the text, then the large
    model's (speculative decoding drafts nothing for one token)."""
    from nextab.engine import CompletionRequest

    text = task.prompt[:cut] + task.suffix
    for strategy in ("greedy", "speculative"):
        engine.complete(CompletionRequest(document, cut, text, mode=mode, max_tokens=1, decoding=strategy))


def run_humaneval(engine: Any, tasks: Sequence[fh.Task], chosen: Sequence[Variant], mode: str,
                  max_tokens: int | None, workers: int) -> tuple[list[fh.TaskResult], list[float]]:  # fmt: skip
    from tqdm import tqdm

    base = engine.config
    configs = {v.name: variant_config(base, v) for v in chosen}
    results: list[fh.TaskResult] = []
    prime_ms: list[float] = []
    futures: list[Future[fh.TaskResult]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="check") as pool:
        for task in tqdm(tasks, desc="complete", unit="task", file=sys.stderr):
            document = fh.task_document(task)
            cut = keystroke_cut(task.prompt)
            try:
                for i, variant in enumerate(chosen):
                    engine.reconfigure(configs[variant.name])
                    started = time.perf_counter()
                    # Both models back to the text before the keystroke (the first time, the
                    # file's cold read, reported apart), with no suggestion to type ahead in:
                    # the measured request is one keystroke the model has to answer.
                    prime(engine, task, document, cut, mode)
                    document.given = None
                    if i == 0:
                        prime_ms.append((time.perf_counter() - started) * 1000)
                    result = fh.complete_in(engine, task, document, mode, max_tokens, variant.decoding)
                    result.decoding = variant.name
                    results.append(result)
                    futures.append(pool.submit(fh.score, task, result))
            finally:
                engine.forget(document)
        for future in tqdm(futures, desc="check", unit="task", file=sys.stderr):
            future.result()
    engine.reconfigure(base)
    return results, prime_ms


def humaneval_main(args: argparse.Namespace) -> dict[str, Any]:
    from nextab.config import Config, load, to_settings
    from nextab.engine import Engine

    chosen = variants(args.variants, args.ead)
    mode = args.mode or fh.default_mode(args.set_name)
    tasks = fh.load_tasks(args.set_name, args.every, args.limit, fh.data_dir(args.data_dir))
    config = Config(model=args.model, backend=args.backend, decoding="speculative",
                    large_model=args.large_model)  # fmt: skip
    # No catch-up limit: the priming request is where the large model reads the prompt (an
    # editor's idle warming does that in the background).
    settings = merge({"pair": {"catchUpTokens": None}}, json.loads(args.settings) if args.settings else {})
    config, errors = load(settings, base=config)
    if errors:
        raise SystemExit("\n".join(errors))
    started = time.perf_counter()
    engine = Engine.load(config)
    if engine.large is None:
        raise SystemExit(f"the large model {args.large_model!r} did not load: {engine.take_notices()}")
    load_s = time.perf_counter() - started
    if any(v.decoding == "adadec" for v in chosen) and not (
        config.adadec.threshold or engine.learned_threshold
    ):
        raise SystemExit("AdaDec has no threshold: run `nextab calibrate` or set adadec.threshold")
    fh.warm_up(engine)
    load_before = fh._load_average()
    results, prime_ms = run_humaneval(engine, tasks, chosen, mode, args.max_tokens, args.workers)
    by = {v.name: fh.summarise([r for r in results if r.decoding == v.name]) for v in chosen}
    summary = {
        "benchmark": "two_model_table.humaneval",
        "set": args.set_name,
        "every": args.every,
        "limit": args.limit,
        "n": len(tasks),
        "mode": mode,
        "variants": {v.name: {"decoding": v.decoding, "settings": v.settings} for v in chosen},
        "by_variant": by,
        "prime_ms": {
            "p50": round(fh.percentile(prime_ms, 50), 1),
            "p95": round(fh.percentile(prime_ms, 95), 1),
        },
        "engine": {
            "model": engine.backend.info.name,
            "large_model": engine.large.info.name,
            "dtype": engine.backend.info.dtype,
            "device": engine.backend.info.device,
            "adadec_threshold": config.adadec.threshold or engine.learned_threshold,
            "load_s": round(load_s, 1),
        },
        "host": {"cpus": os.cpu_count(), "load_avg_1m": [load_before, fh._load_average()]},
        "config": to_settings(config),
        "command": shlex.join(["python", "benchmarks/two_model_table.py", *sys.argv[1:]]),
    }
    if args.out:
        records = fh.task_records(results)
        Path(args.out).write_text(json.dumps({"summary": summary, "tasks": records}, indent=1) + "\n")
    return summary


# --- typing replay ----------------------------------------------------------------------------


def replay_argv(args: argparse.Namespace, chosen: Sequence[Variant]) -> list[str]:
    """latency.py's command line for these variants, one configuration each."""
    base = json.loads(args.settings) if args.settings else {}
    base = merge(base, {"largeModel": args.large_model, "backend": args.backend})
    argv = ["--no-peer", "--model", args.model, "--positions", str(args.positions),
            "--keys", str(args.keys), "--seed", str(args.seed), "--settle", str(args.settle)]  # fmt: skip
    for v in chosen:
        argv += ["--config", f"{v.name}={json.dumps(v.options(base))}"]
    if args.out:
        argv += ["--out", str(Path(args.out).with_suffix(".requests.jsonl"))]
    return argv


def replay_main(args: argparse.Namespace) -> dict[str, Any]:
    import latency

    chosen = variants(args.variants, args.ead)
    parser = argparse.ArgumentParser()
    latency.add_arguments(parser)
    result = asyncio.run(latency.run_all(parser.parse_args(replay_argv(args, chosen))))
    result["benchmark"] = "two_model_table.replay"
    result["command"] = shlex.join(["python", "benchmarks/two_model_table.py", *sys.argv[1:]])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


# --- the table --------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def table_rows(files: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per variant, the HumanEval sets and the replay as column groups."""
    humaneval = [f for f in files if f.get("benchmark") == "two_model_table.humaneval"]
    replays = [f for f in files if f.get("benchmark") == "two_model_table.replay"]
    names: list[str] = []
    for f in humaneval:
        names += [n for n in f["by_variant"] if n not in names]
    for f in replays:
        names += [n for n in f["configs"] if n not in names]
    header = ["variant"]
    for f in humaneval:
        tag = f"{f['set']} ({f['n']})"
        header += [f"{tag} EM", f"{tag} pass@1", f"{tag} keystroke p50 ms", f"{tag} p95 ms",
                   f"{tag} x small p50", f"{tag} 1.5B share"]
    for _ in replays:
        header += ["keystroke p50 ms", "keystroke p95 ms", "x small p50", "keystroke 1.5B share"]
    rows = []
    for name in names:
        row = [name]
        for f in humaneval:
            s, small = f["by_variant"].get(name), f["by_variant"].get("small")
            if s is None:
                row += ["-"] * 6
                continue
            p50 = s["latency_ms"]["p50"]
            ratio = _fmt(p50 / small["latency_ms"]["p50"], 2) if small and p50 else "-"
            row += [_fmt(s["exact_match"]), _fmt(s["pass_at_1"]), _ms(p50), _ms(s["latency_ms"]["p95"]),
                    ratio, _fmt(s["decoding"]["large_share"], 2)]  # fmt: skip
        for f in replays:
            row += replay_cells(f, name)
        rows.append(row)
    return header, rows


def replay_cells(replay: dict[str, Any], name: str) -> list[str]:
    entry = replay["configs"].get(name, {})
    warm = entry.get("summary", {}).get("warm_single", {}).get("fresh_latency_ms")
    if not warm:
        return ["-"] * 4
    small = replay["configs"].get("small", {}).get("summary", {}).get("warm_single", {})
    small_p50 = (small.get("fresh_latency_ms") or {}).get("p50")
    share = entry.get("server", {}).get("large_share")
    return [_ms(warm["p50"]), _ms(warm["p95"]),
            _fmt(warm["p50"] / small_p50, 2) if small_p50 and warm["p50"] else "-",
            _fmt(share, 2)]  # fmt: skip


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def table_main(args: argparse.Namespace) -> str:
    files = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.files]
    # The humaneval files keep the summary beside the per-task records.
    return markdown(*table_rows([f.get("summary", f) for f in files]))


# --- command line ----------------------------------------------------------------------------


def _shared(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variants", nargs="+", default=None, help="default: all (see above)")
    p.add_argument("--ead", nargs="+", type=float, default=list(DEFAULT_EAD),
                   help=f"EAD thresholds, nats (default {' '.join(map(str, DEFAULT_EAD))})")  # fmt: skip
    p.add_argument("--model", default="embedded")
    p.add_argument("--large-model", default="qwen2.5-coder-1.5b")
    p.add_argument("--backend", default="onnx", choices=["auto", "torch", "onnx", "split"])
    p.add_argument("--settings", default=None, help="JSON settings under every variant's")
    p.add_argument("--out", default=None, help="write the result (JSON) here too")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    he = sub.add_parser("humaneval", help="HumanEval infilling, every variant per task")
    _shared(he)
    he.add_argument("--set", choices=list(fh.SETS), default="single", dest="set_name")
    he.add_argument("--every", type=int, default=6)
    he.add_argument("--limit", type=int, default=150)
    he.add_argument("--mode", choices=["auto", "line", "block"], default=None)
    he.add_argument("--max-tokens", type=int, default=None)
    he.add_argument("--workers", type=int, default=2)
    he.add_argument("--data-dir", default=None)
    rp = sub.add_parser("replay", help="latency.py's typing replay, one server per variant")
    _shared(rp)
    rp.add_argument("--positions", type=int, default=4)
    rp.add_argument("--keys", type=int, default=10)
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--settle", type=float, default=60.0,
                    help="seconds after each place's cold answer before typing (default 60: the "
                    "1.5B catches up with a 1.5k-token prompt in ~50 s on a 2-core CPU)")  # fmt: skip
    tb = sub.add_parser("table", help="merge the JSON results into one markdown table")
    tb.add_argument("files", nargs="+")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "table":
        print(table_main(args))
    elif args.command == "humaneval":
        print(json.dumps(humaneval_main(args), indent=2))
    else:
        print(json.dumps(replay_main(args), indent=2))


if __name__ == "__main__":
    main()
