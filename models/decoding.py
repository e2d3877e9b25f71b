"""Decoding strategies over the backend protocol, with prefix KV reuse and cancellation."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from nextab.models.backend import (
    Backend,
    Callbacks,
    Interrupted,
    KVCache,
    common_prefix_length,
    interruptible,
)
from nextab.models.drafting import CopyDrafter, Drafter, Drafters, Lookup, NgramDrafter

if TYPE_CHECKING:
    from nextab.models.pairing import Partner


class Cancelled(Exception):
    """The request was superseded or cancelled by the client."""


class CancelToken:
    """Set from the event loop, checked by the model thread between forward passes."""

    def __init__(self) -> None:
        self._event = threading.Event()
        # The completion text written so far (set by the model thread): what decides whether
        # work overtaken by a keystroke is still worth finishing (nextab/typeahead.py).
        self.partial = ""
        self.cancelled_at: float | None = None  # time.monotonic() of the first cancel
        self._callbacks = Callbacks()

    def cancel(self) -> None:
        if self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
        self._event.set()
        self._callbacks.fire()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self._callbacks.add(callback)

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled


NEVER_CANCELLED = CancelToken()

# Called with the text generated so far; returns the length to keep when generation must stop.
StopCheck = Callable[[str], int | None]


@dataclass(frozen=True)
class DecodeParams:
    max_tokens: int
    stop_ids: frozenset[int]
    stop_check: StopCheck | None = None
    prefill_chunk: int = 256
    # Tokens the output is expected to copy in long runs (a region being rewritten): greedy
    # decoding drafts up to `draft_length` of them at a time where the output so far matches
    # them and checks the whole draft in one forward pass. The output is what plain greedy
    # decoding gives; only the number of passes changes.
    draft: tuple[int, ...] = ()
    draft_length: int = 12
    # Prompt lookup (models/drafting.py): drafts from the prompt itself and the output so far,
    # where the last tokens written occur earlier (completions). None: no lookup.
    lookup: Lookup | None = None
    # Whether a finished completion would be shown whole: the caller's own checks after
    # decoding (a syntax check that cuts a suggestion back). A lookahead branch that ends in
    # text they would cut does not win a pause.
    viable: Callable[[str, str], bool] | None = None  # (text, stop reason)
    # A larger model sharing the vocabulary, with this document's cache of it: two-model
    # strategies (models/speculative.py) decide tokens with it. None: the one model alone.
    partner: Partner | None = None


@dataclass(frozen=True)
class Healing:
    """Token healing: the prompt's last token, taken off because the prompt ends mid-word.

    The first tokens generated must spell its text again (in any tokenization), so the model is
    never asked to continue from a token boundary it rarely saw in training ("ret" + "urn").
    """

    text: str
    token: int  # the token that was taken off, the fallback when no candidate fits

    def pick(self, backend: Backend, logits: np.ndarray, pending: str, top_k: int = 64) -> int:
        """The most likely token consistent with the text still pending."""
        candidates = np.argpartition(logits, -top_k)[-top_k:]
        for token in candidates[np.argsort(-logits[candidates])]:
            piece = backend.detokenize([int(token)])
            if piece and (piece.startswith(pending) or pending.startswith(piece)):
                return int(token)
        return self.token


def split_for_healing(backend: Backend, prompt: Sequence[int]) -> tuple[list[int], Healing | None]:
    """Take the last token off a prompt that ends inside a line, for the decoder to heal.

    Mid-word ("ret") and trailing indentation ("    ", where the model's own tokenization is
    "   " + " total") both leave the model at a token boundary it rarely saw in training, and it
    answers with the wrong word or one space too many. A prompt that ends with a special token
    or a newline is at a natural boundary and stays whole.
    """
    if not prompt:
        return list(prompt), None
    last = prompt[-1]
    piece = backend.detokenize([last])
    if not piece or "\ufffd" in piece or piece.endswith("\n") or _is_special(backend, piece):
        return list(prompt), None
    return list(prompt[:-1]), Healing(text=piece, token=last)


def _is_special(backend: Backend, piece: str) -> bool:
    return backend.special_token_id(piece) is not None


@dataclass(frozen=True)
class DecodeResult:
    tokens: tuple[int, ...]
    text: str
    stop_reason: str  # "eos" | "stop" | "length"
    prompt_tokens: int
    reused_tokens: int
    prefill_ms: float
    decode_ms: float
    paused_steps: int = 0  # steps where the strategy looked ahead instead of taking the argmax
    evaluated_tokens: int = 0  # tokens run through the model after the prompt, lookahead included
    drafted_tokens: int = 0  # drafted tokens checked (DecodeParams.draft and .lookup)
    accepted_tokens: int = 0  # and taken
    large_tokens: int = 0  # tokens the large model decided (two-model strategies)
    large_computed: int = 0  # tokens the large model ran to catch up with the prompt
    fallback: str = ""  # why a two-model strategy decoded with the small model alone


class Decoder(Protocol):
    def decode(
        self,
        backend: Backend,
        cache: KVCache,
        prompt: Sequence[int],
        params: DecodeParams,
        cancel: CancelToken,
        healing: Healing | None = None,
    ) -> DecodeResult: ...


def prefill(
    backend: Backend,
    cache: KVCache,
    prompt: Sequence[int],
    cancel: CancelToken,
    chunk: int = 256,
) -> tuple[np.ndarray, int]:
    """Bring `cache` to exactly `prompt` and return the next-token logits and the reused length.

    Only the tokens after the longest common prefix with what the cache already holds are
    computed. At least one token is always re-run, because the logits of a cached position are
    not kept. The work is chunked so that a cancel lands within one chunk, or within one layer
    where the backend can stop a forward part-way (`interruptible`).
    """
    if not prompt:
        raise ValueError("empty prompt")
    reused = min(common_prefix_length(cache.tokens, prompt), len(prompt) - 1)
    backend.truncate(cache, reused)
    logits: np.ndarray | None = None
    with interruptible(backend, cancel):
        for start in range(reused, len(prompt), chunk):
            cancel.check()
            try:
                logits = backend.forward(cache, prompt[start : start + chunk])
            except Interrupted:
                raise Cancelled from None
    assert logits is not None
    return logits, reused


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - float(np.max(logits))
    return shifted - math.log(float(np.exp(shifted).sum()))


def entropy(logits: np.ndarray) -> float:
    """Shannon entropy, in nats, of the distribution softmax(logits)."""
    logprobs = log_softmax(logits)
    return float(-(np.exp(logprobs) * logprobs).sum())


@dataclass
class Run:
    """One decode call's state, as the strategies see it."""

    backend: Backend
    cache: KVCache
    params: DecodeParams
    cancel: CancelToken
    healed: str  # the text healing must spell again before the completion proper
    generated: list[int]
    paused: int = 0
    evaluated: int = 0
    drafted: int = 0  # draft tokens checked
    accepted: int = 0  # draft tokens the model agreed with
    prompt: Sequence[int] = ()  # what the model read before `generated` (prompt lookup's source)
    drafter: Drafter | None = None  # a draft source of the strategy's own, instead of params'
    state: Any = None  # a strategy's own state for this call
    large_tokens: int = 0  # tokens the large model decided (two-model strategies)
    large_computed: int = 0  # tokens the large model ran, catching up included
    fallback: str = ""  # why a two-model strategy went on with the small model alone

    def text_with(self, tokens: Sequence[int]) -> str | None:
        """The completion text after `generated` + `tokens`; None while still healing."""
        full = self.backend.detokenize([*self.generated, *tokens])
        return full[len(self.healed) :] if len(full) >= len(self.healed) else None

    def ends(self, tokens: Sequence[int]) -> bool:
        """Whether generating `tokens` next would finish the completion (end token or rule)."""
        if tokens and tokens[-1] in self.params.stop_ids:
            return True
        text = self.text_with(tokens)
        check = self.params.stop_check
        return text is not None and check is not None and check(text) is not None


