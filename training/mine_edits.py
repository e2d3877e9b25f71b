"""Next-edit cases from a git history, in the layout of `../shared/data/nes/*.jsonl.gz`.

A commit that changes a source file in `--min-hunks` to `--max-hunks` hunks (`git diff -U0`,
histogram) gives cases per replay order: after the first k hunks of that order (the edit
history, oldest first, each in the buffer as it was just before it), the next hunk is the
expected edit. Orders: `file` (top to bottom, as `flask-dev.jsonl.gz`), `random` (drawn per
commit and path, as `flask-dev-random.jsonl.gz`). With `--final`, the buffer after a commit's
last hunk is a case too, whose expected edit is none (`"expected": null`): a suggestion there
is a wrong one.

Only commits dated before `--before` (default 2025-01-01: later commits are kept for
evaluation on repositories a model was not tuned on); merges are skipped.

    python training/mine_edits.py /path/to/clone.git --repo pallets/click --out click.jsonl.gz

Each line: `id`, `repo`, `commit`, `date`, `path`, `order`, `k`, `history` (`start_line`,
`old_text`, `new_text`, `diff`), `buffer`, `cursor` (`line`, `character`, 0-based), `expected`
(`start_line`, `end_line`, `old_text`, `new_text`, lines of the buffer) or null.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIXES = {
    "python": (".py",),
    "javascript": (".js", ".mjs", ".cjs", ".jsx"),
    "typescript": (".ts", ".tsx"),
}
_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
MAX_FILE_BYTES = 200_000


@dataclass(frozen=True)
class Hunk:
    """One change between two versions of a file, in the old version's lines."""

    start: int  # first old line replaced (0-based); for an insertion, the line it goes before
    old: tuple[str, ...]  # lines with their "\n"
    new: tuple[str, ...]


def parse_hunks(diff: str) -> list[Hunk]:
    """The hunks of one file's `git diff -U0` output."""
    hunks: list[Hunk] = []
    old: list[str] = []
    new: list[str] = []
    start = -1
    for line in diff.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header:
            if start >= 0:
                hunks.append(Hunk(start, tuple(old), tuple(new)))
            first, count = int(header.group(1)), int(header.group(2) or 1)
            start = first - 1 if count else first
            old, new = [], []
        elif start >= 0 and line.startswith("-"):
            old.append(line[1:])
        elif start >= 0 and line.startswith("+"):
            new.append(line[1:])
        elif line.startswith("\\"):
            raise ValueError("no newline at the end of the file")
    if start >= 0:
        hunks.append(Hunk(start, tuple(old), tuple(new)))
    return hunks


def unified(start: int, old: Sequence[str], new: Sequence[str]) -> str:
    """A -U0 hunk of one edit (lines counted from 1, as git writes them)."""
    old_first = start + 1 if old else start
    new_first = start + 1 if new else start
    body = "".join("-" + line for line in old) + "".join("+" + line for line in new)
    return f"@@ -{old_first},{len(old)} +{new_first},{len(new)} @@\n{body}"


def replay(text: str, hunks: Sequence[Hunk], order: Sequence[int]) -> Iterator[tuple[list[str], dict[str, Any] | None, list[dict[str, Any]]]]:
    """For k = 0..len(order): the buffer after the first k hunks of `order`, the next hunk
    as an edit of that buffer (None after the last), and the history so far."""
    lines = text.splitlines(keepends=True)
    done: list[int] = []
    history: list[dict[str, Any]] = []
    for step in range(len(order) + 1):
        nxt: dict[str, Any] | None = None
        if step < len(order):
            hunk = hunks[order[step]]
            at = _now_at(hunks, done, hunk)
            if lines[at : at + len(hunk.old)] != list(hunk.old):
                raise ValueError("a hunk does not apply where the earlier ones left it")
            nxt = {
                "start_line": at,
                "end_line": at + len(hunk.old),
                "old_text": "".join(hunk.old),
                "new_text": "".join(hunk.new),
            }
        yield list(lines), nxt, list(history)
        if nxt is None:
            return
        hunk = hunks[order[step]]
        at = nxt["start_line"]
        lines[at : at + len(hunk.old)] = list(hunk.new)
        done.append(order[step])
        history.append(
            {
                "start_line": at,
                "old_text": nxt["old_text"],
                "new_text": nxt["new_text"],
                "diff": unified(at, hunk.old, hunk.new),
            }
        )


def _now_at(hunks: Sequence[Hunk], done: Sequence[int], hunk: Hunk) -> int:
    # Hunks of one diff never overlap: only those above this one move it.
    shift = sum(len(hunks[i].new) - len(hunks[i].old) for i in done if hunks[i].start < hunk.start)
    return hunk.start + shift


def cursor_after(edit: dict[str, Any]) -> dict[str, int]:
    """Where an editor's cursor is after typing `edit`: the end of its new text."""
    new = edit["new_text"].splitlines()
    if not new:
        return {"line": edit["start_line"], "character": 0}
    return {"line": edit["start_line"] + len(new) - 1, "character": len(new[-1])}


def orders_for(kind: str, count: int, seed: str) -> list[int]:
    order = list(range(count))
    if kind == "random":
        random.Random(hashlib.sha256(seed.encode()).hexdigest()).shuffle(order)
    elif kind == "reverse":
        order.reverse()
    elif kind != "file":
        raise ValueError(f"unknown order {kind!r}")
    return order


