"""The onnxruntime backend against the torch backend, on a tiny model exported by the real
model builder (fp32 here, so that the two must agree to float tolerance; int4 agreement with the
real model is measured in tests/test_real_model.py and benchmarks/onnx_agreement.py)."""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.tiny import ONNX_SHAPE, build_model_dir

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_genai")

PROMPTS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n",
    "for i in range(10):\n    print(i)\nimport os\n",
    "function f(x) { return x * 2; }\nconst y = [1, 2, 3].map(f);\n",
    "import sys\n\nif __name__ == '__main__':\n",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    from nextab.models.onnx_backend import OnnxBackend
    from nextab.models.onnx_export import export_model
    from nextab.models.resolve import resolve_model
    from nextab.models.torch_backend import TorchBackend

    root = tmp_path_factory.mktemp("onnx")
    before = os.environ.get("NEXTAB_CACHE_DIR")
    os.environ["NEXTAB_CACHE_DIR"] = str(root / "cache")
    try:
        source = build_model_dir(root / "model", seed=3, **ONNX_SHAPE)
        resolved = resolve_model(str(source), progress=False)
        exported = export_model(resolved, "fp32", "cpu", progress=False)
        onnx = OnnxBackend.load(exported.path, "tiny-onnx", "cpu")
        torch_backend = TorchBackend.load(source, "tiny-torch", "cpu", "float32")
        yield onnx, torch_backend, resolved, exported
    finally:
        if before is None:
            os.environ.pop("NEXTAB_CACHE_DIR", None)
        else:
            os.environ["NEXTAB_CACHE_DIR"] = before


def test_export_is_cached_and_marked(models) -> None:
    from nextab.models.onnx_export import KEEP_INPUT, export_model

    onnx, _, resolved, exported = models
    stamp = (exported.path / "model.onnx").stat().st_mtime_ns
    again = export_model(resolved, "fp32", "cpu", progress=False)
    assert again.path == exported.path
    assert (exported.path / "model.onnx").stat().st_mtime_ns == stamp  # not rebuilt
    assert KEEP_INPUT in {i.name for i in onnx.session.get_inputs()}
    assert onnx.info.dtype == "onnx-fp32"


def test_forward_matches_torch(models) -> None:
    onnx, torch_backend, *_ = models
    for prompt in PROMPTS:
        ids = torch_backend.tokenize(prompt)
        assert onnx.tokenize(prompt) == ids
        a, b = onnx.new_cache(), torch_backend.new_cache()
        np.testing.assert_allclose(onnx.forward(a, ids), torch_backend.forward(b, ids), atol=1e-4)
        # Several positions at once (what checking a draft asks for), after a cached prefix.
        extra = ids[:4]
        every_a = onnx.forward(a, extra, every=True)
        every_b = torch_backend.forward(b, extra, every=True)
        assert every_a.shape == (len(extra), onnx.info.vocab_size)
        np.testing.assert_allclose(every_a, every_b, atol=1e-4)
        assert a.tokens == b.tokens


def test_truncate_then_forward_equals_a_fresh_run(models) -> None:
    onnx, *_ = models
    ids = onnx.tokenize(PROMPTS[1])
    cache = onnx.new_cache()
    onnx.forward(cache, ids)
    onnx.truncate(cache, 7)
    assert cache.tokens == ids[:7]
    resumed = onnx.forward(cache, ids[7:])
    fresh = onnx.forward(onnx.new_cache(), ids)
    np.testing.assert_allclose(resumed, fresh, atol=1e-5)
    onnx.truncate(cache, 0)
    assert cache.tokens == [] and cache.keys[0].shape[2] == 0
    # The buffers outlive truncation: a keystroke's few tokens are written in place.
    capacity = cache.capacity
    again = onnx.forward(cache, ids)
    np.testing.assert_allclose(again, fresh, atol=1e-5)
    assert cache.capacity == capacity


def test_the_cache_grows_past_its_first_capacity(models) -> None:
    onnx, torch_backend, *_ = models
    ids = (onnx.tokenize(" ".join(PROMPTS)) * 12)[:600]
    cache, ref = onnx.new_cache(), torch_backend.new_cache()
    for start in range(0, len(ids), 100):  # past 256 and 512: two regrowths
        got = onnx.forward(cache, ids[start : start + 100])
        want = torch_backend.forward(ref, ids[start : start + 100])
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert cache.capacity >= 600 and len(cache.tokens) == 600


