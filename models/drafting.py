"""Draft sources for speculative decoding without a second model.

Greedy decoding checks drafted tokens in one forward pass (`GreedyDecoder.generate`): the
model's logits after each drafted token say whether it would have written that token itself,
so the output is what plain greedy decoding gives and only the number of passes changes. A
draft is worth checking where the output is likely to copy text it has seen:

- `CopyDrafter`: a next-edit rewrite copies most of the region it rewrites (`DecodeParams.draft`).
- `NgramDrafter`: prompt lookup. Code repeats itself (names, call shapes, whole lines), and the
  prompt holds the file around the cursor and the repository material: the last few tokens
  written are looked up in everything the model read and wrote so far, and what followed them
  there is the draft. With a `Recycled` table, continuations the model wrote in earlier
  requests (Token Recycling's idea, as n-grams) are drafted where the prompt has none.

A drafter proposes nothing where nothing matches, and the step is then a plain one-token pass.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Drafter(Protocol):
    def propose(self, generated: Sequence[int], room: int) -> list[int]:
        """Tokens likely to follow `generated`, at most `room` of them; [] for none."""
        ...

    def taken(self, proposed: int, agreed: int) -> None:
        """The model agreed with the first `agreed` of the `proposed` tokens last drafted."""
        ...

    def finish(self, generated: Sequence[int]) -> None:
        """Decoding ended with `generated`."""
        ...


class Recycled:
    """The continuations the model wrote after each run of `order` tokens, the latest kept,
    across requests: a bounded table (the least recently written keys go first)."""

    def __init__(self, capacity: int = 8192, length: int = 16, order: int = 2) -> None:
        self.capacity = capacity
        self.length = length  # tokens kept after each key
        self.order = order
        self._table: OrderedDict[tuple[int, ...], tuple[int, ...]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def record(self, tokens: Sequence[int]) -> None:
        """Remember what followed each run of `order` tokens in `tokens` (text the model wrote)."""
        tokens = [int(t) for t in tokens]
        table, order = self._table, self.order
        for i in range(len(tokens) - order):
            key = tuple(tokens[i : i + order])
            table[key] = tuple(tokens[i + order : i + order + self.length])
            table.move_to_end(key)
        while len(table) > self.capacity:
            table.popitem(last=False)

    def get(self, tail: Sequence[int]) -> tuple[int, ...]:
        """What followed the last `order` tokens of `tail` last time; () if nothing did."""
        if len(tail) < self.order:
            return ()
        return self._table.get(tuple(int(t) for t in tail[len(tail) - self.order :]), ())


class PassCosts:
    """How long forward passes take on this backend, by tokens in the pass: what checking a
    draft costs, in one-token steps. Learned from the passes decoding makes (the median of the
    latest few of each size), since it differs by an order of magnitude between backends: on a
    two-core CPU a pass of 2 tokens costs 1.1-1.4 steps with onnxruntime's int4/int8 weights
    (9 tokens: 2.0-3.8) and 2.1 with torch's float32 ones (5..17 tokens: 2.6..3.2); on a GPU
    about 1 step whatever the size."""

    def __init__(self, window: int = 9) -> None:
        self.window = window
        self._plain: deque[float] = deque(maxlen=window)  # one-token passes
        self._check: dict[int, deque[float]] = {}  # passes checking a draft, by tokens
        self._extras: list[float] | None = None  # extra(m) by m, until the next observation

    def observe_plain(self, ms: float) -> None:
        self._plain.append(ms)
        self._extras = None

    def observe_check(self, tokens: int, ms: float) -> None:
        self._check.setdefault(tokens, deque(maxlen=self.window)).append(ms)
        self._extras = None

    def extra(self, tokens: int) -> float | None:
        """What a pass of `tokens` tokens checking a draft costs beyond a one-token pass, in
        one-token passes; None while no one-token pass has been timed. A size not timed yet is
        interpolated between the sizes that were (a one-token pass anchoring it), and past the
        largest one, on the line from the anchor through it; with none timed, 0.1 per token."""
        extras = self.extras(tokens)
        return None if extras is None else extras[tokens]

    def extras(self, most: int) -> list[float] | None:
        """extra(m) for m = 0 .. at least `most` (0 and 1 cost nothing); None as extra()."""
        if not self._plain:
            return None
        if self._extras is None or len(self._extras) <= most:
            self._extras = self._compute(max(most, 17))
        return self._extras

    def _compute(self, most: int) -> list[float]:
        step = statistics.median(self._plain)
        timed = {m: statistics.median(v) for m, v in self._check.items() if v}
        known = sorted({1: step, **timed}.items())
        extras = [0.0, 0.0]
        at = 0  # known[at] is the largest known size below m
        for m in range(2, most + 1):
            while at + 1 < len(known) and known[at + 1][0] < m:
                at += 1
            below, low = known[at]
            if at + 1 < len(known):
                above, high = known[at + 1]
                cost = low + (high - low) * (m - below) / (above - below)
            elif below > 1:
                cost = step + (low - step) * (m - 1) / (below - 1)
            else:
                cost = step * (1 + 0.1 * (m - 1))
            extras.append(max(0.0, cost / step - 1))
        return extras


# How often a draft's first token is taken, and each next one after a taken one, by where the
# draft came from: measured with Qwen2.5-Coder-0.5B over 300 HumanEval infilling tasks. Only
# the start: `Acceptance` goes on learning from the drafts checked.
PRIORS: dict[str, tuple[float, float]] = {
    "match1": (0.22, 0.52),  # a new match of the last token
    "match2": (0.33, 0.71),
    "match3": (0.38, 0.70),
    "match4": (0.55, 0.72),  # of 4 tokens or more
    "recycled": (0.48, 0.73),
    "follow": (0.75, 0.77),  # going on where the last draft was taken whole
}


class Acceptance:
    """How likely drafts of each kind are to be taken, learned from those checked (with the
    PRIORS as a start worth `weight` drafts)."""

    def __init__(self, weight: float = 8.0) -> None:
        self._counts = {
            kind: [weight, weight * first, weight, weight * then]
            for kind, (first, then) in PRIORS.items()
        }

    def record(self, kind: str, proposed: int, agreed: int) -> None:
        counts = self._counts[kind]
        counts[0] += 1
        counts[1] += agreed > 0
        counts[2] += min(agreed, proposed - 1)  # next tokens checked after a taken one
        counts[3] += max(0, agreed - 1)

    def expected(self, kind: str, length: int) -> float:
        """The tokens a draft of `length` is expected to have taken."""
        tried, first, then_tried, then = self._counts[kind]
        p, q = first / tried, min(then / then_tried, 0.99)
        return p * (1 - q**length) / (1 - q)

    def rates(self, kind: str) -> tuple[float, float]:
        tried, first, then_tried, then = self._counts[kind]
        return first / tried, then / then_tried


@dataclass(frozen=True)
class Lookup:
    """Prompt lookup's settings (`DecodeParams.lookup`) and what it learns across requests.

    A match is at least `min_ngram` tokens long (longest first, to `max_ngram`). A new match
    drafts `start` tokens; a draft taken whole is followed by one `grow` tokens longer, to
    `longest`. With `costs`, each draft is then cut to the length that is expected to save the
    most time, by what passes cost here and how often such drafts are taken, or dropped if none
    would save any: on a backend where checking tokens is dear, drafting all but stops.
    """

    min_ngram: int = 2
    max_ngram: int = 4
    start: int = 16
    longest: int = 16
    grow: int = 4
    # What the requests that share this Lookup (an engine's) learn: the model's earlier outputs
    # (None: the prompt and this output only), the cost of passes (None: no cut), acceptance.
    recycled: Recycled | None = field(default=None, compare=False)
    costs: PassCosts | None = field(default=None, compare=False)
    acceptance: Acceptance = field(default_factory=Acceptance, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ValueError("prompt lookup needs 1 <= min_ngram <= max_ngram")
        if not 1 <= self.start <= self.longest:
            raise ValueError("prompt lookup needs 1 <= start <= longest")


def engine_lookup() -> Lookup:
    """Prompt lookup as an engine serves completions with it: the model's earlier outputs
    recycled, drafts cut to what pays on this backend."""
    return Lookup(recycled=Recycled(order=4), costs=PassCosts())


def find_continuation(tokens: np.ndarray, size: int, n: int) -> int:
    """Where the text after the latest earlier occurrence of the last `n` of `tokens[:size]`
    starts; -1 for none. Only occurrences with a token after them count (never the tail)."""
    if n < 1 or size <= n:
        return -1
    tail = tokens[size - n : size]
    # Starts s of candidate occurrences, s + n <= size - 1: the continuation is inside.
    starts = np.flatnonzero(tokens[: size - n] == tail[0])
    for j in range(1, n):
        if not len(starts):
            break
        starts = starts[tokens[starts + j] == tail[j]]
    return int(starts[-1]) + n if len(starts) else -1


def continuation(tokens: np.ndarray, size: int, at: int, limit: int) -> list[int]:
    """`limit` tokens from `at` on, copied as LZ77 copies: a continuation that runs into the
    end of `tokens[:size]` goes on with what it is itself copying (text repeating with a period
    of `size - at` tokens goes on repeating)."""
    span = size - at
    if span >= limit:
        return tokens[at : at + limit].tolist()
    period = tokens[at:size].tolist()
    return [period[i % span] for i in range(limit)]


class NgramDrafter:
    """Prompt lookup over the prompt and the output so far, for one decode call.

    The last `max_ngram` .. `min_ngram` tokens (longest first) are looked up in everything the
    model has read and written; the draft is what followed them there, the place the last
    accepted draft came from preferred (a line being copied goes on being copied), else the
    latest occurrence. Failing that, the recycled table's continuation of the last tokens.
    """

    def __init__(self, lookup: Lookup, context: Sequence[int], room: int) -> None:
        self.lookup = lookup
        self._tokens = np.zeros(len(context) + max(0, room) + 1, dtype=np.int64)
        self._tokens[: len(context)] = context
        self._base = len(context)
        self._size = len(context)
        self.length = lookup.start
        self._follow = -1  # where the text after the last accepted draft stands in _tokens
        self._from = -1  # where the last draft was taken from (-1: the recycled table)
        self._kind = ""  # what the last draft was (PRIORS' keys)

    def _sync(self, generated: Sequence[int]) -> None:
        new = generated[self._size - self._base :]
        if len(new):
            end = self._size + len(new)
            if end > len(self._tokens):  # more output than planned for: grow
                grown = np.zeros(2 * end, dtype=np.int64)
                grown[: self._size] = self._tokens[: self._size]
                self._tokens = grown
            self._tokens[self._size : end] = new
            self._size = end

    def propose(self, generated: Sequence[int], room: int) -> list[int]:
        self._sync(generated)
        if room <= 0:
            return []
        kind, draft = self._find(min(room, self.lookup.longest))
        if draft:
            draft = draft[: self._worth(kind, draft)]
        self._kind = kind if draft else ""
        return draft

    def _find(self, room: int) -> tuple[str, list[int]]:
        tokens, size, lookup = self._tokens, self._size, self.lookup
        # Where the output goes on copying what it copied last, the draft grows as the copy
        # goes on being taken; a new match starts at `start` tokens.
        follow, n = self._follow, lookup.min_ngram
        if n <= follow < size and np.array_equal(tokens[follow - n : follow], tokens[size - n : size]):
            self._from = follow
            return "follow", continuation(tokens, size, follow, min(self.length, room))
        self.length = lookup.start
        limit = min(self.length, room)
        for n in range(lookup.max_ngram, lookup.min_ngram - 1, -1):
            at = find_continuation(tokens, size, n)
            if at >= 0:
                self._from = at
                return f"match{min(n, 4)}", continuation(tokens, size, at, limit)
        self._from = -1
        if lookup.recycled is not None:
            return "recycled", list(lookup.recycled.get(tokens[:size])[:limit])
        return "", []

    def _worth(self, kind: str, draft: list[int]) -> int:
        """How much of the draft to check: the length expected to save the most time (0: none
        saves any), or all of it when the cost of passes is not known."""
        costs = self.lookup.costs
        extras = costs.extras(1 + len(draft)) if costs is not None else None
        if extras is None:
            return len(draft)
        expected = self.lookup.acceptance.expected
        best, gain = 0, 0.0
        for length in range(1, len(draft) + 1):
            # Each token taken saves a one-token pass; the check costs `extra` of them.
            value = expected(kind, length) - extras[1 + length]
            if value > gain:
                best, gain = length, value
        return best

    def taken(self, proposed: int, agreed: int) -> None:
        lookup = self.lookup
        if self._kind:
            lookup.acceptance.record(self._kind, proposed, agreed)
        # A draft taken whole: the copy goes on, so draft more of it next; else start again.
        self.length = min(lookup.longest, self.length + lookup.grow) if agreed == proposed else lookup.start
        # The next proposal goes on from the same place if the output still follows it there
        # (the token after the accepted ones is the model's own: checked then).
        self._follow = self._from + agreed + 1 if self._from >= 0 else -1

    def finish(self, generated: Sequence[int]) -> None:
        if self.lookup.recycled is not None:
            # With the tokens before it, so that its first tokens are keyed too.
            self._sync(generated)
            start = max(0, self._base - self.lookup.recycled.order)
            self.lookup.recycled.record(self._tokens[start : self._size].tolist())


class CopyDrafter:
    """The draft for text the output is expected to copy in long runs (`DecodeParams.draft`):
    the source's tokens after where the output's last tokens stand in it, looked for from where
    the output last matched it, then from its start."""

    def __init__(self, source: Sequence[int], length: int, match: int = 3) -> None:
        self.source = tuple(source)
        self.length = length
        self.match = match
        self._at = 0  # where in the source the output was last matched

    def propose(self, generated: Sequence[int], room: int) -> list[int]:
        source, length = self.source, min(self.length, room)
        if length <= 0:
            return []
        if not generated:
            self._at = 0
            return list(source[:length])
        for n in range(min(self.match, len(generated)), 0, -1):
            tail = tuple(generated[-n:])
            for start in (self._at, 0):
                for end in range(max(n, start), len(source)):
                    if source[end - n : end] == tail:
                        self._at = end
                        return list(source[end : end + length])
        return []

    def taken(self, proposed: int, agreed: int) -> None:
        self._at += agreed

    def finish(self, generated: Sequence[int]) -> None:
        pass


class Drafters:
    """Several sources, asked in order: the first with a draft drafts the step."""

    def __init__(self, drafters: Sequence[Drafter]) -> None:
        self.drafters = list(drafters)
        self._last: Drafter | None = None

    def propose(self, generated: Sequence[int], room: int) -> list[int]:
        for drafter in self.drafters:
            draft = drafter.propose(generated, room)
            if draft:
                self._last = drafter
                return draft
        self._last = None
        return []

    def taken(self, proposed: int, agreed: int) -> None:
        if self._last is not None:
            self._last.taken(proposed, agreed)

    def finish(self, generated: Sequence[int]) -> None:
        for drafter in self.drafters:
            drafter.finish(generated)
