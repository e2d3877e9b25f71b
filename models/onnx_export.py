"""`nextab model export`: a model directory turned into an onnxruntime model, once, cached.

onnxruntime-genai's model builder writes the graph (fused attention with rotary embeddings,
weight-only int4/int8 `MatMulNBits` for every linear layer and the LM head). One change is made
to what it writes: the LM head reads only the last `num_logits_to_keep` positions, because a
151k-column projection of every prompt position is a quarter of a pre-fill's work and only the
last position's logits are needed there (drafts ask for a few more).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nextab.models import memory, subprocesses
from nextab.models.resolve import (
    ResolvedModel,
    _fsync_tree,
    _is_complete,
    _locked,
    _remove_leftovers,
    _swap_in,
    _write_marker,
    cache_dir,
)
from nextab.storage import make_private_dir

log = logging.getLogger(__name__)

Precision = Literal["int4", "int8", "fp16", "fp32"]
PRECISIONS: tuple[Precision, ...] = ("int4", "int8", "fp16", "fp32")
KEEP_INPUT = "num_logits_to_keep"
# Bumped whenever what an export contains changes, so that older exports are rebuilt.
EXPORT_VERSION = "3"
# int4 as llama.cpp's Q4_K_M mixes it: k-quant blocks, with the LM head and the layers most
# sensitive to quantization (first and last eighth, every third layer's value and down
# projections) in int8. Plain round-to-nearest int4 everywhere gave the float model's completion
# on 77% of HumanEval single-line tasks and lost 16 passing ones of 150; this mix gives it on
# 85% and loses 4 (benchmarks/README.md, "Backends").
_QUANTIZATION = {"int4": ["algo_config=k_quant_mixed"]}
# What the runtime needs besides the graph: the tokenizer and the model's own config.
_SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


class ExportError(RuntimeError):
    """The model could not be exported; the message says why and what to do."""


@dataclass(frozen=True)
class Exported:
    path: Path  # holds model.onnx (+ model.onnx.data) and the tokenizer files
    precision: Precision
    provider: str  # "cpu" | "cuda"


def default_precision(provider: str) -> Precision:
    # On a CPU int8 gives the float model's greedy tokens on 148 of 150 HumanEval tasks and
    # decodes ~3x faster than torch's fp32; int4 is faster again but changes one suggestion in
    # seven. On a GPU fp16 keeps the model's own numbers and bandwidth is plentiful.
    return "int8" if provider == "cpu" else "fp16"


def export_dir(model: ResolvedModel, precision: Precision, provider: str) -> Path:
    digest = hashlib.sha256(str(model.path.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / "onnx" / f"{model.path.name}-{digest}-{precision}-{provider}"


def export_model(
    model: ResolvedModel,
    precision: Precision | None = None,
    provider: str = "cpu",
    *,
    progress: bool = True,
    force: bool = False,
    say: Callable[[str], None] | None = None,
) -> Exported:
    """The cached export of `model`, made first if it is missing or out of date."""
    if provider not in ("cpu", "cuda"):
        raise ExportError(f"onnxruntime export for {provider!r}: only 'cpu' and 'cuda' are supported")
    precision = precision or default_precision(provider)
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
    target = export_dir(model, precision, provider)
    expected = {
        "export_version": EXPORT_VERSION,
        "quantization": " ".join(_QUANTIZATION.get(precision, [])),
        "source": str(model.path.resolve()),
        "source_stamp": _source_stamp(model.path),
        "precision": precision,
        "provider": provider,
    }
    if not force and _is_complete(target, **expected):
        return Exported(target, precision, provider)
    with _locked(target.name, progress=progress):
        if not force and _is_complete(target, **expected):
            return Exported(target, precision, provider)
        _remove_leftovers(target)
        make_private_dir(target.parent)
        staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            if progress:
                (say or _say)(
                    f"exporting {model.name} to onnxruntime ({precision}, {provider}; only once, "
                    f"{'a few minutes' if precision in _QUANTIZATION else 'about a minute'})"
                )
            _check_memory(model)
            _run_builder(model.path, staging, precision, provider)
            add_logits_to_keep(staging / "model.onnx")
            for name in _SIDE_FILES:
                if (model.path / name).is_file():
                    shutil.copyfile(model.path / name, staging / name)
            _write_marker(staging, {**expected, "name": model.name})
            _fsync_tree(staging)
            _swap_in(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return Exported(target, precision, provider)


def _check_memory(model: ResolvedModel) -> None:
    needed = int(memory.weights_bytes(model.path) * memory.EXPORT_FACTOR)
    try:
        memory.require(
            f"exporting {model.name} to onnxruntime", needed,
            "use backend 'torch', or export once where there is more (the export is kept)",
        )  # fmt: skip
    except memory.NotEnoughMemory as error:
        raise ExportError(str(error)) from None


def _source_stamp(path: Path) -> str:
    """Changes when the source weights change (size and mtime of each weight file)."""
    parts = []
    for weights in sorted(path.glob("*.safetensors")):
        stat = weights.stat()
        parts.append(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _run_builder(source: Path, out: Path, precision: Precision, provider: str) -> None:
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError as error:
        raise ExportError(
            "exporting to onnxruntime needs onnxruntime-genai's model builder: "
            "pip install 'nextab[onnx]'"
        ) from error
    scratch = out.with_name(out.name + "-hf")
    command = [
        sys.executable,
        "-P",  # not the working directory (a workspace) first on the import path
        "-m",
        "onnxruntime_genai.models.builder",
        "-m",
        str(source),
        "-i",
        str(source),
        "-o",
        str(out),
        "-p",
        precision,
        "-e",
        provider,
        "-c",
        str(scratch),
    ]
    if precision in _QUANTIZATION:
        command += ["--extra_options", *_QUANTIZATION[precision]]
    # A separate process: the builder loads the whole model in torch, and its memory (gigabytes
    # for a 1.5B) is given back when it exits instead of staying in the server.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        done = subprocesses.run(command, capture_output=True, text=True, env=env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if done.returncode != 0 or not (out / "model.onnx").is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise ExportError(f"onnxruntime-genai's model builder failed on {source}:\n{tail}")


def add_logits_to_keep(path: Path) -> None:
    """Make the LM head read only the last `num_logits_to_keep` positions (an int64 input of
    shape [1]; a value at least the sequence length keeps them all)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if any(i.name == KEEP_INPUT for i in graph.input):
        return
    head = [n for n in graph.node if n.name.startswith("/lm_head/")]
    if not head:
        raise ExportError(f"{path}: no /lm_head/ node to limit")
    first = head[0]
    hidden = first.input[0]
    sliced = f"{hidden}/last_positions"
    graph.input.append(helper.make_tensor_value_info(KEEP_INPUT, TensorProto.INT64, [1]))
    nodes = [
        helper.make_node("Neg", [KEEP_INPUT], ["/nextab/keep/neg"], name="/nextab/keep/Neg"),
        helper.make_node(
            "Constant",
            [],
            ["/nextab/keep/end"],
            name="/nextab/keep/End",
            value=helper.make_tensor("end", TensorProto.INT64, [1], [2**62]),
        ),
        helper.make_node(
            "Constant",
            [],
            ["/nextab/keep/axis"],
            name="/nextab/keep/Axis",
            value=helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
        ),
        helper.make_node(
            "Slice",
            [hidden, "/nextab/keep/neg", "/nextab/keep/end", "/nextab/keep/axis"],
            [sliced],
            name="/nextab/keep/Slice",
        ),
    ]
    for node in graph.node:
        if node.name.startswith("/lm_head/"):
            node.input[:] = [sliced if name == hidden else name for name in node.input]
    position = list(graph.node).index(first)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    # The weights stay in model.onnx.data, untouched: only the graph file is rewritten.
    onnx.save(model, str(path))


def _say(message: str) -> None:
    print(f"nextab: {message}", file=sys.stderr, flush=True)