class GreedyDecoder:
    """Argmax at every step: the baseline strategy, and the one the stop rules are tested on.

    Subclasses change `choose`, the tokens taken at a step once healing is done.
    """

    def choose(self, run: Run, logits: np.ndarray) -> list[int]:
        """The next token, and any after it that are already known to follow (they are
        committed with one forward pass)."""
        return [int(np.argmax(logits))]

    def agreed(self, run: Run, rows: np.ndarray, draft: Sequence[int]) -> int:
        """How many of the drafted tokens this strategy would have written itself, one by one:
        `rows[i]` are the logits before `draft[i]`. A subclass whose `choose` is not always the
        argmax must stop where it would have chosen otherwise."""
        picks = np.argmax(rows[: len(draft)], axis=1)
        agreed = 0
        while agreed < len(draft) and int(picks[agreed]) == draft[agreed]:
            agreed += 1
        return agreed

    def decode(
        self,
        backend: Backend,
        cache: KVCache,
        prompt: Sequence[int],
        params: DecodeParams,
        cancel: CancelToken,
        healing: Healing | None = None,
    ) -> DecodeResult:
        started = time.perf_counter()
        logits, reused = prefill(backend, cache, prompt, cancel, params.prefill_chunk)
        prefilled = time.perf_counter()
        run = Run(backend, cache, params, cancel, healing.text if healing else "", [], prompt=prompt)
        return self.result(run, self.generate(run, logits, healing), reused, started, prefilled)

    @staticmethod
    def result(
        run: Run, generated: tuple[list[int], str, str], reused: int, started: float, prefilled: float
    ) -> DecodeResult:
        """The call's result from what `generate` returned and the run's counts; `started`
        and `prefilled` are perf_counter() times before and after the pre-fill."""
        tokens, text, reason = generated
        return DecodeResult(
            tokens=tuple(tokens),
            text=text,
            stop_reason=reason,
            prompt_tokens=len(run.prompt),
            reused_tokens=reused,
            prefill_ms=(prefilled - started) * 1000,
            decode_ms=(time.perf_counter() - prefilled) * 1000,
            paused_steps=run.paused,
            evaluated_tokens=run.evaluated,
            drafted_tokens=run.drafted,
            accepted_tokens=run.accepted,
            large_tokens=run.large_tokens,
            large_computed=run.large_computed,
            fallback=run.fallback,
        )

    def generate(
        self, run: Run, logits: np.ndarray, healing: Healing | None
    ) -> tuple[list[int], str, str]:
        """The tokens after the prompt, the completion text, and why generation ended."""
        backend, cache, params, cancel = run.backend, run.cache, run.params, run.cancel
        healed = run.healed
        generated = run.generated
        drafter = _drafter(run)
        # Prompt lookup learns what passes cost here, to draft only what pays.
        costs = params.lookup.costs if params.lookup is not None else None
        full = ""  # everything generated, healed text included
        text = ""
        reason = "length"
        known: list[int] = []  # drafted tokens the model confirmed: already in the cache
        pending_logits = logits  # the logits after the last of them
        while len(generated) < params.max_tokens:
            if known:
                tokens = known
            elif healing and len(full) < len(healed):
                tokens = [healing.pick(backend, logits, healed[len(full) :])]
            else:
                tokens = self.choose(run, logits)
            fed: list[int] = []
            done = False
            for token in tokens:
                if token in params.stop_ids:
                    reason, done = "eos", True
                    break
                generated.append(token)
                fed.append(token)
                full = backend.detokenize(generated)
                if len(full) < len(healed):
                    continue
                text = full[len(healed) :]
                cancel.partial = text
                if params.stop_check is not None:
                    keep = params.stop_check(text)
                    if keep is not None:
                        text, reason, done = text[:keep], "stop", True
                        break
                if len(generated) == params.max_tokens:
                    done = True
                    break
            if done:
                break
            cancel.check()
            if known:  # their logits came with the draft's check
                known, logits = [], pending_logits
                continue
            # Drafts start once healing is done: its tokens are not the strategy's to choose.
            # Never past max_tokens: the tokens that fill it up need no logits after them.
            draft = (
                drafter.propose(generated, params.max_tokens - len(generated))
                if drafter is not None and len(full) >= len(healed)
                else []
            )
            draft = _until_the_end(run, draft)
            began = time.perf_counter()
            if not draft:
                logits = backend.forward(cache, fed)
                run.evaluated += len(fed)
                if costs is not None and len(fed) == 1:
                    costs.observe_plain((time.perf_counter() - began) * 1000)
                continue
            out = backend.forward(cache, [*fed, *draft], every=True)
            run.evaluated += len(fed) + len(draft)
            rows = out[len(fed) - 1 :]
            agreed = self.agreed(run, rows, draft)
            backend.truncate(cache, len(cache.tokens) - (len(draft) - agreed))
            if costs is not None:
                costs.observe_check(len(fed) + len(draft), (time.perf_counter() - began) * 1000)
            run.drafted += len(draft)
            run.accepted += agreed
            assert drafter is not None
            drafter.taken(len(draft), agreed)
            known, pending_logits = draft[:agreed], rows[agreed]
            if not known:
                logits = pending_logits
        if drafter is not None:
            drafter.finish(generated)
        return generated, text, reason


