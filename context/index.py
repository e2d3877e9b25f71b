"""The workspace index: what each source file defines and imports, kept fresh and persisted.

A background thread walks the workspace (honouring .gitignore files at every level and
.git/info/exclude, skipping vendored and generated directories, binary, undecodable, minified
and huge files, and symlink loops), extracts the symbols of every file with a grammar and
reports progress. Queries are answered from whatever is indexed so far, never waiting for the
scan. An open editor buffer wins over the file on disk until it is closed.

The index is saved with msgpack, keyed by path, size and mtime_ns, with the extractor's and
each grammar's version, so a restart re-parses only the files that changed. A store that
cannot be read is logged and ignored: the index is rebuilt from the files.

Paths are workspace-relative with forward slashes; the API also takes absolute paths and
file:// URIs and ignores anything outside the root.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlparse

import msgpack
from pathspec import GitIgnoreSpec
from tree_sitter import Tree

from nextab.context.imports import ImportResolver
from nextab.context.languages import spec_for, spec_named
from nextab.context.secrets import SecretPaths, resolves_inside, uri_path
from nextab.context.symbols import (
    Definition,
    FileSymbols,
    Import,
    extractor_version,
    parse,
    symbols_of_tree,
)
from nextab.storage import load_records, pack_records, quarantine, write_atomic

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: framed (nextab.storage), one checksummed record per file
STORE_KIND = b"INDX"
BINARY_PROBE_BYTES = 8192  # git's own heuristic: a NUL byte in the first 8 KB means binary
PROGRESS_STEPS = 100  # progress reports per scan, at most (plus the first and the last)

DEFAULT_IGNORED_DIRS = frozenset({
    ".git", ".hg", ".svn", ".jj", "node_modules", "bower_components", "jspm_packages",
    ".venv", "venv", "__pycache__", "site-packages", ".tox", ".nox", ".eggs",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".ipynb_checkpoints",
    "dist", "build", "target", "out", "vendor", "third_party", "third-party", "external",
    ".next", ".nuxt", ".svelte-kit", ".parcel-cache", ".turbo", ".angular", "coverage",
    ".gradle", ".idea", ".cache", "Pods", "DerivedData", "bazel-out", "_build", "deps",
})
# Code in languages without a grammar here still feeds similar-code search (`on_change`).
PLAIN_CODE_EXTENSIONS = frozenset({
    ".rb", ".php", ".kt", ".kts", ".swift", ".cs", ".scala", ".lua", ".sh", ".bash", ".zsh",
    ".sql", ".vue", ".svelte", ".m", ".mm", ".dart", ".ex", ".exs", ".erl", ".hs", ".ml",
    ".r", ".jl", ".pl", ".pm", ".zig", ".nim", ".clj", ".groovy", ".proto", ".graphql",
    ".tf", ".cmake", ".fs", ".elm", ".html", ".css", ".scss",
})

# (files done, files in all or -1 while they are still being counted, message)
ProgressFn = Callable[[int, int, str], None]
# (path, text or None when the file is gone, language name or None)
# (path, text or None when gone, language, the text's tree when the index parsed it)
ChangeFn = Callable[[str, str | None, str | None, Tree | None], None]


@dataclass(frozen=True)
class IndexLimits:
    max_files: int = 20_000  # files indexed at most (the walk is breadth-first: shallow first)
    max_file_bytes: int = 1_000_000  # larger files are skipped (generated, data, bundles)
    ignored_dirs: frozenset[str] = DEFAULT_IGNORED_DIRS
    follow_symlinks: bool = True  # into symlinked directories; loops are detected either way


@dataclass(frozen=True)
class IndexedFile:
    path: str
    language: str | None  # None: code without a grammar here (no symbols)
    size: int
    mtime_ns: int  # 0 for an editor buffer
    symbols: FileSymbols | None
    from_buffer: bool = False

    @property
    def definitions(self) -> tuple[Definition, ...]:
        return self.symbols.definitions if self.symbols else ()

    @property
    def imports(self) -> tuple[Import, ...]:
        return self.symbols.imports if self.symbols else ()


@dataclass(frozen=True)
class IndexedDefinition:
    """A definition and the file it is in."""

    path: str
    definition: Definition

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def kind(self) -> str:
        return self.definition.kind

    @property
    def signature(self) -> str:
        return self.definition.signature

    @property
    def start_line(self) -> int:
        return self.definition.start_line

    @property
    def end_line(self) -> int:
        return self.definition.end_line

    @property
    def container(self) -> str | None:
        return self.definition.container


@dataclass(frozen=True)
class IndexStats:
    files: int
    parsed: int  # files whose symbols were extracted (not taken from the store)
    reused: int  # files whose symbols came from the store unchanged
    skipped: dict[str, int]  # reason -> files
    scan_seconds: float
    store_load_seconds: float
    ready: bool


@dataclass
class _Counters:
    parsed: int = 0
    reused: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    scan_seconds: float = 0.0
    store_load_seconds: float = 0.0

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class Unreadable(Exception):
    """A file the index does not take: the reason is the message."""


# --- paths and ignore rules ---------------------------------------------------------------------


def _symbols(text: str, language: str) -> tuple[FileSymbols, Tree | None]:
    """The file's symbols and its tree, which listeners reuse instead of parsing again."""
    tree = parse(text, language)
    if tree is None:
        return FileSymbols(language, (), ()), None
    return symbols_of_tree(tree, text, language), tree


