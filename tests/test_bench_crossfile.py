"""The cross-file benchmark's task mining, runner and scoring, offline: a project written to
disk, the real index, the engine over a tiny random-weight model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nextab.config import Config, ContextConfig
from nextab.engine import Engine
from tests.files import write_files
from tests.scripts import load_benchmark

tasks_module = load_benchmark("crossfile_tasks.py", "crossfile_tasks")
bench = load_benchmark("crossfile.py", "crossfile")

BASE = '''"""Shapes."""


class Box:
    """A box."""

    def __init__(self, size):
        self.size = size

    def grow(self, by):
        return Box(self.size + by)


def helper(x, y):
    """Add."""
    return x + y
'''

USER = '''from pkg.base import Box, helper
from pkg import base


class Crate(Box):
    def bigger(self):
        return self.grow(2)


def run():
    total = helper(1, 2)
    box = Box(3)
    return base.helper(total, box.size)
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_files(tmp_path / "demo-1.0", {"pkg/__init__.py": "", "pkg/base.py": BASE, "pkg/user.py": USER})


def _mined(project: Path) -> list:
    return tasks_module.mine_project("demo==1.0", project)


def test_tasks_of_every_kind_are_the_first_uses_of_names_from_other_files(project: Path) -> None:
    tasks = _mined(project)
    by = {(t.kind, t.name): t for t in tasks}
    call = by[("call", "helper")]
    assert call.target == "1, 2)" and call.defined_in == "pkg/base.py"
    assert by[("call", "Box")].target == "3)"
    assert by[("call", "self.grow")].target == "2)"
    assert by[("call", "base.helper")].target == "total, box.size)"
    assert by[("attribute", "base.helper")].target == "helper(total, box.size)"
    assert by[("attribute", "self.grow")].target == "grow(2)"
    assert by[("name", "helper")].target == "helper(1, 2)"
    statement = by[("statement", "helper")]
    assert statement.target == "total = helper(1, 2)"
    # The document is the file with the rest of the line not yet written.
    text = statement.document_text()
    assert text[: statement.offset].endswith("def run():\n    ")
    assert text[statement.offset :].startswith("\n    box = Box(3)")
    # First uses only: `helper` is called twice, mined once per kind.
    assert sum(1 for t in tasks if t.kind == "call" and t.name == "helper") == 1


def test_sampling_is_fixed_per_seed_and_keeps_one_task_per_line(project: Path) -> None:
    tasks = _mined(project)
    first = tasks_module.sample(tasks, per_project=2, seed=3)
    assert first == tasks_module.sample(tasks, per_project=2, seed=3)
    lines = [(t.path, t.task_id.rsplit(":", 2)[1]) for t in first]
    assert len(lines) == len(set(lines))
    assert {t.kind for t in first} <= set(tasks_module.KINDS)
    assert all(sum(1 for t in first if t.kind == k) <= 2 for k in tasks_module.KINDS)


def test_runner_scores_every_condition_and_reuses_identical_prompts(
    project: Path, tiny_backend, tmp_path: Path
) -> None:
    tasks = [t for t in _mined(project) if t.kind in ("call", "statement")][:3]
    config = Config(max_tokens=4, context=ContextConfig(watch=False, persist=False))
    engine = Engine(config, tiny_backend)
    conditions = [bench.parse_condition(c) for c in ("alone", "none", 'api={"sources": ["api"]}')]
    answers = bench.Answers("tiny", tmp_path / "answers.jsonl")
    results = bench.run_project(engine, answers, tasks, conditions, config)
    assert len(results) == len(tasks) * 3
    by = {(r.task_id, r.condition): r for r in results}
    for task in tasks:
        alone, none, api = (by[(task.task_id, c)] for c in ("alone", "none", "api"))
        assert none.context_tokens == 0 and alone.context_tokens == 0
        assert (api.context_tokens > 0) == (task.kind == "call")
        # Where the site gives nothing, the prompt is the one `none` already answered.
        if task.kind == "statement":
            assert api.reused and api.completion == none.completion
        assert alone.target == task.target
    # Answers outlive the run: a second run computes nothing.
    again = bench.run_project(
        engine, bench.Answers("tiny", tmp_path / "answers.jsonl"), tasks, conditions, config
    )
    assert all(r.reused for r in again)
    assert [r.completion for r in again] == [r.completion for r in results]


def test_summary_counts_wins_and_losses_against_the_file_alone() -> None:
    def row(task: str, kind: str, condition: str, exact: bool) -> object:
        return bench.Result(task, kind, condition, "x", "y", exact, 1.0 if exact else 0.0, 0, 10, 5.0, False)

    results = [
        row("a", "call", "alone", False), row("a", "call", "ctx", True),
        row("b", "call", "alone", True), row("b", "call", "ctx", False),
        row("c", "name", "alone", False), row("c", "name", "ctx", True),
    ]
    table = bench.summarise(results, ["alone", "ctx"])
    ctx = table["ctx"]
    assert (ctx["won"], ctx["lost"]) == (2, 1)
    assert ctx["kinds"]["call"]["won"] == 1 and ctx["kinds"]["call"]["lost"] == 1
    assert ctx["exact_match_vs_alone"] == pytest.approx(2 / 3 - 1 / 3, abs=1e-3)
    assert "| `ctx` | 0.667 | +0.333 | 2 / 1 |" in bench.markdown(table)


def test_conditions_are_context_settings_checked_before_the_run() -> None:
    assert bench.parse_condition("none").settings == {"strategy": "none"}
    similar = bench.parse_condition('similar={"sources": ["similar"], "budgetTokens": 256}')
    config = bench.condition_config(Config(), similar)
    assert config.context.sources == ("similar",) and config.context.budget_tokens == 256
    with pytest.raises(SystemExit):
        bench.condition_config(Config(), bench.parse_condition('bad={"sources": ["nope"]}'))
    assert dataclasses.replace(Config()).context.sources[0] == "api"
