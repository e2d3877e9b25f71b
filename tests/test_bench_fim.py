"""The HumanEval infilling benchmark's logic, offline, with a tiny random-weight model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from nextab.config import Config
from nextab.engine import Engine
from nextab.models.drafting import engine_lookup
from tests.scripts import load_benchmark

bench = load_benchmark("fim_humaneval.py", "fim_humaneval")

_DATA = bench.data_dir()
needs_data = pytest.mark.skipif(
    not (_DATA / bench.SETS["single"]).exists(), reason=f"no HumanEval data at {_DATA}"
)

TASK = bench.Task(
    task_id="Toy/0/L1",
    prompt="def add(a, b):\n",
    suffix="",
    canonical="    return a + b\n",
    test="def check(candidate):\n    assert candidate(2, 3) == 5\n",
    entry_point="add",
)


def _result(completion: str, task=TASK, replace: int = 0):
    return bench.TaskResult(
        task_id=task.task_id,
        completion=completion,
        canonical=task.canonical,
        exact=bench.is_exact(completion, task.canonical),
        exact_indented=bench.is_exact_indented(completion, task.canonical),
        passed=None,
        check=None,
        total_ms=10.0,
        prompt_tokens=5,
        reused_tokens=0,
        generated_tokens=3,
        prefill_ms=4.0,
        decode_ms=6.0,
        stop_reason="stop",
        mode="line",
        replace=replace,
    )


@pytest.fixture(scope="module")
def engine(tiny_backend) -> Engine:
    return Engine(Config(max_tokens=8), tiny_backend)


# --- scoring ----------------------------------------------------------------------------------


def test_correct_completion_passes() -> None:
    result = bench.score(TASK, _result("    return a + b\n"))
    assert result.exact and result.passed and result.check == "pass"


def test_exact_match_ignores_surrounding_whitespace_only() -> None:
    assert bench.is_exact("    return a + b", "    return a + b\n")
    assert not bench.is_exact("    return b + a", "    return a + b\n")


def test_indented_exact_match_counts_the_indentation() -> None:
    assert bench.is_exact("return a + b\n", "    return a + b\n")
    assert not bench.is_exact_indented("return a + b\n", "    return a + b\n")
    assert bench.is_exact_indented("    \n    return a + b", "    return a + b\n")
    assert bench.is_exact_indented("    return a + b  \n", "    return a + b\n")


def test_wrong_completion_fails() -> None:
    result = bench.score(TASK, _result("    return a - b\n"))
    assert not result.exact and result.passed is False and result.check == "fail"


def test_syntax_error_fails() -> None:
    assert bench.score(TASK, _result("    return (a +\n")).check == "fail"


def test_timeout_counts_as_fail() -> None:
    looping = _result("    while True:\n        pass\n")
    result = bench.score(TASK, looping, timeout_s=0.5)
    assert result.check == "timeout" and result.passed is False


def test_replaced_characters_are_removed_from_the_file() -> None:
    task = bench.Task("Toy/1", "def f(x):\n    return abs(", ")\n", "x)", TASK.test, "f")
    file = bench.final_file(task, _result("x)", task, replace=1))
    assert file == "def f(x):\n    return abs(x)\n"


def test_check_runs_isolated_from_the_checkout() -> None:
    # -I: no user site, no PYTHON* variables, nothing of the checkout on the path.
    program = "import sys\nassert sys.flags.isolated\n"
    assert bench.run_check(program) == "pass"


# --- task selection ---------------------------------------------------------------------------


def test_select_takes_every_nth_then_limits() -> None:
    rows = list(range(20))
    assert bench.select(rows, 6, 150) == [0, 6, 12, 18]
    assert bench.select(rows, 6, 2) == [0, 6]
    assert bench.select(rows, 1, None) == rows
    with pytest.raises(ValueError):
        bench.select(rows, 0, None)


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(bench.DATA_DIR_ENV, raising=False)
    assert bench.data_dir() == bench.DEFAULT_DATA_DIR
    monkeypatch.setenv(bench.DATA_DIR_ENV, "/elsewhere")
    assert bench.data_dir() == Path("/elsewhere")
    assert bench.data_dir("/flag") == Path("/flag")


def test_default_mode_is_line_only_for_the_single_line_set() -> None:
    assert bench.default_mode("single") == "line"
    assert {bench.default_mode(s) for s in ("multi", "random-span", "random-span-light")} == {
        "auto"
    }


@needs_data
def test_reported_set_is_150_single_line_tasks() -> None:
    tasks = bench.load_tasks("single", 6, 150, _DATA)
    assert len(tasks) == 150
    every = bench.read_tasks(_DATA / bench.SETS["single"])
    assert [t.task_id for t in tasks] == [t.task_id for t in every[::6][:150]]
    # The hole is whole lines at column 0: what the line mode and the scoring assume.
    assert all(t.prompt.endswith("\n") and t.canonical.endswith("\n") for t in tasks)


# --- summary ----------------------------------------------------------------------------------


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert bench.percentile(values, 50) == 3.0
    assert bench.percentile(values, 95) == pytest.approx(8.8)
    assert bench.percentile([7.0], 95) == 7.0


def test_summary_shape() -> None:
    results = [bench.score(TASK, _result(c)) for c in ("    return a + b\n", "    return 0\n")]
    summary = bench.summarise(results)
    assert summary["n"] == 2
    assert summary["exact_match"] == 0.5 and summary["pass_at_1"] == 0.5
    assert summary["exact_match_indented"] == 0.5
    assert set(summary["latency_ms"]) == {"p50", "p95", "mean"}
    assert set(summary["tokens"]) == {"prompt_mean", "reused_mean", "generated_mean"}
    assert summary["prefill_ms_mean"] == 4.0 and summary["decode_ms_mean"] == 6.0
    assert summary["stop_reasons"] == {"stop": 2}
    block = bench.baseline_block(summary, "single", 6, 150)
    assert block["comparable"] is False  # 2 tasks are not the baseline's 150
    assert block["ratios"]["pass_at_1"] == pytest.approx(0.5 / 0.547, abs=1e-3)
    json.dumps(summary)


def test_baseline_is_comparable_only_on_its_own_set() -> None:
    summary = {"n": 150, "exact_match": 0.5, "pass_at_1": 0.5, "latency_ms": {"p50": 565.0}}
    assert bench.baseline_block(summary, "single", 6, 150)["comparable"] is True
    assert bench.baseline_block(summary, "single", 6, 150)["ratios"]["latency_p50"] == 0.5
    assert bench.baseline_block(summary, "multi", 6, 150)["comparable"] is False


# --- end to end -------------------------------------------------------------------------------


def test_run_task_sends_the_file_with_the_cursor_in_the_hole(engine: Engine) -> None:
    seen = []

    class Recorder:
        def complete(self, request):
            seen.append(request)
            return engine.complete(request)

        def forget(self, document) -> None:
            engine.forget(document)

    result = bench.run_task(Recorder(), TASK, "line", 4)
    (request,) = seen
    assert request.text == TASK.prompt + TASK.suffix == request.document.text
    assert request.offset == len(TASK.prompt)
    assert request.mode == "line" and request.max_tokens == 4
    assert result.generated_tokens <= 4 and result.mode == "line"
    assert request.document.kv is None  # the task's cache is released


@needs_data
def test_three_tasks_end_to_end(engine: Engine, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    argv = ["--limit", "3", "--workers", "2", "--max-tokens", "6", "--out", str(out)]
    summary = bench.main(argv, load_engine=lambda config: engine)
    assert summary["n"] == 3 and summary["mode"] == "line"
    assert 0.0 <= summary["pass_at_1"] <= 1.0
    assert summary["engine"] == {
        "model": "tiny-qwen",
        "device": "cpu",
        "dtype": "float32",
        "load_s": summary["engine"]["load_s"],
        "run_s": summary["engine"]["run_s"],
    }
    assert summary["baseline"]["comparable"] is False
    assert summary["host"]["cpus"] >= 1 and len(summary["host"]["load_avg_1m"]) == 2
    assert summary["command"].endswith("--out " + str(out))
    written = json.loads(out.read_text())
    assert written["summary"] == json.loads(json.dumps(summary))
    records = written["tasks"]
    assert [r["task_id"] for r in records] == [
        t.task_id for t in bench.load_tasks("single", 6, 3, _DATA)
    ]
    for r in records:
        assert {"task_id", "completion", "canonical", "exact", "passed", "total_ms"} <= set(r)
        assert r["exact_indented"] <= r["exact"]
        assert {"stop_reason", "mode"} <= set(r)
        assert isinstance(r["passed"], bool) and r["total_ms"] > 0


@needs_data
def test_strategies_compared_task_by_task_in_one_run(engine: Engine, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    engine.learned_threshold = 0.0  # as if calibrated: every step pauses
    try:
        # Without prompt-lookup drafts, whose checks would count as evaluated tokens too.
        argv = ["--limit", "2", "--max-tokens", "4", "--decoding", "greedy", "adadec", "beam",
                "--no-lookup", "--out", str(out)]
        summary = bench.main(argv, load_engine=lambda config: engine)
    finally:
        engine.lookup = engine_lookup()
        engine.learned_threshold = None
        engine.reconfigure(dataclasses.replace(engine.config, decoding="greedy"))
    by = summary["by_decoding"]
    assert set(by) == {"greedy", "adadec", "beam"} and all(s["n"] == 2 for s in by.values())
    greedy, adadec = by["greedy"]["decoding"], by["adadec"]["decoding"]
    assert greedy["paused_per_token"] == 0.0 and greedy["evaluated_per_token"] <= 1.0
    assert adadec["paused_per_token"] > 0
    assert adadec["evaluated_per_token"] > greedy["evaluated_per_token"]
    assert summary["vs_greedy"]["greedy"]["latency_p50_ratio"] == 1.0
    assert summary["engine"]["adadec_threshold"] == 0.0
    records = json.loads(out.read_text())["tasks"]
    # Interleaved: each task once per strategy, one after the other.
    assert [r["decoding"] for r in records] == ["greedy", "adadec", "beam"] * 2
