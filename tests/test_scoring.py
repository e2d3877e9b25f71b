"""Backend.token_logprobs and BackendScorer on the tiny random-weight Qwen2 model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nextab.models.backend import Interrupted
from nextab.models.scoring import BackendScorer

CODE = "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(i)\n"


def stepwise_logprobs(backend, ids: list[int], start: int) -> np.ndarray:
    """The reference: one forward call per token through the decoding cache."""
    cache = backend.new_cache()
    logits = backend.forward(cache, ids[:start])
    out = []
    for token in ids[start:]:
        out.append(torch.from_numpy(logits).log_softmax(-1)[token].item())
        logits = backend.forward(cache, [token])
    return np.array(out, dtype=np.float32)


def test_batched_logprobs_equal_stepwise_forward(tiny_backend) -> None:
    sequences = [
        tiny_backend.tokenize(CODE * 2),
        tiny_backend.tokenize("class Point:\n    pass\n"),
        tiny_backend.tokenize("import os\n"),
    ]
    starts = [1, 4, 2]
    batched = tiny_backend.token_logprobs(sequences, starts)
    for seq, start, got in zip(sequences, starts, batched, strict=True):
        assert got.dtype == np.float32
        assert got.shape == (len(seq) - start,)
        np.testing.assert_allclose(got, stepwise_logprobs(tiny_backend, seq, start), atol=1e-4)
        assert (got <= 0).all()


def test_padding_and_chunking_do_not_change_results(tiny_backend) -> None:
    short = tiny_backend.tokenize("for i in range(10):\n")
    long = tiny_backend.tokenize(CODE * 3)
    alone = tiny_backend.token_logprobs([short], [1])[0]
    beside_longer = tiny_backend.token_logprobs([long, short], [1, 1])
    np.testing.assert_allclose(beside_longer[1], alone, atol=1e-5)
    chunked = tiny_backend.token_logprobs([long, short], [1, 1], chunk=7, head_rows=5)
    for a, b in zip(chunked, beside_longer, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_scoring_leaves_decoding_caches_alone(tiny_backend) -> None:
    ids = tiny_backend.tokenize(CODE)
    cache = tiny_backend.new_cache()
    tiny_backend.forward(cache, ids[:5])
    tiny_backend.token_logprobs([ids], [1])
    assert list(cache.tokens) == ids[:5]
    after = tiny_backend.forward(cache, ids[5:8])
    control = tiny_backend.new_cache()
    tiny_backend.forward(control, ids[:5])
    np.testing.assert_allclose(after, tiny_backend.forward(control, ids[5:8]), atol=1e-5)


def test_scoring_rejects_bad_starts(tiny_backend) -> None:
    ids = tiny_backend.tokenize(CODE)
    with pytest.raises(ValueError):
        tiny_backend.token_logprobs([ids], [0])
    with pytest.raises(ValueError):
        tiny_backend.token_logprobs([ids], [len(ids) + 1])
    with pytest.raises(ValueError):
        tiny_backend.token_logprobs([ids, ids], [1])
    assert tiny_backend.token_logprobs([], []) == []
    assert tiny_backend.token_logprobs([ids], [len(ids)])[0].shape == (0,)


def test_nll_is_the_mean_negative_logprob_after_document_start(tiny_backend) -> None:
    scorer = BackendScorer(tiny_backend)
    eos = tiny_backend.special_token_id("<|endoftext|>")
    context, target = "import os", "for i in range(10):\n    print(i)\n"
    ids = [eos, *tiny_backend.tokenize(context + "\n\n")]
    start = len(ids)
    ids += tiny_backend.tokenize(target)
    expected = -stepwise_logprobs(tiny_backend, ids, start).mean()
    assert scorer.nll(target, context) == pytest.approx(expected, abs=1e-4)
    unconditioned = -stepwise_logprobs(tiny_backend, [eos, *tiny_backend.tokenize(target)], 1)
    assert scorer.nll(target) == pytest.approx(unconditioned.mean(), abs=1e-4)
    assert scorer.nll_batch([(target, context), (target, "")]) == pytest.approx(
        [expected, unconditioned.mean()], abs=1e-4
    )
    assert math.isnan(scorer.nll("", context))


def test_line_nlls_follow_lines_and_skip_blank_ones(tiny_backend) -> None:
    scorer = BackendScorer(tiny_backend, batch_size=2)
    values = scorer.line_nlls(CODE)
    assert len(values) == len(CODE.splitlines())
    blank = CODE.splitlines().index("")
    assert math.isnan(values[blank])
    assert all(v > 0 for i, v in enumerate(values) if i != blank)
    # A single line's mean is the text's mean, and batching does not change it.
    line = "for i in range(10):"
    assert scorer.line_nlls(line) == pytest.approx([scorer.nll(line)], abs=1e-5)
    batched = scorer.line_nll_batch([(CODE, ""), (line, "import os"), (CODE, "import os")])
    assert batched[0] == pytest.approx(values, abs=1e-5, nan_ok=True)
    assert batched[1] == pytest.approx([scorer.nll(line, "import os")], abs=1e-5)
    # The context reaches the scores.
    assert batched[2] != pytest.approx(values, abs=1e-6, nan_ok=True)


def test_line_weights_rebuild_the_text_nll(tiny_backend) -> None:
    """Token-weighted line means give back the whole text's mean: no token is lost or doubled."""
    scorer = BackendScorer(tiny_backend)
    text = "x = 1\ny = [1, 2, 3]\nprint(x, y)\n"
    per_line = scorer.line_nlls(text)
    counts = [0] * len(per_line)
    line = 0
    for token in tiny_backend.tokenize(text):
        counts[line] += 1
        line += tiny_backend.detokenize([token]).count("\n")
    total = sum(v * n for v, n in zip(per_line, counts, strict=True)) / sum(counts)
    assert total == pytest.approx(scorer.nll(text), abs=1e-5)


