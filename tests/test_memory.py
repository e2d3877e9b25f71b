"""Memory checks before an export or a load: a model that would not fit is refused with the
figures (and a large model that does not fit leaves the small one serving) instead of the
out-of-memory killer ending the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextab.config import Config
from nextab.engine import Engine
from nextab.models import memory
from nextab.models.loading import load_backend
from nextab.models.resolve import ResolvedModel


def _short_of(monkeypatch: pytest.MonkeyPatch, free: int | None) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda: free)


def test_available_memory_is_read_from_the_system() -> None:
    free = memory.available_bytes()
    # Linux (CI, the users' servers) says; elsewhere nothing is checked.
    assert free is None or 0 < free < 2**50


def test_the_torch_estimate_scales_the_stored_weights_to_the_loaded_precision(tiny_model_dir: Path) -> None:
    stored = memory.weights_bytes(tiny_model_dir)
    assert stored > 0
    # The tiny model is stored in float32 (its config says so): float32 costs its size, bf16 half.
    assert memory.torch_load_bytes(tiny_model_dir, 4) == int(stored * 1.1)
    assert memory.torch_load_bytes(tiny_model_dir, 2) == int(stored * 0.5 * 1.1)


def test_a_model_that_does_not_fit_is_refused_with_the_figures(tiny_model_dir: Path, monkeypatch) -> None:
    resolved = ResolvedModel(tiny_model_dir, "tiny-qwen", "directory")
    _short_of(monkeypatch, 1000)
    with pytest.raises(memory.NotEnoughMemory, match=r"loading tiny-qwen in torch needs about .* GB of memory"):
        load_backend(resolved, backend="torch", device="cpu", dtype="float32", progress=False)
    _short_of(monkeypatch, None)  # unknown: loaded
    assert load_backend(resolved, backend="torch", device="cpu", dtype="float32", progress=False)


def test_an_export_that_does_not_fit_is_refused_before_the_builder_runs(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from nextab.models import onnx_export

    monkeypatch.setenv("NEXTAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(onnx_export, "_run_builder", lambda *a: pytest.fail("the builder ran"))
    needed = memory.weights_bytes(tiny_model_dir) * memory.EXPORT_FACTOR
    _short_of(monkeypatch, int(needed) - 1)
    resolved = ResolvedModel(tiny_model_dir, "tiny-qwen", "directory")
    with pytest.raises(onnx_export.ExportError, match="exporting tiny-qwen to onnxruntime needs about"):
        onnx_export.export_model(resolved, "fp32", "cpu", progress=False)


def test_a_large_model_that_does_not_fit_leaves_the_small_one_serving(
    tiny_backend, tiny_model_dir: Path, monkeypatch
) -> None:
    engine = Engine(Config(decoding="speculative", backend="torch"), tiny_backend)
    _short_of(monkeypatch, 1000)
    assert engine.load_large(str(tiny_model_dir)) is None
    (notice,) = engine.take_notices()
    assert "cannot be used" in notice and "GB of memory" in notice and "decodes alone" in notice
    _short_of(monkeypatch, 2**40)
    assert engine.load_large(str(tiny_model_dir)) is not None
