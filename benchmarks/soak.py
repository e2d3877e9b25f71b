"""Soak: a long day of typing against the real server; does it stay responsive and not grow?

    python benchmarks/soak.py --minutes 60 --documents 3 --typing-speed 20
    python benchmarks/soak.py --minutes 2 --model /path/to/tiny-model   # a quick look

The server is `nextab serve` as a subprocess, driven over stdio as an editor drives it, with
`benchmarks/latency.py`'s replay: statements of real Python files (default: four standard
library modules) typed anew, each keystroke an incremental didChange, `$/cancelRequest` for the
previous completion if unanswered, and a new `textDocument/inlineCompletion`; the client waits
for the answer at Enter and after the statement's last key (pauses), and asks `nextab/nextEdit`
there. `--documents` documents are typed at the same time, each at `--typing-speed` keys per
second, each cycling through its own places (opened, typed, closed) until `--minutes` pass.

Measured:
- requests: sent, answered, cancelled (by the next keystroke), failed (an error answer or none);
  the p50/p99 of the waited-for requests (what a developer waits for) and of all answers;
- `cancel_to_answer_ms`: from `$/cancelRequest` to the cancelled request's answer (the server
  answers it when its handler stops, not when the model thread does), and `cancel_to_stop_ms`,
  the server's own count (`cancelStopMs` in `nextab/status`): from a cancel, or the next
  keystroke's change, to the model thread giving up work that was running;
- `status_ms`: a `nextab/status` request every second, answered by the event loop while the
  model works: it shows whether the loop stays responsive;
- the server's RSS and open file descriptors (/proc, Linux) at the end of the warm-up
  (`--warmup-minutes`, default a tenth of the run, at least one minute), at the end, and at
  most; growth is end minus after-warm-up, and `rss_growth_median_mb` the median of the run's
  last sixth after the warm-up minus that of its first sixth (single samples swing by the
  buffers of the requests in flight);
- the same median growth of RSS's two parts: private memory (`RssAnon`: the heap, caches,
  the runtime's buffers; what a leak grows) and file pages (`RssFile`: mapped files, mostly
  the model's weights file). onnxruntime maps the weights file and reads the embedding
  table from it in place, so each token the model meets for the first time pages in its row
  (3.5 KB for the 0.5B): file pages climb with the vocabulary typed, up to the table's size,
  and they are clean pages of a read-only file, shared with the page cache and reclaimed by
  the kernel without a write. The target (growth under 50 MB) reads the private memory's
  median growth; total and file growth are printed beside it.

Output: one JSON object on stdout (the command, the machine, the figures, and the targets as
booleans: RSS growth under 50 MB, open files flat, no failed request); progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # latency.py, beside this script

import latency
from latency import BenchError, LspTarget, Place, RequestRecord

from nextab.acceptance import percentile
from nextab.bench_accept import BASE_OPTIONS, LspServer, merge

RSS_GROWTH_TARGET_MB = 50
STATUS_EVERY_S = 1.0
SAMPLE_EVERY_S = 5.0


@dataclass
class Sample:
    at_s: float
    rss_mb: float | None
    open_files: int | None
    anon_mb: float | None = None  # RssAnon: private memory
    file_mb: float | None = None  # RssFile: pages of mapped files (the weights file)


@dataclass
class Soak:
    records: list[RequestRecord] = field(default_factory=list)
    cancel_to_answer_ms: list[float] = field(default_factory=list)
    status_ms: list[float] = field(default_factory=list)
    status_failures: int = 0
    samples: list[Sample] = field(default_factory=list)
    cycles: int = 0
    # The server's own count: from a cancel to the model thread giving the work up.
    cancel_stop_ms: dict[str, Any] | None = None


def process_sample(pid: int, at_s: float) -> Sample:
    """The server's resident memory and open file descriptors, from /proc (None elsewhere)."""
    fields: dict[str, float] = {}
    files = None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)
        files = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return Sample(
        round(at_s, 1),
        fields.get("VmRSS"),
        files,
        anon_mb=fields.get("RssAnon"),
        file_mb=fields.get("RssFile"),
    )


class LaneTarget(LspTarget):
    """One document's typist: request ids from a counter all lanes share (pygls matches answers
    by id), and every request kept, for the time from its cancellation to its answer."""

    def __init__(self, server: LspServer, lane: int, ids: itertools.count[int]) -> None:
        super().__init__(f"soak-{lane}", server)
        self._ids = ids
        self.pendings: list[latency.Pending] = []

    def send(self, p: int, place: Place, step: latency.Step) -> latency.Pending:
        pending = super().send(p, place, step)
        self.pendings.append(pending)
        return pending