def test_count_tokens_matches_the_tokenizer(tiny_backend) -> None:
    scorer = BackendScorer(tiny_backend)
    assert scorer.count_tokens(CODE) == len(tiny_backend.tokenize(CODE))
    assert scorer.count_tokens("") == 0


def test_a_long_scoring_call_stops_between_pieces_when_asked(tiny_backend) -> None:
    ids = tiny_backend.tokenize(CODE * 3)
    asked: list[int] = []

    def stop_after_two_pieces() -> bool:
        asked.append(1)
        return len(asked) >= 2

    with pytest.raises(Interrupted):
        tiny_backend.token_logprobs([ids], [1], stop_after_two_pieces, chunk=8)
    assert len(asked) == 2  # asked before the second and the third piece, not inside one
    # Work that fits in one piece is never interrupted: there is no "between".
    short = ids[:8]
    assert tiny_backend.token_logprobs([short], [1], lambda: True, chunk=8)[0].shape == (7,)


def test_the_engine_s_scorer_gives_the_model_up_to_a_waiting_completion(tiny_backend) -> None:
    from nextab.config import Config, ContextConfig
    from nextab.context.compress import CompressionCancelled
    from nextab.engine import Engine

    engine = Engine(Config(context=ContextConfig(index=False, watch=False)), tiny_backend)
    workspace = engine.open_workspace(".", store_dir=None, start=False)
    try:
        scorer = workspace.compressor.scorer
        assert scorer.nll_batch([(CODE * 8, "")])[0] > 0
        engine._waiting = 1  # a completion is queued for the model lock
        with pytest.raises(CompressionCancelled):
            scorer.nll_batch([(CODE * 8, "")])
    finally:
        engine._waiting = 0
        engine.close_workspace()


def test_token_stats_agree_with_full_distributions(tiny_backend) -> None:
    from nextab.models.decoding import entropy

    sequence = tiny_backend.tokenize(CODE)
    (stats,) = tiny_backend.token_stats([sequence], [3])
    np.testing.assert_allclose(stats.logprobs, tiny_backend.token_logprobs([sequence], [3])[0], atol=1e-5)
    with torch.inference_mode():
        logits = tiny_backend.model(torch.tensor([sequence])).logits[0].float().numpy()
    for i, position in enumerate(range(2, len(sequence) - 1)):
        assert stats.entropies[i] == pytest.approx(entropy(logits[position]), abs=1e-3)
        assert bool(stats.greedy[i]) == (int(np.argmax(logits[position])) == sequence[position + 1])
