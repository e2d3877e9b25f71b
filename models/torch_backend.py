"""The backend protocol on torch/transformers: CPU, CUDA and MPS, fp32/bf16/fp16."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedTokenizerBase

from nextab.models.backend import ModelInfo

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _cpu_has_fast_bf16() -> bool:
    # Without AMX or AVX512-BF16, torch emulates bf16 matmuls on the CPU and they run slower
    # than fp32; with them, pre-fill runs several times faster.
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_dtype(requested: str, device: str) -> torch.dtype:
    if requested != "auto":
        return _DTYPES[requested]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.bfloat16 if _cpu_has_fast_bf16() else torch.float32


@dataclass
class TorchCache:
    kv: DynamicCache
    tokens: list[int] = field(default_factory=list)


class TorchBackend:
    def __init__(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        device: str,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self._special = dict(tokenizer.get_added_vocab())
        config = model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.info = ModelInfo(
            name=name,
            model_type=str(getattr(config, "model_type", "")),
            device=str(self.device),
            dtype=str(model.dtype).removeprefix("torch."),
            vocab_size=int(text_config.vocab_size),
            eos_token_ids=frozenset(_eos_ids(model, tokenizer)),
            max_context=int(getattr(text_config, "max_position_embeddings", 32768)),
        )

    @classmethod
    def load(cls, path: Path | str, name: str, device: str = "auto", dtype: str = "auto") -> TorchBackend:
        started = time.perf_counter()
        device = pick_device(device)
        torch_dtype = pick_dtype(dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
        model.to(device)
        model.eval()
        log.info(
            "loaded %s on %s as %s in %.1fs",
            name,
            device,
            torch_dtype,
            time.perf_counter() - started,
        )
        return cls(model, tokenizer, name, device)

    def tokenize(self, text: str) -> list[int]:
        if not text:
            return []
        # split_special_tokens keeps "<|fim_prefix|>" typed in a user's file from becoming a
        # control token: only the template may place those.
        return list(
            self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        )

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def special_token_id(self, token: str) -> int | None:
        return self._special.get(token)

    def new_cache(self) -> TorchCache:
        return TorchCache(kv=DynamicCache(config=self.model.config))

    @torch.inference_mode()
    def forward(self, cache: TorchCache, tokens: Sequence[int]) -> np.ndarray:
        if not tokens:
            raise ValueError("forward needs at least one new token")
        start = len(cache.tokens)
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(tokens), device=self.device)
        out = self.model(
            input_ids=ids,
            past_key_values=cache.kv,
            use_cache=True,
            cache_position=positions,
            position_ids=positions.unsqueeze(0),
            logits_to_keep=1,
        )
        cache.tokens.extend(int(t) for t in tokens)
        return out.logits[0, -1].float().cpu().numpy()

    def truncate(self, cache: TorchCache, length: int) -> None:
        if length >= len(cache.tokens):
            return
        if length <= 0:
            cache.kv = DynamicCache(config=self.model.config)
            cache.tokens.clear()
            return
        # A negative crop removes from the end, which every transformers release reads the same
        # way (a positive one meant a final length before v5 and is refused since).
        cache.kv.crop(length - len(cache.tokens))
        del cache.tokens[length:]


def _eos_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