def relative_path(root: Path, path: str | os.PathLike[str]) -> str | None:
    """A path or file URI as a workspace-relative posix path; None when outside the root."""
    text = os.fspath(path)
    if text.startswith("file://"):
        text = unquote(urlparse(text).path)
    candidate = Path(text)
    if not candidate.is_absolute():
        candidate = root / candidate
    for absolute in (Path(os.path.normpath(candidate)), Path(os.path.realpath(candidate))):
        try:
            relative = absolute.relative_to(root).as_posix()
        except ValueError:
            continue
        return "" if relative == "." else relative
    return None


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _parents(path: str) -> list[str]:
    """The directories above a relative path, outermost first ("" is the root)."""
    parts = path.split("/")[:-1]
    return ["", *("/".join(parts[: i + 1]) for i in range(len(parts)))]


class IgnoreRules:
    """Git's ignore rules for a workspace: every .gitignore (each relative to its directory,
    deeper ones overriding), .git/info/exclude, plus the names of vendored directories."""

    def __init__(self, root: Path, ignored_dirs: frozenset[str]) -> None:
        self.root = root
        self.ignored_dirs = ignored_dirs
        self._specs: dict[str, tuple[GitIgnoreSpec, ...]] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._specs.clear()

    def specs(self, directory: str) -> tuple[GitIgnoreSpec, ...]:
        with self._lock:
            cached = self._specs.get(directory)
        if cached is not None:
            return cached
        files = [_join(directory, ".gitignore")]
        if not directory:
            files.insert(0, ".git/info/exclude")
        specs = tuple(spec for f in files if (spec := self._load(f)) is not None)
        with self._lock:
            self._specs[directory] = specs
        return specs

    def _load(self, relative: str) -> GitIgnoreSpec | None:
        try:
            lines = (self.root / relative).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        try:
            return GitIgnoreSpec.from_lines(lines.splitlines())
        except Exception as exc:  # a malformed pattern must not stop the index
            log.warning("ignoring %s: %s", relative, exc)
            return None

    def name_ignored(self, name: str, is_dir: bool) -> bool:
        if is_dir:
            return name in self.ignored_dirs or name.endswith(".egg-info")
        return ".min." in name  # minified bundles: one enormous line, no use as context

    def matches(self, path: str, is_dir: bool) -> bool:
        """Whether the rules at every level above `path` exclude it (its parents not checked)."""
        ignored = False
        for directory in _parents(path):
            below = path[len(directory) + 1 :] if directory else path
            for spec in self.specs(directory):
                result = spec.check_file(below + "/" if is_dir else below)
                if result.include is not None:
                    ignored = result.include
        return ignored

    def ignored(self, path: str, is_dir: bool = False) -> bool:
        """Whether `path` or a directory above it is excluded (for paths not found by a walk)."""
        return self._ignored(path, is_dir, by_name=True)

    def git_ignored(self, path: str, is_dir: bool = False) -> bool:
        """Whether git's rules alone exclude `path` or a directory above it: what the developer
        keeps out of the repository (local settings, keys), unlike vendored directories."""
        return self._ignored(path, is_dir, by_name=False)

    def _ignored(self, path: str, is_dir: bool, by_name: bool) -> bool:
        if not path:
            return False
        parts = path.split("/")
        for i in range(1, len(parts)):
            above = "/".join(parts[:i])
            if (by_name and self.name_ignored(parts[i - 1], True)) or self.matches(above, True):
                return True
        return (by_name and self.name_ignored(parts[-1], is_dir)) or self.matches(path, is_dir)


