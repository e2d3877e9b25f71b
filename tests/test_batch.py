"""nextab/batch.py: `nextab batch`, headless completion of many positions (locally and on Ray)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nextab.batch import Failed, Job, Row, local_runner, plan_batches, read_rows, run_job
from nextab.config import Config, load
from nextab.context.document import Document
from nextab.engine import CompletionRequest, Engine

CODE = "def add(a, b):\n    return a + b\n\n\ndef mean(xs):\n    return sum(xs) / len(xs)\n"
FUNCS = ["add", "mean", "total", "count", "first", "last", "mid", "norm", "scale", "clip"]


def _rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        name = FUNCS[i % len(FUNCS)]
        body = "    return " + "x + " * (i % 7)  # prompts of different lengths
        rows.append({"id": f"r{i}", "prefix": f"def {name}(x):\n{body}", "suffix": "\n\nprint(1)\n",
                     "path": "calc.py", "maxTokens": 6 + i % 5})
    return rows


def _write(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_rows_are_read_and_bad_ones_reported(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text("x = 'é'\nprint(x)\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01binary")
    lines = [
        json.dumps({"id": 1, "prefix": "a = ", "suffix": "\n"}),
        "{not json",
        json.dumps({"id": "f", "path": "mod.py", "line": 0, "character": 6}),
        json.dumps({"id": 1, "prefix": "", "suffix": ""}),  # duplicate id
        json.dumps({"id": "gone", "path": "missing.py", "line": 0, "character": 0}),
        json.dumps({"id": "far", "path": "mod.py", "line": 9, "character": 0}),
        json.dumps({"id": "wide", "path": "mod.py", "line": 1, "character": 9}),
        json.dumps({"id": "bin", "path": "blob.bin", "line": 0, "character": 0}),
        json.dumps({"prefix": "x"}),  # no id
        json.dumps({"id": "m", "prefix": "x", "suffix": "", "mode": "paragraph"}),
        json.dumps({"id": "d", "prefix": "x", "suffix": "", "decoding": "sampling"}),
        json.dumps({"id": "t", "prefix": "x", "suffix": "", "maxTokens": 0}),
        "",
        json.dumps({"id": "end", "path": "mod.py", "line": 2, "character": 0, "mode": "multiline",
                    "decoding": "adadec", "maxTokens": 9}),
        "[1, 2]",
    ]
    found = list(read_rows(lines, tmp_path))
    assert [type(r).__name__ for r in found] == [
        "Row", "Failed", "Row", "Failed", "Failed", "Failed", "Failed", "Failed", "Failed",
        "Failed", "Failed", "Failed", "Row", "Failed",
    ]
    first, _, in_file, *_ = found
    assert (first.prefix, first.suffix, first.mode) == ("a = ", "\n", "auto")
    assert (in_file.prefix, in_file.suffix) == ("x = 'é", "'\nprint(x)\n")  # characters, not bytes
    end = found[12]
    assert (end.prefix, end.suffix, end.mode, end.decoding, end.max_tokens) == (
        "x = 'é'\nprint(x)\n", "", "block", "adadec", 9
    )
    errors = {r.id: r.error for r in found if isinstance(r, Failed) and r.id is not None}
    assert "invalid JSON" in found[1].error and found[1].id is None
    assert "duplicate id" in errors[1]
    assert "cannot read" in errors["gone"] and "missing.py" in errors["gone"]
    assert "past the end" in errors["far"] and "past the end of line 1" in errors["wide"]
    assert "binary" in errors["bin"]
    assert '"mode"' in errors["m"] and '"decoding"' in errors["d"] and '"maxTokens"' in errors["t"]
    assert all(r.error.startswith(f"input line {r.index + 1}:") for r in found if isinstance(r, Failed))


def test_batches_group_similar_lengths_deterministically() -> None:
    rows = [Row(i, i, "x" * length, "", None, None, None, "auto") for i, length in
            enumerate([50, 3, 900, 10, 3, 400, 20])]
    units = plan_batches(rows, 3, prefix_chars=500, suffix_chars=100, per_slot=1)
    assert [[r.index for r in b] for b in units] == [[1, 4, 3], [6, 0, 5], [2]]
    assert plan_batches(list(reversed(rows)), 3, 500, 100, per_slot=1) == units
    # By default a unit holds four rows per slot: slots free up and are refilled inside it.
    assert [[r.index for r in b] for b in plan_batches(rows, 1, 500, 100)] == [[1, 4, 3, 6], [0, 5, 2]]


@pytest.fixture(scope="module")
def lively_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with untied, larger random weights: its completions differ from row to row
    (the shared tiny model mostly repeats the prompt, which the stop rules then drop)."""
    from tests.tiny import build_tokenizer, lively_model

    path = tmp_path_factory.mktemp("lively")
    tokenizer = build_tokenizer()
    lively_model(len(tokenizer), tokenizer.eos_token_id, seed=3).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def engine(lively_dir: Path) -> Engine:
    from nextab.models.torch_backend import TorchBackend

    return Engine(Config(), TorchBackend.load(lively_dir, "lively", "cpu", "float32"))


