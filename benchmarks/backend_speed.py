"""Raw speed of each model backend on this machine: pre-fill, decode, draft checks, lookahead.

The same prompt (real code, ~1k tokens) through each backend's `forward`, as the decoders call
it: pre-fill in 256-token chunks on a fresh cache, then greedy decode steps, then a forward of
1 + k drafted tokens (what checking a prompt-lookup draft costs), then one token-tree level of
3 branches, then a whole AdaDec pause (3 branches rolled out 5 tokens: `pause_3x5_ms`, the
cache already known to the tree, as at every pause but a decoding's first). Prints one JSON object, with every figure also as a ratio to the
first backend listed, measured in the same run.

    python benchmarks/backend_speed.py --backends torch,onnx-int4,onnx-int8 --tokens 1024
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from nextab.models.backend import Backend
from nextab.models.loading import load_backend
from nextab.models.resolve import resolve_model


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# The real models' shapes, for timing where their weights are not at hand (a GPU machine with
# no network): a step's time does not depend on the weights' values.
SHAPES: dict[str, dict[str, Any]] = {
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
             "num_attention_heads": 14, "num_key_value_heads": 2},
    "1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
             "num_attention_heads": 12, "num_key_value_heads": 2},
}  # fmt: skip


def random_model_dir(shape: str, path: Path) -> Path:
    """A Qwen2.5-Coder-shaped model with random weights and the tests' small tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.tiny import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, **SHAPES[shape],
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def prompt_ids(backend: Backend, tokens: int) -> list[int]:
    source = Path(sysconfig.get_paths()["stdlib"]) / "textwrap.py"
    ids = backend.tokenize(source.read_text(encoding="utf-8"))
    return ids[:tokens]


def timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def measure(backend: Backend, tokens: int, steps: int, reps: int) -> dict[str, Any]:
    ids = prompt_ids(backend, tokens)

    def prefill() -> Any:
        cache = backend.new_cache()
        for start in range(0, len(ids), 256):
            logits = backend.forward(cache, ids[start : start + 256])
        return cache, logits

    prefill()  # warm-up: first-run allocations and kernel selection
    prefill_ms = [timed(prefill) for _ in range(reps)]
    cache, logits = prefill()
    step_ms = []
    for _ in range(steps):
        token = int(np.argmax(logits))
        started = time.perf_counter()
        logits = backend.forward(cache, [token])
        step_ms.append((time.perf_counter() - started) * 1000)
    base = len(cache.tokens)
    verify: dict[str, float] = {}
    for k in (1, 4, 8):
        runs = []
        for _ in range(reps):
            backend.truncate(cache, base)
            runs.append(timed(lambda k=k: backend.forward(cache, ids[:k], every=True)))
        verify[f"verify_{k}_ms"] = round(statistics.median(runs), 1)
    backend.truncate(cache, base)
    tree = [timed(lambda: backend.forward_tree(cache, [1, 2, 3], [-1, -1, -1])) for _ in range(1)]

    def pause() -> None:
        # An AdaDec pause: three candidates, then a 5-token greedy rollout after each, a level
        # of three rows per depth, then back to the prompt.
        backend.truncate(cache, base)
        nodes = [0, 1, 2]
        backend.forward_tree(cache, [1, 2, 3], [-1, -1, -1])
        for depth in range(1, 5):
            backend.forward_tree(cache, [4, 5, 6], nodes)
            nodes = [3 * depth + row for row in range(3)]
        backend.truncate(cache, base)

    pause()  # the first pause on a cache sets up what later ones reuse
    lookahead = [timed(pause) for _ in range(reps)]
    return {
        "prompt_tokens": len(ids),
        "prefill_ms": round(statistics.median(prefill_ms), 1),
        "prefill_tok_s": round(len(ids) / (statistics.median(prefill_ms) / 1000), 1),
        "decode_ms_per_token": round(statistics.median(step_ms), 1),
        "decode_p95_ms": round(sorted(step_ms)[int(0.95 * (len(step_ms) - 1))], 1),
        **verify,
        "tree_3_branches_ms": round(tree[0], 1),
        "pause_3x5_ms": round(statistics.median(lookahead), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded")
    p.add_argument(
        "--random-shape", choices=sorted(SHAPES),
        help="time a model of this real shape with random weights instead of --model",
    )  # fmt: skip
    p.add_argument(
        "--backends",
        default="torch,onnx-int4",
        help="comma-separated: torch, torch-bfloat16, onnx-int4, onnx-int8, onnx-fp32, split-int4 (first is the baseline)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--tokens", type=int, default=1024, help="prompt length (default 1024)")
    p.add_argument("--steps", type=int, default=32, help="decode steps (default 32)")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    scratch = tempfile.TemporaryDirectory(prefix="nextab-random-")
    if args.random_shape:
        folder = random_model_dir(args.random_shape, Path(scratch.name) / f"qwen2.5-coder-{args.random_shape}-random")
        resolved = resolve_model(str(folder))
    else:
        resolved = resolve_model(args.model)
    results: dict[str, Any] = {}
    for name in args.backends.split(","):
        kind, _, variant = name.partition("-")
        print(f"{name}: loading", file=sys.stderr)
        backend = load_backend(
            resolved,
            backend=kind,
            device=args.device,
            dtype=variant if kind == "torch" and variant else "auto",
            precision=variant if kind in ("onnx", "split") and variant else "auto",
        )
        print(f"{name}: measuring ({backend.info.dtype})", file=sys.stderr)
        results[name] = {"dtype": backend.info.dtype, **measure(backend, args.tokens, args.steps, args.reps)}
        del backend
    first = next(iter(results.values()))
    for figures in results.values():
        figures["vs_baseline"] = {
            key: round(value / first[key], 3)
            for key, value in figures.items()
            if isinstance(value, float) and key in first and first[key]
        }
    print(
        json.dumps(
            {
                "command": shlex.join(["python", "benchmarks/backend_speed.py", *(argv or sys.argv[1:])]),
                "machine": {"cpu": cpu_name(), "cores": len(__import__("os").sched_getaffinity(0))},
                "model": resolved.name,
                "backends": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
