"""The backend protocol on onnxruntime: an exported model (models/onnx_export.py), weight-only
int4/int8 quantized on the CPU, fp16 on CUDA through onnxruntime-gpu.

The attention cache is one host buffer per layer for keys and one for values, with room for
more tokens than it holds: the fused attention reads the first `len(tokens)` positions and
writes the new ones in place (its past and present outputs bound to the same buffer), so a
step copies nothing and truncating only shortens the length. Token-tree nodes (AdaDec's
lookahead, beams) run as rows of one batch, sibling branches one forward per depth, in the
backend's tree rows: buffers that hold the cache's prefix once per row (copied in once, then
only where the cache changed) and each row's branch path after it, written in place as the
cache's are. Each node keeps its own one-token key/value slices too, for a row that has to
take another branch's path (beam search reorders).
"""

from __future__ import annotations

import json
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nextab.models.backend import CancelSignal, HfTokens, Interrupted, ModelInfo, TokenStats
from nextab.models.onnx_export import KEEP_INPUT
from nextab.models.resolve import _read_marker

log = logging.getLogger(__name__)

_MIN_CAPACITY = 256  # cache buffers grow in steps of this many tokens (and by doubling)


@dataclass
class _Node:
    token: int
    parent: int
    depth: int
    keys: list[np.ndarray] = field(default_factory=list)  # per layer, (heads, 1, dim)
    values: list[np.ndarray] = field(default_factory=list)


@dataclass
class OnnxCache:
    # Per layer, (1, kv_heads, capacity, head_dim); the first len(tokens) positions are valid.
    buffers_k: list[np.ndarray]
    buffers_v: list[np.ndarray]
    tokens: list[int] = field(default_factory=list)
    tree: list[_Node] = field(default_factory=list)
    bound: list[tuple[Any, Any]] = field(default_factory=list)  # onnxruntime views of the buffers
    # Positions below this are as the backend's tree rows hold them (OnnxBackend._tree_rows_for).
    synced: int = 0

    @property
    def tree_size(self) -> int:
        return len(self.tree)

    @property
    def capacity(self) -> int:
        return self.buffers_k[0].shape[2]

    @property
    def keys(self) -> list[np.ndarray]:
        """Per layer, the valid keys (views, not copies)."""
        return [b[:, :, : len(self.tokens)] for b in self.buffers_k]

    @property
    def values(self) -> list[np.ndarray]:
        return [b[:, :, : len(self.tokens)] for b in self.buffers_v]


@dataclass
class _TreeRows:
    """Batch buffers for token-tree levels: per layer (rows, kv_heads, capacity, head_dim),
    every row the owner cache's prefix, then one branch's path (`paths`: its node numbers)."""

    owner: weakref.ref[OnnxCache]
    buffers_k: list[np.ndarray] = field(default_factory=list)
    buffers_v: list[np.ndarray] = field(default_factory=list)
    paths: list[list[int]] = field(default_factory=list)
    _bound: dict[int, list[tuple[Any, Any]]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.buffers_k[0].shape[0] if self.buffers_k else 0

    @property
    def capacity(self) -> int:
        return self.buffers_k[0].shape[2] if self.buffers_k else 0

    def grow(self, backend: OnnxBackend, count: int, capacity: int, held: int) -> None:
        """Room for `count` rows of `capacity` positions, the first `held` kept."""
        kept = min(held, self.capacity)
        for buffers in (self.buffers_k, self.buffers_v):
            for layer in range(backend._layers):
                new = np.zeros((count, backend._kv_heads, capacity, backend._head_dim), dtype=backend._kv_dtype)
                if layer < len(buffers):
                    old = buffers[layer]
                    new[: old.shape[0], :, :kept] = old[:, :, :kept]
                    # A new row's prefix is another row's: every row holds the same one.
                    new[old.shape[0] :, :, :kept] = old[:1, :, :kept]
                    buffers[layer] = new
                else:
                    buffers.append(new)
        self.paths = [[] for _ in range(count)]
        self._bound = {}

    def forget_paths(self) -> None:
        self.paths = [[] for _ in range(self.count)]

    def bound(self, count: int) -> list[tuple[Any, Any]]:
        """onnxruntime views of the first `count` rows (no copies: it writes into them)."""
        if count not in self._bound:
            from onnxruntime import OrtValue

            self._bound[count] = [
                (OrtValue.ortvalue_from_numpy(k[:count]), OrtValue.ortvalue_from_numpy(v[:count]))
                for k, v in zip(self.buffers_k, self.buffers_v, strict=True)
            ]
        return self._bound[count]


@dataclass
class OnnxBatch:
    # Rows run one after another: the exported attention takes right-aligned rows only, and a
    # batch job is not the keystroke path (the torch backend batches them for throughput).
    caches: list[OnnxCache] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.caches)