def _until_the_end(run: Run, draft: list[int]) -> list[int]:
    """The draft up to the token that would end the completion (an end token, or the stop
    rules firing), that one included: the tokens after it could never be written."""
    stop_ids, check = run.params.stop_ids, run.params.stop_check
    for i, token in enumerate(draft):
        if token in stop_ids or (check is not None and run.ends(draft[: i + 1])):
            return draft[: i + 1]
    return draft


def _drafter(run: Run) -> Drafter | None:
    """The draft sources a decode call has: the strategy's own (a draft model), or else the
    text a rewrite copies, then prompt lookup."""
    if run.drafter is not None:
        return run.drafter
    params = run.params
    drafters: list[Drafter] = []
    if params.draft:
        drafters.append(CopyDrafter(params.draft, params.draft_length))
    if params.lookup is not None:
        drafters.append(NgramDrafter(params.lookup, run.prompt, params.max_tokens))
    if not drafters:
        return None
    return drafters[0] if len(drafters) == 1 else Drafters(drafters)


@dataclass(frozen=True)
class Lookahead:
    """A candidate next token and how its greedy continuation scored."""

    token: int
    continuation: tuple[int, ...]
    logprobs: tuple[float, ...]  # of the token, then of each continuation token
    entropies: tuple[float, ...]  # of the distribution each continuation token came from
    # The branch ends the completion with nothing but whitespace written, or with text the
    # caller's checks would cut (`DecodeParams.viable`).
    rejected: bool = False

    @property
    def score(self) -> float:
        # The AdaDec paper's lookahead score: mean log-probability of the candidate and its
        # lookahead, so that a branch that ends early is not favoured for being short.
        return sum(self.logprobs) / len(self.logprobs)