# --- reading files ------------------------------------------------------------------------------


def is_source_name(name: str) -> bool:
    return spec_for(name) is not None or os.path.splitext(name)[1].lower() in PLAIN_CODE_EXTENSIONS


def read_source(path: Path, max_bytes: int) -> str:
    """The text of a source file; Unreadable for huge, binary or undecodable files."""
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise Unreadable("huge")
    if b"\0" in data[:BINARY_PROBE_BYTES]:
        raise Unreadable("binary")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Unreadable("undecodable") from None


@cache
def language_versions() -> dict[str, str]:
    """Per language: what its stored symbols depend on (extractor queries, grammar wheel)."""
    versions = {}
    core = _distribution_version("tree-sitter")
    for name in ("python", "javascript", "typescript", "tsx", "go", "rust", "java", "c", "cpp"):
        spec = spec_named(name)
        grammar = _distribution_version(spec.module.replace("_", "-")) if spec else "?"
        versions[name] = f"{extractor_version(name)}/{grammar}/{core}"
    return versions


def _distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


# --- the store ------------------------------------------------------------------------------------


def _pack_file(entry: IndexedFile) -> list[object]:
    symbols = entry.symbols
    definitions = [
        [d.name, d.kind, d.signature, d.start_line, d.end_line, d.start_offset, d.end_offset,
         d.container]
        for d in (symbols.definitions if symbols else ())
    ]
    imports = [
        [i.module, list(i.names), i.alias, i.line, i.level, [list(r) for r in i.renames]]
        for i in (symbols.imports if symbols else ())
    ]
    return [entry.path, entry.size, entry.mtime_ns, entry.language, definitions, imports]


def _unpack_file(row: list) -> IndexedFile:
    path, size, mtime_ns, language, definitions, imports = row
    symbols = None
    if language is not None:
        symbols = FileSymbols(
            language,
            tuple(Definition(*d) for d in definitions),
            tuple(
                Import(m, tuple(n), a, line, level, tuple(tuple(r) for r in renames))
                for m, n, a, line, level, renames in imports
            ),
        )
    return IndexedFile(str(path), language, int(size), int(mtime_ns), symbols)


def save_store(path: Path, entries: Iterable[IndexedFile]) -> None:
    """Write atomically: a crash mid-write leaves the previous store, never half of one."""
    meta = msgpack.packb({"languages": language_versions()}, use_bin_type=True)
    # surrogatepass: a file name that is no UTF-8 reaches Python with lone surrogates in it.
    records = [
        msgpack.packb(_pack_file(e), use_bin_type=True, unicode_errors="surrogatepass")
        for e in entries
    ]
    write_atomic(path, pack_records(STORE_KIND, FORMAT_VERSION, records, meta))


