"""Decode steps at a fixed shape, for GPUs: a preallocated attention cache and a CUDA graph.

An eager decode step of a 0.5B model on an H100 costs ~17 ms, nearly all of it launching a few
hundred small kernels from Python; the same step replayed as a captured CUDA graph costs ~2 ms
(the memory floor is ~0.3 ms). A graph replays fixed addresses, so the cache must not move:
each document's cache is a `StaticCache` of a fixed capacity (grown by doubling, which moves
it and so takes a new graph), and the step's inputs (the token, its position) are written into
tensors the graph reads. Everything else (pre-fill, drafts, token trees) runs eagerly over the
same static cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from transformers import StaticCache

log = logging.getLogger(__name__)

# A document's cache starts this large: a prompt window plus a completion fits without a move.
MIN_CAPACITY = 2048

Replay = Callable[[], torch.Tensor]
Capture = Callable[[Callable[[], torch.Tensor]], Replay]


def capacity_for(length: int) -> int:
    """The smallest power of two holding `length` tokens, at least MIN_CAPACITY."""
    return max(MIN_CAPACITY, 1 << max(0, length - 1).bit_length())


def new_static_cache(model: Any, capacity: int) -> StaticCache:
    config = model.config.get_text_config(decoder=True)
    heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    cache = StaticCache(config=model.config, max_cache_len=capacity)
    cache.early_initialization(1, heads, head_dim, model.dtype, model.device)
    return cache


def capacity(cache: StaticCache) -> int:
    return int(cache.layers[0].max_cache_len)


def held(cache: StaticCache) -> int:
    """Positions written so far (the static layers count them on the device)."""
    return int(cache.layers[0].cumulative_length)


def grown(model: Any, cache: StaticCache, length: int) -> StaticCache:
    """A cache holding at least `length` positions with `cache`'s contents, or `cache` itself
    when it already does."""
    if length <= capacity(cache):
        return cache
    bigger = new_static_cache(model, capacity_for(length))
    count = held(cache)
    for old, new in zip(cache.layers, bigger.layers, strict=True):
        new.keys[:, :, :count] = old.keys[:, :, :count]
        new.values[:, :, :count] = old.values[:, :, :count]
        new.cumulative_length.fill_(count)
    return bigger


def capture_cuda_graph(step: Callable[[], torch.Tensor]) -> Replay:
    """Record `step` (already run once eagerly at these shapes, so every kernel and cuBLAS
    handle exists) as a CUDA graph; the replay runs it again on whatever its input tensors hold
    and returns its output tensor, overwritten in place.

    Each graph keeps a private memory pool (a one-token step's activations: a few MB), so no
    graph's replay can overwrite another's output however the documents' steps interleave.
    """
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    def replay() -> torch.Tensor:
        graph.replay()
        return out

    return replay


class GraphedStep:
    """One cache's one-token decode step as a replayable graph: set the token and position,
    replay, read the logits."""

    def __init__(self, model: Any, cache: StaticCache, capture: Capture) -> None:
        device = model.device
        self.cache = cache
        self.token = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.position = torch.zeros((1, 1), dtype=torch.long, device=device)

        def step() -> torch.Tensor:
            out = model(
                input_ids=self.token,
                past_key_values=cache,
                use_cache=True,
                position_ids=self.position,
                logits_to_keep=1,
            )
            return out.logits[0, -1]

        self._replay = capture(step)

    def __call__(self, token: int, position: int) -> torch.Tensor:
        self.token.fill_(token)
        self.position.fill_(position)
        return self._replay()