def test_tree_nodes_equal_their_paths_run_alone(models) -> None:
    onnx, torch_backend, *_ = models
    ids = onnx.tokenize(PROMPTS[2])
    cache = onnx.new_cache()
    onnx.forward(cache, ids)
    # Three roots, then a child under two of them and a grandchild: rows of different depths.
    first = onnx.forward_tree(cache, [5, 9, 11], [-1, -1, -1])
    second = onnx.forward_tree(cache, [20, 21, 22], [0, 2, 3])
    assert cache.tree_size == 6 and cache.tokens == ids
    expected = {0: [5], 1: [9], 2: [11], 3: [5, 20], 4: [11, 21], 5: [5, 20, 22]}
    got = np.concatenate([first, second])
    ref_cache = torch_backend.new_cache()
    torch_backend.forward(ref_cache, ids)
    for node, path in expected.items():
        alone = onnx.new_cache()
        want = onnx.forward(alone, [*ids, *path])
        np.testing.assert_allclose(got[node], want, atol=1e-4)
    # The torch backend's tree gives the same logits too.
    torch_first = torch_backend.forward_tree(ref_cache, [5, 9, 11], [-1, -1, -1])
    np.testing.assert_allclose(first, torch_first, atol=1e-4)
    # A plain forward drops the tree.
    onnx.forward(cache, [7])
    assert cache.tree_size == 0 and cache.tokens == [*ids, 7]


def test_trees_stay_exact_as_the_prefix_changes_and_caches_alternate(models) -> None:
    # The rows a tree runs in hold a copy of the cache's prefix, refreshed only from where the
    # cache changed: after tokens are added, after a truncation and rewrite, for another cache.
    onnx, *_ = models
    ids = onnx.tokenize(PROMPTS[2])
    cache, other = onnx.new_cache(), onnx.new_cache()
    onnx.forward(cache, ids)
    onnx.forward(other, ids[:-3])

    def check(c, tokens, got, paths) -> None:
        for row, path in zip(got, paths, strict=True):
            want = onnx.forward(onnx.new_cache(), [*tokens, *path])
            np.testing.assert_allclose(row, want, atol=1e-4)

    # One root, then three children: more rows than the first level had.
    root = onnx.forward_tree(cache, [5], [-1])
    kids = onnx.forward_tree(cache, [6, 7, 8], [0, 0, 0])
    check(cache, ids, [*root, *kids], [[5], [5, 6], [5, 7], [5, 8]])
    onnx.forward(cache, [9, 10])  # the tree goes, the prefix grows
    got = onnx.forward_tree(cache, [11, 12], [-1, -1])
    check(cache, [*ids, 9, 10], got, [[11], [12]])
    onnx.truncate(cache, len(ids) - 4)  # rewritten below its end
    onnx.forward(cache, [13, 14, 15])
    tokens = [*ids[:-4], 13, 14, 15]
    got = onnx.forward_tree(cache, [16, 17, 18], [-1, -1, -1])
    deeper = onnx.forward_tree(cache, [19, 20, 21], [2, 1, 0])  # each row takes another's path
    check(cache, tokens, [*got, *deeper], [[16], [17], [18], [18, 19], [17, 20], [16, 21]])
    got = onnx.forward_tree(other, [22, 23], [-1, -1])
    check(other, ids[:-3], got, [[22], [23]])
    onnx.truncate(cache, len(tokens))
    got = onnx.forward_tree(cache, [24], [-1])
    check(cache, tokens, got, [[24]])
    # The rows go with the cache they copied (a document's cache dropped frees them too).
    assert onnx._tree_rows is not None
    del cache
    gc.collect()
    assert onnx._tree_rows is None


def test_scoring_matches_torch(models) -> None:
    onnx, torch_backend, *_ = models
    sequences = [torch_backend.tokenize(p) for p in PROMPTS[:3]]
    starts = [1, 3, len(sequences[2]) - 2]
    got = onnx.token_logprobs(sequences, starts, chunk=5)
    want = torch_backend.token_logprobs(sequences, starts)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    stats = onnx.token_stats(sequences, starts)
    ref = torch_backend.token_stats(sequences, starts)
    for a, b in zip(stats, ref, strict=True):
        np.testing.assert_allclose(a.entropies, b.entropies, atol=1e-3)
        assert (a.greedy == b.greedy).all()


