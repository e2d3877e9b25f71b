"""Next-edit prediction: from the edit history, where the next edit will be and what it is.

The NES paper's two steps, on the engine's model:
- location: candidates from the history and the code's structure (`context/locations.py`),
  the repeat-edit proposer's exact proposals (`context/repeat.py`) first;
- edit: at the best candidates the proposer did not settle, the model rewrites a window around
  the location given the recent edits (`models/rewrite.py`); a rewrite that changes nothing says
  "no edit here", one that changes something is reduced to a minimal edit.

`Engine.next_edit` runs it with the engine as the edit model, so the LSP server, the benchmark
and the CLI get the same thing; without a model (`model=None`) only the proposer answers.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from nextab.config import NextEditConfig
from nextab.context.document import Document
from nextab.context.edits import (
    LineChange,
    Proposal,
    TextEdit,
    line_changes,
    lines_text,
    minimal_edit,
    overlaps,
)
from nextab.context.history import Edit
from nextab.context.location_features import candidates as line_candidates
from nextab.context.locations import Location, candidates
from nextab.context.repeat import IsCode, propose
from nextab.context.syntax import Snapshot
from nextab.location_ranker import LocationRanker, shipped
from nextab.models import rewrite
from nextab.models.decoding import NEVER_CANCELLED, CancelToken, DecodeResult

# Ranker scores this close count as a tie, which the distance to the cursor breaks.
NEAR_EQUAL_SCORES = 0.25


class EditModel(Protocol):
    def rewrite(
        self, material: rewrite.RewriteInput, extra_tokens: int, cancel: CancelToken
    ) -> DecodeResult:
        """The model's answer to the rewrite prompt for `material` (`models/rewrite.py`)."""
        ...

    def copy_logprobs(self, materials: Sequence[rewrite.RewriteInput], cancel: CancelToken) -> list[float]:
        """Per window, the log-probability that the model answers with it unchanged."""
        ...

    def ranks_locations(self, setting: str) -> bool:
        """Whether ranking candidates with the model is worth its cost here."""
        ...


@dataclass(frozen=True)
class NextEditRequest:
    document: Document
    text: str  # the document's text when the request was made
    offset: int  # the cursor
    edits: tuple[Edit, ...]  # the workspace's recent edits, oldest first (any documents)
    diffs: str = ""  # the recent edits as the model is shown them (unified diffs)
    path: str | None = None
    repeat: bool | None = None  # None: as configured
    model: bool | None = None
    # The lines [start, end) the next edit is known to be at: the edit step alone, measured
    # apart from the location step (benchmarks' "oracle" condition).
    at: tuple[int, int] | None = None


@dataclass(frozen=True)
class EditSuggestion:
    edit: TextEdit  # offsets into the request's text
    start_line: int  # the whole lines it rewrites, [start_line, end_line)
    end_line: int
    new_lines: str
    score: float
    source: str  # "rename", "repeat-line", "repeat-change", "model"
    reason: str
    at_cursor: bool  # the edit touches the cursor's line: shown inline, not as a jump


@dataclass(frozen=True)
class NextEditMetrics:
    locations: int  # candidate locations found
    model_calls: int  # windows the model rewrote
    ranked: int  # candidates the model ranked by the likelihood of an edit
    prompt_tokens: int
    reused_tokens: int
    generated_tokens: int
    drafted_tokens: int  # generated tokens checked as a draft of the window
    accepted_tokens: int  # of which the model agreed with
    locate_ms: float
    model_ms: float
    total_ms: float


@dataclass(frozen=True)
class NextEditResult:
    suggestions: tuple[EditSuggestion, ...]
    locations: tuple[Location, ...]  # the candidates, best first
    metrics: NextEditMetrics = field(compare=False)
    # The ranker's calibrated confidence that the first location is the line edited next
    # (None: the locations were not ranked by it).
    confidence: float | None = None


