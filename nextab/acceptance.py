"""The local acceptance log: what became of each suggestion an editor showed.

Editors report an outcome per shown suggestion (`nextab/suggestionOutcome`): accepted whole,
accepted in part (a word or a line at a time), dismissed, or typed over. The log stays on the
user's machine (one JSON object per line in the user cache) and `nextab stats` sums it up:
acceptance rate, characters accepted, the latency the editor saw, per language.

Each record is appended with one `write` on a file opened for appending, so a crash leaves at
worst one torn last line, which the next record starts after. Each line carries a checksum of
its record (`nextab.storage.seal`); reading skips lines that do not parse or check out, counts
them as misses, and says how many.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from nextab.storage import make_private_dir, seal, unseal

log = logging.getLogger(__name__)

FORMAT = "nextab.acceptance/2"  # 2: each line checksummed
UNCHECKED_FORMAT = "nextab.acceptance/1"  # lines from before checksums: read as they are
MAX_BYTES = 8 << 20  # past this the log starts over, the old one kept as `.1`

Kind = Literal["completion", "nextEdit"]
Result = Literal["accepted", "partial", "dismissed", "ignored"]
KINDS: tuple[Kind, ...] = ("completion", "nextEdit")
RESULTS: tuple[Result, ...] = ("accepted", "partial", "dismissed", "ignored")


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    result: Result
    language: str
    shown_chars: int
    accepted_chars: int
    latency_ms: float | None  # request to suggestion, as the editor measured it
    model: str = ""
    time: float = 0.0
    # Where the server's time went for the suggestion (completions): ms per stage, as in
    # `Metrics` (context, wait, prefill, decode, post, total) plus source 1.0 = typed-ahead.
    stages: dict[str, float] | None = None


def default_path() -> Path:
    from nextab.models.resolve import cache_dir

    return cache_dir() / "acceptance.jsonl"


class AcceptanceLog:
    def __init__(self, path: Path | None = None, max_bytes: int = MAX_BYTES) -> None:
        self.path = path if path is not None else default_path()
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def append(self, outcome: Outcome) -> None:
        record = {"format": FORMAT, **asdict(outcome), "time": outcome.time or time.time()}
        line = (json.dumps(seal(record), separators=(",", ":")) + "\n").encode()
        with self._lock:
            try:
                make_private_dir(self.path.parent)
                if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    size = os.fstat(fd).st_size
                    if size and os.pread(fd, 1, size - 1) != b"\n":
                        line = b"\n" + line  # after a torn last line: keep this record apart
                    os.write(fd, line)
                finally:
                    os.close(fd)
            except OSError as error:  # a full disk costs the record, not the suggestion
                log.warning("acceptance log %s not written: %s", self.path, error)

    def read(self) -> tuple[list[Outcome], int]:
        """The outcomes in the log (the rotated one first), and how many lines were skipped."""
        found: list[Outcome] = []
        skipped = 0
        for path in (self.path.with_name(self.path.name + ".1"), self.path):
            try:
                lines = path.read_bytes().splitlines()
            except FileNotFoundError:
                continue
            except OSError as error:  # a log that cannot be read costs its records, not stats
                log.warning("acceptance log %s not read: %s", path, error)
                continue
            for raw in lines:
                outcome = _parse(raw)
                if outcome is None:
                    skipped += 1
                else:
                    found.append(outcome)
        return found, skipped


def _parse(raw: bytes) -> Outcome | None:
    try:
        record = json.loads(raw)
        if record.get("format") == FORMAT:
            record = unseal(record)
            if record is None:  # damaged: the line parses but its checksum does not match
                return None
        elif record.get("format") != UNCHECKED_FORMAT:
            return None
        latency = record.get("latency_ms")
        outcome = Outcome(
            kind=record["kind"],
            result=record["result"],
            language=str(record.get("language") or "unknown"),
            shown_chars=int(record["shown_chars"]),
            accepted_chars=int(record["accepted_chars"]),
            latency_ms=float(latency) if latency is not None else None,
            model=str(record.get("model", "")),
            time=float(record.get("time", 0.0)),
            stages=_stages(record.get("stages")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if outcome.kind not in KINDS or outcome.result not in RESULTS:
        return None
    return outcome


STAGES = ("context", "wait", "prefill", "decode", "post", "total")


def _stages(value: Any) -> dict[str, float] | None:
    if not isinstance(value, dict):
        return None
    return {
        str(k): float(v)
        for k, v in value.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def stages_of(metrics: Any) -> dict[str, float]:
    """The stage budget of a served completion (engine Metrics) as the log keeps it."""
    return {
        "context": round(metrics.context_ms, 2),
        "wait": round(metrics.wait_ms, 2),
        "prefill": round(metrics.prefill_ms, 2),
        "decode": round(metrics.decode_ms, 2),
        "post": round(metrics.post_ms, 2),
        "total": round(metrics.total_ms, 2),
        "typed_ahead": 1.0 if metrics.source == "typed-ahead" else 0.0,
    }


def outcome_from_params(params: Any, language: str, model: str) -> Outcome:
    """An outcome from the notification's params ({kind, outcome, shownChars, acceptedChars,
    latencyMs}); ValueError naming the field that is wrong."""

    def field(name: str) -> Any:
        return params.get(name) if isinstance(params, dict) else getattr(params, name, None)

    kind = field("kind") or "completion"
    result = field("outcome")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if result not in RESULTS:
        raise ValueError(f"outcome must be one of {', '.join(RESULTS)}, not {result!r}")
    counts = {}
    for name in ("shownChars", "acceptedChars"):
        value = field(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, not {value!r}")
        counts[name] = value
    latency = field("latencyMs")
    if latency is not None and (not isinstance(latency, int | float) or latency < 0):
        raise ValueError(f"latencyMs must be a number >= 0, not {latency!r}")
    return Outcome(
        kind=kind,
        result=result,
        language=language,
        shown_chars=counts["shownChars"],
        accepted_chars=min(counts["acceptedChars"], counts["shownChars"]),
        latency_ms=float(latency) if latency is not None else None,
        model=model,
        time=time.time(),
    )


def summarize(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Per kind, overall and per language: shown, acceptance rate (whole and partial),
    characters accepted per character shown, latency p50/p95."""
    return {
        kind: {
            "all": _totals(of_kind),
            "by_language": {
                language: _totals([o for o in of_kind if o.language == language])
                for language in sorted({o.language for o in of_kind})
            },
        }
        for kind in KINDS
        if (of_kind := [o for o in outcomes if o.kind == kind])
    }


