"""`nextab batch`: complete many positions headlessly (datasets, evaluations, code review).

Each input line is a JSON object: `id`, and either `prefix` + `suffix` (+ optional `path`, which
names the file and so its language) or `path` + `line` + `character` (0-based; `character`
counts Unicode characters; the file is read from disk); optional `maxTokens`, `decoding`
(`greedy`, `adadec`, `beam`) and `mode` (`line`, `multiline`, `auto`). Each output line has
`id`, `completion` (inserted at the position), `replace` (characters after the position it
replaces: brackets an editor would have closed), `latency_s`, `model` and `error` (null, or what
was wrong with the row; the other rows go on).

Rows run through `Engine.complete_batch`, the engine the editors use, `--batch-size` at a time
with continuous batching, in work units of rows of similar length (`plan_batches`). Each
finished unit is appended to `OUT.partial`, so a killed job resumed with `--resume` redoes none
of its rows; the output file itself is written whole, in input order, at the end. With `--ray`
the same units go to Ray workers, one model copy each.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nextab.context.document import Document, Position, PositionError

if TYPE_CHECKING:
    from nextab.config import Config
    from nextab.engine import Engine

log = logging.getLogger(__name__)

MODES = {"auto": "auto", "line": "line", "multiline": "block"}
DECODINGS = ("greedy", "adadec", "beam")


@dataclass(frozen=True)
class Row:
    """A valid input row, reduced to what the engine needs."""

    index: int  # its line in the input, 0-based: the output's order
    id: str | int
    prefix: str
    suffix: str
    path: str | None
    max_tokens: int | None
    decoding: str | None
    mode: str  # the engine's RequestedMode


@dataclass(frozen=True)
class Failed:
    """A row that cannot be completed, and why."""

    index: int
    id: str | int | None
    error: str


class RowError(ValueError):
    pass


def read_rows(lines: Iterable[str], root: Path) -> Iterator[Row | Failed]:
    """Input rows in order; a blank line is skipped, a bad one becomes a Failed row."""
    seen: set[str | int] = set()
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        row_id: str | int | None = None
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise RowError(f"a row must be a JSON object, got {type(raw).__name__}")
            row_id = raw.get("id")
            if not isinstance(row_id, str | int) or isinstance(row_id, bool):
                row_id = None
                raise RowError('"id" must be a string or an integer')
            if row_id in seen:
                raise RowError(f"duplicate id {row_id!r}")
            seen.add(row_id)
            yield parse_row(index, row_id, raw, root)
        except json.JSONDecodeError as error:
            yield Failed(index, None, f"input line {index + 1}: invalid JSON: {error}")
        except RowError as error:
            yield Failed(index, row_id, f"input line {index + 1}: {error}")


def parse_row(index: int, row_id: str | int, raw: dict[str, Any], root: Path) -> Row:
    path = raw.get("path")
    if path is not None and not isinstance(path, str):
        raise RowError('"path" must be a string')
    if "prefix" in raw or "suffix" in raw:
        prefix, suffix = raw.get("prefix", ""), raw.get("suffix", "")
        if not isinstance(prefix, str) or not isinstance(suffix, str):
            raise RowError('"prefix" and "suffix" must be strings')
    elif path is not None and "line" in raw and "character" in raw:
        prefix, suffix = _split_file(root / path, raw["line"], raw["character"])
    else:
        raise RowError('expected "prefix" and "suffix", or "path", "line" and "character"')
    max_tokens = raw.get("maxTokens")
    if max_tokens is not None and (type(max_tokens) is not int or not 1 <= max_tokens <= 4096):
        raise RowError('"maxTokens" must be an integer from 1 to 4096')
    decoding = raw.get("decoding")
    if decoding is not None and decoding not in DECODINGS:
        raise RowError(f'"decoding" must be one of {", ".join(DECODINGS)}')
    mode = raw.get("mode", "auto")
    if mode not in MODES:
        raise RowError(f'"mode" must be one of {", ".join(MODES)}')
    return Row(index, row_id, prefix, suffix, path, max_tokens, decoding, MODES[mode])


def _split_file(path: Path, line: Any, character: Any) -> tuple[str, str]:
    if type(line) is not int or type(character) is not int or line < 0 or character < 0:
        raise RowError('"line" and "character" must be integers >= 0')
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RowError(f"cannot read {path}: {error.strerror or error}") from None
    if b"\0" in data[:8192]:
        raise RowError(f"{path} is a binary file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RowError(f"{path} is not UTF-8 text") from None
    try:
        offset = Document(path.absolute().as_uri(), text, encoding="utf-32").offset_at(Position(line, character))
    except PositionError as error:
        raise RowError(f"{path}: {error}") from None
    return text[:offset], text[offset:]


def plan_batches(
    rows: Sequence[Row], slots: int, prefix_chars: int, suffix_chars: int, per_slot: int = 4
) -> list[list[Row]]:
    """Work units of `slots * per_slot` rows, grouped by the length of the prompt they will
    get (the engine keeps at most `prefix_chars` before the cursor and `suffix_chars` after
    it): rows decoded side by side then attend over similar lengths. A unit is decoded with
    `slots` rows at a time (a finished row's slot goes to the next), written when done, and
    is what one Ray task gets. Deterministic: a local and a Ray run decode the same units,
    hence the same tokens."""
    def length(row: Row) -> tuple[int, int]:
        return min(len(row.prefix), prefix_chars) + min(len(row.suffix), suffix_chars), row.index

    ordered = sorted(rows, key=length)
    unit = max(1, slots * per_slot)
    return [ordered[i : i + unit] for i in range(0, len(ordered), unit)]


def complete_rows(engine: Engine, rows: Sequence[Row], slots: int) -> list[dict[str, Any]]:
    """Output rows for one work unit, in its order, `slots` rows decoded at a time. A row the
    engine refuses gets an error; the others are completed again without it."""
    if not rows:
        return []
    try:
        suggestions = engine.complete_batch([_request(row) for row in rows], slots=slots)
    except Exception as error:
        if len(rows) == 1:
            log.warning("row %r failed: %s", rows[0].id, error)
            return [_output(rows[0].id, None, 0, 0.0, engine.backend.info.name, f"{type(error).__name__}: {error}")]
        # Find the culprit by halves: the good rows still get their completions.
        middle = len(rows) // 2
        return complete_rows(engine, rows[:middle], slots) + complete_rows(engine, rows[middle:], slots)
    model = engine.backend.info.name
    return [
        _output(row.id, s.text, s.replace, s.metrics.total_ms / 1000, model, None)
        for row, s in zip(rows, suggestions, strict=True)
    ]


def _request(row: Row) -> Any:
    from nextab.engine import CompletionRequest

    text = row.prefix + row.suffix
    uri = Path(row.path).absolute().as_uri() if row.path else f"untitled:batch-{row.id}"
    document = Document(uri, text, encoding="utf-32")
    return CompletionRequest(
        document=document,
        offset=len(row.prefix),
        text=text,
        path=row.path,
        mode=row.mode,  # type: ignore[arg-type]
        max_tokens=row.max_tokens,
        decoding=row.decoding,
    )


def _output(
    row_id: str | int | None,
    completion: str | None,
    replace: int,
    latency_s: float,
    model: str | None,
    error: str | None,
) -> dict[str, Any]:
    return {
        "id": row_id,
        "completion": completion,
        "replace": replace,
        "latency_s": round(latency_s, 4),
        "model": model,
        "error": error,
    }


# --- the job: resume, progress, local or Ray ---------------------------------------------------


@dataclass(frozen=True)
class Job:
    input: Path
    output: Path
    batch_size: int
    resume: bool
    root: Path

    @property
    def partial(self) -> Path:
        return self.output.with_name(self.output.name + ".partial")


def finished_rows(job: Job) -> dict[str | int, dict[str, Any]]:
    """Rows a previous run finished (completed or failed with an id), by id; a torn last line
    (the run was killed mid-write) is ignored and its row redone."""
    done: dict[str | int, dict[str, Any]] = {}
    for path in (job.output, job.partial):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in lines:
            try:
                out = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(out, dict) and out.get("id") is not None and "completion" in out:
                done[out["id"]] = out
    return done


# Completes planned work units (at most `slots` rows at a time), handing each unit's output
# rows to the callback as soon as the unit is done.
Runner = Callable[[list[list[Row]], int, Callable[[list[dict[str, Any]]], None]], None]


def run_job(job: Job, config: Config, runner: Runner, progress: bool = True) -> dict[str, Any]:
    """Read, complete what is not done yet, write the output in input order; a summary."""
    from tqdm import tqdm

    try:
        with job.input.open(encoding="utf-8", errors="replace") as source:
            parsed = list(read_rows(source, job.root))
    except OSError as error:
        raise SystemExit(f"nextab: cannot read {job.input}: {error.strerror or error}") from None
    done = finished_rows(job) if job.resume else {}
    if not job.resume:
        job.partial.unlink(missing_ok=True)
    todo = [row for row in parsed if isinstance(row, Row) and row.id not in done]
    results: dict[str | int, dict[str, Any]] = {}
    started = time.perf_counter()
    bar = tqdm(total=len(todo), desc="nextab batch", unit="row", disable=not progress, file=sys.stderr)
    with job.partial.open("a", encoding="utf-8") as sink:
        if sink.tell() and not job.partial.read_text(encoding="utf-8").endswith("\n"):
            sink.write("\n")  # after a torn last line (a kill mid-write), start a new one

        def finished(outputs: list[dict[str, Any]]) -> None:
            sink.write("".join(json.dumps(out, ensure_ascii=False) + "\n" for out in outputs))
            sink.flush()
            for out in outputs:
                results[out["id"]] = out
            bar.update(len(outputs))

        batches = plan_batches(
            todo, job.batch_size, config.completion.prefix_chars, config.completion.suffix_chars
        )
        runner(batches, job.batch_size, finished)
    bar.close()
    elapsed = time.perf_counter() - started
    ordered = []
    for row in parsed:
        if isinstance(row, Failed):
            ordered.append(_output(row.id, None, 0, 0.0, None, row.error))
        else:
            ordered.append(results.get(row.id) or done[row.id])
    temporary = job.output.with_name(job.output.name + ".tmp")
    temporary.write_text(
        "".join(json.dumps(out, ensure_ascii=False) + "\n" for out in ordered), encoding="utf-8"
    )
    temporary.replace(job.output)
    job.partial.unlink(missing_ok=True)
    completed = len(results)
    return {
        "rows": len(ordered),
        "completed_now": completed,
        "skipped_done": len(done),
        "errors": sum(out["error"] is not None for out in ordered),
        "elapsed_s": round(elapsed, 3),
        "rows_per_s": round(completed / elapsed, 3) if elapsed > 0 and completed else None,
        "batch_size": job.batch_size,
        "output": str(job.output),
    }


def local_runner(engine: Engine) -> Runner:
    def run(units: list[list[Row]], slots: int, finished: Callable[[list[dict[str, Any]]], None]) -> None:
        for unit in units:
            finished(complete_rows(engine, unit, slots))

    return run


def ray_runner(address: str | None, settings: dict[str, Any], workers: int, cpus: float) -> Runner:
    """Batches on Ray (ray.data): `workers` actors, each loading the model once. `address`
    None starts a local Ray instance; otherwise it names a running cluster ("auto", or
    "ray://host:10001")."""

    try:
        import ray
    except ImportError:
        raise SystemExit("nextab: --ray needs Ray: pip install 'nextab[ray]' (or 'ray[data]')") from None

    def run(batches: list[list[Row]], slots: int, finished: Callable[[list[dict[str, Any]]], None]) -> None:
        if not batches:
            return
        if not ray.is_initialized():
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        items = [
            {"batch": json.dumps([asdict(row) for row in batch]), "slots": slots} for batch in batches
        ]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        outputs = dataset.map_batches(
            RayCompleter,
            fn_constructor_kwargs={"settings": settings, "threads": max(1, int(cpus))},
            batch_size=1,
            concurrency=max(1, min(workers, len(items))),
            num_cpus=cpus,
        )
        for record in outputs.iter_rows():
            finished(json.loads(record["rows"]))

    return run


class RayCompleter:
    """A Ray worker: one engine (one model copy), fed one planned batch at a time."""

    def __init__(self, settings: dict[str, Any], threads: int) -> None:
        import torch

        from nextab.config import load
        from nextab.engine import Engine

        torch.set_num_threads(threads)
        config, _ = load(settings)
        self.engine = Engine.load(config, progress=False)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        out = []
        for payload, slots in zip(batch["batch"], batch["slots"], strict=True):
            rows = [Row(**row) for row in json.loads(str(payload))]
            out.append(json.dumps(complete_rows(self.engine, rows, int(slots)), ensure_ascii=False))
        return {"rows": out}


def cmd_batch(args: argparse.Namespace, config: Config) -> int:
    from nextab.config import to_settings

    if args.batch_size < 1:
        raise SystemExit("nextab: --batch-size must be at least 1")
    job = Job(
        input=Path(args.input),
        output=Path(args.output),
        batch_size=args.batch_size,
        resume=args.resume,
        root=Path(args.root),
    )
    if args.ray is not None:
        cpus = args.cpus_per_worker or max(1.0, (os.cpu_count() or 1) / args.workers)
        address = None if args.ray == "local" else args.ray
        runner = ray_runner(address, to_settings(config), args.workers, cpus)
    else:
        from nextab.engine import Engine
        from nextab.models.resolve import ModelNotFoundError

        try:
            engine = Engine.load(config, progress=not args.quiet)
        except ModelNotFoundError as error:
            print(f"nextab: {error}", file=sys.stderr)
            return 2
        runner = local_runner(engine)
    summary = run_job(job, config, runner, progress=not args.quiet)
    print(json.dumps(summary), file=sys.stderr if args.quiet else sys.stdout)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="JSON lines: id, prefix + suffix or path + line + character")
    parser.add_argument("--output", "-o", required=True, help="JSON lines out, in input order")
    parser.add_argument("--batch-size", type=int, default=8, help="rows decoded side by side (8)")
    parser.add_argument("--resume", action="store_true", help="skip ids already in the output")
    parser.add_argument("--root", default=".", help="where relative paths of rows are read from")
    parser.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help="run on Ray: a local instance, or the cluster at ADDRESS (auto, ray://host:port)",
    )
    parser.add_argument("--workers", type=int, default=1, help="Ray workers (model copies)")
    parser.add_argument("--cpus-per-worker", type=float, help="CPUs each Ray worker asks for")
    parser.add_argument("--quiet", action="store_true", help="no progress bar; summary on stderr")
