"""benchmarks/cancel_stop.py: superseded completions through the real server, timed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts import load_benchmark

cancel_stop = load_benchmark("cancel_stop.py", "bench_cancel_stop")


def test_superseded_completions_are_counted_by_the_server(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Block mode, 2,000 tokens: the tiny model's deep completion runs for ~0.3 s or more, so
    # a change 50-100 ms in finds it still being computed.
    options = {
        "maxTokens": 2000,
        "debounceMs": 0,
        "completion": {"maxLines": 200, "multiline": "always"},
    }
    argv = [
        "--trials", "2", "--min-delay-s", "0.05", "--max-delay-s", "0.1",
        "--model", str(tiny_model_dir), "--options", json.dumps(options),
    ]  # fmt: skip
    assert cancel_stop.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["delays_s"] == [0.05, 0.1]
    stops = result["cancel_to_stop_ms"]
    assert result["superseded"] >= 1
    # The server counts those it stopped while they ran (one still queued is not counted).
    assert 1 <= stops["n"] <= result["superseded"]
    assert 0 <= stops["p50"] <= stops["max"]
    assert result["superseded_answer_ms"]["n"] == result["superseded"]
    assert result["next_answer_ms"]["n"] == 2
    assert result["targets"]["stop_within_200_ms"] == (stops["max"] <= 200)
