"""Two models on one prompt: the large model's cache caught up lazily, and the check that a
pair can pass token ids between them.

A small model decides most tokens and a large one is asked only at some (two-model decoding).
The large model keeps its own attention cache per document; nothing brings it up to date
while the small model serves keystrokes, so at its next use it computes only the tokens since
it was last used, or nothing at all when that would cost more than the request may spend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .backend import Backend, KVCache, common_prefix_length
from .decoding import CancelToken, prefill

# Strings both models must cut into the same ids, and special tokens both must spell the same:
# a draft or a switch hands raw ids from one model to the other.
PROBES = (
    "def f(x):\n\treturn x  # é ✓",
    "    self.value = {'a': [1, 2.5e-3]}\r\n",
    "😀 naïve 文字 \u00a0",
)
SPECIALS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>", "<|endoftext|>")


class PairMismatch(ValueError):
    """The two models do not share a vocabulary: their token ids cannot be exchanged."""


@dataclass(frozen=True)
class Partner:
    """The large model as one request sees it.

    `catch_up_limit` is the most tokens it may compute inline before answering (None: no
    limit); a document it has not seen for a while costs seconds per thousand tokens on a CPU.
    """

    backend: Backend
    cache: KVCache
    catch_up_limit: int | None = None


@dataclass(frozen=True)
class CaughtUp:
    """The large model's next-token logits after the tokens it was brought to."""

    logits: np.ndarray
    computed: int  # tokens it ran to get there (at least one: cached logits are not kept)


def uncached(partner: Partner, tokens: Sequence[int]) -> int:
    """How many tokens catching `partner` up to `tokens` would compute."""
    if not tokens:
        return 0
    return len(tokens) - min(common_prefix_length(partner.cache.tokens, tokens), len(tokens) - 1)


def catch_up(
    partner: Partner, tokens: Sequence[int], cancel: CancelToken, chunk: int = 256
) -> CaughtUp | None:
    """Bring the large model's cache to exactly `tokens`, computing only what follows the
    longest prefix it already holds; None, with nothing computed or dropped, when that is
    more than `partner.catch_up_limit` tokens."""
    limit = partner.catch_up_limit
    if limit is not None and uncached(partner, tokens) > limit:
        return None
    logits, reused = prefill(partner.backend, partner.cache, tokens, cancel, chunk)
    return CaughtUp(logits, len(tokens) - reused)


def check_pair(small: Backend, large: Backend) -> None:
    """Raise PairMismatch, naming what differs, unless the two models share their token ids."""
    problems = []
    if small.info.vocab_size != large.info.vocab_size:
        problems.append(f"vocabulary sizes {small.info.vocab_size} and {large.info.vocab_size}")
    for text in PROBES:
        if small.tokenize(text) != large.tokenize(text):
            problems.append(f"{text!r} is tokenized differently")
    for special in SPECIALS:
        ids = small.special_token_id(special), large.special_token_id(special)
        if ids[0] != ids[1]:
            problems.append(f"{special} is {ids[0]} in one and {ids[1]} in the other")
    if problems:
        raise PairMismatch(
            f"{small.info.name} and {large.info.name} cannot decode together: "
            + "; ".join(problems)
        )
