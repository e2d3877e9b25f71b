"""The backend protocol on torch/transformers: CPU, CUDA and MPS, fp32/bf16/fp16."""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    PreTrainedTokenizerBase,
    StaticCache,
)

from nextab.models import static_decode
from nextab.models.backend import CancelSignal, HfTokens, Interrupted, ModelInfo, TokenStats

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


def cpu_has_fast_bf16() -> bool:
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
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


@dataclass
class TorchCache:
    kv: DynamicCache | StaticCache
    tokens: list[int] = field(default_factory=list)
    # Token-tree nodes in `kv` after `tokens` (Backend.forward_tree): parent and depth of each.
    tree_parents: list[int] = field(default_factory=list)
    tree_depths: list[int] = field(default_factory=list)
    # The captured decode step over `kv` (static caches only; a grown cache needs a new one).
    step: static_decode.GraphedStep | None = None

    @property
    def tree_size(self) -> int:
        return len(self.tree_parents)


@dataclass
class TorchBatch:
    kv: DynamicCache
    mask: torch.Tensor  # (rows, slots): 1 where a slot holds a real token, 0 for padding

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])


class TorchBackend(HfTokens):
    def __init__(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        name: str,
        device: str,
        static: bool | None = None,
        capture: static_decode.Capture | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        # On CUDA a decode step is launch-bound: static caches and captured graphs (see
        # models/static_decode.py). On a CPU a step is bound by reading the weights, and
        # dynamic caches waste no attention on empty slots.
        self.static = self.device.type == "cuda" if static is None else static
        if capture is None and self.device.type == "cuda":
            capture = static_decode.capture_cuda_graph
        self._capture = capture
        self._special = dict(tokenizer.get_added_vocab())
        self._signal: CancelSignal | None = None
        self._watch_layers(model)
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

    def _watch_layers(self, model: Any) -> None:
        """A check before each decoder layer: a cancelled pre-fill stops within one layer
        (milliseconds) instead of finishing a chunk of hundreds of tokens (seconds on a CPU)."""
        layers = getattr(getattr(model, "model", None), "layers", None)
        if not isinstance(layers, torch.nn.ModuleList):
            return  # an unfamiliar architecture stops between chunks only
        for layer in layers:
            layer.register_forward_pre_hook(self._stop_if_cancelled)

    def _stop_if_cancelled(self, module: Any, args: Any) -> None:
        signal = self._signal
        if signal is not None and signal.cancelled:
            raise Interrupted

    @contextmanager
    def stop_on(self, signal: CancelSignal) -> Iterator[None]:
        """Forwards stop part-way (Interrupted) once `signal` is cancelled, on a dynamic cache:
        a static cache's graphs run without Python between layers, and fast."""
        if self.static:
            yield
            return
        self._signal = signal
        try:
            yield
        finally:
            self._signal = None

    def release_memory(self) -> None:
        """Give the allocator's cached blocks back (after an out-of-memory error, the caches
        that held them dropped)."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def fall_back_to_cpu(self) -> bool:
        """Move the model to the CPU, for a GPU that runs out of memory even with every cache
        dropped: slower, but serving. False, changing nothing, when it is on the CPU already.

        Every cache made before the move is invalid (its tensors stay where they were): the
        caller drops them."""
        left = self.device.type
        if left == "cpu":
            return False
        # The GPU's dtype may be one the CPU emulates slowly (fp16, bf16 without AMX).
        dtype = pick_dtype("auto", "cpu")
        self.model.to(device="cpu", dtype=dtype)
        self.device = torch.device("cpu")
        # A CPU step is bound by reading the weights: no static caches, no graph capture.
        self.static = False
        self._capture = None
        self.info = dataclasses.replace(
            self.info, device="cpu", dtype=str(dtype).removeprefix("torch.")
        )
        _release_device_memory(left)
        return True

    @classmethod
    def load(cls, path: Path | str, name: str, device: str = "auto", dtype: str = "auto") -> TorchBackend:
        started = time.perf_counter()
        device = pick_device(device)
        torch_dtype = pick_dtype(dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        # Safetensors only: a pytorch_model.bin is a pickle, which runs code as it loads.
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch_dtype, use_safetensors=True
        )
        model.to(device)
        model.eval()
        backend = cls(model, tokenizer, name, device)
        if backend.static:
            backend.warm_up()
        log.info(
            "loaded %s on %s as %s in %.1fs",
            name,
            device,
            torch_dtype,
            time.perf_counter() - started,
        )
        return backend

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Run each kind of step once, so that the first request does not pay for CUDA's
        lazy start (kernels, cuBLAS handles, the first graph capture)."""
        cache = self.new_cache()
        ids = self.tokenize("def warm_up(x):\n    return x + 1\n") or [0]
        self.forward(cache, ids)
        for token in ids[:3]:
            self.forward(cache, [token])
        self.forward_tree(cache, ids[:2], [-1, -1])
        self.truncate(cache, 0)

    @torch.inference_mode()  # a static cache's tensors are then changed in place in it only
    def new_cache(self) -> TorchCache:
        if self.static:
            return TorchCache(kv=static_decode.new_static_cache(self.model, static_decode.MIN_CAPACITY))
        return TorchCache(kv=DynamicCache(config=self.model.config))

    def _reserve(self, cache: TorchCache, length: int) -> None:
        if isinstance(cache.kv, StaticCache):
            kv = static_decode.grown(self.model, cache.kv, length)
            if kv is not cache.kv:
                cache.kv, cache.step = kv, None

    @torch.inference_mode()
    def forward(self, cache: TorchCache, tokens: Sequence[int], every: bool = False) -> np.ndarray:
        if not tokens:
            raise ValueError("forward needs at least one new token")
        self._drop_tree(cache)
        start = len(cache.tokens)
        self._reserve(cache, start + len(tokens))
        if len(tokens) == 1 and not every and self._capture is not None and cache.step is not None:
            logits = cache.step(int(tokens[0]), start)
            cache.tokens.append(int(tokens[0]))
            return logits.float().cpu().numpy()
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(tokens), device=self.device)
        try:
            out = self.model(
                input_ids=ids,
                past_key_values=cache.kv,
                use_cache=True,
                cache_position=positions,
                position_ids=positions.unsqueeze(0),
                logits_to_keep=0 if every else 1,
            )
        except Interrupted:
            _cut_layers(cache.kv, start)
            raise
        cache.tokens.extend(int(t) for t in tokens)
        if len(tokens) == 1 and isinstance(cache.kv, StaticCache):
            # This eager step was the warm-up at this shape: the next ones replay a graph.
            self._capture_step(cache)
        if every:
            return out.logits[0].float().cpu().numpy()
        return out.logits[0, -1].float().cpu().numpy()

    def _capture_step(self, cache: TorchCache) -> None:
        if self._capture is None or cache.step is not None:
            return
        assert isinstance(cache.kv, StaticCache)
        try:
            cache.step = static_decode.GraphedStep(self.model, cache.kv, self._capture)
        except Exception as error:  # a model whose step cannot be captured still decodes
            log.warning("decode steps run eagerly: capturing one failed (%s)", error)
            self._capture = None

    @torch.inference_mode()
    def forward_tree(
        self, cache: TorchCache, tokens: Sequence[int], parents: Sequence[int]
    ) -> np.ndarray:
        if not tokens or len(tokens) != len(parents):
            raise ValueError(f"{len(tokens)} tree tokens with {len(parents)} parents")
        committed, before = len(cache.tokens), cache.tree_size
        if not committed:
            raise ValueError("a token tree needs at least one cached token to hang from")
        all_parents = [*cache.tree_parents]
        depths = [*cache.tree_depths]
        for parent in parents:
            if not -1 <= parent < len(all_parents):
                raise ValueError(f"parent {parent} is not an earlier node of the tree")
            depths.append(0 if parent < 0 else depths[parent] + 1)
            all_parents.append(parent)
        count = len(tokens)
        self._reserve(cache, committed + before + count)
        # A static cache's attention reads all its slots, the empty ones masked like the rest.
        width = committed + before + count
        if isinstance(cache.kv, StaticCache):
            width = static_decode.capacity(cache.kv)
        # Additive mask: the cached tokens and each node's ancestors (and itself) are visible.
        blocked = torch.finfo(self.model.dtype).min
        mask = torch.full((count, width), blocked, dtype=self.model.dtype)
        mask[:, :committed] = 0
        for row in range(count):
            node = before + row
            while node >= 0:
                mask[row, committed + node] = 0
                node = all_parents[node]
        slots = torch.arange(committed + before, committed + before + count, device=self.device)
        positions = torch.tensor(depths[before:], device=self.device) + committed
        out = self.model(
            input_ids=torch.tensor([list(tokens)], dtype=torch.long, device=self.device),
            attention_mask=mask[None, None].to(self.device),
            past_key_values=cache.kv,
            use_cache=True,
            cache_position=slots,
            position_ids=positions.unsqueeze(0),
        )
        cache.tree_parents = all_parents
        cache.tree_depths = depths
        return out.logits[0].float().cpu().numpy()

    def _drop_tree(self, cache: TorchCache) -> None:
        if cache.tree_size:
            cache.kv.crop(-cache.tree_size)
            cache.tree_parents.clear()
            cache.tree_depths.clear()

    @torch.inference_mode()
    def truncate(self, cache: TorchCache, length: int) -> None:
        self._drop_tree(cache)
        if length >= len(cache.tokens):
            return
        length = max(length, 0)
        if not length and not isinstance(cache.kv, StaticCache):
            cache.kv = DynamicCache(config=self.model.config)
            cache.tokens.clear()
            return
        # A negative crop removes from the end, which every transformers release reads the same
        # way (a positive one meant a final length before v5 and is refused since).
        cache.kv.crop(length - len(cache.tokens))
        del cache.tokens[length:]

    def new_batch(self) -> TorchBatch:
        return TorchBatch(
            kv=DynamicCache(config=self.model.config),
            mask=torch.zeros((0, 0), dtype=torch.long, device=self.device),
        )

    @torch.inference_mode()
    def add_rows(
        self, batch: TorchBatch, prompts: Sequence[Sequence[int]], chunk: int = 256
    ) -> np.ndarray:
        if not prompts or any(not prompt for prompt in prompts):
            raise ValueError("add_rows needs at least one token in every prompt")
        caches, logits = [], []
        for prompt in prompts:
            cache = self.new_cache()
            for start in range(0, len(prompt), chunk):
                out = self.forward(cache, prompt[start : start + chunk])
            caches.append(cache.kv)
            logits.append(out)
        self._join(batch, caches, [len(prompt) for prompt in prompts])
        return np.stack(logits)

    def _join(self, batch: TorchBatch, caches: list[DynamicCache], lengths: list[int]) -> None:
        """Append single-row caches to the batch, everything left-padded to one width."""
        before = batch.mask.shape[1] if batch.rows else 0
        width = max(before, *lengths)
        masks = [F.pad(batch.mask, (width - before, 0))] if batch.rows else []
        for length in lengths:
            row = torch.zeros((1, width), dtype=torch.long, device=self.device)
            row[0, width - length :] = 1
            masks.append(row)
        joined = DynamicCache(config=self.model.config)
        for index, layer in enumerate(joined.layers):
            parts: list[tuple[torch.Tensor, torch.Tensor]] = []
            if batch.rows:
                old = batch.kv.layers[index]
                parts.append((old.keys, old.values))
            parts.extend((c.layers[index].keys, c.layers[index].values) for c in caches)
            # (rows, heads, slots, dim): padding goes before the slots, as zeros never attended.
            keys = torch.cat([F.pad(k, (0, 0, width - k.shape[-2], 0)) for k, _ in parts])
            values = torch.cat([F.pad(v, (0, 0, width - v.shape[-2], 0)) for _, v in parts])
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        batch.kv = joined
        batch.mask = torch.cat(masks)

    @torch.inference_mode()
    def forward_batch(self, batch: TorchBatch, tokens: Sequence[int]) -> np.ndarray:
        if len(tokens) != batch.rows or not tokens:
            raise ValueError(f"{len(tokens)} tokens for a batch of {batch.rows} rows")
        ids = torch.tensor([[int(t)] for t in tokens], dtype=torch.long, device=self.device)
        before = batch.mask.shape[1]
        ones = torch.ones((batch.rows, 1), dtype=torch.long, device=self.device)
        mask = torch.cat([batch.mask, ones], dim=1)
        # A row's position counts its own tokens only, as if it had never been padded.
        positions = mask.sum(-1, keepdim=True) - 1
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            past_key_values=batch.kv,
            use_cache=True,
            cache_position=torch.arange(before, before + 1, device=self.device),
            position_ids=positions,
            logits_to_keep=1,
        )
        batch.mask = mask
        return out.logits[:, -1].float().cpu().numpy()

    def keep_rows(self, batch: TorchBatch, rows: Sequence[int]) -> None:
        if list(rows) == list(range(batch.rows)):
            return
        if not rows:
            fresh = self.new_batch()
            batch.kv, batch.mask = fresh.kv, fresh.mask
            return
        index = torch.tensor(list(rows), dtype=torch.long, device=self.device)
        batch.kv.batch_select_indices(index)
        batch.mask = batch.mask[index]
        # Slots that only the rows that left had used are padding for everyone now.
        lead = int(batch.mask.any(0).nonzero()[0])
        if lead:
            for layer in batch.kv.layers:
                layer.keys = layer.keys[:, :, lead:]
                layer.values = layer.values[:, :, lead:]
            batch.mask = batch.mask[:, lead:]

    @torch.inference_mode()
    def token_logprobs(
        self,
        sequences: Sequence[Sequence[int]],
        starts: Sequence[int],
        should_stop: Callable[[], bool] | None = None,
        chunk: int = 128,
        head_rows: int = 128,
    ) -> list[np.ndarray]:
        return [
            rows[:, 0]
            for rows in self._scored(sequences, starts, should_stop, chunk, head_rows, _row_logprobs)
        ]

    def token_stats(
        self, sequences: Sequence[Sequence[int]], starts: Sequence[int]
    ) -> list[TokenStats]:
        scored = self._scored(sequences, starts, None, 128, 128, _row_stats)
        return [TokenStats.from_rows(rows) for rows in scored]

    @torch.inference_mode()
    def _scored(
        self,
        sequences: Sequence[Sequence[int]],
        starts: Sequence[int],
        should_stop: Callable[[], bool] | None,
        chunk: int,
        head_rows: int,
        reduce: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor],
    ) -> list[np.ndarray]:
        """Per sequence, a float32 array with a row of `reduce`'s columns per scored token."""
        check_scoring_args(sequences, starts)
        if not sequences:
            return []
        lengths = [len(seq) for seq in sequences]
        count, width = len(sequences), max(lengths)
        ids = torch.zeros((count, width), dtype=torch.long)
        mask = torch.zeros((count, width), dtype=torch.long)
        for i, seq in enumerate(sequences):
            ids[i, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
            mask[i, : len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        # Right padding keeps every real token at its unpadded position, and causal attention
        # never lets a real token see the padding after it; the mask only matters for pad rows.
        padded = min(lengths) != width
        # The decoder stack without the LM head, so that only the rows whose next token is
        # scored pay for the vocabulary-wide projection (151k columns for Qwen). Models that
        # post-process logits (soft-capping, logit scale) would need the full head here.
        decoder, head = self.model.base_model, self.model.get_output_embeddings()
        cache = DynamicCache(config=self.model.config)
        pieces: list[list[torch.Tensor]] = [[] for _ in sequences]
        for begin in range(0, width, chunk):
            # Between pieces, not inside one: a piece of `chunk` tokens takes about a second
            # on a CPU, the longest a completion waits for scoring to give the model back.
            if begin and should_stop is not None and should_stop():
                raise Interrupted
            end = min(begin + chunk, width)
            positions = torch.arange(begin, end, device=self.device)
            hidden = decoder(
                input_ids=ids[:, begin:end],
                attention_mask=mask[:, :end] if padded else None,
                past_key_values=cache,
                use_cache=end < width,
                cache_position=positions,
                position_ids=positions.unsqueeze(0).expand(count, -1),
            ).last_hidden_state
            rows, targets, owners, counts = [], [], [], []
            for i in range(count):
                # Position p predicts token p + 1.
                lo, hi = max(begin, starts[i] - 1), min(end, lengths[i] - 1)
                if lo < hi:
                    rows.append(hidden[i, lo - begin : hi - begin])
                    targets.append(ids[i, lo + 1 : hi + 1])
                    owners.append(i)
                    counts.append(hi - lo)
            if not rows:
                continue
            scored = reduce(head, torch.cat(rows), torch.cat(targets), head_rows)
            for i, part in zip(owners, scored.split(counts), strict=True):
                pieces[i].append(part)
        width_out = 1 if reduce is _row_logprobs else 3
        return [
            torch.cat(p).cpu().numpy() if p else np.zeros((0, width_out), dtype=np.float32)
            for p in pieces
        ]


def _cut_layers(kv: Any, length: int) -> None:
    """Back to `length` tokens after a forward stopped part-way: the layers it ran hold the
    new tokens, the others do not."""
    for layer in getattr(kv, "layers", ()):
        extra = int(layer.get_seq_length()) - length
        if extra > 0:
            layer.crop(-extra)


def _release_device_memory(kind: str) -> None:
    # Tensors that only a reference cycle still holds are collected first, so that emptying
    # the allocator's cache gives their blocks back too.
    gc.collect()
    if kind == "cuda":
        torch.cuda.empty_cache()
    elif kind == "mps":
        torch.mps.empty_cache()


def check_scoring_args(sequences: Sequence[Sequence[int]], starts: Sequence[int]) -> None:
    if len(sequences) != len(starts):
        raise ValueError(f"{len(sequences)} sequences but {len(starts)} starts")
    for seq, start in zip(sequences, starts, strict=True):
        if not 1 <= start <= len(seq):
            raise ValueError(f"start {start} outside 1..{len(seq)} (the first token is unscored)")


def _row_logprobs(
    head: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor, group: int
) -> torch.Tensor:
    """Float32 log-probability of each target, (n, 1), a few rows at a time to bound memory."""
    out = []
    for begin in range(0, rows.shape[0], group):
        logits = head(rows[begin : begin + group]).float()
        picked = targets[begin : begin + group].unsqueeze(-1)
        out.append(logits.log_softmax(-1).gather(-1, picked))
    return torch.cat(out)


def _row_stats(
    head: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor, group: int
) -> torch.Tensor:
    """(n, 4): the target's log-probability, the entropy (nats), 1.0 where the target is the
    argmax, and the argmax (exact in float32 for vocabularies under 2**24)."""
    out = []
    for begin in range(0, rows.shape[0], group):
        logprobs = head(rows[begin : begin + group]).float().log_softmax(-1)
        picked = targets[begin : begin + group].unsqueeze(-1)
        entropy = -(logprobs.exp() * logprobs).sum(-1, keepdim=True)
        argmax = logprobs.argmax(-1, keepdim=True)
        top1 = (argmax == picked).float()
        out.append(torch.cat([logprobs.gather(-1, picked), entropy, top1, argmax.float()], dim=-1))
    return torch.cat(out)


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