def look_ahead(run: Run, logits: np.ndarray, top_k: int, length: int) -> list[Lookahead]:
    """Roll out `length` greedy tokens after each of the `top_k` likeliest next tokens.

    All branches advance together: one batched forward per step over a token tree that hangs
    off the cached text, so the prompt is never encoded again. A branch stops early where the
    completion would end (an end token, or the stop rules firing on its text).
    """
    logprobs = log_softmax(logits)
    candidates = [int(t) for t in np.argsort(-logprobs, kind="stable")[:top_k]]
    branches = [[c] for c in candidates]
    scores = [[float(logprobs[c])] for c in candidates]
    spreads: list[list[float]] = [[] for _ in candidates]
    alive = [not run.ends([c]) for c in candidates]
    node = list(range(len(candidates)))  # each branch's last node in the tree
    feed = [(i, c, -1) for i, c in enumerate(candidates) if alive[i]]
    tree_size = 0
    for _ in range(length):
        if not feed:
            break
        run.cancel.check()
        out = run.backend.forward_tree(
            run.cache, [token for _, token, _ in feed], [parent for _, _, parent in feed]
        )
        run.evaluated += len(feed)
        rows = {i: row for row, (i, _, _) in enumerate(feed)}
        for i, _, _ in feed:
            node[i] = tree_size + rows[i]
        tree_size += len(feed)
        feed = []
        for i, row in rows.items():
            step = log_softmax(out[row])
            token = int(np.argmax(step))
            branches[i].append(token)
            scores[i].append(float(step[token]))
            spreads[i].append(float(-(np.exp(step) * step).sum()))
            if run.ends(branches[i]):
                alive[i] = False
            elif len(scores[i]) <= length:
                feed.append((i, token, node[i]))
    return [
        Lookahead(c, tuple(b[1:]), tuple(lp), tuple(h), _ends_rejected(run, b))
        for c, b, lp, h in zip(candidates, branches, scores, spreads, strict=True)
    ]


