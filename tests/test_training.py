"""The training scripts: mining next-edit cases from a real git history, and training the
location ranker on them."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

import mine_edits  # noqa: E402

BEFORE = "".join(f"def f{i}(count):\n    return count + {i}\n\n\n" for i in range(12))


def _git(repo: Path, *args: str, date: str = "2023-05-01T12:00:00+00:00") -> None:
    env = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date, "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": "/usr/bin:/bin"}  # fmt: skip
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env)


def _history(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "mod.py").write_text(BEFORE)
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first")
    # A rename in four separate places: four hunks.
    after = BEFORE.replace("count", "total")
    (repo / "mod.py").write_text(after.replace("total", "count", 16))  # the last 4 functions renamed
    _git(repo, "commit", "-qam", "rename")
    (repo / "mod.py").write_text(after)
    _git(repo, "commit", "-qam", "late rename", date="2025-03-01T12:00:00+00:00")
    return repo / ".git"


def test_mined_cases_replay_to_their_buffer_and_expect_the_next_hunk(tmp_path: Path):
    git_dir = _history(tmp_path)
    out = tmp_path / "cases.jsonl.gz"
    assert mine_edits.main([str(git_dir), "--repo", "t/repo", "--out", str(out), "--final"]) == 0
    with gzip.open(out, "rt") as handle:
        cases = [json.loads(line) for line in handle]
    # Only the commit before 2025: 4 hunks give 3 cases with a next edit and a final one, per order.
    assert {c["commit"] for c in cases} and all(c["date"] < "2025" for c in cases)
    assert sorted((c["order"], c["k"]) for c in cases) == [(o, k) for o in ("file", "random") for k in (1, 2, 3, 4)]
    for case in cases:
        lines = BEFORE.splitlines(keepends=True)
        for h in case["history"]:  # each hunk where the text was just before it
            old = h["old_text"].splitlines(keepends=True)
            assert lines[h["start_line"] : h["start_line"] + len(old)] == old
            lines[h["start_line"] : h["start_line"] + len(old)] = h["new_text"].splitlines(keepends=True)
        assert "".join(lines) == case["buffer"]
        expected = case["expected"]
        if case["k"] == 4:
            assert expected is None  # after the commit's last hunk, no edit should follow
            continue
        assert lines[expected["start_line"] : expected["end_line"]] == expected["old_text"].splitlines(keepends=True)
        assert "count" in expected["old_text"] and "total" in expected["new_text"]
        last = case["history"][-1]
        assert case["cursor"]["line"] == last["start_line"] + len(last["new_text"].splitlines()) - 1
    by_order = {c["order"]: c for c in cases if c["k"] == 1}
    starts = [c["history"][0]["start_line"] for c in cases if c["order"] == "file" and c["k"] == 1]
    assert starts == [min(h["start_line"] for c in cases for h in c["history"][:1])]
    assert set(by_order) == {"file", "random"}


def test_the_ranker_trains_on_mined_cases_and_loads(tmp_path: Path):
    pytest.importorskip("lightgbm")
    from nextab.location_ranker import LocationRanker

    git_dir = _history(tmp_path)
    cases = tmp_path / "cases.jsonl.gz"
    mine_edits.main([str(git_dir), "--repo", "t/repo", "--out", str(cases), "--final"])
    model = tmp_path / "ranker.txt"
    done = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train_location_ranker.py"), str(cases), "--trees", "5", "--out", str(model)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["train"]["with_an_edit"] == 6 and report["train"]["candidate_recall"] == 1.0
    assert LocationRanker.load(model).trees >= 1
