"""Train the next-edit location ranker (LightGBM LambdaRank) on mined cases.

Cases come from `training/mine_edits.py` (or the same layout: `../shared/data/nes`). Each is
replayed through the edit history an editor would have recorded (`EditHistory`, as the
server does), its candidate lines described by `nextab.context.location_features`, and the
lines of the expected edit marked as the answer. Repositories, not cases, are split between
training and development (`--dev`), so the dev figures are for code the ranker never saw.

    python training/train_location_ranker.py /tmp/nes/*.jsonl.gz --dev psf/requests \\
        marshmallow-code/marshmallow encode/starlette pytest-dev/pluggy \\
        --eval ../shared/data/nes/flask-dev-random.jsonl.gz ../shared/data/nes/flask-dev.jsonl.gz \\
        --out nextab/data/location_ranker.txt

Prints a JSON report (per evaluation set: candidate recall, top-1 and top-3 of the ranker and
of the structural order it replaces) and writes the model in LightGBM's text format, with the
calibration of its top score (`nextab/location_ranker.py` reads both).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from next_edit import undo  # noqa: E402

from nextab.context.edits import line_changes  # noqa: E402
from nextab.context.history import EditHistory, Hunk  # noqa: E402
from nextab.context.location_features import FEATURES, candidates  # noqa: E402
from nextab.context.locations import candidates as structural_candidates  # noqa: E402
from nextab.context.repeat import propose  # noqa: E402
from nextab.location_ranker import Calibration, LocationRanker  # noqa: E402


@dataclass
class Group:
    case_id: str
    repo: str
    lines: tuple[int, ...]
    rows: np.ndarray
    labels: np.ndarray  # 1 where the line is one the expected edit changes
    has_answer: bool  # the case expects an edit at all
    structural: tuple[bool, ...]  # whether each of the structural order's first 3 places is right


def read_cases(paths: Sequence[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)


def group_for(case: dict[str, Any]) -> Group | None:
    """The case's candidates and labels, or None where its history does not replay."""
    uri = f"file:///{case['repo']}/{case['path']}"
    hunks = [(h["start_line"], h["old_text"], h["new_text"]) for h in case["history"]]
    history = EditHistory(pause_seconds=1.0)
    try:
        text = history.replay(uri, undo(case["buffer"], hunks), [Hunk(*h) for h in hunks], now=1_000_000.0)
    except ValueError:
        return None
    if text != case["buffer"]:
        return None
    changes = line_changes(history.edits(now=2_000_000.0), uri)
    cursor_line = case["cursor"]["line"]
    proposals = propose(text, changes)
    found = candidates(text, changes, cursor_line, proposals)
    expected = case.get("expected")
    labels = np.zeros(len(found.lines), dtype=np.float32)
    structural: tuple[bool, ...] = ()
    if expected is not None:
        start, end = expected["start_line"], max(expected["end_line"], expected["start_line"] + 1)
        labels = np.array([1.0 if start <= line < end else 0.0 for line in found.lines], dtype=np.float32)
        structural = tuple(
            loc.start_line < end and start < max(loc.end_line, loc.start_line + 1)
            for loc in structural_candidates(text, changes, None, proposals, limit=3)
        )
    return Group(case["id"], case["repo"], found.lines, found.rows, labels, expected is not None, structural)


def sample(paths: Sequence[Path], per_repo: int, seed: int) -> list[dict[str, Any]]:
    by_repo: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for case in read_cases(paths):
        by_repo[case["repo"]].append(case)
    rng = random.Random(seed)
    picked: list[dict[str, Any]] = []
    for repo in sorted(by_repo):
        cases = by_repo[repo]
        rng.shuffle(cases)
        picked.extend(cases[:per_repo])
    return picked