def _totals(outcomes: Iterable[Outcome]) -> dict[str, Any]:
    items = list(outcomes)
    shown = len(items)
    accepted = sum(o.result == "accepted" for o in items)
    partial = sum(o.result == "partial" for o in items)
    chars_shown = sum(o.shown_chars for o in items)
    latencies = sorted(o.latency_ms for o in items if o.latency_ms is not None)
    return {
        "shown": shown,
        "accepted": accepted,
        "partial": partial,
        "acceptance_rate": round(accepted / shown, 4) if shown else None,
        "any_acceptance_rate": round((accepted + partial) / shown, 4) if shown else None,
        "chars_accepted": sum(o.accepted_chars for o in items),
        "chars_accepted_per_shown": round(sum(o.accepted_chars for o in items) / chars_shown, 4)
        if chars_shown
        else None,
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)},
        **_stage_totals(items),
    }


def _stage_totals(items: Sequence[Outcome]) -> dict[str, Any]:
    """The server's time per stage (p50/p95 ms), where the log has it: a slow suggestion says
    where its time went."""
    timed = [o.stages for o in items if o.stages]
    if not timed:
        return {}
    return {
        "server_ms": {
            stage: {
                "p50": percentile([t[stage] for t in timed if stage in t], 50),
                "p95": percentile([t[stage] for t in timed if stage in t], 95),
            }
            for stage in STAGES
        },
        "typed_ahead_share": round(sum(t.get("typed_ahead", 0.0) for t in timed) / len(timed), 4),
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linearly interpolated, rounded to 0.1; None for no values."""
    if not values:
        return None
    values = sorted(values)
    rank = (len(values) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(values) - 1)
    return round(values[low] + (values[high] - values[low]) * (rank - low), 1)
