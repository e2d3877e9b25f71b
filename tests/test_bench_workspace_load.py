"""benchmarks/workspace_load.py: a generated workspace opened by the real server, probed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts import load_benchmark

bench = load_benchmark("workspace_load.py", "bench_workspace_load")


def test_the_workspace_is_generated_with_files_the_index_skips(tmp_path: Path) -> None:
    modules = bench.make_workspace(tmp_path, 250)
    assert len(modules) == 250 and len({p.parent for p in modules}) == 3
    assert (tmp_path / "data.csv").stat().st_size > 10_000_000
    assert (tmp_path / "bundle.py").stat().st_size > 1_000_000  # over the 1 MB limit


def test_a_small_run_indexes_and_answers(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--files", "300", "--open", "50", "--model", str(tiny_model_dir), "--timeout-s", "120"]
    assert bench.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["opened"] == 50
    # Every source file walked (the modules and bundle.py, which is then skipped for its size;
    # data.csv is no source), while requests answered.
    assert result["walked_files"] == 301 and result["indexed_s"] is not None
    assert result["status_ms"]["n"] > 0 and result["debug_document_ms"]["n"] > 0
    assert result["completion_ms"]["n"] > 0