def providers_for(device: str) -> tuple[list[Any], str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(
                "device is cuda but this onnxruntime has no CUDA execution provider: "
                "pip install onnxruntime-gpu (instead of onnxruntime)"
            )
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"], device
    if device not in ("cpu", "auto"):
        raise RuntimeError(f"the onnxruntime backend runs on 'cpu' or 'cuda', not {device!r}")
    return ["CPUExecutionProvider"], "cpu"


class OnnxBackend(HfTokens):
    def __init__(
        self,
        session: Any,
        tokenizer: Any,
        config: dict[str, Any],
        name: str,
        device: str,
        precision: str = "unknown",
    ) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self._special = dict(tokenizer.get_added_vocab())
        names = {i.name for i in session.get_inputs()}
        self._layers = sum(1 for n in names if n.startswith("past_key_values.") and n.endswith(".key"))
        self._keep = KEEP_INPUT in names
        past = next(i for i in session.get_inputs() if i.name == "past_key_values.0.key")
        self._kv_heads = int(config.get("num_key_value_heads") or config["num_attention_heads"])
        self._head_dim = int(
            config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        )
        self._kv_dtype = np.float16 if "float16" in past.type else np.float32
        self._outputs = [o.name for o in session.get_outputs()]
        self._signal: CancelSignal | None = None
        self._running: Any = None  # the RunOptions of the forward in progress
        self._tree_rows: _TreeRows | None = None  # token-tree levels run here (forward_tree)
        self.info = ModelInfo(
            name=name,
            model_type=str(config.get("model_type", "")),
            device=device,
            dtype=f"onnx-{precision}",
            vocab_size=int(config["vocab_size"]),
            eos_token_ids=frozenset(_eos_ids(config, tokenizer)),
            max_context=int(config.get("max_position_embeddings", 32768)),
            # Float exports differ between a k-token pass and k one-token passes by float noise
            # only; int8/int4 ones quantize activations (MatMulNBits accuracy level 4) along
            # other paths for one row and for several, up to ~0.3 apart in the logits.
            exact_multi_token=precision in ("fp32", "fp16"),
        )

    @classmethod
    def load(cls, path: Path, name: str, device: str = "auto", threads: int | None = None) -> OnnxBackend:
        import onnxruntime as ort
        from transformers import AutoTokenizer

        started = time.perf_counter()
        providers, device = providers_for(device)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or _physical_cores()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path / "model.onnx"), options, providers=providers)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        marker = _read_marker(path) or {}
        backend = cls(session, tokenizer, config, name, device, str(marker.get("precision", "unknown")))
        log.info(
            "loaded %s (onnxruntime, %s) on %s in %.1fs",
            name,
            backend.info.dtype,
            device,
            time.perf_counter() - started,
        )
        return backend

    # --- stopping part-way ------------------------------------------------------------------

    @contextmanager
    def stop_on(self, signal: CancelSignal) -> Iterator[None]:
        """In-place forwards stop part-way (Interrupted) once `signal` is cancelled:
        onnxruntime checks a run's terminate flag between nodes."""
        self._signal = signal
        remove = signal.on_cancel(self._terminate)
        try:
            yield
        finally:
            remove()
            self._signal = None

    def _terminate(self) -> None:
        running = self._running
        if running is not None:
            running.terminate = True

    def _run_options(self) -> Any:
        """Fresh options for the next run, made current before `signal` is looked at: a cancel
        then either is seen here or finds these options (it sets the signal first)."""
        from onnxruntime import RunOptions

        options = RunOptions()
        self._running = options
        signal = self._signal
        if signal is not None and signal.cancelled:
            raise Interrupted
        return options

    # --- one sequence ----------------------------------------------------------------------

    def _empty(self, rows: int = 1, length: int = 0) -> list[np.ndarray]:
        shape = (rows, self._kv_heads, length, self._head_dim)
        return [np.zeros(shape, dtype=self._kv_dtype) for _ in range(self._layers)]

    def new_cache(self) -> OnnxCache:
        return OnnxCache(self._empty(length=0), self._empty(length=0))

    def reserve(self, cache: OnnxCache, length: int) -> None:
        """Room for `length` tokens in the cache's buffers (grown by doubling, kept on
        truncation: a document's prompt grows and shrinks by a few tokens per keystroke)."""
        if length <= cache.capacity:
            return
        capacity = max(length, 2 * cache.capacity, _MIN_CAPACITY)
        capacity = -(-capacity // _MIN_CAPACITY) * _MIN_CAPACITY
        held = len(cache.tokens)
        for buffers in (cache.buffers_k, cache.buffers_v):
            for index, old in enumerate(buffers):
                new = np.zeros((1, self._kv_heads, capacity, self._head_dim), dtype=self._kv_dtype)
                new[:, :, :held] = old[:, :, :held]
                buffers[index] = new
        cache.bound = []

    def _bound(self, cache: OnnxCache) -> list[tuple[Any, Any]]:
        if not cache.bound:
            from onnxruntime import OrtValue

            # Views of the numpy buffers, not copies: what onnxruntime writes, the arrays hold.
            cache.bound = [
                (OrtValue.ortvalue_from_numpy(k), OrtValue.ortvalue_from_numpy(v))
                for k, v in zip(cache.buffers_k, cache.buffers_v, strict=True)
            ]
        return cache.bound

    def _run_in_place(self, cache: OnnxCache, tokens: Sequence[int], keep: int) -> np.ndarray:
        """Run `tokens` after the cache, writing their keys and values into its buffers."""
        held = len(cache.tokens)
        self.reserve(cache, held + len(tokens))
        # Keys written in place past the cache's tokens by a run that fails are never read:
        # the next run overwrites them.
        ids = np.array([list(tokens)], dtype=np.int64)
        return self._run_bound(ids, held + len(tokens), keep, self._bound(cache))[0]

    def _run_bound(
        self, ids: np.ndarray, length: int, keep: int, bound: list[tuple[Any, Any]]
    ) -> np.ndarray:
        """Run `ids` (rows, new tokens) over key/value buffers bound in place (`bound`, per
        layer, as wide as the rows), each row attending to `length` positions, the new ones
        included: the last `keep` positions' logits, per row."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", np.ones((ids.shape[0], length), dtype=np.int64))
        if self._keep:
            binding.bind_cpu_input(KEEP_INPUT, np.array([keep], dtype=np.int64))
        for layer, (k, v) in enumerate(bound):
            binding.bind_ortvalue_input(f"past_key_values.{layer}.key", k)
            binding.bind_ortvalue_input(f"past_key_values.{layer}.value", v)
            binding.bind_ortvalue_output(f"present.{layer}.key", k)
            binding.bind_ortvalue_output(f"present.{layer}.value", v)
        binding.bind_output("logits")
        options = None
        try:
            options = self._run_options()
            self.session.run_with_iobinding(binding, options)
        except Exception:
            if options is not None and options.terminate:
                raise Interrupted from None
            raise
        finally:
            self._running = None
        logits = binding.get_outputs()[-1].numpy()
        if logits.dtype != np.float32:
            logits = logits.astype(np.float32)
        return logits[:, -keep:]

    def _run(
        self,
        ids: np.ndarray,
        keys: Sequence[np.ndarray],
        values: Sequence[np.ndarray],
        keep: int,
    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        rows, count = ids.shape
        past = keys[0].shape[2]
        feed: dict[str, np.ndarray] = {
            "input_ids": ids.astype(np.int64, copy=False),
            "attention_mask": np.ones((rows, past + count), dtype=np.int64),
        }
        if self._keep:
            feed[KEEP_INPUT] = np.array([keep], dtype=np.int64)
        for layer in range(self._layers):
            feed[f"past_key_values.{layer}.key"] = keys[layer]
            feed[f"past_key_values.{layer}.value"] = values[layer]
        out = dict(zip(self._outputs, self.session.run(None, feed), strict=True))
        logits = out["logits"]
        if logits.dtype != np.float32:
            logits = logits.astype(np.float32)
        new_keys = [out[f"present.{layer}.key"] for layer in range(self._layers)]
        new_values = [out[f"present.{layer}.value"] for layer in range(self._layers)]
        return logits[:, -keep:], new_keys, new_values

    def forward(self, cache: OnnxCache, tokens: Sequence[int], every: bool = False) -> np.ndarray:
        if not tokens:
            raise ValueError("forward needs at least one new token")
        cache.tree.clear()
        logits = self._run_in_place(cache, tokens, len(tokens) if every else 1)
        cache.tokens.extend(int(t) for t in tokens)
        return logits if every else logits[-1]

    def truncate(self, cache: OnnxCache, length: int) -> None:
        cache.tree.clear()
        # What lies past the new length is overwritten by the next tokens, never read.
        del cache.tokens[max(length, 0) :]
        cache.synced = min(cache.synced, len(cache.tokens))

    # --- token trees -------------------------------------------------------------------------

    def forward_tree(
        self, cache: OnnxCache, tokens: Sequence[int], parents: Sequence[int]
    ) -> np.ndarray:
        if not tokens or len(tokens) != len(parents):
            raise ValueError(f"{len(tokens)} tree tokens with {len(parents)} parents")
        if not cache.tokens:
            raise ValueError("a token tree needs at least one cached token to hang from")
        tree = cache.tree
        first = len(tree)
        if not first and self._tree_rows is not None:
            self._tree_rows.forget_paths()  # a new tree: the rows' node numbers are stale
        for token, parent in zip(tokens, parents, strict=True):
            if not -1 <= parent < len(tree):
                raise ValueError(f"parent {parent} is not an earlier node of the tree")
            depth = 0 if parent < 0 else tree[parent].depth + 1
            tree.append(_Node(int(token), parent, depth))
        out = np.empty((len(tokens), self.info.vocab_size), dtype=np.float32)
        new = list(range(first, len(tree)))
        # A node's parent is computed before it: nodes of one depth run together, as rows.
        for depth in sorted({tree[i].depth for i in new}):
            level = [i for i in new if tree[i].depth == depth]
            logits = self._run_level(cache, level, depth)
            for row, index in enumerate(level):
                out[index - first] = logits[row]
        return out

    def _run_level(self, cache: OnnxCache, level: list[int], depth: int) -> np.ndarray:
        """One depth of the tree as rows of one batch, in place in the tree rows' buffers:
        row r holds the cache's prefix, then the path to level[r]'s parent."""
        rows = self._tree_rows_for(cache, len(level), depth + 1)
        tree, held = cache.tree, len(cache.tokens)
        paths = [self._path(tree, index) for index in level]
        for row, path in enumerate(paths):
            if rows.paths[row][: len(path)] != path:
                # Another branch's path was in this row (beams reorder): its few positions
                # are rewritten from the nodes' own slices; the prefix is shared.
                for layer in range(self._layers):
                    for n, node in enumerate(path):
                        rows.buffers_k[layer][row, :, held + n] = tree[node].keys[layer][:, 0]
                        rows.buffers_v[layer][row, :, held + n] = tree[node].values[layer][:, 0]
                rows.paths[row] = path
        ids = np.array([[tree[i].token] for i in level], dtype=np.int64)
        try:
            logits = self._run_bound(ids, held + depth + 1, 1, rows.bound(len(level)))
        except Exception:
            rows.forget_paths()  # rows part-way written: their tree positions are rewritten
            raise
        position = held + depth
        for row, index in enumerate(level):
            rows.paths[row] = [*paths[row], index]
            node = tree[index]
            node.keys = [b[row, :, position : position + 1].copy() for b in rows.buffers_k]
            node.values = [b[row, :, position : position + 1].copy() for b in rows.buffers_v]
        return logits[:, -1]

    def _tree_rows_for(self, cache: OnnxCache, count: int, depth: int) -> _TreeRows:
        """The backend's tree rows, holding `cache`'s prefix in at least `count` rows with room
        for `depth` tree positions after it. The prefix is copied in once per cache and then
        only from where the cache was rewritten since (a later pause of the same decoding adds
        a few tokens): copying a 1.5k-token prompt's keys into every row at every depth cost an
        AdaDec pause more than its forwards."""
        held = len(cache.tokens)
        rows = self._tree_rows
        if rows is None or rows.owner() is not cache:
            # Rows for a cache that is gone are only memory (a prompt's keys, once per row).
            rows = self._tree_rows = _TreeRows(weakref.ref(cache, self._owner_gone))
            cache.synced = 0
        if rows.count < count or rows.capacity < held + depth:
            capacity = -(-(held + depth) // _MIN_CAPACITY) * _MIN_CAPACITY
            rows.grow(self, max(count, rows.count), max(capacity, rows.capacity), held)
        start = min(cache.synced, held)
        if start < held:
            for layer in range(self._layers):
                rows.buffers_k[layer][:, :, start:held] = cache.buffers_k[layer][0, :, start:held]
                rows.buffers_v[layer][:, :, start:held] = cache.buffers_v[layer][0, :, start:held]
        cache.synced = held
        return rows

    def _owner_gone(self, owner: weakref.ref[OnnxCache]) -> None:
        rows = self._tree_rows
        if rows is not None and rows.owner is owner:
            self._tree_rows = None

    def release_memory(self) -> None:
        """Drop what the backend keeps beside the caches (the engine dropped them all)."""
        self._tree_rows = None

    @staticmethod
    def _path(tree: list[_Node], index: int) -> list[int]:
        """The ancestors of node `index`, root side first, itself excluded."""
        path = []
        node = tree[index].parent
        while node >= 0:
            path.append(node)
            node = tree[node].parent
        return path[::-1]

    # --- batches -------------------------------------------------------------------------------

    def new_batch(self) -> OnnxBatch:
        return OnnxBatch()

    def add_rows(self, batch: OnnxBatch, prompts: Sequence[Sequence[int]], chunk: int = 256) -> np.ndarray:
        return add_rows_one_by_one(self, batch, prompts, chunk)

    def forward_batch(self, batch: OnnxBatch, tokens: Sequence[int]) -> np.ndarray:
        if len(tokens) != batch.rows or not tokens:
            raise ValueError(f"{len(tokens)} tokens for a batch of {batch.rows} rows")
        return np.stack([self.forward(c, [t]) for c, t in zip(batch.caches, tokens, strict=True)])

    def keep_rows(self, batch: OnnxBatch, rows: Sequence[int]) -> None:
        batch.caches = [batch.caches[i] for i in rows]

    # --- scoring --------------------------------------------------------------------------------

    def token_logprobs(
        self,
        sequences: Sequence[Sequence[int]],
        starts: Sequence[int],
        should_stop: Callable[[], bool] | None = None,
        chunk: int = 128,
    ) -> list[np.ndarray]:
        return [s[:, 0] for s in self._scored(sequences, starts, should_stop, chunk, stats=False)]

    def token_stats(self, sequences: Sequence[Sequence[int]], starts: Sequence[int]) -> list[TokenStats]:
        scored = self._scored(sequences, starts, None, 128, stats=True)
        return [TokenStats.from_rows(s) for s in scored]

    def _scored(
        self,
        sequences: Sequence[Sequence[int]],
        starts: Sequence[int],
        should_stop: Callable[[], bool] | None,
        chunk: int,
        *,
        stats: bool,
    ) -> list[np.ndarray]:
        from nextab.models.torch_backend import check_scoring_args

        check_scoring_args(sequences, starts)
        results = []
        for seq, start in zip(sequences, starts, strict=True):
            cache = self.new_cache()
            rows: list[np.ndarray] = []
            for begin in range(0, len(seq) - 1, chunk):
                if (begin or rows) and should_stop is not None and should_stop():
                    raise Interrupted
                end = min(begin + chunk, len(seq) - 1)
                logits = self.forward(cache, seq[begin:end], every=True)
                # Position p predicts token p + 1; only those from `start` on are scored.
                lo = max(begin, start - 1)
                if lo >= end:
                    continue
                part = logits[lo - begin :]
                targets = np.array(seq[lo + 1 : end + 1])
                rows.append(_score_rows(part, targets, stats))
            width = 4 if stats else 1
            results.append(np.concatenate(rows) if rows else np.zeros((0, width), np.float32))
        return results


def add_rows_one_by_one(
    backend: Any, batch: OnnxBatch, prompts: Sequence[Sequence[int]], chunk: int
) -> np.ndarray:
    """Pre-fill each prompt into a cache of its own, through `backend.forward`, as a new row."""
    if not prompts or any(not prompt for prompt in prompts):
        raise ValueError("add_rows needs at least one token in every prompt")
    logits = []
    for prompt in prompts:
        cache = backend.new_cache()
        for start in range(0, len(prompt), chunk):
            last = backend.forward(cache, prompt[start : start + chunk])
        batch.caches.append(cache)
        logits.append(last)
    return np.stack(logits)


def _score_rows(logits: np.ndarray, targets: np.ndarray, stats: bool) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    picked = logprobs[np.arange(len(targets)), targets]
    if not stats:
        return picked[:, None].astype(np.float32)
    entropy = -(np.exp(logprobs) * logprobs).sum(-1)
    argmax = logprobs.argmax(-1)
    top1 = (argmax == targets).astype(np.float32)
    return np.stack([picked, entropy, top1, argmax], axis=1).astype(np.float32)


def _physical_cores() -> int:
    # onnxruntime's own default spins one thread per logical core, which on a 2-core machine
    # with hyper-threads or busy neighbours costs more than it gains.
    count = os.cpu_count() or 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return count


def _eos_ids(config: dict[str, Any], tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    value = config.get("eos_token_id")
    if isinstance(value, int):
        ids.add(value)
    elif isinstance(value, list):
        ids.update(int(v) for v in value)
    generation = Path(getattr(tokenizer, "name_or_path", "")) / "generation_config.json"
    if generation.is_file():
        extra = json.loads(generation.read_text(encoding="utf-8")).get("eos_token_id")
        if isinstance(extra, int):
            ids.add(extra)
        elif isinstance(extra, list):
            ids.update(int(v) for v in extra)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
