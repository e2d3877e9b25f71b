"""Memory checks before the steps that take gigabytes at once: exporting a model to onnxruntime
and loading one. Past the machine's memory the kernel's out-of-memory killer ends the process,
and in the server that is the editor's whole completion service, not just the model that did
not fit; a refusal with the figures instead leaves the rest serving (a large model that does not
fit leaves the small one decoding alone; an export that does not fit falls back to torch).

The estimates are upper bounds from what was measured, so a check refuses only what would
likely not fit. Available memory is Linux's MemAvailable (free memory plus what the kernel can
reclaim, without swap); where it cannot be read, nothing is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

# The model builder's peak resident memory over the size of the source weights: 14.5 GB
# for Qwen2.5-Coder-1.5B's 3.55 GB of bf16 safetensors (int8, 2 cores), with some margin.
EXPORT_FACTOR = 4.5
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".onnx.data", ".data")
_ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_GB = 1024**3


class NotEnoughMemory(RuntimeError):
    """A step would need more memory than the machine has available; the message says both."""


def available_bytes() -> int | None:
    """The memory the system can give without swapping, or None where it does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def weights_bytes(folder: Path) -> int:
    """The bytes of the weight files in a model directory (transformers' or an onnx export)."""
    return sum(
        f.stat().st_size
        for f in folder.iterdir()
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES)
    )


def torch_load_bytes(folder: Path, dtype_bytes: int) -> int:
    """What loading the model in torch at `dtype_bytes` per weight takes: the stored weights
    rescaled from their stored precision, plus a tenth for the runtime's own."""
    stored = _stored_element_bytes(folder)
    return int(weights_bytes(folder) * dtype_bytes / stored * 1.1)


def require(what: str, needed: int, hint: str = "") -> None:
    """Raise NotEnoughMemory if `needed` bytes are more than the system has available."""
    free = available_bytes()
    if free is None or needed <= free:
        return
    raise NotEnoughMemory(
        f"{what} needs about {needed / _GB:.1f} GB of memory and {free / _GB:.1f} GB is "
        f"available{'; ' + hint if hint else ''}"
    )


def _stored_element_bytes(folder: Path) -> int:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 2  # most published checkpoints: assume the larger rescale
    stored = config.get("torch_dtype") or config.get("dtype")
    return _ELEMENT_BYTES.get(str(stored), 2)
