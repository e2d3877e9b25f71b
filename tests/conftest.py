from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny import build_model_dir

# The tiny test models are torch models (their 8-wide heads are below what onnxruntime's fused
# attention takes); servers started by tests inherit this. The onnxruntime backend has its own
# tests (test_onnx_backend.py) and the real-model suite runs both.
os.environ.setdefault("NEXTAB_BACKEND", "torch")

# What the editor tests (Neovim, VS Code) open: prose to type into, code with a rename to follow.
NOTES = "The shop sells apples.\nThe shop sells pears.\nThe shop \n"
SHOP = """def total(items):
    count = 0
    for item in items:
        count += item.price
    return count
"""


@pytest.fixture
def editor_project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text(NOTES)
    (folder / "shop.py").write_text(SHOP)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path):
    from nextab.models.torch_backend import TorchBackend

    return TorchBackend.load(tiny_model_dir, "tiny-qwen", device="cpu", dtype="float32")
