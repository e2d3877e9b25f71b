"""The real embedded model (Qwen2.5-Coder-0.5B): slower, marked `model`; CI runs it too."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from nextab.config import Config
from nextab.context.document import Document
from nextab.engine import CompletionRequest, Engine

pytestmark = pytest.mark.model

EXAMPLE = Path(__file__).resolve().parents[1] / "nextab" / "examples" / "stats.py"


@pytest.fixture(scope="module")
def engine() -> Engine:
    """What a user gets: the default backend for a CPU (the onnxruntime int8 export)."""
    return Engine.load(Config(model="embedded", device="cpu"), progress=False)


@pytest.fixture(scope="module")
def torch_engine() -> Engine:
    return Engine.load(Config(model="embedded", device="cpu", backend="torch"), progress=False)


AGREEMENT = [
    ("def add(a, b):\n    return ", None),
    ("def add(a, b):\n    ret", None),
    ("import os\n\n\ndef home():\n    return os.path.", None),
    ("def is_even(n):\n    return n % ", None),
    ("class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = ", None),
    ("def mean(xs):\n    return sum(xs) / ", None),
]


def test_the_default_cpu_backend_is_onnxruntime_and_agrees_with_torch(
    engine: Engine, torch_engine: Engine
) -> None:
    assert engine.backend.info.dtype.startswith("onnx-int8")
    assert torch_engine.backend.info.dtype in ("float32", "bfloat16")
    same = [
        _complete(engine, text, offset).text == _complete(torch_engine, text, offset).text
        for text, offset in AGREEMENT
    ]
    # int8 weights against the dequantized float ones: the same suggestion (148 of 150
    # HumanEval tasks agree, benchmarks/README.md).
    assert all(same), same


def test_typing_a_suggestion_is_served_without_the_model(engine: Engine) -> None:
    text = "def add(a, b):\n    return "
    doc = Document("file:///t.py", text)
    first = _complete(engine, text, doc=doc)
    assert first.text.startswith("a")
    for count in range(1, 3):
        typed = text + first.text[:count]
        doc.apply_change(typed)
        got = _complete(engine, typed, doc=doc)
        assert (got.text, got.metrics.source) == (first.text[count:], "typed-ahead")


def _complete(engine: Engine, text: str, offset: int | None = None, doc: Document | None = None):
    offset = len(text) if offset is None else offset
    doc = doc or Document("file:///t.py", text)
    return engine.complete(CompletionRequest(document=doc, offset=offset, text=text, path="t.py"))


def test_add_completes_to_a_plus_b(engine: Engine) -> None:
    suggestion = _complete(engine, "def add(a, b):\n    return ")
    assert suggestion.text.strip() == "a + b"
    assert suggestion.mode == "line"


def test_mid_word_completion_is_healed(engine: Engine) -> None:
    # The prompt ends inside "return": token healing lets the model re-spell the word.
    suggestion = _complete(engine, "def add(a, b):\n    ret")
    assert suggestion.text.strip() == "urn a + b"


def test_fim_uses_the_suffix(engine: Engine) -> None:
    # `total` appears only after the cursor: the body must define it, and not re-type the return.
    text = "def add_all(xs):\n    \n    return total\n"
    offset = text.index("    \n") + 4
    suggestion = _complete(engine, text, offset)
    assert suggestion.mode == "block"
    assert "total" in suggestion.text
    assert "return total" not in suggestion.text


def test_keystroke_reuses_the_prompt_and_matches_a_cold_run(engine: Engine) -> None:
    text = EXAMPLE.read_text()
    offset = text.index("    return \n\n\ndef stdev") + len("    return ")
    doc = Document("file:///stats.py", text)
    first = _complete(engine, text, offset, doc)
    typed = text[:offset] + "(" + text[offset:]
    doc.given = None  # the model, not typed-ahead, even if the suggestion began with "("
    warm = _complete(engine, typed, offset + 1, doc)
    cold = _complete(engine, typed, offset + 1, Document("file:///other.py", typed))
    assert warm.metrics.reused_tokens >= warm.metrics.prompt_tokens - 40
    assert cold.metrics.reused_tokens == 0
    assert warm.text == cold.text
    assert first.text.strip()


def test_cli_complete_on_the_bundled_example() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nextab", "complete", f"{EXAMPLE}:12:12", "--json", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result = json.loads(out.stdout)
    assert "m" in result["completion"] and "values" in result["completion"]
    assert result["metrics"]["total_ms"] > 0


def test_calibration_learns_a_threshold_from_real_code(engine: Engine, tmp_path, monkeypatch) -> None:
    from nextab.calibrate import calibrate
    from nextab.models.calibration import load_threshold, save_calibration

    fit, details = calibrate(engine, count=8, seed=0)
    # The real model is right more often than not, and less often where it is unsure.
    assert 0.4 < fit.greedy_right < 0.98 and fit.coefficient < 0
    assert 0.0 < fit.threshold < 10.0 and fit.samples > 50
    assert details["spans"] == 8
    monkeypatch.setenv("NEXTAB_CACHE_DIR", str(tmp_path))
    assert engine.model_path is not None
    save_calibration(engine.model_path, engine.backend.info.name, fit, details)
    assert load_threshold(engine.model_path, engine.backend.info.name) == fit.threshold


def test_adadec_and_beam_complete_on_the_real_model(engine: Engine) -> None:
    import dataclasses

    from nextab.models.decoding import make_decoder

    greedy = _complete(engine, "def add(a, b):\n    return ")
    for name, threshold in (("adadec", 0.0), ("beam", math.inf)):
        engine.decoder = make_decoder(name, threshold=threshold)
        try:
            suggestion = _complete(engine, "def add(a, b):\n    return ")
        finally:
            engine.decoder = make_decoder("greedy")
        assert suggestion.text.strip() == "a + b", name
        assert dataclasses.asdict(suggestion.metrics)["generated_tokens"] >= 1
    assert greedy.text.strip() == "a + b"


def test_batch_of_real_rows_matches_one_at_a_time(engine: Engine, tmp_path: Path) -> None:
    """`nextab batch`'s padded side-by-side decoding gives the real model's one-at-a-time
    completions (prompts of different lengths, so the padding is exercised)."""
    from nextab.batch import Job, local_runner, run_job

    prefixes = [
        "def add(a, b):\n    return ",
        "import os\n\n\ndef read_text(path):\n    with open(path) as f:\n        return ",
        "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n        self.",
    ]
    rows = [{"id": i, "prefix": p, "suffix": "\n", "path": "t.py"} for i, p in enumerate(prefixes)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = Job(source, tmp_path / "out.jsonl", 3, resume=False, root=tmp_path)
    run_job(job, engine.config, local_runner(engine), progress=False)
    batched = [json.loads(line)["completion"] for line in job.output.read_text().splitlines()]
    alone = [_complete(engine, p + "\n", len(p)).text for p in prefixes]
    assert batched == alone
    assert batched[0].strip() == "a + b"


def test_bench_accept_types_a_predictable_file_through_the_server(tmp_path: Path) -> None:
    """`nextab bench accept` with the real server and model: typing the next lines of a
    counting table, the person accepts suggestions and types fewer characters."""
    import argparse

    from nextab import bench_accept

    names = ["ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE", "TEN"]
    project = tmp_path / "project"
    project.mkdir()
    (project / "numbers.py").write_text("".join(f"{n} = {i + 1}\n" for i, n in enumerate(names)))
    parser = argparse.ArgumentParser()
    bench_accept.add_arguments(parser)
    out = tmp_path / "out.json"
    args = parser.parse_args([
        str(project), "--files", "1", "--segments-per-file", "1", "--segment-lines", "2",
        "--seed", "3", "--device", "cpu", "--warm", "--out", str(out), "--report", str(tmp_path / "r.md"),
    ])  # fmt: skip
    assert bench_accept.run(args) == 0
    overall = json.loads(out.read_text())["configs"]["default"]["overall"]
    assert overall["triggers"] >= 2 and overall["shown"] >= 1
    assert overall["chars_accepted"] > 0 and overall["acceptance_rate"] > 0
    assert overall["cpr"] == 1.0