def predict(
    settings: NextEditConfig,
    request: NextEditRequest,
    model: EditModel | None,
    cancel: CancelToken = NEVER_CANCELLED,
) -> NextEditResult:
    started = time.perf_counter()
    text = request.text
    if not 0 <= request.offset <= len(text):
        raise ValueError(f"cursor offset {request.offset} outside the document (0..{len(text)})")
    changes = line_changes(request.edits, request.document.uri)
    syntax = request.document.syntax
    tree = syntax.snapshot(text) if syntax is not None else None
    use_repeat = settings.repeat if request.repeat is None else request.repeat
    use_model = (settings.model_step if request.model is None else request.model) and model is not None
    proposals = propose(text, changes, is_code=_code_test(tree)) if use_repeat else []
    cursor_line = text.count("\n", 0, request.offset)
    ranker = shipped() if settings.ranker else None
    confidence: float | None = None
    every: list[Location] = []  # with the ranker: every candidate line, best first
    if ranker is not None and changes:
        structural = candidates(text, changes, tree, proposals, limit=100)
        every, confidence = _ranked(ranker, text, changes, cursor_line, proposals, structural)
        locations = every[: settings.max_locations]
    else:
        locations = candidates(text, changes, tree, proposals, limit=settings.max_locations)
    if request.at is not None:
        start, end = request.at
        locations = [Location(start, end, 1.0, "given")]
        proposals = [p for p in proposals if overlaps(p.start_line, p.end_line, start, end)]
        confidence = None
    located = time.perf_counter()
    if confidence is not None and confidence < settings.min_score:
        # Not sure enough where the next edit is: no suggestion rather than a likely wrong one.
        use_model, proposals = False, []
    found = list(proposals)
    stats = _ModelStats()
    if use_model and changes:
        assert model is not None
        open_places = _unsettled(locations, proposals)
        if open_places and model.ranks_locations(settings.rank_with_model):
            open_places = _ranked_by_model(model, settings, request, open_places, cancel)
            stats.ranked = len(open_places)
        for location in open_places[: settings.model_locations]:
            cancel.check()
            proposal = _rewrite(model, settings, request, location, cancel, stats)
            if proposal is not None:
                found.append(proposal)
    ranked = _rank(found, every)[: settings.max_suggestions]
    suggestions = tuple(_suggestion(text, p, cursor_line) for p in ranked)
    done = time.perf_counter()
    return NextEditResult(
        suggestions=tuple(s for s in suggestions if s.edit.new_text or s.edit.end > s.edit.start),
        locations=tuple(locations),
        metrics=NextEditMetrics(
            locations=len(locations),
            model_calls=stats.calls,
            ranked=stats.ranked,
            prompt_tokens=stats.prompt_tokens,
            reused_tokens=stats.reused_tokens,
            generated_tokens=stats.generated_tokens,
            drafted_tokens=stats.drafted,
            accepted_tokens=stats.accepted,
            locate_ms=(located - started) * 1000,
            model_ms=stats.ms,
            total_ms=(done - started) * 1000,
        ),
        confidence=confidence,
    )


def _ranked(
    ranker: LocationRanker,
    text: str,
    changes: Sequence[LineChange],
    cursor_line: int,
    proposals: Sequence[Proposal],
    structural: Sequence[Location],
) -> tuple[list[Location], float]:
    """The candidate lines in the learned ranker's order (a line each), nearer the cursor first
    among near-equal scores (the other uses of a renamed name score alike: the developer goes
    to the next one, not the last), and its confidence; each keeps the reason a proposal or a
    structural candidate gives for it."""
    found = line_candidates(text, changes, cursor_line, proposals)
    ranked = ranker.rank(found.lines, found.rows)
    reasons = {n: loc.reason for loc in reversed(structural) for n in range(loc.start_line, loc.end_line)}
    reasons.update({p.start_line: p.reason or p.source for p in proposals})
    order = sorted(
        zip(ranked.lines, ranked.scores, strict=True),
        key=lambda item: (-math.floor(item[1] / NEAR_EQUAL_SCORES), abs(item[0] - cursor_line)),
    )
    locations = [Location(line, line + 1, score, reasons.get(line, "ranked")) for line, score in order]
    return locations, ranked.confidence


def end_of_last_edit(edits: Sequence[Edit], uri: str, text: str) -> int:
    """Where the developer stopped typing in `uri`: the default cursor for a request."""
    mine = [e for e in edits if e.uri == uri]
    if not mine:
        return 0
    return min(len(text), mine[-1].start + len(mine[-1].new))


@dataclass
class _ModelStats:
    calls: int = 0
    ranked: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    ms: float = 0.0


def _code_test(tree: Snapshot | None) -> IsCode | None:
    """Whether an offset is in code rather than a string or comment, from the syntax tree."""
    if tree is None:
        return None
    return lambda offset: tree.cursor_at(offset).kind not in ("string", "comment")


def _unsettled(locations: Sequence[Location], proposals: Sequence[Proposal]) -> list[Location]:
    """Candidates the repeat proposer has no exact edit for: the model's to decide."""
    return [
        loc
        for loc in locations
        if not any(overlaps(loc.start_line, loc.end_line, p.start_line, p.end_line) for p in proposals)
    ]


