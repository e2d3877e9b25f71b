"""models/drafting.py: prompt lookup and recycled n-grams as draft sources, and greedy decoding
with them, which must write what plain greedy decoding writes, token for token."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from nextab.models.backend import ModelInfo
from nextab.models.decoding import (
    NEVER_CANCELLED,
    AdaDecDecoder,
    DecodeParams,
    DecodeResult,
    GreedyDecoder,
    Healing,
    entropy,
    split_for_healing,
)
from nextab.models.drafting import (
    PRIORS,
    Acceptance,
    CopyDrafter,
    Lookup,
    NgramDrafter,
    PassCosts,
    Recycled,
    continuation,
    engine_lookup,
    find_continuation,
)
from tests.test_decoding import CODE, OTHER, Wrapped

# --- the n-gram search on its own ------------------------------------------------------------


def _find(tokens: Sequence[int], n: int) -> int:
    return find_continuation(np.array(tokens, dtype=np.int64), len(tokens), n)


def test_find_continuation_finds_what_followed_the_tail() -> None:
    assert _find([1, 2, 3, 9, 5, 1, 2, 3], 3) == 3
    assert _find([1, 2, 3, 9, 5, 1, 2, 3], 2) == 3
    assert _find([1, 2, 3, 9, 5, 4, 2, 3], 3) == -1
    assert _find([7, 3, 9, 5, 1, 2, 3], 1) == 2


def test_find_continuation_takes_the_latest_occurrence() -> None:
    tokens = [1, 2, 5, 1, 2, 6, 0, 1, 2]
    assert _find(tokens, 2) == 5
    assert _find(tokens, 1) == 5  # "2" after 1 at 4, 8 is the tail itself


def test_find_continuation_never_matches_the_tail_itself() -> None:
    assert _find([1, 2], 2) == -1
    assert _find([4, 1, 2], 2) == -1
    assert _find([1, 2, 1, 2], 2) == 2  # overlapping the tail is fine, with a token after it
    assert _find([3, 3], 1) == 1
    assert _find([3], 1) == -1
    assert _find([], 1) == -1
    assert _find([1, 2, 3], 3) == -1


def test_find_continuation_over_a_prefix_of_the_buffer() -> None:
    buffer = np.array([1, 2, 9, 1, 2, 0, 0], dtype=np.int64)
    assert find_continuation(buffer, 5, 2) == 2
    assert find_continuation(buffer, 4, 1) == 1


def test_continuation_copies_with_overlap() -> None:
    tokens = np.array([5, 6, 7, 8, 9], dtype=np.int64)
    assert continuation(tokens, 5, 1, 3) == [6, 7, 8]
    assert continuation(tokens, 5, 3, 5) == [8, 9, 8, 9, 8]  # a period of 2 goes on
    assert continuation(tokens, 4, 3, 3) == [8, 8, 8]  # past `size` is not read


# --- the drafter ---------------------------------------------------------------------------


def test_drafter_prefers_the_longest_match() -> None:
    # "2 3" is followed by 40 at the start and "3" alone by 50 later: the bigram wins.
    context = [1, 2, 3, 40, 41, 0, 3, 50, 51, 7, 2]
    drafter = NgramDrafter(Lookup(min_ngram=1, max_ngram=3, start=2), context, 8)
    assert drafter.propose([3], 8) == [40, 41]
    drafter = NgramDrafter(Lookup(min_ngram=1, max_ngram=1, start=2), context, 8)
    assert drafter.propose([3], 8) == [50, 51]


def test_drafter_needs_min_ngram_tokens_to_match() -> None:
    context = [1, 2, 3, 40, 41, 0, 3, 50, 51]
    assert NgramDrafter(Lookup(min_ngram=2), context, 8).propose([9, 3], 8) == []
    assert NgramDrafter(Lookup(min_ngram=1, start=2), context, 8).propose([9, 3], 8) == [50, 51]
    assert NgramDrafter(Lookup(min_ngram=2, start=2), context, 8).propose([1, 2, 3], 8) == [40, 41]


def test_drafter_looks_at_the_prompt_tail_and_the_output() -> None:
    # The match straddles the prompt's end and the first generated token.
    drafter = NgramDrafter(Lookup(min_ngram=2, start=3), [8, 9, 10, 11, 5, 8], 8)
    assert drafter.propose([9], 8) == [10, 11, 5]
    # The output repeating itself is a source too.
    drafter = NgramDrafter(Lookup(min_ngram=2, start=3), [0], 16)
    assert drafter.propose([1, 2, 3, 4, 1, 2], 16) == [3, 4, 1]


def test_a_copy_that_goes_on_being_taken_is_drafted_further() -> None:
    # As in decoding: after each draft, the accepted tokens and the model's own next token.
    source = list(range(100, 140))
    lookup = Lookup(min_ngram=2, start=2, longest=9, grow=3)
    drafter = NgramDrafter(lookup, [*source, 0, 100], 64)
    generated = [101]
    assert drafter.propose(generated, 64) == [102, 103]  # a new match: `start` tokens
    drafter.taken(2, 2)
    generated += [102, 103, 104]  # the model's next token follows the source too
    assert drafter.propose(generated, 64) == [105, 106, 107, 108, 109]
    drafter.taken(5, 5)
    generated += [105, 106, 107, 108, 109, 110]
    assert drafter.propose(generated, 64) == list(range(111, 119))
    drafter.taken(8, 8)
    generated += [*range(111, 119), 119]
    assert drafter.propose(generated, 64) == list(range(120, 129))  # no longer than `longest`
    assert drafter.propose(generated, 4) == [120, 121, 122, 123]  # nor than the room left
    assert drafter.propose(generated, 0) == []
    drafter.taken(4, 1)
    assert drafter.length == 2  # a miss: the next draft starts short again
    generated += [120, 7]  # the output left the source
    assert drafter.propose(generated, 64) == []
    generated += [110, 111]
    assert drafter.propose(generated, 64) == [112, 113]


def test_drafter_goes_on_from_where_its_last_draft_was_taken() -> None:
    # "3 4 5" occurs twice, followed by 6 8 8 0 and by 7 7 0.
    context = [1, 2, 3, 4, 5, 6, 8, 8, 0, 3, 4, 5, 7, 7, 0]
    lookup = Lookup(min_ngram=2, max_ngram=3, start=2, grow=2)
    drafter = NgramDrafter(lookup, context, 16)
    assert drafter.propose([1, 2], 16) == [3, 4]  # only the first has "1 2"
    drafter.taken(2, 2)
    # Taken, and the model wrote 5 next: the first occurrence goes on, though the latest one
    # matches the last three tokens as well.
    assert drafter.propose([1, 2, 3, 4, 5], 16) == [6, 8, 8, 0]
    assert NgramDrafter(lookup, context, 16).propose([1, 2, 3, 4, 5], 16) == [7, 7]
    drafter.taken(4, 0)
    assert drafter.propose([1, 2, 3, 4, 5, 9], 16) == []


def test_recycled_table_keeps_the_latest_continuation_within_its_capacity() -> None:
    table = Recycled(capacity=3, length=2)
    table.record([1, 2, 3, 4, 5])
    assert table.get([1, 2]) == (3, 4) and table.get([3, 4]) == (5,)
    table.record([1, 2, 7])
    assert table.get([1, 2]) == (7,)
    table.record([8, 9, 10, 11])
    assert len(table) == 3
    assert table.get([2, 3]) == ()  # the least recently written went first
    assert table.get([1, 2]) == (7,)


def test_drafter_falls_back_to_recycled_outputs_and_records_its_own() -> None:
    table = Recycled()
    lookup = Lookup(min_ngram=2, start=3, recycled=table)
    first = NgramDrafter(lookup, [20, 21], 8)
    assert first.propose([30, 31], 8) == []
    first.finish([30, 31, 32, 33, 34])
    # The pair before the output is recorded too: the prompt's last token and the first one.
    assert table.get([21, 30]) == (31, 32, 33, 34) and table.get([20, 21]) == (30, 31, 32, 33, 34)
    second = NgramDrafter(lookup, [5, 6], 8)
    assert second.propose([30, 31], 8) == [32, 33, 34]
    # The prompt's own match comes first.
    third = NgramDrafter(lookup, [30, 31, 99, 1], 8)
    assert third.propose([30, 31], 8) == [99, 1, 30]


def test_lookup_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        Lookup(min_ngram=0)
    with pytest.raises(ValueError):
        Lookup(min_ngram=3, max_ngram=2)
    with pytest.raises(ValueError):
        Lookup(start=0)
    with pytest.raises(ValueError):
        Lookup(start=5, longest=4)


def _costs(plain: float, **checks: float) -> PassCosts:
    costs = PassCosts()
    costs.observe_plain(plain)
    for tokens, ms in checks.items():
        costs.observe_check(int(tokens.lstrip("m")), ms)
    return costs


def test_pass_costs_are_learned_by_size_and_interpolated() -> None:
    costs = PassCosts(window=3)
    assert costs.extra(2) is None  # nothing timed yet
    for ms in (10.0, 30.0, 10.0, 10.0):
        costs.observe_plain(ms)
    assert costs.extra(5) == pytest.approx(0.4)  # no check timed: 0.1 a token
    costs.observe_check(5, 30.0)
    assert costs.extra(5) == pytest.approx(2.0)
    assert costs.extra(3) == pytest.approx(1.0)  # between the one-token pass and 5
    assert costs.extra(9) == pytest.approx(4.0)  # on the line through them
    costs.observe_check(9, 35.0)
    assert costs.extra(7) == pytest.approx(2.25)
    assert costs.extra(13) == pytest.approx(3.75)
    for ms in (90.0, 90.0, 90.0):
        costs.observe_check(5, ms)  # the median of the latest `window`
    assert costs.extra(5) == pytest.approx(8.0)


def test_acceptance_starts_at_the_priors_and_learns() -> None:
    acceptance = Acceptance(weight=4)
    first, then = PRIORS["match2"]
    assert acceptance.rates("match2") == pytest.approx((first, then))
    assert acceptance.expected("match2", 1) == pytest.approx(first)
    assert acceptance.expected("match2", 3) == pytest.approx(first * (1 + then + then**2))
    for _ in range(40):
        acceptance.record("match2", 4, 4)
    p, q = acceptance.rates("match2")
    assert p > 0.9 and q > 0.9
    for _ in range(400):
        acceptance.record("follow", 3, 0)
    assert acceptance.rates("follow")[0] < 0.05
    assert acceptance.rates("match3") == pytest.approx(PRIORS["match3"])  # kinds apart


class Rates(Acceptance):
    """Acceptance fixed at first-token rate p and next-token rate q, whatever the kind."""

    def __init__(self, p: float, q: float) -> None:
        super().__init__()
        self.p, self.q = p, q

    def expected(self, kind: str, length: int) -> float:
        return self.p * (1 - self.q**length) / (1 - self.q)


def test_drafts_are_cut_to_what_pays_on_the_backend() -> None:
    context = list(range(100, 140)) * 2
    unsure, sure = Rates(0.33, 0.71), Rates(0.97, 0.9)

    def drafted(costs: PassCosts | None, rates: Acceptance = unsure) -> list[int]:
        lookup = Lookup(min_ngram=2, start=12, longest=12, costs=costs, acceptance=rates)
        return NgramDrafter(lookup, context, 64).propose([101, 102], 64)

    assert len(drafted(None)) == 12  # no costs: no cut
    assert 1 < len(drafted(_costs(10.0))) < 12  # checks not timed yet: 0.1 of a pass a token
    gpu = _costs(10.0, m2=11.0, m13=12.0)  # checking is about free
    assert len(drafted(gpu, sure)) == 12
    # A CPU where each token checked costs 0.4 of a pass: a new match's first token only.
    cpu = _costs(10.0, m2=11.0, m3=15.0, m13=55.0)
    assert drafted(cpu) == [103]
    # Where checking costs twice a pass, only a draft that is sure to be taken pays.
    dear = _costs(10.0, m2=21.0, m3=30.0, m5=26.0, m13=30.0)
    assert drafted(dear) == []
    assert len(drafted(dear, sure)) == 12


def test_engine_lookup_recycles_and_times() -> None:
    lookup = engine_lookup()
    assert lookup.recycled is not None and lookup.costs is not None


def test_copy_drafter_follows_the_source() -> None:
    drafter = CopyDrafter((1, 2, 3, 4, 5, 6), length=3)
    assert drafter.propose([9, 1], 10) == [2, 3, 4]
    drafter.taken(3, 3)
    assert drafter.propose([9, 1, 2, 3, 4], 10) == [5, 6]
    assert drafter.propose([9, 1, 2, 3, 4], 1) == [5]
    assert drafter.propose([7, 7, 7], 10) == []


# --- a model that copies ---------------------------------------------------------------------
# Random-weight models rarely write what their prompt holds. This one (deterministic, numpy)
# continues like an induction head: after the last two tokens, the token that followed their
# latest earlier occurrence, else one derived from the last token; its certainty varies with
# the context, so AdaDec pauses at some steps. Drafts of it are taken and refused in all
# patterns, and batched logits equal one-at-a-time logits exactly.

PIECES = [*"abcdefgh", " ", "\n", "(", ")", "ab", "cd", "  ", "ef", *"ijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
EOS = len(PIECES)
VOCAB = EOS + 1


@dataclass
class _Cache:
    tokens: list[int] = field(default_factory=list)
    tree: list[tuple[int, int]] = field(default_factory=list)  # (token, parent)

    @property
    def tree_size(self) -> int:
        return len(self.tree)


def _digest(context: Sequence[int]) -> int:
    return int.from_bytes(hashlib.blake2b(bytes(t % 256 for t in context[-3:]), digest_size=4).digest(), "big")


class CopyingModel:
    info = ModelInfo("copying", "fake", "cpu", "float32", VOCAB, frozenset({EOS}), 4096)

    def __init__(self, eos_every: int = 0) -> None:
        self.eos_every = eos_every  # an end token likely after contexts with this digest

    def tokenize(self, text: str) -> list[int]:
        return [PIECES.index(c) for c in text]

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(PIECES[i] if i < len(PIECES) else "" for i in ids)

    def special_token_id(self, token: str) -> int | None:
        return None

    def new_cache(self) -> _Cache:
        return _Cache()

    def logits(self, context: Sequence[int]) -> np.ndarray:
        digest = _digest(context)
        rng = np.random.default_rng(digest)
        out = rng.normal(0.0, 1.0, VOCAB).astype(np.float32)
        out[EOS] -= 3.0
        nxt = (context[-1] * 7 + 3) % len(PIECES) if context else 0
        for end in range(len(context) - 1, 1, -1):
            if context[end - 2 : end] == context[-2:]:
                nxt = context[end]
                break
        if self.eos_every and digest % self.eos_every == 0:
            nxt = EOS
        out[nxt] += (0.5, 2.0, 6.0, 9.0)[digest % 4]  # sure at most steps, unsure at some
        return out

    def forward(self, cache: _Cache, tokens: Sequence[int], every: bool = False) -> np.ndarray:
        assert tokens
        cache.tree.clear()
        rows = []
        for token in tokens:
            cache.tokens.append(int(token))
            rows.append(self.logits(cache.tokens))
        return np.stack(rows) if every else rows[-1]

    def truncate(self, cache: _Cache, length: int) -> None:
        cache.tree.clear()
        del cache.tokens[max(0, length) :]

    def forward_tree(self, cache: _Cache, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        rows = []
        for token, parent in zip(tokens, parents, strict=True):
            cache.tree.append((int(token), parent))
            path, node = [], len(cache.tree) - 1
            while node >= 0:
                path.append(cache.tree[node][0])
                node = cache.tree[node][1]
            rows.append(self.logits([*cache.tokens, *reversed(path)]))
        return np.stack(rows)


def _code(seed: int, length: int = 40) -> str:
    """Text with repeated segments: a few 'lines' drawn from a small set, some repeated."""
    rng = np.random.default_rng(seed)
    lines = ["".join(rng.choice(PIECES[:12], size=rng.integers(2, 7))) for _ in range(4)]
    return "".join(lines[i] for i in rng.integers(0, 4, size=length // 4))[:length]


class Tracking(Wrapped):
    """Wrapped, also noting the most tokens the cache held."""

    longest = 0

    def forward(self, cache, tokens, every=False):
        out = super().forward(cache, tokens, every)
        self.longest = max(self.longest, len(cache.tokens))
        return out


def _decode(decoder, backend, prompt, healing=None, **extra) -> tuple[DecodeResult, Tracking]:
    wrapped = Tracking(backend)
    fields = {"max_tokens": 24, "stop_ids": frozenset({EOS}), **extra}
    result = decoder.decode(
        wrapped, wrapped.new_cache(), prompt, DecodeParams(**fields), NEVER_CANCELLED, healing
    )
    return result, wrapped


def _same(a: DecodeResult, b: DecodeResult) -> None:
    assert (a.tokens, a.text, a.stop_reason) == (b.tokens, b.text, b.stop_reason)


LOOKUPS = [
    Lookup(),
    Lookup(min_ngram=1, max_ngram=3, start=1, longest=20, grow=4),
    Lookup(min_ngram=3, max_ngram=4, start=6, longest=6),
]


@pytest.mark.parametrize("lookup", LOOKUPS)
@pytest.mark.parametrize("eos_every", [0, 17])
def test_greedy_with_lookup_writes_what_greedy_writes_on_a_copying_model(lookup, eos_every) -> None:
    model = CopyingModel(eos_every)
    accepted = passes_saved = 0
    for seed in range(12):
        prompt = model.tokenize(_code(seed))
        plain, plain_calls = _decode(GreedyDecoder(), model, prompt, max_tokens=32)
        drafted, drafted_calls = _decode(GreedyDecoder(), model, prompt, max_tokens=32, lookup=lookup)
        _same(plain, drafted)
        assert drafted.accepted_tokens <= drafted.drafted_tokens
        accepted += drafted.accepted_tokens
        passes_saved += len(plain_calls.calls) - len(drafted_calls.calls)
    print(accepted, passes_saved)
    assert accepted > 20 and passes_saved > 10


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 8, 13])
def test_lookup_stops_at_max_tokens_exactly(max_tokens) -> None:
    model = CopyingModel()
    drafts = 0
    for seed in range(8):
        prompt = model.tokenize(_code(seed))
        plain, _ = _decode(GreedyDecoder(), model, prompt, max_tokens=max_tokens)
        drafted, calls = _decode(
            GreedyDecoder(), model, prompt, max_tokens=max_tokens, lookup=LOOKUPS[1]
        )
        _same(plain, drafted)
        assert len(drafted.tokens) == max_tokens
        # No draft reaches past the limit: the cache never held more than the prompt and
        # max_tokens tokens.
        assert calls.longest <= len(prompt) + max_tokens
        drafts += drafted.drafted_tokens
    assert drafts > 0 or max_tokens == 1


def test_lookup_holds_the_stop_rules_at_every_cut() -> None:
    model = CopyingModel()
    for seed in range(6):
        prompt = model.tokenize(_code(seed))
        plain, _ = _decode(GreedyDecoder(), model, prompt, max_tokens=30)
        for cut in range(1, len(plain.text), 3):
            stop = lambda text, cut=cut: cut if len(text) >= cut else None  # noqa: E731
            expected, _ = _decode(GreedyDecoder(), model, prompt, max_tokens=30, stop_check=stop)
            drafted, _ = _decode(
                GreedyDecoder(), model, prompt, max_tokens=30, stop_check=stop, lookup=LOOKUPS[1]
            )
            _same(expected, drafted)
            assert drafted.stop_reason == "stop"
        # A stop id met inside a draft.
        for token in set(plain.tokens[2:]):
            expected, _ = _decode(GreedyDecoder(), model, prompt, max_tokens=30, stop_ids=frozenset({token}))
            drafted, _ = _decode(
                GreedyDecoder(), model, prompt, max_tokens=30, stop_ids=frozenset({token}), lookup=LOOKUPS[1]
            )
            _same(expected, drafted)


def test_lookup_waits_for_healing_to_be_done() -> None:
    model = CopyingModel()
    checked = 0
    for seed in range(10):
        text = _code(seed, 30)
        # A two-character token taken off the prompt: the first tokens must spell it again.
        prompt = model.tokenize(text)
        for pending in ("cd", "ef"):
            healing = Healing(text=pending, token=PIECES.index(pending))
            plain, _ = _decode(GreedyDecoder(), model, prompt, healing, max_tokens=16)
            drafted, _ = _decode(GreedyDecoder(), model, prompt, healing, max_tokens=16, lookup=LOOKUPS[1])
            _same(plain, drafted)
            assert model.detokenize(drafted.tokens).startswith(pending)
            checked += drafted.accepted_tokens
    assert checked > 0


def test_recycled_outputs_are_drafted_in_a_later_request() -> None:
    model = CopyingModel()
    lookup = Lookup(min_ngram=2, recycled=Recycled())
    prompt = model.tokenize(_code(3))
    first, _ = _decode(GreedyDecoder(), model, prompt, max_tokens=24, lookup=lookup)
    # The same request again, one token typed: the model's earlier output is the draft.
    again = [*prompt, first.tokens[0]]
    plain, _ = _decode(GreedyDecoder(), model, again, max_tokens=20)
    fresh, _ = _decode(GreedyDecoder(), model, again, max_tokens=20, lookup=Lookup(min_ngram=2))
    recycled, _ = _decode(GreedyDecoder(), model, again, max_tokens=20, lookup=lookup)
    _same(plain, recycled)
    _same(plain, fresh)
    assert recycled.accepted_tokens > fresh.accepted_tokens


def _thresholds(model, prompt) -> list[float]:
    plain, _ = _decode(GreedyDecoder(), model, prompt, max_tokens=24, stop_ids=frozenset())
    ids = [*prompt, *plain.tokens]
    spreads = sorted(entropy(model.logits(ids[: len(prompt) + i])) for i in range(len(plain.tokens)))
    return [spreads[len(spreads) // 4], spreads[len(spreads) // 2], spreads[3 * len(spreads) // 4]]


def test_adadec_with_lookup_writes_what_adadec_writes() -> None:
    model = CopyingModel(eos_every=11)
    paused = refused = 0
    for seed in range(10):
        prompt = model.tokenize(_code(seed))
        for threshold in _thresholds(model, prompt):
            plain, _ = _decode(AdaDecDecoder(threshold), model, prompt, max_tokens=24)
            drafted, _ = _decode(AdaDecDecoder(threshold), model, prompt, max_tokens=24, lookup=LOOKUPS[1])
            _same(plain, drafted)
            assert drafted.paused_steps == plain.paused_steps
            paused += drafted.paused_steps
            greedy, _ = _decode(GreedyDecoder(), model, prompt, max_tokens=24, lookup=LOOKUPS[1])
            refused += greedy.accepted_tokens > drafted.accepted_tokens
    assert paused > 0 and refused > 0


def test_adadec_takes_no_drafted_token_where_it_would_pause() -> None:
    decoder = AdaDecDecoder(threshold=0.5)
    sure = np.full(VOCAB, -20.0, dtype=np.float32)
    sure[3] = 10.0
    unsure = np.zeros(VOCAB, dtype=np.float32)
    unsure[3] = 0.1  # still the argmax
    assert entropy(sure) < 0.5 < entropy(unsure)
    rows = np.stack([sure, sure, unsure, sure, sure])
    assert GreedyDecoder().agreed(None, rows, [3, 3, 3, 3]) == 4  # type: ignore[arg-type]
    assert decoder.agreed(None, rows, [3, 3, 3, 3]) == 2  # type: ignore[arg-type]
    assert AdaDecDecoder(threshold=math.inf).agreed(None, rows, [3, 3, 3, 3]) == 4  # type: ignore[arg-type]


def test_adadec_rewrite_drafts_keep_adadec_s_output() -> None:
    # The text a rewrite copies is checked with AdaDec's rule too.
    model = CopyingModel()
    for seed in range(6):
        prompt = model.tokenize(_code(seed))
        greedy, _ = _decode(GreedyDecoder(), model, prompt, max_tokens=20)
        for threshold in _thresholds(model, prompt):
            plain, _ = _decode(AdaDecDecoder(threshold), model, prompt, max_tokens=20)
            drafted, _ = _decode(AdaDecDecoder(threshold), model, prompt, max_tokens=20, draft=greedy.tokens)
            _same(plain, drafted)


# --- the tiny random-weight models -----------------------------------------------------------


@pytest.fixture(scope="module")
def lively_models(tiny_backend):
    from nextab.models.torch_backend import TorchBackend
    from tests.tiny import lively_model

    tokenizer = tiny_backend.tokenizer
    return [
        TorchBackend(lively_model(len(tokenizer), tokenizer.eos_token_id, seed=seed), tokenizer, "lively", "cpu")
        for seed in (1, 2)
    ]


PROMPTS = [
    CODE,
    OTHER,
    OTHER * 3,
    "def add(a, b):\n    return a + b\n\n\ndef add(a, b):\n    return",
    "import os\nimport sys\nimport os\nimport ",
    "x",
    "self.x = x\n        self.y = y\n        self.x = x\n        self.",
]


def test_lookup_on_random_weight_models_is_greedy_token_for_token(tiny_backend, lively_models) -> None:
    accepted = 0
    for backend in (tiny_backend, *lively_models):
        eos = backend.tokenizer.eos_token_id
        for text in PROMPTS:
            prompt = backend.tokenize(text)
            plain, plain_calls = _decode(GreedyDecoder(), backend, prompt, max_tokens=24, stop_ids=frozenset({eos}))
            for lookup in LOOKUPS[:2]:
                drafted, calls = _decode(
                    GreedyDecoder(), backend, prompt, max_tokens=24, stop_ids=frozenset({eos}), lookup=lookup
                )
                _same(plain, drafted)
                accepted += drafted.accepted_tokens
                if drafted.drafted_tokens == 0:
                    assert calls.calls == plain_calls.calls  # nothing matched: plain passes
    assert accepted > 0


def test_lookup_on_random_weight_models_with_healing_stops_and_limits(tiny_backend, lively_models) -> None:
    for backend in (tiny_backend, *lively_models):
        for text in ("for i in ran", "self.x = x\n        self.y = y\n        self.", "def add(a, b):\n    ret"):
            prompt, healing = split_for_healing(backend, backend.tokenize(text))
            assert healing is not None
            for max_tokens in (1, 2, 7, 20):
                plain, _ = _decode(GreedyDecoder(), backend, prompt, healing, max_tokens=max_tokens, stop_ids=frozenset())
                drafted, _ = _decode(
                    GreedyDecoder(), backend, prompt, healing, max_tokens=max_tokens, stop_ids=frozenset(), lookup=LOOKUPS[1]
                )
                _same(plain, drafted)
            for cut in (1, 4, 9):
                stop = lambda text, cut=cut: cut if len(text) >= cut else None  # noqa: E731
                plain, _ = _decode(GreedyDecoder(), backend, prompt, healing, stop_check=stop, stop_ids=frozenset())
                drafted, _ = _decode(
                    GreedyDecoder(), backend, prompt, healing, stop_check=stop, stop_ids=frozenset(), lookup=LOOKUPS[1]
                )
                _same(plain, drafted)


def test_adadec_with_lookup_on_a_random_weight_model(lively_models) -> None:
    backend = lively_models[0]
    for text in (CODE, OTHER * 2):
        prompt = backend.tokenize(text)
        greedy, _ = _decode(GreedyDecoder(), backend, prompt, max_tokens=12, stop_ids=frozenset())
        ids = [*prompt, *greedy.tokens]
        from tests.test_decoding import cold_logits

        spreads = [entropy(cold_logits(backend, ids[: len(prompt) + i])) for i in range(12)]
        threshold = float(np.median(spreads))
        plain, _ = _decode(AdaDecDecoder(threshold), backend, prompt, max_tokens=12, stop_ids=frozenset())
        drafted, _ = _decode(
            AdaDecDecoder(threshold), backend, prompt, max_tokens=12, stop_ids=frozenset(), lookup=LOOKUPS[1]
        )
        _same(plain, drafted)


def test_no_lookup_no_draft(lively_models) -> None:
    backend = lively_models[0]
    prompt = backend.tokenize(OTHER * 3)
    result, calls = _decode(GreedyDecoder(), backend, prompt, max_tokens=10, stop_ids=frozenset())
    assert result.drafted_tokens == 0 and calls.calls[1:] == [1] * 9
    assert DecodeParams(4, frozenset()).lookup is None


# --- through the engine ----------------------------------------------------------------------


def test_engine_completions_with_lookup_are_the_same_and_counted(tiny_backend, lively_models) -> None:
    from nextab.config import CompletionConfig, Config
    from nextab.context.document import Document
    from nextab.engine import CompletionRequest, Engine

    source = (
        "def area(w, h):\n    return w * h\n\n\n"
        "def volume(w, h, d):\n    return w * h * d\n\n\n"
        "def area(w, h):\n    return "
    )
    drafted = 0
    for backend in (tiny_backend, *lively_models):
        engine = Engine(Config(completion=CompletionConfig(middle_lines=0)), backend)
        assert engine.lookup is not None and engine.lookup.costs is not None  # on by default
        default = engine.lookup
        for mode in ("line", "block"):
            results = []
            for lookup in (None, Lookup(min_ngram=1, start=1, grow=4), default):
                engine.lookup = lookup
                doc = Document("file:///a.py", source)
                results.append(engine.complete(CompletionRequest(doc, len(source), source, mode=mode)))
                engine.forget(doc)
            plain, *others = results
            assert plain.metrics.drafted_tokens == 0
            for other in others:
                assert (other.text, other.stop_reason) == (plain.text, plain.stop_reason)
                assert other.metrics.generated_tokens == plain.metrics.generated_tokens
                assert other.metrics.accepted_tokens <= other.metrics.drafted_tokens
            drafted += others[0].metrics.drafted_tokens
    assert drafted > 0
