"""Which runtime serves a model, and loading it: the one place that knows every backend."""

from __future__ import annotations

import importlib.util
import logging
from typing import Literal

from nextab.models import memory
from nextab.models.backend import Backend
from nextab.models.resolve import ResolvedModel

log = logging.getLogger(__name__)

BackendName = Literal["torch", "onnx", "split"]


def onnx_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnxruntime_genai", "onnx"))


def choose_backend(requested: str, device: str) -> BackendName:
    """The runtime for `requested` ("auto", "torch", "onnx", "split") on `device` (resolved).

    "auto", by measurement (benchmarks/backend_speed.py; benchmarks/README.md, "Backends"): on a CPU the int8
    onnxruntime export decodes ~3x faster than torch's float weights and pre-fills no slower,
    and decoding is most of a keystroke's cost: "onnx". On a CPU with AMX or AVX512-BF16, where
    torch's bf16 pre-fill runs 3-4x faster than fp32, "split" (torch pre-fills, onnxruntime
    decodes). On CUDA and MPS, torch (the onnxruntime path keeps its cache in host memory).
    """
    if requested in ("torch", "onnx", "split"):
        return requested  # type: ignore[return-value]
    if device == "cpu" and onnx_available():
        from nextab.models.torch_backend import cpu_has_fast_bf16

        return "split" if cpu_has_fast_bf16() else "onnx"
    return "torch"


def load_backend(
    resolved: ResolvedModel,
    *,
    backend: str = "auto",
    device: str = "auto",
    dtype: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> Backend:
    from nextab.models.torch_backend import pick_device

    device = pick_device(device)
    kind = choose_backend(backend, device)
    if kind != "torch" and not _exportable(resolved):
        if backend != "auto":
            raise ValueError(
                f"backend {backend!r}: onnxruntime's fused attention takes attention heads a "
                f"multiple of 16 wide, which {resolved.name} does not have; use backend 'torch'"
            )
        log.info("%s: onnxruntime's fused attention does not fit this model; using torch", resolved.name)
        kind = "torch"
    if kind in ("onnx", "split") and backend == "auto":
        try:
            return _load_onnx(resolved, kind, device, dtype, precision, progress)
        except Exception as error:  # any export or load failure: the model still serves
            log.warning("onnxruntime backend unavailable for %s (%s); using torch", resolved.name, error)
            kind = "torch"
    if kind in ("onnx", "split"):
        return _load_onnx(resolved, kind, device, dtype, precision, progress)
    from nextab.models.torch_backend import TorchBackend

    _check_torch_memory(resolved, device, dtype)
    return TorchBackend.load(resolved.path, resolved.name, device, dtype)


def _check_torch_memory(resolved: ResolvedModel, device: str, dtype: str) -> None:
    # Only a CPU model lives in host memory; a GPU's own memory error is handled where it runs.
    if device != "cpu":
        return
    from nextab.models.torch_backend import pick_dtype

    itemsize = pick_dtype(dtype, device).itemsize
    needed = memory.torch_load_bytes(resolved.path, itemsize)
    memory.require(f"loading {resolved.name} in torch", needed, "use a smaller model")


def _exportable(resolved: ResolvedModel) -> bool:
    """Whether the model builder's graph can run this model: a decoder whose attention heads
    are a multiple of 16 wide (the fused attention kernel's requirement)."""
    import json

    try:
        config = json.loads((resolved.path / "config.json").read_text(encoding="utf-8"))
        heads = int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return head_dim % 16 == 0


def _load_onnx(
    resolved: ResolvedModel, kind: str, device: str, dtype: str, precision: str, progress: bool
) -> Backend:
    if not onnx_available():
        raise RuntimeError(
            "backend 'onnx' needs onnxruntime, onnxruntime-genai and onnx: pip install "
            "onnxruntime onnxruntime-genai onnx onnx-ir (onnxruntime-gpu and "
            "onnxruntime-genai-cuda on a GPU)"
        )
    from nextab.models.onnx_backend import OnnxBackend
    from nextab.models.onnx_export import export_model

    provider = "cuda" if device.startswith("cuda") else "cpu"
    exported = export_model(
        resolved, None if precision == "auto" else precision, provider, progress=progress  # type: ignore[arg-type]
    )
    if provider == "cpu":
        needed = int(memory.weights_bytes(exported.path) * 1.2)
        memory.require(f"loading {resolved.name} in onnxruntime", needed, "use a smaller model")
    decode = OnnxBackend.load(exported.path, resolved.name, device)
    if kind == "onnx":
        return decode
    from nextab.models.split_backend import SplitBackend
    from nextab.models.torch_backend import TorchBackend

    _check_torch_memory(resolved, device, dtype)
    return SplitBackend(decode, TorchBackend.load(resolved.path, resolved.name, device, dtype))
