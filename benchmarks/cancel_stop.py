"""How fast a superseded completion gives the model back, through the real server.

    python benchmarks/cancel_stop.py --trials 24
    python benchmarks/cancel_stop.py --trials 4 --model /path/to/tiny-model   # a quick look

Each trial opens a fresh copy of a real Python file (a new URI: nothing cached), asks for a
completion on a line deep in it (a cold prompt: seconds of pre-fill on a CPU), and after a delay
edits a line near the top and asks there. The first request cannot be taken over by the second
(another place), so the server cancels it. The delays are spread from `--min-delay-s` to
`--max-delay-s` over the trials, so that cancels land in the pre-fill and in decoding.

Measured:
- `cancel_to_stop_ms`: the server's own count (`cancelStopMs` in `nextab/status`), from the
  superseding change to the model thread giving up the work it was running;
- `superseded`: trials whose first request was still being computed at the change (a request
  that finished before it is not superseded);
- `superseded_answer_ms`: at the client, from the superseding change to a superseded request's
  (null) answer;
- `next_answer_ms`: from the superseding change to the second request's answer (it waits for
  the model thread, then pays its own cold prompt).
The reliability issue's target: a superseded request stops within 200 ms.

Output: one JSON object on stdout (the command, the machine, the figures, the target as a
boolean); progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # soak.py, beside this script

from latency import machine_info
from soak import _plain, add_server_arguments, pcts, server_options

from nextab.bench_accept import LspServer
from nextab.context.document import Position, Range

STOP_TARGET_MS = 200.0
DEFAULT_FILE = "textwrap.py"  # a standard-library module of a few hundred lines

log = logging.getLogger("cancel_stop")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    source = args.file or Path(os.__file__).parent / DEFAULT_FILE
    text = source.read_text(encoding="utf-8")
    lines = text.splitlines()
    if len(lines) < 20:
        raise SystemExit(f"{source}: too short for a deep completion")
    options = server_options(args)
    server = await LspServer.start(args.model, args.device, options)
    trials: list[Trial] = []
    try:
        with tempfile.TemporaryDirectory(prefix="nextab-cancel-") as scratch:
            for n in range(args.trials):
                copy = Path(scratch) / f"t{n}_{source.name}"
                shutil.copyfile(source, copy)
                trial = await _trial(server, copy.as_uri(), text, lines, _delay(n, args))
                trials.append(trial)
                print(
                    f"trial {n + 1}/{args.trials}: delay {trial.delay_s:.2f} s, "
                    f"{'superseded' if trial.superseded else 'finished first'}, answered "
                    f"{trial.superseded_answer_ms:.0f} ms after the change, the next "
                    f"{trial.next_answer_ms:.0f} ms",
                    file=sys.stderr,
                )
        status = await server.client.protocol.send_request_async("nextab/status", None)
    finally:
        await server.stop()
    stops = _plain(getattr(status, "cancelStopMs", None)) or {}
    superseded = [t for t in trials if t.superseded]
    return {
        "command": " ".join(["python", "benchmarks/cancel_stop.py", *sys.argv[1:]]),
        "machine": machine_info(),
        "trials": args.trials,
        "delays_s": [t.delay_s for t in trials],
        "superseded": len(superseded),
        "cancel_to_stop_ms": stops,
        "superseded_answer_ms": pcts([t.superseded_answer_ms for t in superseded]),
        "next_answer_ms": pcts([t.next_answer_ms for t in trials]),
        "targets": {
            "stop_within_200_ms": bool(stops.get("n")) and (stops.get("max") or 0) <= STOP_TARGET_MS
        },
    }


def _delay(trial: int, args: argparse.Namespace) -> float:
    if args.trials == 1:
        return args.min_delay_s
    step = (args.max_delay_s - args.min_delay_s) / (args.trials - 1)
    return round(args.min_delay_s + trial * step, 3)


@dataclass(frozen=True)
class Trial:
    delay_s: float
    superseded: bool  # still being computed when the change came (else it had finished)
    superseded_answer_ms: float
    next_answer_ms: float


async def _trial(server: LspServer, uri: str, text: str, lines: list[str], delay: float) -> Trial:
    deep = len(lines) * 3 // 4
    while deep < len(lines) - 1 and not lines[deep].strip():
        deep += 1
    indent = len(lines[deep]) - len(lines[deep].lstrip())
    server.open(uri, "python", text)
    first = asyncio.ensure_future(server.inline_completion(uri, Position(deep, indent)))
    await asyncio.sleep(delay)
    top = next(n for n, line in enumerate(lines) if line.strip())
    changed = time.perf_counter()
    server.change(uri, 2, Range(Position(top, 0), Position(top, 0)), "# ")
    second = asyncio.ensure_future(server.inline_completion(uri, Position(top, 2)))
    # A superseded request is answered null; one that finished before the change is not.
    was_superseded = await first is None
    superseded_ms = (time.perf_counter() - changed) * 1000
    await second
    next_ms = (time.perf_counter() - changed) * 1000
    server.close(uri)
    return Trial(delay, was_superseded, superseded_ms, next_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--min-delay-s", type=float, default=0.05)
    parser.add_argument("--max-delay-s", type=float, default=4.0)
    parser.add_argument(
        "--file", type=Path, help=f"a Python file (default: the stdlib's {DEFAULT_FILE})"
    )
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level="WARNING", stream=sys.stderr)
    if args.trials < 1 or args.max_delay_s < args.min_delay_s:
        parser.error("--trials must be at least 1 and --max-delay-s at least --min-delay-s")
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