async def _lane(
    target: LaneTarget,
    lane: int,
    places: list[Place],
    soak: Soak,
    deadline: float,
    args: argparse.Namespace,
) -> None:
    """Type this lane's places one after the other until the deadline."""
    n = 0
    while time.monotonic() < deadline:
        place = places[n % len(places)]
        steps = latency.schedule(
            place, pause_every=0, no_cancel=False, next_edit=not args.no_next_edit
        )
        target.pendings = []
        soak.records += await latency.replay_place(
            target, lane, place, steps, {}, interval_s=1 / args.typing_speed
        )
        soak.cancel_to_answer_ms += [
            (q.answered_at - q.cancelled_at) * 1000
            for q in target.pendings
            if q.cancelled_at is not None
            and q.answered_at is not None
            and q.answered_at > q.cancelled_at
        ]
        soak.cycles += 1
        n += 1


async def _probe_status(server: LspServer, soak: Soak, deadline: float) -> None:
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(
                server.client.protocol.send_request_async("nextab/status", None), 30
            )
            soak.status_ms.append((time.perf_counter() - started) * 1000)
        except Exception:
            soak.status_failures += 1
        await asyncio.sleep(STATUS_EVERY_S)


async def _sample(pid: int, soak: Soak, started: float, deadline: float) -> None:
    while time.monotonic() < deadline:
        soak.samples.append(process_sample(pid, time.monotonic() - started))
        await asyncio.sleep(SAMPLE_EVERY_S)
    soak.samples.append(process_sample(pid, time.monotonic() - started))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.documents < 1 or args.minutes <= 0:
        raise BenchError("--documents must be at least 1 and --minutes positive")
    stdlib = Path(os.__file__).parent
    files = args.files or [stdlib / name for name in latency.DEFAULT_FILES]
    with tempfile.TemporaryDirectory(prefix="nextab-soak-") as scratch:
        # Each document its own copies of the files: two places of one file typed at once
        # would be two editors on one URI.
        lanes = [
            latency.pick_places(
                _copies(files, Path(scratch) / f"doc{lane}"),
                args.places,
                args.seed + lane,
                keys=args.keys,
                body_keys=3,
                min_prefix_chars=0,
            )
            for lane in range(args.documents)
        ]
        if not all(lanes):
            raise BenchError(f"no places to type in {[str(f) for f in files]}")
        return await _soak(args, lanes)


