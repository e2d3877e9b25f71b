"""Out of GPU memory twice in a row: the model moves to the CPU, with one message, and serves."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from nextab.context.document import Document
from nextab.engine import Engine
from nextab.models import torch_backend
from nextab.models.torch_backend import TorchBackend
from tests.test_engine import CLASSIC, SOURCE, request


class OutOfMemoryError(RuntimeError):  # torch.OutOfMemoryError, as the engine knows it: by name
    pass


class GpuBackend:
    """The tiny backend posing as one on a GPU: every forward runs out of memory (`oom_left`
    more of them, or all while on the GPU when None) until the model falls back to the CPU."""

    def __init__(
        self, backend: TorchBackend, oom_left: int | None = None, error: Exception | None = None
    ) -> None:
        self._backend = backend
        self.oom_left = oom_left
        self.error = error or OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        self.on_gpu = True
        self.fallbacks = 0
        self.forwards = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def forward(self, cache: Any, tokens: Any, every: bool = False) -> np.ndarray:
        self.forwards += 1
        if self._fails():
            raise self.error
        return self._backend.forward(cache, tokens, every)

    def _fails(self) -> bool:
        if self.oom_left is None:
            return self.on_gpu
        failing, self.oom_left = self.oom_left > 0, max(self.oom_left - 1, 0)
        return failing

    def fall_back_to_cpu(self) -> bool:
        self.fallbacks += 1
        moved, self.on_gpu = self.on_gpu, False
        return moved


class NoFallback(GpuBackend):
    """A runtime that cannot move its model (onnxruntime): no `fall_back_to_cpu` at all."""

    def __getattribute__(self, name: str) -> Any:
        if name == "fall_back_to_cpu":
            raise AttributeError(name)
        return super().__getattribute__(name)

    def __getattr__(self, name: str) -> Any:
        if name == "fall_back_to_cpu":  # not the wrapped torch backend's either
            raise AttributeError(name)
        return super().__getattr__(name)


def expected_text(backend: TorchBackend, name: str) -> str:
    return Engine(CLASSIC, backend).complete(request(Document(name, SOURCE))).text


def cpu_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING and "CPU" in r.getMessage()]


def test_out_of_memory_after_dropping_the_caches_moves_the_model_to_the_cpu(tiny_backend, caplog):
    gpu = GpuBackend(tiny_backend)
    engine = Engine(CLASSIC, gpu)
    suggestion = engine.complete(request(Document("file:///a.py", SOURCE)))
    assert suggestion.text == expected_text(tiny_backend, "file:///a.py")
    assert gpu.fallbacks == 1 and gpu.forwards > 2  # two failed tries, then the CPU's
    (warning,) = cpu_warnings(caplog)
    assert warning.levelname == "WARNING"
    said = warning.getMessage()
    assert "out of memory" in said and "slower" in said and "CUDA out of memory" in said
    assert engine.take_notices() == [said]
    assert engine.take_notices() == []
    caplog.clear()
    again = engine.complete(request(Document("file:///b.py", SOURCE)))
    assert again.text == suggestion.text
    assert gpu.fallbacks == 1 and not cpu_warnings(caplog) and engine.take_notices() == []


def test_the_move_drops_every_cache_and_out_of_memory_on_the_cpu_still_fails(tiny_backend):
    gpu = GpuBackend(tiny_backend, oom_left=0)
    engine = Engine(CLASSIC, gpu)
    other = Document("file:///other.py", SOURCE)
    engine.complete(request(other))
    assert other.kv is not None
    gpu.oom_left = 3  # the cold try and the CPU's too
    doc = Document("file:///a.py", SOURCE)
    with pytest.raises(OutOfMemoryError):
        engine.complete(request(doc))
    assert gpu.fallbacks == 1 and other.kv is None and doc.kv is None
    assert len(engine.take_notices()) == 1  # the model did move
    assert engine.complete(request(doc)).text == expected_text(tiny_backend, "file:///a.py")


@pytest.mark.parametrize("kind", [NoFallback, GpuBackend])
def test_without_a_fallback_out_of_memory_twice_fails_the_request_only(tiny_backend, kind, caplog):
    backend = kind(tiny_backend, oom_left=2)
    backend.on_gpu = False  # a GpuBackend then answers False: on the CPU already
    engine = Engine(CLASSIC, backend)
    doc = Document("file:///a.py", SOURCE)
    with pytest.raises(OutOfMemoryError):
        engine.complete(request(doc))
    assert backend.forwards == 2 and backend.fallbacks == (1 if kind is GpuBackend else 0)
    assert not cpu_warnings(caplog) and engine.take_notices() == []
    assert engine.complete(request(doc)).text == expected_text(tiny_backend, "file:///a.py")


def test_other_errors_do_not_move_the_model(tiny_backend):
    gpu = GpuBackend(tiny_backend, oom_left=1, error=RuntimeError("kernel failure"))
    engine = Engine(CLASSIC, gpu)
    with pytest.raises(RuntimeError, match="kernel failure"):
        engine.complete(request(Document("file:///a.py", SOURCE)))
    assert gpu.forwards == 1 and gpu.fallbacks == 0 and engine.take_notices() == []


def load_model(path: Path, dtype: torch.dtype) -> Any:
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True).eval()


def logits(backend: TorchBackend) -> np.ndarray:
    cache = backend.new_cache()
    ids = backend.tokenize(SOURCE)
    return np.stack([backend.forward(cache, ids), backend.forward(cache, ids[:1])])


def test_a_torch_backend_on_the_cpu_stays_as_it_is(tiny_model_dir):
    backend = TorchBackend.load(tiny_model_dir, "tiny-qwen", device="cpu", dtype="float32")
    before, info = logits(backend), backend.info
    assert backend.fall_back_to_cpu() is False
    assert backend.info == info and backend.model.dtype == torch.float32
    np.testing.assert_array_equal(logits(backend), before)


@pytest.mark.parametrize(("fast_bf16", "dtype"), [(False, torch.float32), (True, torch.bfloat16)])
def test_falling_back_turns_the_gpu_machinery_off(tiny_model_dir, monkeypatch, fast_bf16, dtype):
    """A backend made for CUDA (static caches, graph capture; fp16, which CPUs emulate) around
    a model that is really on the CPU: after the move it runs as one made for the CPU."""
    monkeypatch.setattr(torch_backend, "cpu_has_fast_bf16", lambda: fast_bf16)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    moved = TorchBackend(load_model(tiny_model_dir, torch.float16), tokenizer, "tiny-qwen", "cuda")
    assert moved.static and moved._capture is not None  # what a CPU must not use
    assert moved.fall_back_to_cpu() is True
    assert moved.device == torch.device("cpu") and not moved.static and moved._capture is None
    assert (moved.info.device, moved.info.dtype) == ("cpu", str(dtype).removeprefix("torch."))
    assert {(p.device.type, p.dtype) for p in moved.model.parameters()} == {("cpu", dtype)}
    assert isinstance(moved.new_cache().kv, DynamicCache)
    # The same weights, converted the same way, in a backend made for the CPU.
    made = TorchBackend(
        load_model(tiny_model_dir, torch.float16).to(dtype), tokenizer, "tiny-qwen", "cpu"
    )
    np.testing.assert_array_equal(logits(moved), logits(made))
    assert moved.fall_back_to_cpu() is False


async def test_the_server_shows_an_engine_notice_once_even_when_its_request_failed() -> None:
    from types import SimpleNamespace

    from nextab.config import Config
    from nextab.lsp_server.server import NextabServer
    from nextab.models.decoding import CancelToken

    class NoticeEngine:
        backend = SimpleNamespace(info=SimpleNamespace(name="m", device="cpu", dtype="float32"))

        def __init__(self) -> None:
            self.notices = ["the GPU ran out of memory: m now runs on the CPU"]

        def take_notices(self) -> list[str]:
            notices, self.notices = self.notices, []
            return notices

    server = NextabServer(Config(), engine_factory=lambda config: NoticeEngine())
    shown: list[Any] = []
    server.window_show_message = shown.append  # type: ignore[method-assign]
    server.window_log_message = lambda params: None  # type: ignore[method-assign]
    doc = Document("file:///a.py", "x = 1\n")

    def out_of_memory_on_the_cpu_too(engine: Any) -> None:
        raise MemoryError("out of memory")

    try:
        with pytest.raises(MemoryError):
            await server._on_model(doc, CancelToken(), out_of_memory_on_the_cpu_too)
        assert [p.message for p in shown] == ["nextab: the GPU ran out of memory: m now runs on the CPU"]
        assert await server._on_model(doc, CancelToken(), lambda engine: 7) == 7
        assert len(shown) == 1
    finally:
        server.model_thread.shutdown(wait=True)
