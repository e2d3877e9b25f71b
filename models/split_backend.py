"""Pre-fill on one runtime, decode on another, over one attention cache.

On a CPU the two halves of a request want different weights: a long pre-fill is compute-bound
and runs fastest as float matrix products (torch, fp32 or bf16), while a decode step reads every
weight once and runs fastest on int4 weights (onnxruntime). Both runtimes keep the same cache
layout (per layer, rotated keys and values of shape (1, kv_heads, tokens, head_dim)), so a
prompt pre-filled by torch is decoded by onnxruntime without conversion: the cache is the
onnxruntime backend's host arrays, which torch reads and extends in place of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from nextab.models.backend import CancelSignal, ModelInfo, TokenStats
from nextab.models.onnx_backend import OnnxBackend, OnnxCache, add_rows_one_by_one
from nextab.models.torch_backend import TorchBackend

# Fewer new tokens than this go to the decode runtime: a keystroke's few tokens cost less there.
PREFILL_MIN_TOKENS = 24


class SplitBackend:
    def __init__(self, decode: OnnxBackend, prefill: TorchBackend, min_tokens: int = PREFILL_MIN_TOKENS) -> None:
        self.decode = decode
        self.prefill = prefill
        self.min_tokens = min_tokens
        self.tokenizer = decode.tokenizer
        info = decode.info
        self.info = ModelInfo(
            name=info.name,
            model_type=info.model_type,
            device=info.device,
            dtype=f"{info.dtype}+prefill-{prefill.info.dtype}",
            vocab_size=info.vocab_size,
            eos_token_ids=info.eos_token_ids,
            max_context=info.max_context,
            exact_multi_token=False,
        )

    @contextmanager
    def stop_on(self, signal: CancelSignal) -> Iterator[None]:
        # A long forward runs in torch (which leaves the cache untouched when it stops), a
        # short one in onnxruntime.
        with self.decode.stop_on(signal), self.prefill.stop_on(signal):
            yield

    # Everything but long forwards is the decode runtime's.
    def tokenize(self, text: str) -> list[int]:
        return self.decode.tokenize(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.decode.detokenize(ids)

    def special_token_id(self, token: str) -> int | None:
        return self.decode.special_token_id(token)

    def new_cache(self) -> OnnxCache:
        return self.decode.new_cache()

    def truncate(self, cache: OnnxCache, length: int) -> None:
        self.decode.truncate(cache, length)

    def forward_tree(self, cache: OnnxCache, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        return self.decode.forward_tree(cache, tokens, parents)

    def new_batch(self) -> Any:
        return self.decode.new_batch()

    def add_rows(self, batch: Any, prompts: Sequence[Sequence[int]], chunk: int = 256) -> np.ndarray:
        return add_rows_one_by_one(self, batch, prompts, chunk)

    def forward_batch(self, batch: Any, tokens: Sequence[int]) -> np.ndarray:
        return self.decode.forward_batch(batch, tokens)

    def keep_rows(self, batch: Any, rows: Sequence[int]) -> None:
        self.decode.keep_rows(batch, rows)

    def token_logprobs(
        self,
        sequences: Sequence[Sequence[int]],
        starts: Sequence[int],
        should_stop: Callable[[], bool] | None = None,
    ) -> list[np.ndarray]:
        # Scoring is all pre-fill: torch's float weights.
        return self.prefill.token_logprobs(sequences, starts, should_stop)

    def token_stats(self, sequences: Sequence[Sequence[int]], starts: Sequence[int]) -> list[TokenStats]:
        return self.prefill.token_stats(sequences, starts)

    def forward(self, cache: OnnxCache, tokens: Sequence[int], every: bool = False) -> np.ndarray:
        if len(tokens) < self.min_tokens or cache.tree:
            return self.decode.forward(cache, tokens, every)
        return self._torch_forward(cache, tokens, every)

    @torch.inference_mode()
    def _torch_forward(self, cache: OnnxCache, tokens: Sequence[int], every: bool) -> np.ndarray:
        model = self.prefill.model
        dtype = model.dtype
        start = len(cache.tokens)
        past = DynamicCache(config=model.config)
        if start:
            for index, layer in enumerate(past.layers):
                keys = torch.from_numpy(cache.keys[index]).to(dtype)
                values = torch.from_numpy(cache.values[index]).to(dtype)
                layer.lazy_initialization(keys, values)
                layer.keys, layer.values = keys, values
        positions = torch.arange(start, start + len(tokens))
        out = model(
            input_ids=torch.tensor([list(tokens)], dtype=torch.long),
            past_key_values=past,
            use_cache=True,
            cache_position=positions,
            position_ids=positions.unsqueeze(0),
            logits_to_keep=0 if every else 1,
        )
        end = start + len(tokens)
        self.decode.reserve(cache, end)
        for index, layer in enumerate(past.layers):
            # Only the new positions are written: the prefix in the buffers is what torch read.
            cache.buffers_k[index][:, :, start:end] = layer.keys[:, :, start:end].float().numpy()
            cache.buffers_v[index][:, :, start:end] = layer.values[:, :, start:end].float().numpy()
        cache.tokens.extend(int(t) for t in tokens)
        logits = out.logits[0].float().numpy()
        return logits if every else logits[-1]
