"""Next-edit prediction on real commits: location accuracy, exact match, edit similarity, latency.

Each case (see `../shared/data/README.md`) is a commit's first hunks as the edit history and its
next hunk as the expected edit. The history is replayed keystroke-free through a real
`EditHistory` (each hunk one edit, as an editor's didChange would record it) on the file as it
was before it, then `Engine.next_edit` is asked at the cursor, the end of the last edit, the
way the LSP server asks. Conditions: the repeat-edit proposer alone, the model alone, both,
and `oracle` (both, told where the expected edit is: the edit step measured on its own).

    python benchmarks/next_edit.py --conditions repeat model both --every 4 --out /tmp/nes.json

Prints one JSON summary on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from similarity import edit_similarity

from nextab.context.document import Document, split_lines
from nextab.context.edits import Proposal, apply, lines_text
from nextab.context.history import EditHistory, Hunk

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "nes" / "flask-dev.jsonl.gz"
DATA_ENV = "NEXTAB_NES_DATA"
# (proposer, model, at the expected place): "oracle" is the edit step alone, given the place.
CONDITIONS = {
    "repeat": (True, False, False),
    "model": (False, True, False),
    "both": (True, True, False),
    "oracle": (True, True, True),
}


@dataclass(frozen=True)
class Case:
    id: str
    path: str
    before: str  # the file before the history
    history: tuple[tuple[int, str, str], ...]  # (start_line, old_text, new_text), oldest first
    buffer: str  # the file after it
    cursor: tuple[int, int]
    expected: Proposal | None  # None: no edit should follow (after a commit's last hunk)


@dataclass
class Outcome:
    id: str
    condition: str
    suggestions: int
    top1: bool
    top3: bool
    candidates_top1: bool
    candidates_top3: bool
    exact: bool
    similarity: float | None  # of the top suggestion, None without one
    similarity_all: float  # a missing suggestion counts as "no edit"
    source: str  # of the top suggestion
    total_ms: float
    model_calls: int
    prompt_tokens: int
    reused_tokens: int
    generated_tokens: int
    drafted_tokens: int
    accepted_tokens: int
    top_text: str  # the top suggestion's new lines, for reading the failures
    confidence: float | None = None  # the location ranker's, where it ranked
    expects_edit: bool = True


def load_cases(path: Path) -> list[Case]:
    cases = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            history = tuple((h["start_line"], h["old_text"], h["new_text"]) for h in row["history"])
            expected = row["expected"]
            cases.append(
                Case(
                    id=row["id"],
                    path=row["path"],
                    before=undo(row["buffer"], history),
                    history=history,
                    buffer=row["buffer"],
                    cursor=(row["cursor"]["line"], row["cursor"]["character"]),
                    expected=Proposal(
                        expected["start_line"], expected["end_line"], expected["new_text"], 1.0, "expected"
                    )
                    if expected is not None
                    else None,
                )
            )
    return cases


def undo(buffer: str, history: Sequence[tuple[int, str, str]]) -> str:
    """The file before the history: each hunk undone, the latest first."""
    lines = split_lines(buffer)
    for start, old, new in reversed(history):
        lines[start : start + len(split_lines(new))] = split_lines(old)
    return "".join(lines)


def replay(case: Case, uri: str) -> tuple[EditHistory, Document]:
    """The history as an editor would have recorded it, one closed edit per hunk."""
    history = EditHistory(pause_seconds=1.0)
    hunks = [Hunk(line, old, new) for line, old, new in case.history]
    try:
        text = history.replay(uri, case.before, hunks, now=1_000_000.0)
    except ValueError as error:
        raise ValueError(f"{case.id}: {error}") from None
    if text != case.buffer:
        raise ValueError(f"{case.id}: replaying the history does not give the buffer")
    return history, Document(uri, text, "python", version=len(case.history))


def overlaps(a_start: int, a_end: int, b_start: int, b_end: int) -> bool:
    # An insertion (empty range) counts as the line it goes before.
    return a_start < max(b_end, b_start + 1) and b_start < max(a_end, a_start + 1)


def region_after(text: str, edit: Proposal, start: int, end: int) -> str:
    """Lines [start, end) of `text` (lines counted before the edit) once the edit is applied."""
    changed = apply(text, edit)
    grown = len(split_lines(edit.new_text)) - (edit.end_line - edit.start_line)
    return lines_text(changed, start, end + grown if edit.start_line < end else end)


def score_case(case: Case, condition: str, result: Any) -> Outcome:
    expected = case.expected
    suggestions = list(result.suggestions)
    if expected is None:
        return _no_edit_outcome(case, condition, result)
    ranges = [(s.start_line, s.end_line) for s in suggestions]
    located = [overlaps(s, e, expected.start_line, expected.end_line) for s, e in ranges]
    near = [overlaps(c.start_line, c.end_line, expected.start_line, expected.end_line) for c in result.locations]
    exact = False
    sim: float | None = None
    union = (expected.start_line, expected.end_line)
    if suggestions:
        top = suggestions[0]
        predicted = Proposal(top.start_line, top.end_line, top.new_lines, top.score, top.source)
        exact = apply(case.buffer, predicted) == apply(case.buffer, expected)
        lo = min(expected.start_line, predicted.start_line)
        hi = max(expected.end_line, predicted.end_line)
        union = (lo, hi)
        sim = edit_similarity(
            region_after(case.buffer, predicted, lo, hi), region_after(case.buffer, expected, lo, hi)
        )
    unchanged = lines_text(case.buffer, *union)
    sim_all = sim if sim is not None else edit_similarity(unchanged, region_after(case.buffer, expected, *union))
    return Outcome(
        id=case.id,
        condition=condition,
        suggestions=len(suggestions),
        top1=bool(located[:1] and located[0]),
        top3=any(located[:3]),
        candidates_top1=bool(near[:1] and near[0]),
        candidates_top3=any(near[:3]),
        exact=exact,
        similarity=sim,
        similarity_all=sim_all,
        source=suggestions[0].source if suggestions else "",
        total_ms=result.metrics.total_ms,
        model_calls=result.metrics.model_calls,
        prompt_tokens=result.metrics.prompt_tokens,
        reused_tokens=result.metrics.reused_tokens,
        generated_tokens=result.metrics.generated_tokens,
        drafted_tokens=result.metrics.drafted_tokens,
        accepted_tokens=result.metrics.accepted_tokens,
        top_text=suggestions[0].new_lines if suggestions else "",
        confidence=getattr(result, "confidence", None),
    )


def _no_edit_outcome(case: Case, condition: str, result: Any) -> Outcome:
    """A case where no edit should follow: any suggestion is a wrong one."""
    suggestions = list(result.suggestions)
    m = result.metrics
    return Outcome(
        id=case.id, condition=condition, suggestions=len(suggestions), top1=False, top3=False,
        candidates_top1=False, candidates_top3=False, exact=False, similarity=None,
        similarity_all=0.0, source=suggestions[0].source if suggestions else "",
        total_ms=m.total_ms, model_calls=m.model_calls, prompt_tokens=m.prompt_tokens,
        reused_tokens=m.reused_tokens, generated_tokens=m.generated_tokens,
        drafted_tokens=m.drafted_tokens, accepted_tokens=m.accepted_tokens,
        top_text=suggestions[0].new_lines if suggestions else "",
        confidence=getattr(result, "confidence", None), expects_edit=False,
    )  # fmt: skip


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    none = [o for o in outcomes if not o.expects_edit]
    no_edit = {"no_edit_cases": len(none), "no_edit_answered": round(sum(o.suggestions > 0 for o in none) / len(none), 3)} if none else {}
    outcomes = [o for o in outcomes if o.expects_edit]
    n = len(outcomes)
    if not n:
        return {"cases": 0, **no_edit}
    answered = [o for o in outcomes if o.suggestions]
    latencies = sorted(o.total_ms for o in outcomes)
    return {
        "cases": n,
        "answered": round(len(answered) / n, 3),
        "location_top1": round(sum(o.top1 for o in outcomes) / n, 3),
        "location_top3": round(sum(o.top3 for o in outcomes) / n, 3),
        "exact_match": round(sum(o.exact for o in outcomes) / n, 3),
        "edit_similarity": round(statistics.fmean(o.similarity_all for o in outcomes), 3),
        "edit_similarity_answered": round(statistics.fmean(o.similarity for o in answered), 3) if answered else None,  # type: ignore[arg-type]
        "precision_top1": round(sum(o.top1 for o in answered) / len(answered), 3) if answered else None,
        "candidates_top1": round(sum(o.candidates_top1 for o in outcomes) / n, 3),
        "candidates_top3": round(sum(o.candidates_top3 for o in outcomes) / n, 3),
        "latency_p50_ms": round(statistics.median(latencies), 1),
        "latency_p95_ms": round(latencies[min(n - 1, int(0.95 * n))], 1),
        "model_calls_mean": round(statistics.fmean(o.model_calls for o in outcomes), 2),
        "prompt_tokens_mean": round(statistics.fmean(o.prompt_tokens for o in outcomes), 1),
        "reused_share": round(sum(o.reused_tokens for o in outcomes) / max(1, sum(o.prompt_tokens for o in outcomes)), 3),
        "generated_tokens_mean": round(statistics.fmean(o.generated_tokens for o in outcomes), 1),
        # Drafted tokens the model confirmed: how much of a rewrite came at one pass per draft.
        "draft_acceptance": round(sum(o.accepted_tokens for o in outcomes) / max(1, sum(o.drafted_tokens for o in outcomes)), 3),
        "accepted_per_generated": round(sum(o.accepted_tokens for o in outcomes) / max(1, sum(o.generated_tokens for o in outcomes)), 3),
        "sources": {s: sum(o.source == s for o in answered) for s in sorted({o.source for o in answered})},
        "locations_by_confidence": _by_confidence([*outcomes, *none]),
        **no_edit,
    }


def _by_confidence(outcomes: Sequence[Outcome]) -> dict[str, dict[str, float]] | None:
    """The first candidate location as the answer, given only where the ranker's confidence
    reaches a threshold: the share of cases answered, and how often the answer is right."""
    rated = [o for o in outcomes if o.confidence is not None]
    if not rated:
        return None
    table = {}
    for threshold in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
        kept = [o for o in rated if o.confidence is not None and o.confidence >= threshold]
        table[f"{threshold:.1f}"] = {
            "answered": round(len(kept) / len(rated), 3),
            "location_top1": round(sum(o.candidates_top1 for o in kept) / len(rated), 3),
            "precision_top1": round(sum(o.candidates_top1 for o in kept) / len(kept), 3) if kept else None,
        }
    return table


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None, help=f"default: ${DATA_ENV}, else {DEFAULT_DATA}")
    p.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS))
    p.add_argument("--every", type=int, default=1, help="take every Nth case (default 1)")
    p.add_argument("--limit", type=int, default=400)
    p.add_argument("--model", default="embedded", help='as the "model" setting')
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--settings", default=None, help="JSON settings as an editor sends them")
    p.add_argument("--out", type=Path, default=None, help="write the summary and per-case records")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from nextab.config import Config, load
    from nextab.engine import Engine
    from nextab.nextedit import NextEditRequest, predict

    data = args.data or Path(os.environ.get(DATA_ENV, DEFAULT_DATA))
    cases = load_cases(data)[:: args.every][: args.limit]
    config = Config(model=args.model, device=args.device, dtype=args.dtype)
    if args.settings:
        config, errors = load(json.loads(args.settings), base=config)
        if errors:
            raise SystemExit("\n".join(errors))
    needs_model = any(CONDITIONS[c][1] for c in args.conditions)
    # The proposer alone needs no model: the same pipeline runs without one.
    engine = Engine.load(config) if needs_model else None
    outcomes: list[Outcome] = []
    skipped: list[dict[str, str]] = []
    for number, case in enumerate(cases, 1):
        uri = f"file:///flask/{case.path}"
        try:
            history, document = replay(case, uri)
        except ValueError as error:
            skipped.append({"id": case.id, "why": str(error)})
            continue
        line, character = case.cursor
        offset = min(len(document.text), len(lines_text(document.text, 0, line)) + character)
        for condition in args.conditions:
            repeat, model, oracle = CONDITIONS[condition]
            if oracle and case.expected is None:
                continue
            request = NextEditRequest(
                document=document,
                text=document.text,
                offset=offset,
                edits=tuple(history.edits()),
                diffs=history.render(config.context.recent_edits_chars, uri),
                path=case.path,
                repeat=repeat,
                model=model,
                at=(case.expected.start_line, case.expected.end_line) if oracle and case.expected else None,
            )
            result = engine.next_edit(request) if engine is not None else predict(config.next_edit, request, None)
            outcomes.append(score_case(case, condition, result))
        print(f"\r{number}/{len(cases)} cases", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    summary = {
        "data": str(data),
        "every": args.every,
        "limit": args.limit,
        "model": engine.backend.info.name if engine is not None else None,
        "skipped": len(skipped),
        "by_condition": {c: summarize([o for o in outcomes if o.condition == c]) for c in args.conditions},
        "command": " ".join(["python", "benchmarks/next_edit.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(
            json.dumps({**summary, "skipped_cases": skipped, "cases": [asdict(o) for o in outcomes]}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