def test_greedy_decoding_agrees_with_torch(models) -> None:
    from nextab.models.decoding import NEVER_CANCELLED, DecodeParams, GreedyDecoder, make_decoder

    onnx, torch_backend, *_ = models
    for name in ("greedy", "adadec", "beam"):
        decoder = GreedyDecoder() if name == "greedy" else make_decoder(name, threshold=0.5, top_k=3, lookahead=3)
        for prompt in PROMPTS:
            ids = torch_backend.tokenize(prompt)
            params = DecodeParams(max_tokens=16, stop_ids=frozenset())
            a = decoder.decode(onnx, onnx.new_cache(), ids, params, NEVER_CANCELLED)
            b = decoder.decode(torch_backend, torch_backend.new_cache(), ids, params, NEVER_CANCELLED)
            assert a.tokens == b.tokens, (name, prompt)


def test_batch_rows_decode_like_single_rows(models) -> None:
    from nextab.models.batch_decoding import BatchItem, decode_batch
    from nextab.models.decoding import NEVER_CANCELLED, DecodeParams, GreedyDecoder

    onnx, *_ = models
    items = [onnx.tokenize(p) for p in PROMPTS]
    params = DecodeParams(max_tokens=12, stop_ids=frozenset())
    batch = decode_batch(onnx, [BatchItem(tuple(ids), params) for ids in items], NEVER_CANCELLED, slots=3)
    for ids, result in zip(items, batch, strict=True):
        alone = GreedyDecoder().decode(onnx, onnx.new_cache(), ids, params, NEVER_CANCELLED)
        assert result.tokens == alone.tokens


def test_logits_to_keep_is_added_once(tmp_path: Path, models) -> None:
    import onnx as onnx_lib

    from nextab.models.onnx_export import KEEP_INPUT, add_logits_to_keep

    _, _, _, exported = models
    graph = tmp_path / "model.onnx"
    model = onnx_lib.load(str(exported.path / "model.onnx"), load_external_data=False)
    onnx_lib.save(model, str(graph))
    add_logits_to_keep(graph)  # already there: unchanged
    again = onnx_lib.load(str(graph), load_external_data=False)
    assert [i.name for i in again.graph.input].count(KEEP_INPUT) == 1
    assert len(again.graph.node) == len(model.graph.node)


def test_split_backend_prefills_in_torch_and_decodes_in_onnxruntime(models) -> None:
    from nextab.models.split_backend import SplitBackend

    onnx, torch_backend, *_ = models
    split = SplitBackend(onnx, torch_backend, min_tokens=8)
    ids = torch_backend.tokenize(PROMPTS[1] + PROMPTS[0])
    assert len(ids) >= 8
    cache = split.new_cache()
    long = split.forward(cache, ids)  # torch
    ref = torch_backend.new_cache()
    np.testing.assert_allclose(long, torch_backend.forward(ref, ids), atol=1e-4)
    assert cache.keys[0].shape[2] == len(ids) and cache.tokens == ids
    # The next tokens run in onnxruntime over the cache torch wrote.
    step = split.forward(cache, [ids[0]])
    np.testing.assert_allclose(step, torch_backend.forward(ref, [ids[0]]), atol=1e-4)
    drafts = split.forward(cache, ids[:3], every=True)
    np.testing.assert_allclose(drafts, torch_backend.forward(ref, ids[:3], every=True), atol=1e-4)
    # A long piece after a cached prefix goes to torch again, over onnxruntime's arrays.
    more = split.forward(cache, ids[:9])
    np.testing.assert_allclose(more, torch_backend.forward(ref, ids[:9]), atol=1e-4)
    split.truncate(cache, 5)
    assert cache.tokens == ids[:5] and cache.keys[-1].shape[2] == 5
    assert split.info.dtype == "onnx-fp32+prefill-float32"


def test_auto_takes_torch_for_a_model_onnxruntime_cannot_run(tiny_model_dir: Path) -> None:
    from nextab.models.loading import choose_backend, load_backend
    from nextab.models.resolve import resolve_model
    from nextab.models.torch_backend import TorchBackend, cpu_has_fast_bf16

    assert choose_backend("auto", "cpu") == ("split" if cpu_has_fast_bf16() else "onnx")
    assert choose_backend("torch", "cpu") == "torch"
    assert choose_backend("auto", "cuda") == "torch"
    resolved = resolve_model(str(tiny_model_dir), progress=False)  # 8-wide heads
    assert isinstance(load_backend(resolved, backend="auto", device="cpu"), TorchBackend)
    with pytest.raises(ValueError, match="multiple of 16"):
        load_backend(resolved, backend="onnx", device="cpu")