def cases_for_file(
    repo: str, commit: str, date: str, path: str, before: str, after: str,
    hunks: Sequence[Hunk], orders: Sequence[str], final: bool,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    for kind in orders:
        order = orders_for(kind, len(hunks), f"{commit}:{path}:{kind}")
        steps = list(replay(before, hunks, order))
        if "".join(steps[-1][0]) != after:
            raise ValueError("replaying the hunks does not give the commit's file")
        for k, (lines, expected, history) in enumerate(steps):
            if k == 0 or (expected is None and not final):
                continue
            yield {
                "id": f"{repo}@{commit[:10]}:{path}#{k}:{kind}",
                "repo": repo,
                "commit": commit,
                "date": date,
                "path": path,
                "order": kind,
                "k": k,
                "history": history,
                "buffer": "".join(lines),
                "cursor": cursor_after(history[-1]),
                "expected": expected,
            }


def git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "--git-dir", str(repo), *args], capture_output=True, check=True
    ).stdout
    return out.decode("utf-8", "surrogateescape")


class Blobs:
    """File contents by object name, through one `git cat-file --batch`."""

    def __init__(self, repo: Path) -> None:
        self.process = subprocess.Popen(
            ["git", "--git-dir", str(repo), "cat-file", "--batch"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )  # fmt: skip

    def read(self, name: str) -> bytes:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(name.encode() + b"\n")
        self.process.stdin.flush()
        header = self.process.stdout.readline().split()
        if len(header) < 3 or header[1] != b"blob":
            raise ValueError(f"{name} is not a blob")
        data = self.process.stdout.read(int(header[2]))
        self.process.stdout.read(1)  # the newline after the contents
        return data

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait()


def mine(
    repo_dir: Path, repo: str, *, before: str, suffixes: Sequence[str], orders: Sequence[str],
    min_hunks: int, max_hunks: int, final: bool, max_commits: int | None,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    log = git(repo_dir, "log", "--no-merges", f"--before={before}", "--format=%H %P %cI", "HEAD")
    blobs = Blobs(repo_dir)
    commits = 0
    try:
        for entry in log.splitlines():
            parts = entry.split()
            if len(parts) != 3:
                continue  # a root commit (no parent) or a merge
            commit, parent, date = parts
            if date >= before:  # --before reads the committer date loosely
                continue
            raw = git(repo_dir, "diff-tree", "-r", "--no-renames", "--diff-filter=M", parent, commit)
            changed = []
            for line in raw.splitlines():
                meta, _, path = line.partition("\t")
                fields = meta.split()
                if len(fields) >= 4 and path.endswith(tuple(suffixes)):
                    changed.append((path, fields[2], fields[3]))
            if not changed:
                continue
            commits += 1
            for path, old_blob, new_blob in changed:
                try:
                    old = blobs.read(old_blob)
                    new = blobs.read(new_blob)
                    if max(len(old), len(new)) > MAX_FILE_BYTES:
                        continue
                    before_text, after_text = old.decode("utf-8"), new.decode("utf-8")
                    if "\r" in before_text or "\r" in after_text:
                        continue
                    diff = git(repo_dir, "diff", "-U0", "--histogram", "--no-color", old_blob, new_blob)
                    hunks = parse_hunks(diff)
                    if not min_hunks <= len(hunks) <= max_hunks:
                        continue
                    yield from cases_for_file(
                        repo, commit, date, path, before_text, after_text, hunks, orders, final
                    )
                except (ValueError, UnicodeDecodeError) as error:
                    print(f"skipped {commit[:10]}:{path}: {error}", file=sys.stderr)
            if max_commits is not None and commits >= max_commits:
                break
    finally:
        blobs.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("git_dir", type=Path, help="a clone's .git folder (or a bare repository)")
    p.add_argument("--repo", required=True, help="owner/name, for the ids")
    p.add_argument("--out", type=Path, required=True, help="JSON lines, gzipped if it ends in .gz")
    p.add_argument("--before", default="2025-01-01", help="only commits dated before this (ISO date)")
    p.add_argument("--languages", nargs="+", choices=list(SUFFIXES), default=["python"])
    p.add_argument("--orders", nargs="+", choices=["file", "random", "reverse"], default=["file", "random"])
    p.add_argument("--min-hunks", type=int, default=2)
    p.add_argument("--max-hunks", type=int, default=8)
    p.add_argument("--final", action="store_true", help="also the case after the last hunk (no next edit)")
    p.add_argument("--max-commits", type=int, default=None, help="stop after this many commits with cases")
    args = p.parse_args(argv)
    suffixes = [s for lang in args.languages for s in SUFFIXES[lang]]
    opener = gzip.open if args.out.suffix == ".gz" else open
    count = 0
    with opener(args.out, "wt", encoding="utf-8") as out:
        for case in mine(
            args.git_dir, args.repo, before=args.before, suffixes=suffixes, orders=args.orders,
            min_hunks=args.min_hunks, max_hunks=args.max_hunks, final=args.final,
            max_commits=args.max_commits,
        ):  # fmt: skip
            out.write(json.dumps(case) + "\n")
            count += 1
    print(f"{count} cases from {args.repo} into {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
