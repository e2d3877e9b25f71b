"""Batch completion throughput: completions per second at several batch sizes, one run.

The rows are HumanEval infilling tasks (prefix + suffix): `--set single` (line mode; the
prompt's pre-fill dominates on a CPU) or `--set multi` (multi-line mode; decoding dominates),
written as `nextab batch` input; each batch size runs the same rows through `nextab.batch.run_job` (the
code behind `nextab batch`) on one engine loaded once, after one untimed warm-up batch. Also
reported: how many completions agree with the batch-1 run (padding changes float rounding,
which may flip a near-tie), and exact match against the canonical line.

    python benchmarks/batch_throughput.py --rows 32 --sizes 1,8,32
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fim_humaneval import data_dir, is_exact, load_tasks

from nextab.batch import Job, local_runner, run_job
from nextab.config import load, to_settings
from nextab.engine import Engine


def write_input(path: Path, set_name: str, rows: int, every: int, directory: Path) -> dict[str, str]:
    tasks = load_tasks(set_name, every, rows, directory)
    mode = "line" if set_name == "single" else "multiline"
    with path.open("w", encoding="utf-8") as out:
        for i, task in enumerate(tasks):
            row = {"id": f"{i}:{task.task_id}", "prefix": task.prompt, "suffix": task.suffix, "mode": mode}
            out.write(json.dumps(row) + "\n")
    return {f"{i}:{task.task_id}": task.canonical for i, task in enumerate(tasks)}


def run_size(engine: Engine, source: Path, folder: Path, size: int) -> tuple[dict[str, Any], list[dict]]:
    job = Job(source, folder / f"out-{size}.jsonl", size, resume=False, root=folder)
    started = time.perf_counter()
    summary = run_job(job, engine.config, local_runner(engine), progress=False)
    elapsed = time.perf_counter() - started
    outputs = [json.loads(line) for line in job.output.read_text().splitlines()]
    latencies = sorted(o["latency_s"] for o in outputs if o["error"] is None)
    return {
        "batch_size": size,
        "rows": summary["rows"],
        "errors": summary["errors"],
        "elapsed_s": round(elapsed, 2),
        "completions_per_s": round(summary["rows"] / elapsed, 3),
        "latency_s_p50": latencies[len(latencies) // 2] if latencies else None,
    }, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["single", "multi"], default="single")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--every", type=int, default=31, help="task stride over the set")
    parser.add_argument("--sizes", default="1,8,32")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--backend", default="auto", help="auto, torch, onnx or split")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    config, messages = load({"model": args.model, "device": args.device, "dtype": args.dtype,
                             "backend": args.backend, "maxTokens": args.max_tokens})
    for message in messages:
        print(message, file=sys.stderr)
    engine = Engine.load(config)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        source = folder / "rows.jsonl"
        canonical = write_input(source, args.set, args.rows, args.every, data_dir(args.data_dir))
        warm = folder / "warm.jsonl"
        warm.write_text("".join(source.read_text().splitlines(keepends=True)[:2]))
        run_job(Job(warm, folder / "warm-out.jsonl", 2, False, folder), config,
                local_runner(engine), progress=False)
        results, outputs = [], {}
        for size in sizes:
            print(f"batch size {size}...", file=sys.stderr)
            found, outputs[size] = run_size(engine, source, folder, size)
            results.append(found)
    base = results[0]
    reference = {o["id"]: o["completion"] for o in outputs[sizes[0]]}
    for found, size in zip(results, sizes, strict=True):
        found[f"speedup_vs_batch_{sizes[0]}"] = round(
            found["completions_per_s"] / base["completions_per_s"], 2
        )
        same = sum(o["completion"] == reference[o["id"]] for o in outputs[size])
        found[f"same_as_batch_{sizes[0]}"] = round(same / len(outputs[size]), 3)
        exact = sum(is_exact(o["completion"] or "", canonical[o["id"]]) for o in outputs[size])
        found["exact_match"] = round(exact / len(outputs[size]), 3)
    info = engine.backend.info
    print(json.dumps({
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "model": info.name,
        "device": info.device,
        "dtype": info.dtype,
        "set": args.set,
        "settings": {k: v for k, v in to_settings(config).items() if k in ("maxTokens", "decoding")},
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