def build(cases: Sequence[dict[str, Any]], label: str) -> list[Group]:
    started = time.perf_counter()
    groups = [g for g in (group_for(c) for c in cases) if g is not None and len(g.lines)]
    print(f"{label}: {len(groups)} of {len(cases)} cases in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return groups


def stack(groups: Sequence[Group]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    ranked = [g for g in groups if g.labels.any()]  # a group without an answer teaches no order
    if not ranked:
        return np.zeros((0, len(FEATURES)), dtype=np.float32), np.zeros(0, dtype=np.float32), []
    return (
        np.concatenate([g.rows for g in ranked]),
        np.concatenate([g.labels for g in ranked]),
        [len(g.lines) for g in ranked],
    )


def evaluate(groups: Sequence[Group], ranker: LocationRanker | None) -> dict[str, Any]:
    answerable = [g for g in groups if g.has_answer]
    top1 = top3 = base1 = base3 = recall = 0
    for g in answerable:
        recall += int(g.labels.any())
        if ranker is not None:
            order = np.argsort(-ranker.scores(g.rows), kind="stable")
            top1 += int(g.labels[order[0]] > 0)
            top3 += int(g.labels[order[:3]].any())
        # Baseline: the structural order of context/locations.py (what nextab had before).
        base1 += int(any(g.structural[:1]))
        base3 += int(any(g.structural))
    n = max(1, len(answerable))
    return {
        "cases": len(groups),
        "with_an_edit": len(answerable),
        "candidate_recall": round(recall / n, 3),
        "ranker_top1": round(top1 / n, 3),
        "ranker_top3": round(top3 / n, 3),
        "structural_top1": round(base1 / n, 3),
        "structural_top3": round(base3 / n, 3),
    }


def calibrate(groups: Sequence[Group], ranker: LocationRanker) -> Calibration:
    """Logistic fit of P(top-1 is right) on the top score and its margin over the second,
    cases expecting no edit included (their top-1 is never right)."""
    xs, ys = [], []
    for g in groups:
        scores = np.sort(ranker.scores(g.rows))[::-1]
        order = np.argsort(-ranker.scores(g.rows), kind="stable")
        margin = scores[0] - scores[1] if len(scores) > 1 else 0.0
        xs.append((scores[0], margin))
        ys.append(float(g.has_answer and g.labels[order[0]] > 0))
    x = np.array(xs, dtype=np.float64)
    y = np.array(ys)
    weights = np.zeros(3)
    design = np.column_stack([np.ones(len(x)), x])
    for _ in range(500):  # Newton steps would do; gradient descent on 3 numbers is plenty
        p = 1 / (1 + np.exp(-(design @ weights)))
        weights -= 0.5 * design.T @ (p - y) / len(y)
    return Calibration(float(weights[0]), float(weights[1]), float(weights[2]))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cases", nargs="+", type=Path, help="mined .jsonl.gz files")
    p.add_argument("--dev", nargs="+", default=[], help="repositories (owner/name) kept for development")
    p.add_argument("--eval", nargs="*", type=Path, default=[], help="more case files, only evaluated")
    p.add_argument("--per-repo", type=int, default=2500, help="cases drawn per repository")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trees", type=int, default=300)
    p.add_argument("--leaves", type=int, default=31)
    p.add_argument("--out", type=Path, default=None, help="where to write the model")
    args = p.parse_args(argv)
    import lightgbm

    cases = sample(args.cases, args.per_repo, args.seed)
    train = build([c for c in cases if c["repo"] not in args.dev], "train")
    dev = build([c for c in cases if c["repo"] in args.dev], "dev")
    x, y, sizes = stack(train)
    dx, dy, dsizes = stack(dev)
    model = lightgbm.train(
        {
            "objective": "lambdarank", "metric": "ndcg", "ndcg_eval_at": [1, 3],
            "learning_rate": 0.05, "num_leaves": args.leaves, "min_data_in_leaf": 50,
            "feature_fraction": 0.9, "bagging_fraction": 0.8, "bagging_freq": 1,
            "lambdarank_truncation_level": 10, "verbose": -1, "seed": args.seed, "num_threads": 2,
        },
        lightgbm.Dataset(x, y, group=sizes, feature_name=list(FEATURES)),
        num_boost_round=args.trees,
        valid_sets=[lightgbm.Dataset(dx, dy, group=dsizes, feature_name=list(FEATURES))] if len(dsizes) else [],
        callbacks=[lightgbm.early_stopping(30, verbose=False)] if len(dsizes) else [],
    )  # fmt: skip
    text = model.model_to_string(num_iteration=model.best_iteration or None)
    ranker = LocationRanker.from_text(text, Calibration(0.0, 0.0, 0.0))
    ranker = LocationRanker.from_text(text, calibrate(dev or train, ranker))
    report: dict[str, Any] = {
        "trees": ranker.trees,
        "train": evaluate(train, ranker),
        "dev": evaluate(dev, ranker),
        "calibration": ranker.calibration.__dict__,
        "importance": dict(
            sorted(zip(FEATURES, (int(v) for v in model.feature_importance("gain")), strict=True), key=lambda kv: -kv[1])
        ),
    }
    for path in args.eval:
        report[path.name] = evaluate(build(list(read_cases([path])), path.name), ranker)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(ranker.to_text())
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
