"""`nextab calibrate`: learn the model's AdaDec threshold (and, with `--large`, EAD's for the
pair) from real code.

Fill-in-the-middle tasks are cut from the Python standard library's sources (real code the
benchmarks do not use): a span of one to four lines is taken out of a file and the model, given
the prompt an editor would send there (through `Engine.prompt_for`), is run over the real span
with teacher forcing. Each step is labelled by whether the greedy token was the real one, and
`fit_threshold` turns entropy and label into the threshold, which is saved with the model.

For entropy-adaptive switching the question is another: where does the small model write a
token the large one would not? Both models are run over the same spans; each step is labelled
by whether their first choices agree, and the feature is what EAD tests, the mean of the
small model's entropies over the last `window` steps. The same fit puts the threshold about
where the small model becomes as likely to disagree with the large one as to agree.
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
from nextab.models.backend import Backend
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
    """One value per teacher-forced step: the entropy statistic a strategy tests, and whether
    the step went as hoped (greedy was right; the two models agreed)."""

    entropies: np.ndarray
    good: np.ndarray


def _teacher_forced(engine: Engine, span: Span) -> tuple[list[int], list[int]]:
    """The prompt an editor would send at the span, and the span's tokens after it."""
    document = Document(f"file:///{span.path}", span.text, language_id="python")
    prompt = engine.prompt_for(
        CompletionRequest(document, span.offset, span.text, path=span.path, mode="block")
    )
    # Healing took the prompt's last token off: the model must spell it again first.
    healed = prompt.healing.text if prompt.healing else ""
    return list(prompt.ids), engine.backend.tokenize(healed + span.target)


def observe(
    engine: Engine, spans: Sequence[Span], progress: Callable[[int, int], None] | None = None
) -> Observations:
    """Entropy and greedy-was-right at every step of every span, teacher-forced."""
    entropies, right = [], []
    for done, span in enumerate(spans):
        prompt, target = _teacher_forced(engine, span)
        if not target:
            continue
        (stats,) = engine.backend.token_stats([[*prompt, *target]], [len(prompt)])
        entropies.append(stats.entropies)
        right.append(stats.greedy)
        if progress is not None:
            progress(done + 1, len(spans))
    return _joined(entropies, right)


def _joined(features: list[np.ndarray], labels: list[np.ndarray]) -> Observations:
    if not features:
        return Observations(np.zeros(0, np.float32), np.zeros(0, bool))
    return Observations(np.concatenate(features), np.concatenate(labels))


def rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each value and the `window - 1` before it (fewer at the start): EAD's
    statistic, step by step."""
    sums = np.cumsum(np.asarray(values, dtype=np.float64))
    ends = np.arange(1, len(sums) + 1)
    starts = np.maximum(0, ends - window)
    before = np.concatenate([[0.0], sums])[starts]
    return ((sums - before) / (ends - starts)).astype(np.float32)


def observe_pair(
    engine: Engine,
    large: Backend,
    spans: Sequence[Span],
    window: int,
    progress: Callable[[int, int], None] | None = None,
) -> Observations:
    """At every step of every span, teacher-forced: the rolling mean of the small model's
    entropies, and whether the two models' first choices agree there."""
    means, agree = [], []
    for done, span in enumerate(spans):
        prompt, target = _teacher_forced(engine, span)
        if not target:
            continue
        sequence, start = [[*prompt, *target]], [len(prompt)]
        (small,) = engine.backend.token_stats(sequence, start)
        (big,) = large.token_stats(sequence, start)
        assert small.argmax is not None and big.argmax is not None
        means.append(rolling_mean(small.entropies, window))
        agree.append(small.argmax == big.argmax)
        if progress is not None:
            progress(done + 1, len(spans))
    return _joined(means, agree)


def calibrate(
    engine: Engine,
    count: int = 64,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ThresholdFit, dict[str, object]]:
    started = time.perf_counter()
    spans = cut_spans(library_files(), count, seed)
    seen = observe(engine, spans, progress)
    fit = fit_threshold(seen.entropies, seen.good)
    details: dict[str, object] = {
        "spans": len(spans),
        "seed": seed,
        "source": "python standard library",
        "seconds": round(time.perf_counter() - started, 1),
    }
    return fit, details


def calibrate_pair(
    engine: Engine,
    large: Backend,
    count: int = 64,
    seed: int = 0,
    window: int = 3,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ThresholdFit, dict[str, object]]:
    """EAD's threshold for the pair: where the small model's rolling entropy says it would
    write what the large model would not."""
    started = time.perf_counter()
    spans = cut_spans(library_files(), count, seed)
    seen = observe_pair(engine, large, spans, window, progress)
    fit = fit_threshold(seen.entropies, seen.good)
    details: dict[str, object] = {
        "spans": len(spans),
        "seed": seed,
        "window": window,
        "large_model": large.info.name,
        "source": "python standard library",
        "seconds": round(time.perf_counter() - started, 1),
    }
    return fit, details