def load_store(path: Path) -> dict[str, IndexedFile]:
    """The stored entries still valid for this extractor and these grammars; {} if none.

    A damaged store is moved aside with a warning: its entries that check out are used (the
    scan re-parses the rest), or none when its header is hit. An older format is rebuilt.
    """
    then = "rebuilding the index"
    what = "index store"
    legacy = _is_unframed_store
    loaded = load_records(
        path, STORE_KIND, FORMAT_VERSION, _decode_file, what=what, then=then, legacy=legacy
    )
    if loaded is None:
        return {}
    try:
        stored = msgpack.unpackb(loaded.meta, raw=False)["languages"]
        if not isinstance(stored, dict):
            raise TypeError("languages is not a map")
    except Exception as exc:  # checked but undecodable: written by a nextab that had a bug
        quarantine(path, f"corrupt ({exc})", what=what, then=then)
        return {}
    current = language_versions()
    return {
        entry.path: entry
        for entry in loaded.records
        if entry.language is None or stored.get(entry.language) == current.get(entry.language)
    }


def _decode_file(payload: bytes) -> IndexedFile:
    return _unpack_file(
        msgpack.unpackb(payload, raw=False, strict_map_key=False, unicode_errors="surrogatepass")
    )


def _is_unframed_store(data: bytes) -> bool:
    """Whether `data` is a store of version 1 (one msgpack map): rebuilt, not quarantined."""
    payload = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return isinstance(payload, dict) and "format" in payload and "files" in payload


# --- the index ------------------------------------------------------------------------------------