def _window(location: Location, lines: int, line_count: int) -> tuple[int, int]:
    """The editable region: the location's lines, grown evenly to `lines` lines."""
    start, end = location.start_line, max(location.end_line, location.start_line + 1)
    while end - start < lines and (start > 0 or end < line_count):
        if end < line_count:
            end += 1
        if end - start < lines and start > 0:
            start -= 1
    return start, min(end, line_count)


def _material(settings: NextEditConfig, request: NextEditRequest, location: Location) -> rewrite.RewriteInput | None:
    """The rewrite prompt's material for a location: its window, the code around, the edits."""
    text = request.text
    line_count = text.count("\n") + (0 if text.endswith("\n") else 1)
    start, end = _window(location, settings.window_lines, line_count)
    region = lines_text(text, start, end)
    if not region.strip():
        return None
    cursor = request.offset - len(lines_text(text, 0, start))
    return rewrite.RewriteInput(
        path=request.path or request.document.uri,
        language=rewrite.fence_language(request.path or "", request.document.language_id),
        diffs=request.diffs,
        before=lines_text(text, max(0, start - settings.excerpt_lines), start),
        region=region,
        after=lines_text(text, end, end + settings.excerpt_lines),
        cursor=cursor if 0 <= cursor <= len(region) else None,
        start_line=start,
        end_line=end,
    )


def _ranked_by_model(
    model: EditModel,
    settings: NextEditConfig,
    request: NextEditRequest,
    places: Sequence[Location],
    cancel: CancelToken,
) -> list[Location]:
    """The candidates by the model's likelihood of an edit there, 1 - P(window copied as is);
    the structural order breaks ties. The score becomes that likelihood."""
    materials = [(place, _material(settings, request, place)) for place in places]
    usable = [(place, m) for place, m in materials if m is not None]
    if not usable:
        return []
    copied = model.copy_logprobs([m for _, m in usable], cancel)
    scored = [
        (-math.expm1(logprob), -order, place)  # 1 - exp(logprob), exact near zero
        for order, ((place, _), logprob) in enumerate(zip(usable, copied, strict=True))
    ]
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [dataclasses.replace(place, score=likelihood) for likelihood, _, place in scored]


def _rewrite(
    model: EditModel,
    settings: NextEditConfig,
    request: NextEditRequest,
    location: Location,
    cancel: CancelToken,
    stats: _ModelStats,
) -> Proposal | None:
    material = _material(settings, request, location)
    if material is None:
        return None
    began = time.perf_counter()
    result = model.rewrite(material, settings.extra_tokens, cancel)
    stats.calls += 1
    stats.prompt_tokens += result.prompt_tokens
    stats.reused_tokens += result.reused_tokens
    stats.generated_tokens += len(result.tokens)
    stats.drafted += result.drafted_tokens
    stats.accepted += result.accepted_tokens
    stats.ms += (time.perf_counter() - began) * 1000
    if result.stop_reason == "length":
        return None  # it never closed the region: a runaway answer, not an edit
    new = rewrite.parse(result.text, material.region)
    if new is None or new == material.region:
        return None
    return Proposal(material.start_line, material.end_line, new, location.score, "model", location.reason)


def _rank(proposals: Sequence[Proposal], ranked: Sequence[Location] = ()) -> list[Proposal]:
    """Without ranked locations: the proposer's exact edits first (its scores sit above 1),
    the model's by location rank. With them: by the best-ranked line each edit changes."""
    if ranked:
        place = {loc.start_line: i for i, loc in enumerate(ranked)}

        def rank_of(p: Proposal) -> int:
            return min((place[n] for n in range(p.start_line, max(p.end_line, p.start_line + 1)) if n in place),
                       default=len(ranked))  # fmt: skip

        ordered = sorted(proposals, key=lambda p: (rank_of(p), p.source == "model", -p.score))
    else:
        ordered = sorted(proposals, key=lambda p: (p.source != "model", p.score), reverse=True)
    kept: list[Proposal] = []
    for proposal in ordered:
        if not any(overlaps(proposal.start_line, proposal.end_line, k.start_line, k.end_line) for k in kept):
            kept.append(proposal)
    return kept


def _suggestion(text: str, proposal: Proposal, cursor_line: int) -> EditSuggestion:
    edit = minimal_edit(text, proposal)
    first = text.count("\n", 0, edit.start)
    last = text.count("\n", 0, edit.end)
    return EditSuggestion(
        edit=edit,
        start_line=proposal.start_line,
        end_line=proposal.end_line,
        new_lines=proposal.new_text,
        score=proposal.score,
        source=proposal.source,
        reason=proposal.reason,
        at_cursor=first <= cursor_line <= last,
    )