def _one_at_a_time(engine: Engine, rows: list[dict]) -> dict[str, str]:
    found = {}
    for row in rows:
        text = row["prefix"] + row["suffix"]
        doc = Document("file:///calc.py", text)
        request = CompletionRequest(doc, len(row["prefix"]), text, path=row["path"],
                                    max_tokens=row["maxTokens"])
        found[row["id"]] = engine.complete(request).text
    return found


@pytest.mark.parametrize("size", [1, 4])
def test_output_in_input_order_with_errors_and_same_completions(
    tmp_path: Path, engine: Engine, size: int
) -> None:
    rows = _rows(11)
    source = _write(tmp_path / "in.jsonl", [*rows[:3], "{broken", *rows[3:]])
    job = Job(source, tmp_path / "out.jsonl", size, resume=False, root=tmp_path)
    summary = run_job(job, engine.config, local_runner(engine), progress=False)
    out = [json.loads(line) for line in job.output.read_text().splitlines()]
    assert [o["id"] for o in out] == ["r0", "r1", "r2", None, *[r["id"] for r in rows[3:]]]
    assert out[3]["error"].startswith("input line 4: invalid JSON")
    assert summary["rows"] == 12 and summary["errors"] == 1 and summary["completed_now"] == 11
    good = [o for o in out if o["error"] is None]
    assert all(o["model"] == "lively" and o["latency_s"] > 0 for o in good)
    # Decoded side by side, each row gets what it gets alone.
    assert {o["id"]: o["completion"] for o in good} == _one_at_a_time(engine, rows)
    assert len({o["completion"] for o in good}) > 3
    assert not job.partial.exists()


def test_a_row_the_engine_refuses_does_not_sink_its_batch(tmp_path: Path, engine: Engine) -> None:
    rows = _rows(4)
    source = _write(tmp_path / "in.jsonl", rows)
    real = engine.complete_batch

    def picky(requests, cancel=None, slots=None):
        if any(r.text.startswith("def total") for r in requests):
            raise RuntimeError("out of memory")
        return real(requests, slots=slots)

    engine.complete_batch = picky  # type: ignore[method-assign]
    job = Job(source, tmp_path / "out.jsonl", 4, resume=False, root=tmp_path)
    run_job(job, engine.config, local_runner(engine), progress=False)
    out = {o["id"]: o for o in map(json.loads, job.output.read_text().splitlines())}
    assert out["r2"]["error"] == "RuntimeError: out of memory" and out["r2"]["completion"] is None
    assert all(out[i]["error"] is None and out[i]["completion"] is not None for i in ("r0", "r1", "r3"))


