"""Two runs of fim_humaneval.py (`--out` files) compared task by task: how often they give the
same completion, and each one's exact match and pass@1 on the tasks both ran. What
"the onnxruntime backend agrees with torch" is measured with:

    python benchmarks/fim_humaneval.py --backend torch --out torch.json
    python benchmarks/fim_humaneval.py --backend onnx --out onnx.json
    python benchmarks/compare_runs.py torch.json onnx.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def records(path: Path, decoding: str | None) -> dict[str, dict[str, Any]]:
    tasks = json.loads(path.read_text(encoding="utf-8"))["tasks"]
    return {
        t["task_id"]: t
        for t in tasks
        if decoding is None or t.get("decoding", "greedy") == decoding
    }


def compare(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, Any]:
    shared = sorted(set(a) & set(b))
    if not shared:
        raise SystemExit("the runs have no task in common")
    same = [t for t in shared if a[t]["completion"] == b[t]["completion"]]
    def score(run: dict[str, dict[str, Any]], key: str) -> float:
        return round(sum(bool(run[t][key]) for t in shared) / len(shared), 4)
    return {
        "tasks": len(shared),
        "identical_completions": len(same),
        "agreement": round(len(same) / len(shared), 4),
        "exact_match": {"a": score(a, "exact"), "b": score(b, "exact")},
        "pass_at_1": {"a": score(a, "passed"), "b": score(b, "passed")},
        "both_pass_differ": sum(
            1 for t in shared if t not in same and a[t]["passed"] and b[t]["passed"]
        ),
        "differing": [t for t in shared if t not in same][:50],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--decoding", default="greedy", help="compare this strategy's records (default greedy)")
    args = p.parse_args(argv)
    result = compare(records(args.a, args.decoding), records(args.b, args.decoding))
    print(json.dumps({"a": str(args.a), "b": str(args.b), **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
