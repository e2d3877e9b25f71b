from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny import build_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("tiny-qwen"))


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path):
    from nextab.models.torch_backend import TorchBackend

    return TorchBackend.load(tiny_model_dir, "tiny-qwen", device="cpu", dtype="float32")