def _ends_rejected(run: Run, branch: Sequence[int]) -> bool:
    """Whether taking `branch` would end the completion with no code written at all, or
    with code the caller's checks would cut."""
    if not run.ends(branch):
        return False
    at_end = branch[-1] in run.params.stop_ids
    text = run.text_with(list(branch[:-1] if at_end else branch)) or ""
    check = run.params.stop_check
    keep = check(text) if check is not None else None
    shown = text if keep is None else text[:keep]
    viable = run.params.viable
    return not shown.strip() or (viable is not None and not viable(shown, "eos" if at_end else "stop"))


class AdaDecDecoder(GreedyDecoder):
    """Greedy, except at uncertain steps: where the next-token entropy passes `threshold`
    (nats, learned per model by `nextab calibrate`), pause, roll out `lookahead` greedy tokens
    after each of the `top_k` likeliest tokens, and take the one whose branch scores best."""

    def __init__(self, threshold: float, top_k: int = 3, lookahead: int = 5) -> None:
        if top_k < 1 or lookahead < 1:
            raise ValueError("AdaDec needs top_k >= 1 and lookahead >= 1")
        self.threshold = threshold
        self.top_k = top_k
        self.lookahead = lookahead

    def agreed(self, run: Run, rows: np.ndarray, draft: Sequence[int]) -> int:
        # A drafted token is taken only where AdaDec would not pause: there it is the argmax,
        # as in greedy decoding; at the first uncertain step `choose` decides as usual.
        agreed = super().agreed(run, rows, draft)
        if self.top_k == 1 or self.threshold == math.inf:
            return agreed
        for i in range(agreed):
            if entropy(rows[i]) > self.threshold:
                return i
        return agreed

    def choose(self, run: Run, logits: np.ndarray) -> list[int]:
        if self.top_k == 1 or entropy(logits) <= self.threshold:
            return [int(np.argmax(logits))]
        run.paused += 1
        branches = self.rescore(run, logits, look_ahead(run, logits, self.top_k, self.lookahead))
        # A branch that ends at once has a mean over one or two sure tokens and would win for
        # being short, and one whose text the final checks cut would show less than greedy's:
        # reranking may change what is written, not turn a suggestion into none.
        greedy = branches[0]
        contenders = [b for b in branches if not b.rejected or b is greedy]
        # max() keeps the first of equal scores: the likelier candidate wins a tie.
        best = max(contenders, key=lambda b: b.score)
        # The winner's lookahead is what greedy decoding would produce next, up to the first
        # step uncertain enough to pause: take those tokens now, committed in one forward
        # pass instead of one pass each.
        taken = [best.token]
        for token, spread in zip(best.continuation, best.entropies, strict=True):
            if spread > self.threshold:
                break
            taken.append(token)
        return taken

    def rescore(self, run: Run, logits: np.ndarray, branches: list[Lookahead]) -> list[Lookahead]:
        """The branches as scored for the choice (`logits`: where they start); a subclass
        may have another model score them."""
        return branches


@dataclass(frozen=True)
class _Beam:
    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    node: int  # its last token's node in the token tree; -1 before the first step

    @property
    def score(self) -> float:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else 0.0