class WorkspaceIndex:
    def __init__(
        self,
        root: str | Path,
        store_path: str | Path | None = None,
        limits: IndexLimits | None = None,
        *,
        max_files: int | None = None,
        max_file_bytes: int | None = None,
        progress: ProgressFn | None = None,
        on_change: ChangeFn | None = None,
        exclude: Sequence[str] = (),
    ) -> None:
        self.root = Path(root).resolve()
        self.store_path = Path(store_path) if store_path is not None else None
        limits = limits or IndexLimits()
        if max_files is not None:
            limits = replace(limits, max_files=max_files)
        if max_file_bytes is not None:
            limits = replace(limits, max_file_bytes=max_file_bytes)
        self.limits = limits
        self.progress = progress
        self.on_change = on_change
        self.ignore = IgnoreRules(self.root, limits.ignored_dirs)
        self.secrets = SecretPaths(exclude)  # secret names and the user's exclude list
        self.resolver = ImportResolver(self.root, self._is_file)
        self._lock = threading.RLock()
        self._disk: dict[str, IndexedFile] = {}
        self._buffers: dict[str, tuple[str, IndexedFile]] = {}
        self._effective: dict[str, IndexedFile] = {}
        self._by_name: dict[str, dict[str, None]] = {}
        self._resolved: dict[str, tuple[IndexedFile, int, tuple[str, ...]]] = {}
        self._generation = 0  # bumps when the set of files changes (import results depend on it)
        self._touched: set[str] = set()  # updated directly while a scan runs: the scan keeps off
        self._counters = _Counters()
        self._dirty = False
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._rescan = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Begin indexing in the background (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="nextab-index", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Whether the first scan finished within `timeout` seconds."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._rescan.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.save()

    def rescan(self) -> None:
        """Walk the workspace again (after ignore rules changed); unchanged files are kept."""
        self.ignore.clear()
        self._rescan.set()

    def save(self) -> None:
        if self.store_path is None or not self._dirty:
            return
        with self._lock:
            entries = list(self._disk.values())
            self._dirty = False
        try:
            save_store(self.store_path, entries)
        except OSError as exc:
            log.warning("could not save the index to %s: %s", self.store_path, exc)

    def stats(self) -> IndexStats:
        with self._lock:
            c = self._counters
            return IndexStats(
                len(self._effective), c.parsed, c.reused, dict(c.skipped), c.scan_seconds,
                c.store_load_seconds, self.ready,
            )

    # -- queries -----------------------------------------------------------------------------

    def relative(self, path: str | os.PathLike[str]) -> str | None:
        return relative_path(self.root, path)

    def file(self, path: str) -> IndexedFile | None:
        key = self.relative(path)
        with self._lock:
            return self._effective.get(key) if key is not None else None

    def files(self) -> list[str]:
        with self._lock:
            return sorted(self._effective)

    def definitions_named(self, name: str) -> list[IndexedDefinition]:
        """Where `name` is defined across the workspace (open buffers as they are now)."""
        with self._lock:
            entries = [self._effective[p] for p in self._by_name.get(name, ())]
        return [
            IndexedDefinition(entry.path, d)
            for entry in entries
            for d in entry.definitions
            if d.name == name
        ]

    def resolve_imports(self, path: str) -> list[str]:
        """The workspace files that `path` imports, in import order, each once."""
        seen: dict[str, None] = {}
        for _, targets in self.resolved_imports(path):
            for target in targets:
                seen.setdefault(target, None)
        return list(seen)

    def resolved_imports(self, path: str) -> list[tuple[Import, tuple[str, ...]]]:
        """Each import of `path` with the workspace files it brings in (empty: outside)."""
        key = self.relative(path)
        with self._lock:
            entry = self._effective.get(key) if key is not None else None
            cached = self._resolved.get(key) if key is not None else None
            generation = self._generation
        if entry is None or entry.symbols is None:
            return []
        if cached is not None and cached[0] is entry and cached[1] == generation:
            targets_by_import = cached[2]
        else:
            targets_by_import = tuple(
                "\0".join(self.resolver.resolve(imp, entry.path, entry.symbols.language))
                for imp in entry.imports
            )
            with self._lock:
                self._resolved[entry.path] = (entry, generation, targets_by_import)
        return [
            (imp, tuple(t for t in targets.split("\0") if t))
            for imp, targets in zip(entry.imports, targets_by_import, strict=True)
        ]

    def _is_file(self, path: str) -> bool:
        if path in self._effective:
            return True
        # While the scan runs the index does not know every file yet: ask the disk.
        return (
            not self.ready
            and self.is_indexable(path)
            and not self._escapes(path)
            and (self.root / path).is_file()
        )

    def read_text(self, path: str) -> str | None:
        """The buffer's text while the file is open in the editor, else the file's; None if
        it is missing or not a source file the index would take."""
        key = self.relative(path)
        if key is None:
            return None
        with self._lock:
            buffer = self._buffers.get(key)
        if buffer is not None:
            return buffer[0]
        if self.is_private(key):
            return None
        try:
            return read_source(self.root / key, self.limits.max_file_bytes)
        except (OSError, Unreadable):
            return None

    def is_indexable(self, path: str) -> bool:
        """Whether a workspace-relative path is a source file the rules let in (symlinks on
        the way not checked: see `_escapes`)."""
        name = path.rsplit("/", 1)[-1]
        return (
            bool(path)
            and is_source_name(name)
            and not self.ignore.ignored(path)
            and not self.secrets.is_secret(path)
        )

    def is_private(self, path: str | os.PathLike[str]) -> bool:
        """Whether a document's text must never be indexed, recorded or shown to the model: a
        secret (by name or the exclude list), a git-ignored file, or a path that a symlink
        takes out of the root or to such a file. A path or URI outside the workspace is judged
        by its name alone."""
        key = self.relative(path)
        if key is None:
            return self.secrets.is_secret(uri_path(os.fspath(path)))
        if not key:
            return False
        return self.secrets.is_secret(key) or self.ignore.git_ignored(key) or self._escapes(key)

    def _escapes(self, key: str, is_dir: bool = False) -> bool:
        """Whether a symlink on the way to `key` leads out of the root, or to a private path."""
        target = resolves_inside(self.root, key)
        if target is None:
            return True
        return target != key and (
            self.secrets.is_secret(target, is_dir) or self.ignore.git_ignored(target, is_dir)
        )

    def set_exclude(self, exclude: Sequence[str]) -> None:
        """Take a new exclude list: buffers it now covers go, and the workspace is walked again
        (files it covers drop out, files it no longer covers come in)."""
        if tuple(exclude) == self.secrets.exclude:
            return
        self.secrets = SecretPaths(exclude)
        with self._lock:
            buffered = list(self._buffers)
        for key in buffered:
            if self.is_private(key):
                self.close_text(key)
        self.rescan()

    # -- editor buffers ----------------------------------------------------------------------

    def update_text(self, path: str, text: str) -> None:
        """An open editor buffer's text: it wins over the disk copy until `close_text`."""
        key = self.relative(path)
        if key is None or not key:
            return
        if self.is_private(key):
            log.debug("not indexing the buffer of %s: a secret or git-ignored file", key)
            self.close_text(key)  # in case it was taken before it became private
            return
        spec = spec_for(key)
        symbols, tree = None, None
        if spec is not None:
            if len(text) > self.limits.max_file_bytes:
                log.info("not indexing the buffer of %s: larger than max_file_bytes", key)
            else:
                symbols, tree = _symbols(text, spec.name)
        entry = IndexedFile(key, spec.name if spec else None, len(text), 0, symbols, True)
        with self._lock:
            self._buffers[key] = (text, entry)
            self._set_effective(key)
        self._notify(key, text, entry.language, tree)

    def close_text(self, path: str) -> None:
        """The buffer was closed: the file on disk counts again."""
        key = self.relative(path)
        if key is None:
            return
        with self._lock:
            if self._buffers.pop(key, None) is None:
                return
            self._set_effective(key)
            entry = self._effective.get(key)
        text = self.read_text(key) if entry is not None else None
        self._notify(key, text, entry.language if entry else None)

    # -- files on disk -----------------------------------------------------------------------

    def update_file(self, path: str) -> bool:
        """Read one file again from disk; False when nothing changed."""
        key = self.relative(path)
        if key is None or not key:
            return False
        with self._lock:
            if not self.ready:
                self._touched.add(key)
        try:
            stat = (self.root / key).stat()
        except OSError:
            return self.remove_file(key)
        if not self.is_indexable(key) or self._escapes(key) or not os.path.isfile(self.root / key):
            return self.remove_file(key)
        return self._index_file(key, stat.st_size, stat.st_mtime_ns, None)

    def remove_file(self, path: str) -> bool:
        """Forget a file, or everything under a directory; False if nothing was indexed."""
        key = self.relative(path)
        if key is None:
            return False
        prefix = key + "/" if key else ""
        with self._lock:
            if not self.ready:
                self._touched.add(key)
            gone = [p for p in self._disk if p == key or p.startswith(prefix)]
            for p in gone:
                self._forget(p)
        for p in gone:
            if p not in self._buffers:
                self._notify(p, None, None)
        return bool(gone)

    def refresh(self, path: str) -> None:
        """Bring one path up to date: a file, a directory (walked) or something deleted."""
        key = self.relative(path)
        if key is None:
            return
        absolute = self.root / key
        if absolute.is_dir():
            if key and (
                self.ignore.ignored(key, is_dir=True)
                or self.secrets.is_secret(key, is_dir=True)
                or self._escapes(key, is_dir=True)
            ):
                self.remove_file(key)
                return
            found = {p: (size, mtime) for p, size, mtime in self._walk(key)}
            with self._lock:
                prefix = key + "/" if key else ""
                stale = [p for p in self._disk if p.startswith(prefix) and p not in found]
            for p in stale:
                self.remove_file(p)
            for p, (size, mtime) in found.items():
                self._index_file(p, size, mtime, None)
        elif absolute.is_file():
            self.update_file(key)
        else:
            self.remove_file(key)

    def _index_file(self, key: str, size: int, mtime_ns: int, stored: IndexedFile | None) -> bool:
        with self._lock:
            current = self._disk.get(key)
        if current is not None and (current.size, current.mtime_ns) == (size, mtime_ns):
            return False
        if size > self.limits.max_file_bytes:
            self._count_skip("huge", key)
            return self.remove_file(key) if current is not None else False
        try:
            entry, text, tree = self._load(key, size, mtime_ns, stored)
        except (OSError, Unreadable) as exc:
            self._count_skip(str(exc) if isinstance(exc, Unreadable) else "unreadable", key)
            return self.remove_file(key) if current is not None else False
        with self._lock:
            self._disk[key] = entry
            self._dirty = True
            self._set_effective(key)
            buffered = key in self._buffers
        if not buffered:
            self._notify(key, text, entry.language, tree)
        return True

    def _load(
        self, key: str, size: int, mtime_ns: int, stored: IndexedFile | None
    ) -> tuple[IndexedFile, str | None, Tree | None]:
        reuse = stored is not None and (stored.size, stored.mtime_ns) == (size, mtime_ns)
        # The text is read for a reused entry only when someone listens for it.
        text = None
        if not reuse or self.on_change is not None:
            text = read_source(self.root / key, self.limits.max_file_bytes)
        if reuse:
            assert stored is not None
            with self._lock:
                self._counters.reused += 1
            return stored, text, None
        assert text is not None
        spec = spec_for(key)
        symbols, tree = None, None
        if spec is not None:
            symbols, tree = _symbols(text, spec.name)
            with self._lock:
                self._counters.parsed += 1
        return IndexedFile(key, spec.name if spec else None, size, mtime_ns, symbols), text, tree

    def _count_skip(self, reason: str, key: str) -> None:
        log.debug("not indexing %s: %s", key, reason)
        with self._lock:
            self._counters.skip(reason)

    # -- bookkeeping (under the lock) --------------------------------------------------------

    def _forget(self, key: str) -> None:
        self._disk.pop(key, None)
        self._dirty = True
        self._set_effective(key)

    def _set_effective(self, key: str) -> None:
        old = self._effective.get(key)
        buffer = self._buffers.get(key)
        new = buffer[1] if buffer is not None else self._disk.get(key)
        if old is new:
            return
        if (old is None) != (new is None):
            self._generation += 1
        for d in old.definitions if old else ():
            paths = self._by_name.get(d.name)
            if paths is not None:
                paths.pop(key, None)
                if not paths:
                    del self._by_name[d.name]
        if new is None:
            self._effective.pop(key, None)
            self._resolved.pop(key, None)
            return
        self._effective[key] = new
        for d in new.definitions:
            self._by_name.setdefault(d.name, {})[key] = None

    def _notify(
        self, key: str, text: str | None, language: str | None, tree: Tree | None = None
    ) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(key, text, language, tree)
        except Exception:  # a listener's bug must not stop indexing
            log.exception("index change listener failed for %s", key)

    # -- the scan ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            stored = self._load_store()
            self._scan(stored)
        except Exception:
            log.exception("workspace indexing failed")
        finally:
            self._ready.set()
        while not self._stop.is_set():
            self._rescan.wait()
            if self._stop.is_set():
                break
            self._rescan.clear()
            try:
                self._scan({})
            except Exception:
                log.exception("workspace rescan failed")

    def _load_store(self) -> dict[str, IndexedFile]:
        if self.store_path is None:
            return {}
        started = time.perf_counter()
        stored = load_store(self.store_path)
        with self._lock:
            self._counters.store_load_seconds = time.perf_counter() - started
            # Answer from the store at once; the scan then checks each file against the disk.
            for key, entry in stored.items():
                # A store written before a file became private (a new exclude or .gitignore
                # line) must not bring it back even until the scan.
                if key not in self._disk and self.is_indexable(key):
                    self._disk[key] = entry
                    self._set_effective(key)
        return stored

    def _scan(self, stored: dict[str, IndexedFile]) -> None:
        started = time.perf_counter()
        self._report(0, -1, "Scanning workspace files")
        found = list(self._walk(""))
        total = len(found)
        self._report(0, total, f"Indexing {total} files")
        step = max(1, total // PROGRESS_STEPS)
        for done, (key, size, mtime_ns) in enumerate(found, 1):
            if self._stop.is_set():
                return
            with self._lock:
                skip = key in self._touched
                current = self._disk.get(key)
            if not skip:
                if current is not None and current is stored.get(key):
                    # Pre-loaded from the store: verify against the disk, reading if changed.
                    with self._lock:
                        self._disk.pop(key)
                self._index_file(key, size, mtime_ns, stored.get(key))
            if done % step == 0 and done < total:
                self._report(done, total, f"{done}/{total} files")
        self._drop_missing({key for key, _, _ in found})
        with self._lock:
            self._touched.clear()
            self._counters.scan_seconds = time.perf_counter() - started
        self.save()
        self._report(total, total, f"Indexed {total} files")

    def _drop_missing(self, found: set[str]) -> None:
        with self._lock:
            missing = [k for k in self._disk if k not in found and k not in self._touched]
        for key in missing:
            self.remove_file(key)

    def _report(self, done: int, total: int, message: str) -> None:
        if self.progress is None:
            return
        try:
            self.progress(done, total, message)
        except Exception:
            log.exception("index progress listener failed")

    def _walk(self, start: str) -> Iterable[tuple[str, int, int]]:
        """(path, size, mtime_ns) of the source files under `start`, breadth-first, up to
        max_files, skipping what the ignore rules and limits keep out."""
        queue = deque([start])
        seen_dirs: set[tuple[int, int]] = set()
        count = 0
        while queue and not self._stop.is_set():
            directory = queue.popleft()
            entries = self._list_dir(directory, seen_dirs)
            subdirectories = []
            for entry in entries:
                relative = _join(directory, entry.name)
                try:
                    is_dir = entry.is_dir(follow_symlinks=self.limits.follow_symlinks)
                    is_file = not is_dir and entry.is_file()
                except OSError:
                    continue
                if is_dir:
                    if not self._excluded(entry, relative, True):
                        subdirectories.append(relative)
                elif is_file and is_source_name(entry.name):
                    if self._excluded(entry, relative, False):
                        continue
                    try:
                        stat = entry.stat()
                    except OSError:
                        continue
                    if count >= self.limits.max_files:
                        log.warning("workspace has more than %d source files: indexing the "
                                    "first %d (max_files)", count, count)
                        return
                    count += 1
                    yield relative, stat.st_size, stat.st_mtime_ns
            queue.extend(subdirectories)

    def _excluded(self, entry: os.DirEntry[str], relative: str, is_dir: bool) -> bool:
        if self.ignore.name_ignored(entry.name, is_dir) or self.ignore.matches(relative, is_dir):
            return True
        if self.secrets.is_secret(relative, is_dir):
            self._count_skip("secret", relative)
            return True
        if entry.is_symlink() and self._escapes(relative, is_dir):
            self._count_skip("symlink out of the workspace", relative)
            return True
        return False

    def _list_dir(self, directory: str, seen: set[tuple[int, int]]) -> list[os.DirEntry[str]]:
        path = self.root / directory
        try:
            stat = path.stat()
            if (stat.st_dev, stat.st_ino) in seen:
                log.info("not following %s again: a symlink loop", directory)
                return []
            seen.add((stat.st_dev, stat.st_ino))
            with os.scandir(path) as iterator:
                entries = sorted(iterator, key=lambda e: e.name)
        except OSError as exc:
            log.debug("cannot list %s: %s", directory or ".", exc)
            return []
        if directory and any(e.name == "pyvenv.cfg" for e in entries):
            return []  # a virtual environment under another name
        return entries
