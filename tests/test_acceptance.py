from __future__ import annotations

from pathlib import Path

import pytest

from nextab.acceptance import AcceptanceLog, Outcome, outcome_from_params, summarize


def _outcome(result: str, language: str = "python", accepted: int = 0, latency: float | None = 50.0) -> Outcome:
    return Outcome("completion", result, language, 10, accepted, latency, "m", 1.0)  # type: ignore[arg-type]


def test_the_log_reads_back_what_was_appended_and_skips_a_torn_line(tmp_path: Path) -> None:
    log = AcceptanceLog(tmp_path / "a.jsonl")
    log.append(_outcome("accepted", accepted=10))
    log.append(_outcome("dismissed"))
    with open(log.path, "ab") as f:
        f.write(b'{"format": "nextab.acceptance/1", "kind": "compl')  # a crash mid-write
    found, skipped = log.read()
    assert [o.result for o in found] == ["accepted", "dismissed"] and skipped == 1
    log.append(_outcome("partial", accepted=3))  # appending after a torn line still works
    found, skipped = log.read()
    assert [o.result for o in found] == ["accepted", "dismissed", "partial"] and skipped == 1


def test_a_full_log_starts_over_and_keeps_the_old_one(tmp_path: Path) -> None:
    log = AcceptanceLog(tmp_path / "a.jsonl", max_bytes=600)
    for _ in range(8):
        log.append(_outcome("accepted", accepted=10))
    assert (tmp_path / "a.jsonl.1").exists() and log.path.stat().st_size <= 600
    found, _ = log.read()
    assert 3 <= len(found) <= 8


def test_summary_per_language() -> None:
    outcomes = [
        _outcome("accepted", accepted=10, latency=100),
        _outcome("partial", accepted=4, latency=200),
        _outcome("dismissed", latency=300),
        _outcome("ignored", "go", latency=None),
    ]
    summary = summarize(outcomes)["completion"]
    python = summary["by_language"]["python"]
    assert (python["shown"], python["accepted"], python["partial"]) == (3, 1, 1)
    assert python["acceptance_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert python["any_acceptance_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert python["chars_accepted_per_shown"] == pytest.approx(14 / 30, abs=1e-4)
    assert python["latency_ms"] == {"p50": 200.0, "p95": 290.0}
    assert summary["all"]["shown"] == 4 and summary["by_language"]["go"]["latency_ms"]["p50"] is None
    assert "nextEdit" not in summarize(outcomes)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"outcome": "loved", "shownChars": 1, "acceptedChars": 0}, "outcome must be one of"),
        ({"kind": "x", "outcome": "accepted", "shownChars": 1, "acceptedChars": 0}, "kind must be"),
        ({"outcome": "accepted", "shownChars": -1, "acceptedChars": 0}, "shownChars"),
        ({"outcome": "accepted", "shownChars": 1, "acceptedChars": "3"}, "acceptedChars"),
        ({"outcome": "accepted", "shownChars": 1, "acceptedChars": 1, "latencyMs": "fast"}, "latencyMs"),
    ],
)
def test_bad_outcome_params_name_the_field(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        outcome_from_params(params, "python", "m")


def test_accepted_characters_never_exceed_those_shown() -> None:
    outcome = outcome_from_params({"outcome": "accepted", "shownChars": 4, "acceptedChars": 9}, "go", "m")
    assert outcome.accepted_chars == 4 and outcome.kind == "completion" and outcome.language == "go"