def test_no_prompt_lookup_drafts_where_a_multi_token_pass_is_not_exact(models) -> None:
    from nextab.config import Config
    from nextab.engine import Engine
    from nextab.models.onnx_backend import OnnxBackend

    onnx, torch_backend, _, exported = models
    assert onnx.info.exact_multi_token and torch_backend.info.exact_multi_token  # fp32 both
    config = json.loads((exported.path / "config.json").read_text())
    quantized = OnnxBackend(onnx.session, onnx.tokenizer, config, "tiny-int8", "cpu", "int8")
    assert not quantized.info.exact_multi_token
    assert Engine(Config(), quantized).lookup is None
    assert Engine(Config(), onnx).lookup is not None
    assert Engine(Config(), torch_backend).lookup is not None


def test_drafted_decoding_equals_greedy_on_onnxruntime(models) -> None:
    from nextab.models.decoding import NEVER_CANCELLED, DecodeParams, GreedyDecoder
    from nextab.models.drafting import Lookup, Recycled

    onnx, *_ = models

    def decode(**extra):
        params = DecodeParams(max_tokens=24, stop_ids=frozenset(), **extra)
        return GreedyDecoder().decode(onnx, onnx.new_cache(), ids, params, NEVER_CANCELLED)

    checked = 0
    for prompt in PROMPTS:
        ids = onnx.tokenize(prompt * 3)  # repeats for prompt lookup to find
        plain = decode()
        # A rewrite's draft (what it copies), one token off in the middle; and prompt lookup.
        draft = (*plain.tokens[:6], (plain.tokens[6] + 1) % onnx.info.vocab_size, *plain.tokens[7:])
        # Lookup without the cost cut, which on this tiny model would rightly draft nothing.
        drafted, looked = decode(draft=draft), decode(lookup=Lookup(min_ngram=1, recycled=Recycled(order=4)))
        assert drafted.tokens == plain.tokens and looked.tokens == plain.tokens, prompt
        assert drafted.drafted_tokens > 0
        checked += looked.drafted_tokens
    assert checked > 0


class _CancelledBetweenCheckAndRun:
    """A cancel signal whose cancel lands right after the backend's last look at it, just
    before the run starts: only the run's terminate flag can stop that run."""

    def __init__(self) -> None:
        self.callbacks: list = []
        self.fired = False

    @property
    def cancelled(self) -> bool:
        if not self.fired:
            self.fired = True
            for callback in self.callbacks:
                callback()
            return False
        return True

    def on_cancel(self, callback):
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)


def test_a_cancel_stops_a_running_forward_and_the_cache_is_as_before(models) -> None:
    from nextab.models.backend import Interrupted

    onnx, *_ = models
    ids = onnx.tokenize(PROMPTS[1] + PROMPTS[2])
    head, tail = ids[:5], ids[5:]
    cache = onnx.new_cache()
    onnx.forward(cache, head)
    signal = _CancelledBetweenCheckAndRun()
    with onnx.stop_on(signal), pytest.raises(Interrupted):
        onnx.forward(cache, tail)
    assert signal.fired and not signal.callbacks  # removed on the way out
    assert list(cache.tokens) == head
    np.testing.assert_allclose(
        onnx.forward(cache, tail), onnx.forward(onnx.new_cache(), ids), atol=1e-5
    )


def test_prefill_cancelled_from_another_thread_leaves_a_usable_cache(models) -> None:
    import threading

    from nextab.models.decoding import Cancelled, CancelToken, prefill

    onnx, *_ = models
    ids = onnx.tokenize("".join(PROMPTS) * 6)
    expected = onnx.forward(onnx.new_cache(), ids)
    for delay in (0.0, 0.001, 0.003, 0.01):
        cache = onnx.new_cache()
        token = CancelToken()
        timer = threading.Timer(delay, token.cancel)
        timer.start()
        try:
            logits, _ = prefill(onnx, cache, ids, token, chunk=16)
        except Cancelled:
            logits = None
        timer.join()
        held = list(cache.tokens)
        assert held == ids[: len(held)]  # whole chunks only, wherever the cancel landed
        if logits is None:
            logits, reused = prefill(onnx, cache, ids, CancelToken(), chunk=16)
            assert reused == min(len(held), len(ids) - 1)
        np.testing.assert_allclose(logits, expected, atol=1e-4)