def _copies(files: list[Path], folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    copies = []
    for n, path in enumerate(files):
        copy = folder / f"{n}_{path.name}"
        shutil.copyfile(path, copy)
        copies.append(copy)
    return copies


async def _soak(args: argparse.Namespace, lanes: list[list[Place]]) -> dict[str, Any]:
    options = server_options(args)
    server = await LspServer.start(args.model, args.device, options)
    pid = server.client._server.pid  # type: ignore[union-attr]
    soak = Soak()
    started = time.monotonic()
    deadline = started + args.minutes * 60
    ids = itertools.count(1)
    targets = [LaneTarget(server, lane, ids) for lane in range(args.documents)]
    try:
        await asyncio.gather(
            *(_lane(t, lane, lanes[lane], soak, deadline, args) for lane, t in enumerate(targets)),
            _probe_status(server, soak, deadline),
            _sample(pid, soak, started, deadline),
        )
        status = await server.client.protocol.send_request_async("nextab/status", None)
        soak.cancel_stop_ms = _plain(getattr(status, "cancelStopMs", None))
    finally:
        await server.stop()
    warmup_s = (
        args.warmup_minutes * 60 if args.warmup_minutes is not None else max(60.0, args.minutes * 6)
    )
    return summarize(soak, warmup_s, args)


def _plain(value: Any) -> Any:
    # pygls gives custom results as named tuples (attribute access), not dicts.
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    return value


def pcts(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": round(max(values), 1) if values else None,
    }


def summarize(soak: Soak, warmup_s: float, args: argparse.Namespace) -> dict[str, Any]:
    records = soak.records
    answered = [r for r in records if r.outcome == "answered"]
    failed = [r for r in records if r.outcome == "failed"]
    measured = [s for s in soak.samples if s.rss_mb is not None]
    after_warmup = next(
        (s for s in measured if s.at_s >= warmup_s), measured[-1] if measured else None
    )
    end = measured[-1] if measured else None
    growth = (
        round(end.rss_mb - after_warmup.rss_mb, 1)
        if end is not None
        and after_warmup is not None
        and end.rss_mb is not None
        and after_warmup.rss_mb is not None
        else None
    )
    steady = steady_growth(measured, warmup_s)
    private = steady_growth(measured, warmup_s, "anon_mb")
    mapped = steady_growth(measured, warmup_s, "file_mb")
    # Where /proc has no RssAnon (kernels before 4.5), the total stands in for it.
    target_growth = private if private is not None else steady
    files_delta = (
        end.open_files - after_warmup.open_files
        if end is not None
        and after_warmup is not None
        and end.open_files is not None
        and after_warmup.open_files is not None
        else None
    )
    return {
        "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]),
        "machine": latency.machine_info(),
        "minutes": args.minutes,
        "documents": args.documents,
        "typing_speed": args.typing_speed,
        "cycles": soak.cycles,
        "requests": {
            "sent": len(records),
            "answered": len(answered),
            "cancelled": sum(r.outcome == "cancelled" for r in records),
            "failed": len(failed),
            "errors": sorted({r.error or "" for r in failed})[:10],
        },
        "waited_latency_ms": pcts(
            [r.latency_ms for r in answered if r.waited and r.latency_ms is not None]
        ),
        "answered_latency_ms": pcts([r.latency_ms for r in answered if r.latency_ms is not None]),
        "cancel_to_answer_ms": pcts(soak.cancel_to_answer_ms),
        "cancel_to_stop_ms": soak.cancel_stop_ms,
        "status_ms": {**pcts(soak.status_ms), "failed": soak.status_failures},
        "memory": {
            "warmup_s": warmup_s,
            "rss_mb_after_warmup": after_warmup.rss_mb if after_warmup else None,
            "rss_mb_end": end.rss_mb if end else None,
            "rss_mb_max": max((s.rss_mb for s in measured if s.rss_mb is not None), default=None),
            "rss_growth_mb": growth,
            "rss_growth_median_mb": steady,
            "private_growth_median_mb": private,
            "file_growth_median_mb": mapped,
            "private_mb_after_warmup": after_warmup.anon_mb if after_warmup else None,
            "file_mb_after_warmup": after_warmup.file_mb if after_warmup else None,
            "file_mb_end": end.file_mb if end else None,
            "open_files_after_warmup": after_warmup.open_files if after_warmup else None,
            "open_files_end": end.open_files if end else None,
            "timeline_columns": ["at_s", "rss_mb", "open_files", "private_mb", "file_mb"],
            "timeline": [
                [s.at_s, s.rss_mb, s.open_files, s.anon_mb, s.file_mb] for s in soak.samples
            ],
        },
        "targets": {
            "private_growth_under_50_mb": (
                target_growth < RSS_GROWTH_TARGET_MB if target_growth is not None else None
            ),
            "open_files_flat": files_delta <= 0 if files_delta is not None else None,
            "no_failed_requests": not failed and soak.status_failures == 0,
        },
    }


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's model, device and settings: the same flags in each benchmark of the server."""
    parser.add_argument(
        "--model", default="embedded", help="passed to the server (default embedded)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--options", help="JSON merged into the server's initializationOptions")


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """`nextab bench accept`'s options (nothing persisted, no acceptance log), then the user's."""
    return merge(BASE_OPTIONS, json.loads(args.options) if args.options else {})


def steady_growth(
    measured: list[Sample], warmup_s: float, part: str = "rss_mb"
) -> float | None:
    """The median of `part` (a Sample field) over the run's last stretch minus that over its
    first stretch after the warm-up (each a sixth of what follows the warm-up, at least one
    sample). RSS swings by the buffers of the requests in flight at the moment of a sample (a
    cold prompt's KV cache and activations, ~100 MB here), so two single samples measure
    those, not growth."""
    values = [(s.at_s, getattr(s, part)) for s in measured]
    after = [v for at_s, v in values if at_s >= warmup_s and v is not None]
    if len(after) < 2:
        return None
    stretch = max(1, len(after) // 6)
    return round(statistics.median(after[-stretch:]) - statistics.median(after[:stretch]), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to type (default 60)")
    parser.add_argument(
        "--documents", type=int, default=3, help="documents typed at once (default 3)"
    )
    parser.add_argument(
        "--typing-speed", type=float, default=20.0, help="keys per second per document (default 20)"
    )
    parser.add_argument(
        "--warmup-minutes",
        type=float,
        help="RSS growth is measured after this (default: a tenth, at least 1)",
    )
    parser.add_argument(
        "--files", nargs="+", type=Path, help="Python files (default: stdlib modules)"
    )
    parser.add_argument(
        "--places", type=int, default=24, help="statements to type, cycled (default 24)"
    )
    parser.add_argument(
        "--keys", type=int, default=10, help="header characters typed per place (default 10)"
    )
    parser.add_argument("--no-next-edit", action="store_true", help="no nextab/nextEdit per place")
    parser.add_argument("--seed", type=int, default=0)
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level="WARNING", stream=sys.stderr)
    try:
        result = asyncio.run(run(args))
    except BenchError as error:
        print(f"soak: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
