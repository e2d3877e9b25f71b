"""models/batch_decoding.py and the torch backend's batch calls: many prompts side by side give
exactly what one-at-a-time greedy decoding gives."""

from __future__ import annotations

import numpy as np
import pytest

from nextab.models.batch_decoding import BatchItem, decode_batch
from nextab.models.decoding import (
    Cancelled,
    CancelToken,
    DecodeParams,
    GreedyDecoder,
    split_for_healing,
)

TEXTS = [
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = ",
    "for i in range(10):\n    pri",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return ",
    "import os\nimport sys\n\nif __name__ == '__main__':\n    ma",
    "y = x +",
]


@pytest.fixture(scope="module")
def lively(tiny_backend):
    """A tiny model whose greedy output varies from row to row (tests/tiny.py)."""
    from nextab.models.torch_backend import TorchBackend
    from tests.tiny import lively_model

    tokenizer = tiny_backend.tokenizer
    model = lively_model(len(tokenizer), tokenizer.eos_token_id, seed=3)
    return TorchBackend(model, tokenizer, "lively", "cpu")


def _items(backend, stop_at_newline: bool = False) -> list[BatchItem]:
    def stop(text: str) -> int | None:
        return text.index("\n") if "\n" in text else None

    items = []
    for n, text in enumerate(TEXTS):
        ids, healing = split_for_healing(backend, backend.tokenize(text))
        params = DecodeParams(
            max_tokens=4 + 3 * n,  # rows finish at different steps
            stop_ids=frozenset(backend.info.eos_token_ids),
            stop_check=stop if stop_at_newline else None,
        )
        items.append(BatchItem(tuple(ids), params, healing))
    return items


def _one_at_a_time(backend, items: list[BatchItem]) -> list[tuple[tuple[int, ...], str, str]]:
    found = []
    for item in items:
        result = GreedyDecoder().decode(
            backend, backend.new_cache(), item.prompt, item.params, CancelToken(), item.healing
        )
        found.append((result.tokens, result.text, result.stop_reason))
    return found


@pytest.mark.parametrize("stop_at_newline", [False, True])
def test_batch_matches_one_at_a_time(lively, stop_at_newline: bool) -> None:
    items = _items(lively, stop_at_newline)
    assert len({len(item.prompt) for item in items}) == len(items)  # padding is exercised
    assert sum(item.healing is not None for item in items) >= 2  # so is token healing
    batched = decode_batch(lively, items)
    expected = _one_at_a_time(lively, items)
    assert [(r.tokens, r.text, r.stop_reason) for r in batched] == expected
    assert len({r.tokens for r in batched}) > 1  # rows really differ
    for result, item in zip(batched, items, strict=True):
        assert result.prompt_tokens == len(item.prompt)
        assert 0 < len(result.tokens) <= item.params.max_tokens
    if stop_at_newline:
        assert all("\n" not in r.text for r in batched)


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_rows_join_as_others_finish(lively, slots: int) -> None:
    """Continuous batching: with fewer slots than rows, waiting rows join as others finish;
    every row still gets exactly its one-at-a-time tokens, and the batch never exceeds its
    slots."""
    items = _items(lively) * 2  # 10 rows
    widths: list[int] = []
    original = lively.forward_batch

    def spy(batch, tokens):
        widths.append(len(tokens))
        return original(batch, tokens)

    lively.forward_batch = spy
    try:
        batched = decode_batch(lively, items, slots=slots)
    finally:
        del lively.forward_batch
    assert max(widths) == slots
    assert [r.tokens for r in batched] == [t for t, _, _ in _one_at_a_time(lively, items)]
    assert all(r.prefill_ms > 0 and r.decode_ms >= 0 for r in batched)


def test_rows_of_different_lengths_side_by_side_match_single_rows(lively) -> None:
    rows = [lively.tokenize(text) for text in TEXTS]
    batch = lively.new_batch()
    first = lively.add_rows(batch, rows[:2], chunk=5)  # pre-filled in chunks
    more = lively.add_rows(batch, rows[2:])  # joining a batch that is already there
    assert batch.rows == len(rows)
    for row, got in zip(rows, [*first, *more], strict=True):
        np.testing.assert_allclose(got, lively.forward(lively.new_cache(), row), atol=1e-4)
    # Two steps, one token each, every row at its own next position.
    lively.forward_batch(batch, [row[0] for row in rows])
    step = lively.forward_batch(batch, [row[1] for row in rows])
    for row, got in zip(rows, step, strict=True):
        alone = lively.forward(lively.new_cache(), [*row, row[0], row[1]])
        np.testing.assert_allclose(got, alone, atol=1e-4)
    # The longest row leaves: the padding only it needed goes, the others go on unchanged.
    longest = max(range(len(rows)), key=lambda i: len(rows[i]))
    keep = [i for i in range(len(rows)) if i != longest]
    width = batch.mask.shape[1]
    lively.keep_rows(batch, keep)
    assert batch.mask.shape[1] < width and bool(batch.mask[:, 0].any())
    step = lively.forward_batch(batch, [rows[i][2] for i in keep])
    for i, got in zip(keep, step, strict=True):
        alone = lively.forward(lively.new_cache(), [*rows[i], rows[i][0], rows[i][1], rows[i][2]])
        np.testing.assert_allclose(got, alone, atol=1e-4)


def test_batch_arguments_are_checked(lively) -> None:
    batch = lively.new_batch()
    with pytest.raises(ValueError):
        lively.add_rows(batch, [[1, 2], []])
    lively.add_rows(batch, [[1, 2], [3]])
    with pytest.raises(ValueError):
        lively.forward_batch(batch, [1])  # the batch has two rows
    lively.keep_rows(batch, [])
    assert batch.rows == 0
    with pytest.raises(ValueError):
        decode_batch(lively, [BatchItem((), DecodeParams(4, frozenset()))])
    assert decode_batch(lively, []) == []


def test_cancel_stops_a_batch(lively) -> None:
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        decode_batch(lively, _items(lively), cancel)