class BeamDecoder(GreedyDecoder):
    """Beam search with `width` beams, ranked by the lookahead's score (mean log-probability):
    the baseline AdaDec is measured against. Every step is a batched forward of the beams over
    a token tree that hangs off the cached prompt, as AdaDec's lookahead is."""

    def __init__(self, width: int = 3) -> None:
        if width < 1:
            raise ValueError("beam search needs width >= 1")
        self.width = width

    def generate(
        self, run: Run, logits: np.ndarray, healing: Healing | None
    ) -> tuple[list[int], str, str]:
        params = run.params
        logits, ended = _heal(run, logits, healing)
        best = self._search(run, logits) if not ended else _Beam((), (), -1)
        # The tree goes; the prompt and any healing tokens stay cached.
        run.backend.truncate(run.cache, len(run.cache.tokens))
        tokens = [*run.generated, *best.tokens]
        reason = "length"
        if ended or (best.tokens and best.tokens[-1] in params.stop_ids):
            reason = "eos"
            tokens = tokens[:-1] if best.tokens else tokens
        text = run.text_with(tokens[len(run.generated) :]) or ""
        keep = params.stop_check(text) if params.stop_check is not None else None
        if keep is not None and reason == "length":
            text, reason = text[:keep], "stop"
        return tokens, text, reason

    def _search(self, run: Run, logits: np.ndarray) -> _Beam:
        alive = [_Beam((), (), -1)]
        outputs = [logits]
        done: list[_Beam] = []
        tree_size = 0
        steps = run.params.max_tokens - len(run.generated)
        for depth in range(steps):
            run.paused += 1
            grown = []
            for beam, out in zip(alive, outputs, strict=True):
                step = log_softmax(out)
                for token in np.argsort(-step, kind="stable")[: self.width]:
                    grown.append(
                        _Beam((*beam.tokens, int(token)), (*beam.logprobs, float(step[token])),
                              beam.node)
                    )
            grown.sort(key=lambda b: -b.score)
            alive = []
            for beam in grown:
                if len(alive) == self.width:
                    break
                (done if run.ends(beam.tokens) else alive).append(beam)
            # A finished hypothesis wins once no unfinished beam scores better. Stopping at the
            # first `width` finished ones instead lets short early endings (an end token, blank
            # lines) beat the line still being written.
            best_done = max(done, key=lambda b: b.score, default=None)
            if best_done is not None and (not alive or best_done.score >= alive[0].score):
                return best_done
            if not alive or depth == steps - 1:
                break
            run.cancel.check()
            out = run.backend.forward_tree(
                run.cache, [b.tokens[-1] for b in alive], [b.node for b in alive]
            )
            run.evaluated += len(alive)
            alive = [
                _Beam(b.tokens, b.logprobs, tree_size + row) for row, b in enumerate(alive)
            ]
            tree_size += len(alive)
            outputs = list(out)
        return max([*done, *alive], key=lambda b: b.score)


def _heal(run: Run, logits: np.ndarray, healing: Healing | None) -> tuple[np.ndarray, bool]:
    """Generate greedily until the healed text is spelled again; True if an end token came."""
    if healing is None:
        return logits, False
    while len(run.generated) < run.params.max_tokens and run.text_with([]) is None:
        token = healing.pick(run.backend, logits, run.healed[len(run.backend.detokenize(run.generated)) :])
        if token in run.params.stop_ids:
            return logits, True
        run.generated.append(token)
        run.cancel.check()
        logits = run.backend.forward(run.cache, [token])
        run.evaluated += 1
    return logits, False


DECODERS = ("greedy", "adadec", "beam", "speculative", "ead")


def make_decoder(
    name: str,
    *,
    threshold: float = math.inf,
    top_k: int = 3,
    lookahead: int = 5,
    max_draft: int = 8,
    stop_threshold: float = 0.3,
    switch_threshold: float = math.inf,
    window: int = 3,
    min_run: int = 2,
    scorer: str = "self",
) -> Decoder:
    """A decoding strategy by name. `top_k` is AdaDec's candidates and beam search's width,
    so that the two are compared at the same k; `threshold` is AdaDec's entropy threshold;
    `max_draft` and `stop_threshold` bound speculative decoding's drafts; EAD switches to the
    large model where the mean entropy of the last `window` tokens passes `switch_threshold`;
    AdaDec's pauses are scored by the large model with `scorer="large"`."""
    if name == "greedy":
        return GreedyDecoder()
    if name == "adadec" and scorer == "large":
        from nextab.models.reranking import LargeScoredAdaDec  # it builds on this module

        return LargeScoredAdaDec(threshold, top_k, lookahead)
    if name == "adadec":
        return AdaDecDecoder(threshold, top_k, lookahead)
    if name == "beam":
        return BeamDecoder(top_k)
    if name == "speculative":
        from nextab.models.speculative import SpeculativeDecoder  # it builds on this module

        return SpeculativeDecoder(max_draft, stop_threshold)
    if name == "ead":
        from nextab.models.switching import EadDecoder  # it builds on this module

        return EadDecoder(switch_threshold, window, min_run)
    raise ValueError(f"unknown decoding strategy {name!r}; known: {', '.join(DECODERS)}")
