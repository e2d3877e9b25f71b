"""Latency on the keystroke path: a developer types a line, a suggestion is asked for per key.

Real files (the standard library's own sources by default) are opened with one line's code
removed; the line is then typed a character at a time and the engine is asked for a completion
after every key, on the same document, as an editor would. The baseline, measured in the same
run at the same states, is the same request on a fresh document (no KV cache to reuse), which
is what every request would cost without prefix KV reuse. Prints one JSON object.

    python benchmarks/keystroke_latency.py --positions 8 --keys 6
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shlex
import statistics
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nextab.config import Config, load, to_settings
from nextab.context.document import Document
from nextab.engine import CompletionRequest, Engine, Suggestion

DEFAULT_FILES = ("textwrap.py", "json/decoder.py", "shlex.py", "fractions.py")


@dataclass(frozen=True)
class Position:
    path: Path
    text: str  # the file with the line's code removed
    offset: int  # where the line's code starts
    code: str  # what the developer will type there


def pick_positions(files: list[Path], count: int, seed: int) -> list[Position]:
    """Lines of ordinary code (not comments, not too short) well inside their file."""
    rng = random.Random(seed)
    candidates: list[Position] = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        starts = [0, *(i + 1 for i, c in enumerate(text) if c == "\n")]
        for start, end in itertools.pairwise(starts):
            line = text[start : end - 1]
            code = line.lstrip()
            if len(code) < 12 or code.startswith(("#", '"', "'")) or start < 2000:
                continue
            offset = start + len(line) - len(code)
            candidates.append(Position(path, text[:offset] + text[end - 1 :], offset, code))
    return rng.sample(candidates, min(count, len(candidates)))


def request(doc: Document, text: str, offset: int, path: Path) -> CompletionRequest:
    return CompletionRequest(document=doc, offset=offset, text=text, path=path.name)


def typed_states(position: Position, keys: int) -> list[tuple[str, int]]:
    states = []
    for n in range(1, keys + 1):
        typed = position.code[:n]
        text = position.text[: position.offset] + typed + position.text[position.offset :]
        states.append((text, position.offset + n))
    return states


def run_position(engine: Engine, position: Position, keys: int) -> dict[str, Any]:
    doc = Document(position.path.as_uri(), position.text)
    first = engine.complete(request(doc, position.text, position.offset, position.path))
    warm: list[Suggestion] = []
    cold: list[Suggestion] = []
    for text, offset in typed_states(position, keys):
        doc.apply_change(text)
        warm.append(engine.complete(request(doc, text, offset, position.path)))
        fresh = Document(position.path.as_uri() + "#cold", text)
        cold.append(engine.complete(request(fresh, text, offset, position.path)))
    return {
        "file": position.path.name,
        "line_code": position.code[:60],
        "first_ms": first.metrics.total_ms,
        "warm_ms": [s.metrics.total_ms for s in warm],
        "cold_ms": [s.metrics.total_ms for s in cold],
        "warm_prefill_ms": [s.metrics.prefill_ms for s in warm],
        "cold_prefill_ms": [s.metrics.prefill_ms for s in cold],
        "warm_new_tokens": [s.metrics.prompt_tokens - s.metrics.reused_tokens for s in warm],
        "prompt_tokens": [s.metrics.prompt_tokens for s in warm],
        "same_text": sum(w.text == c.text for w, c in zip(warm, cold, strict=True)),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    def stats(key: str) -> dict[str, float]:
        values = [v for r in records for v in r[key]]
        return {
            "p50": round(percentile(values, 0.5), 1),
            "p95": round(percentile(values, 0.95), 1),
            "mean": round(statistics.fmean(values), 1),
        }

    warm, cold = stats("warm_ms"), stats("cold_ms")
    keystrokes = sum(len(r["warm_ms"]) for r in records)
    return {
        "positions": len(records),
        "keystrokes": keystrokes,
        "warm_ms": warm,
        "cold_ms": cold,
        "warm_prefill_ms": stats("warm_prefill_ms"),
        "cold_prefill_ms": stats("cold_prefill_ms"),
        "warm_new_tokens": stats("warm_new_tokens"),
        "prompt_tokens": stats("prompt_tokens"),
        "ratio_warm_to_cold": {
            "p50": round(warm["p50"] / cold["p50"], 3),
            "mean": round(warm["mean"] / cold["mean"], 3),
        },
        "warm_equals_cold_text": round(sum(r["same_text"] for r in records) / keystrokes, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="source files (default: stdlib modules)")
    parser.add_argument("--positions", type=int, default=8)
    parser.add_argument("--keys", type=int, default=6, help="characters typed per position")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--settings", help="JSON settings as an editor sends them")
    args = parser.parse_args(argv)

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = args.files or [stdlib / name for name in DEFAULT_FILES]
    config = Config(model=args.model, device=args.device, max_tokens=args.max_tokens)
    if args.settings:
        config, errors = load(json.loads(args.settings), base=config)
        if errors:
            raise SystemExit("\n".join(errors))
    started = time.perf_counter()
    engine = Engine.load(config, progress=True)
    loaded = time.perf_counter()
    records = []
    for i, position in enumerate(pick_positions(files, args.positions, args.seed), start=1):
        records.append(run_position(engine, position, args.keys))
        print(f"position {i}/{args.positions}: {records[-1]['line_code']!r}", file=sys.stderr)
    info = engine.backend.info
    result = {
        "benchmark": "keystroke_latency",
        "command": shlex.join([sys.executable, *sys.argv]),
        "model": info.name,
        "device": info.device,
        "dtype": info.dtype,
        "load_s": round(loaded - started, 1),
        "config": to_settings(config),
        "summary": summarise(records),
        "positions": records,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
