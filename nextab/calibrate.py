"""`nextab calibrate`: learn the model's AdaDec threshold from real code.

Fill-in-the-middle tasks are cut from the Python standard library's sources (real code the
benchmarks do not use): a span of one to four lines is taken out of a file and the model, given
the prompt an editor would send there (through `Engine.prompt_for`), is run over the real span
with teacher forcing. Each step is labelled by whether the greedy token was the real one, and
`fit_threshold` turns entropy and label into the threshold, which is saved with the model.
"""

from __future__ import annotations

import random
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nextab.context.document import Document
from nextab.engine import CompletionRequest, Engine
from nextab.models.calibration import ThresholdFit, fit_threshold

BEFORE_LINES = 30  # the task's document: this many lines before the span...
AFTER_LINES = 10  # ...and after it, so that a prompt costs a few hundred tokens
MAX_SPAN_LINES = 4


@dataclass(frozen=True)
class Span:
    path: str  # shown to the model, relative to the library root
    text: str  # the document without the span
    offset: int  # where the span was
    target: str  # the span


def library_files(root: Path | None = None) -> list[Path]:
    """The standard library's own Python sources (tests, vendored and generated code aside)."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    skipped = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__"}
    return sorted(
        path for path in root.rglob("*.py")
        if not skipped & set(path.relative_to(root).parts) and path.stat().st_size > 2000
    )


def cut_spans(files: Sequence[Path], count: int, seed: int, root: Path | None = None) -> list[Span]:
    """`count` spans from distinct files, each starting at a code line's first character."""
    root = root or Path(sysconfig.get_paths()["stdlib"])
    rng = random.Random(seed)
    spans: list[Span] = []
    for path in rng.sample(list(files), len(files)):
        if len(spans) >= count:
            break
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError):
            continue
        starts = [i for i, line in enumerate(lines) if _is_code(line)]
        if not starts:
            continue
        first = rng.choice(starts)
        last = min(len(lines), first + rng.randint(1, MAX_SPAN_LINES))
        indent = len(lines[first]) - len(lines[first].lstrip())
        before = "\n".join([*lines[max(0, first - BEFORE_LINES):first], lines[first][:indent]])
        target = "\n".join([lines[first][indent:], *lines[first + 1 : last]])
        after = "\n".join(lines[last : last + AFTER_LINES])
        if not target.strip():
            continue
        spans.append(Span(str(path.relative_to(root)), before + "\n" + after, len(before), target))
    return spans


def _is_code(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith(("#", '"""', "'''"))


@dataclass(frozen=True)
class Observations:
    entropies: np.ndarray
    greedy_right: np.ndarray


def observe(
    engine: Engine, spans: Sequence[Span], progress: Callable[[int, int], None] | None = None
) -> Observations:
    """Entropy and greedy-was-right at every step of every span, teacher-forced."""
    backend = engine.backend
    entropies, right = [], []
    for done, span in enumerate(spans):
        document = Document(f"file:///{span.path}", span.text, language_id="python")
        prompt = engine.prompt_for(
            CompletionRequest(document, span.offset, span.text, path=span.path, mode="block")
        )
        # Healing took the prompt's last token off: the model must spell it again first.
        healed = prompt.healing.text if prompt.healing else ""
        target = backend.tokenize(healed + span.target)
        if not target:
            continue
        (stats,) = backend.token_stats([[*prompt.ids, *target]], [len(prompt.ids)])
        entropies.append(stats.entropies)
        right.append(stats.greedy)
        if progress is not None:
            progress(done + 1, len(spans))
    if not entropies:
        return Observations(np.zeros(0, np.float32), np.zeros(0, bool))
    return Observations(np.concatenate(entropies), np.concatenate(right))


def calibrate(
    engine: Engine,
    count: int = 64,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ThresholdFit, dict[str, object]]:
    started = time.perf_counter()
    spans = cut_spans(library_files(), count, seed)
    seen = observe(engine, spans, progress)
    fit = fit_threshold(seen.entropies, seen.greedy_right)
    details: dict[str, object] = {
        "spans": len(spans),
        "seed": seed,
        "source": "python standard library",
        "seconds": round(time.perf_counter() - started, 1),
    }
    return fit, details