def test_resume_after_a_kill_redoes_nothing(tmp_path: Path, lively_dir: Path) -> None:
    rows = _rows(150)
    source = _write(tmp_path / "in.jsonl", rows)
    output = tmp_path / "out.jsonl"
    partial = tmp_path / "out.jsonl.partial"
    command = [sys.executable, "-m", "nextab", "batch", str(source), "-o", str(output),
               "--batch-size", "2", "--model", str(lively_dir), "--device", "cpu", "--quiet"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXTAB_")}
    job = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if partial.exists() and len(partial.read_text().splitlines()) >= 10:
            break
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    before = {json.loads(line)["id"] for line in partial.read_text().splitlines() if line.endswith("}")}
    assert 10 <= len(before) < len(rows) and not output.exists()

    resumed = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True,
                             timeout=300, check=True)
    summary = json.loads(resumed.stderr.strip().splitlines()[-1])
    out = [json.loads(line) for line in output.read_text().splitlines()]
    assert [o["id"] for o in out] == [r["id"] for r in rows]
    assert all(o["error"] is None for o in out)
    assert summary["skipped_done"] >= len(before)
    assert summary["completed_now"] == len(rows) - summary["skipped_done"]
    assert not partial.exists()
    # An uninterrupted run gives the same completions.
    fresh = tmp_path / "fresh.jsonl"
    subprocess.run([*command[:6], str(fresh), *command[7:]], env=env, check=True, timeout=300,
                   capture_output=True)
    again = [json.loads(line) for line in fresh.read_text().splitlines()]
    assert [o["completion"] for o in again] == [o["completion"] for o in out]


def test_ray_gives_the_local_completions(tmp_path: Path, lively_dir: Path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ray[data]')")
    from nextab.batch import ray_runner
    from nextab.config import to_settings
    from nextab.models.torch_backend import TorchBackend

    rows = _rows(13)
    source = _write(tmp_path / "in.jsonl", [*rows[:5], "{bad", *rows[5:]])
    config, _ = load({"model": str(lively_dir), "device": "cpu", "dtype": "float32"})
    backend = TorchBackend.load(lively_dir, "lively", "cpu", "float32")
    local = Job(source, tmp_path / "local.jsonl", 4, resume=False, root=tmp_path)
    run_job(local, config, local_runner(Engine(config, backend)), progress=False)

    on_ray = Job(source, tmp_path / "ray.jsonl", 4, resume=False, root=tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_job(on_ray, config, ray_runner(None, to_settings(config), 2, 1), progress=False)
    finally:
        ray.shutdown()
    assert summary["completed_now"] == 13 and summary["errors"] == 1

    def strip(path: Path) -> list[dict]:
        out = [json.loads(line) for line in path.read_text().splitlines()]
        return [{k: v for k, v in o.items() if k not in ("latency_s", "model")} for o in out]

    assert strip(on_ray.output) == strip(local.output)
    assert len({o["completion"] for o in strip(local.output) if o["completion"]}) > 1


def test_rows_with_another_strategy_get_it(tmp_path: Path, engine: Engine) -> None:
    rows = _rows(4)
    rows[1]["decoding"] = "beam"
    source = _write(tmp_path / "in.jsonl", rows)
    job = Job(source, tmp_path / "out.jsonl", 4, resume=False, root=tmp_path)
    run_job(job, engine.config, local_runner(engine), progress=False)
    out = {o["id"]: o["completion"] for o in map(json.loads, job.output.read_text().splitlines())}
    beam = Engine(load({"decoding": "beam"})[0], engine.backend)
    greedy = _one_at_a_time(engine, rows)
    assert out["r1"] == _one_at_a_time(beam, [rows[1]])["r1"]
    assert {k: v for k, v in out.items() if k != "r1"} == {k: v for k, v in greedy.items() if k != "r1"}
    assert out["r1"] != greedy["r1"]  # beam search found something else here: the row's own choice counted
