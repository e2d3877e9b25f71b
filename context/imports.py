"""Which workspace files an import statement brings in.

Python: absolute imports against the package roots (the workspace root, `src/`, and the
directory above the importing file's outermost package), relative imports by their dots, and
`from pkg import name` where `name` is a submodule. JavaScript/TypeScript: relative specifiers
with the usual extension and `index.*` probing, and `baseUrl`/`paths` of the nearest
tsconfig.json or jsconfig.json. C/C++: quoted includes next to the file or under the root's
include/ and src/. Anything else (the standard library, third-party packages, Go, Rust and Java
imports) resolves to nothing: there is no workspace file to show for it.

All paths are workspace-relative with forward slashes.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nextab.context.secrets import resolves_inside
from nextab.context.symbols import Import

log = logging.getLogger(__name__)

PYTHON_SUFFIXES = (".py", ".pyi")
# TypeScript's resolution order, then plain JavaScript's.
JS_EXTENSIONS = (".ts", ".tsx", ".d.ts", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts")
# ESM TypeScript writes the output's name ("./a.js") for the source "./a.ts".
_JS_SOURCE_FOR = {".js": (".ts", ".tsx"), ".jsx": (".tsx",), ".mjs": (".mts",), ".cjs": (".cts",)}
_JS_CONFIGS = ("tsconfig.json", "jsconfig.json")
C_INCLUDE_DIRS = ("", "include", "src")


@dataclass(frozen=True)
class PathAliases:
    """The module paths a tsconfig/jsconfig declares, relative to the workspace root."""

    base_url: str | None  # the directory bare specifiers start from, if any
    paths: tuple[tuple[str, tuple[str, ...]], ...]  # pattern ("@/*") -> targets ("src/*")


class ImportResolver:
    """Resolves imports against a workspace; `is_file` says whether a relative path is a file
    there (the index passes one that knows its files; the default asks the disk)."""

    def __init__(self, root: str | Path, is_file: Callable[[str], bool] | None = None) -> None:
        self.root = Path(root)
        self._real_root = self.root.resolve()
        self.is_file = is_file or self._disk_is_file
        self._aliases: dict[str, tuple[int, PathAliases | None]] = {}

    def _disk_is_file(self, path: str) -> bool:
        return (self.root / path).is_file() and self._inside(path)

    def _inside(self, path: str) -> bool:
        # A symlink out of the workspace is not followed, not even to read a tsconfig.
        return resolves_inside(self._real_root, path) is not None

    def _is_dir(self, path: str) -> bool:
        return (self.root / path).is_dir()

    # -- entry points ------------------------------------------------------------------------

    def resolve(self, imported: Import, from_path: str, language: str) -> tuple[str, ...]:
        """Every workspace file the import brings in: the module, and for `from pkg import a`
        the submodule `a` where it is one. Empty when nothing in the workspace matches."""
        if language == "python":
            return tuple(self._python(imported, from_path))
        module = self.resolve_module(imported, from_path, language)
        return (module,) if module is not None else ()

    def resolve_module(self, imported: Import, from_path: str, language: str) -> str | None:
        """The file of the imported module itself, or None (third-party, stdlib, not found)."""
        if language == "python":
            return self._python_module(imported, from_path)
        if language in ("javascript", "typescript", "tsx"):
            return self._js(imported.module, from_path)
        if language in ("c", "cpp"):
            return self._c(imported.module, from_path)
        return None

    # -- Python ------------------------------------------------------------------------------

    def _python(self, imported: Import, from_path: str) -> Iterator[str]:
        module = self._python_module(imported, from_path)
        if module is not None:
            yield module
        base = self._python_base(imported, from_path)
        for name in imported.names if base is not None else ():
            if name == "*":
                continue
            for package_dir in base:
                sub = self._python_file(_join(package_dir, name.replace(".", "/")))
                if sub is not None and sub != module:
                    yield sub
                    break

    def _python_module(self, imported: Import, from_path: str) -> str | None:
        base = self._python_base(imported, from_path)
        for directory in base or ():
            if imported.level:
                found = self._python_file(directory) or self._init(directory)
            else:
                found = self._python_file(directory)
            if found is not None:
                return found
        return None

    def _python_base(self, imported: Import, from_path: str) -> list[str] | None:
        """The candidate module paths (without suffix) the import may mean, best first."""
        dotted = imported.module.lstrip(".").replace(".", "/")
        if imported.level:
            directory = posixpath.dirname(from_path)
            for _ in range(imported.level - 1):
                if not directory:
                    return None  # above the workspace root
                directory = posixpath.dirname(directory)
            return [_join(directory, dotted)]
        if not dotted:
            return None
        return [_join(root, dotted) for root in self.python_roots(from_path)]

    def python_roots(self, from_path: str) -> list[str]:
        roots = [""]
        if self._is_dir("src"):
            roots.append("src")
        # The directory above the importing file's outermost package holds its siblings.
        directory = posixpath.dirname(from_path)
        while directory and self._init(directory) is not None:
            directory = posixpath.dirname(directory)
        if directory not in roots:
            roots.append(directory)
        return roots

    def _python_file(self, stem: str) -> str | None:
        if not stem:
            return None
        for suffix in PYTHON_SUFFIXES:
            if self.is_file(stem + suffix):
                return stem + suffix
        return self._init(stem)

    def _init(self, directory: str) -> str | None:
        for suffix in PYTHON_SUFFIXES:
            candidate = _join(directory, "__init__" + suffix)
            if self.is_file(candidate):
                return candidate
        return None

    # -- JavaScript / TypeScript ---------------------------------------------------------------

    def _js(self, specifier: str, from_path: str) -> str | None:
        if not specifier:
            return None
        if specifier.startswith(("./", "../")) or specifier in (".", ".."):
            target = _normalise(_join(posixpath.dirname(from_path), specifier))
            return self._js_file(target) if target is not None else None
        if specifier.startswith("/"):
            return None
        aliases = self.aliases_for(from_path)
        if aliases is None:
            return None
        for target in _alias_targets(aliases, specifier):
            found = self._js_file(target)
            if found is not None:
                return found
        return None

    def _js_file(self, target: str) -> str | None:
        stem, ext = posixpath.splitext(target)
        candidates: list[str] = []
        if ext:
            candidates.append(target)
            candidates.extend(stem + source for source in _JS_SOURCE_FOR.get(ext, ()))
        candidates.extend(target + extension for extension in JS_EXTENSIONS)
        candidates.extend(_join(target, "index" + extension) for extension in JS_EXTENSIONS)
        return next((c for c in candidates if self.is_file(c)), None)

    def aliases_for(self, from_path: str) -> PathAliases | None:
        """baseUrl/paths of the tsconfig.json or jsconfig.json nearest above the file."""
        directory = posixpath.dirname(from_path)
        while True:
            for name in _JS_CONFIGS:
                config = _join(directory, name)
                if (self.root / config).is_file():
                    return self._load_aliases(config) if self._inside(config) else None
            if not directory:
                return None
            directory = posixpath.dirname(directory)

    def _load_aliases(self, config: str) -> PathAliases | None:
        try:
            stamp = (self.root / config).stat().st_mtime_ns
        except OSError:
            return None
        cached = self._aliases.get(config)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        aliases = read_aliases(self.root / config, posixpath.dirname(config))
        self._aliases[config] = (stamp, aliases)
        return aliases

    # -- C / C++ -------------------------------------------------------------------------------

    def _c(self, header: str, from_path: str) -> str | None:
        if not header:
            return None
        for directory in (posixpath.dirname(from_path), *C_INCLUDE_DIRS):
            candidate = _normalise(_join(directory, header))
            if candidate is not None and self.is_file(candidate):
                return candidate
        return None


# --- helpers ------------------------------------------------------------------------------------


def _join(directory: str, name: str) -> str:
    if not directory:
        return name
    if not name:
        return directory
    return f"{directory}/{name}"


def _normalise(path: str) -> str | None:
    """The path without ./ and ../ parts; None when it leaves the workspace."""
    normal = posixpath.normpath(path)
    if normal == ".":
        return ""
    if normal.startswith("../") or normal == ".." or normal.startswith("/"):
        return None
    return normal


def _alias_targets(aliases: PathAliases, specifier: str) -> Iterator[str]:
    # TypeScript prefers the pattern with the longest prefix before its "*".
    ranked = sorted(aliases.paths, key=lambda item: -len(item[0].split("*", 1)[0]))
    for pattern, targets in ranked:
        matched = _match_pattern(pattern, specifier)
        if matched is None:
            continue
        for target in targets:
            path = _normalise(target.replace("*", matched, 1))
            if path is not None:
                yield path
    if aliases.base_url is not None:
        path = _normalise(_join(aliases.base_url, specifier))
        if path is not None:
            yield path


def _match_pattern(pattern: str, specifier: str) -> str | None:
    if "*" not in pattern:
        return "" if pattern == specifier else None
    prefix, suffix = pattern.split("*", 1)
    if (
        specifier.startswith(prefix)
        and specifier.endswith(suffix)
        and len(specifier) >= len(prefix) + len(suffix)
    ):
        return specifier[len(prefix) : len(specifier) - len(suffix)]
    return None


def read_aliases(config_file: Path, config_dir: str) -> PathAliases | None:
    """baseUrl and paths from a tsconfig/jsconfig (JSON with comments and trailing commas);
    `extends` is not followed. None when the file cannot be read or declares neither."""
    try:
        data = json.loads(strip_jsonc(config_file.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("ignoring %s: %s", config_file, exc)
        return None
    options = data.get("compilerOptions") if isinstance(data, dict) else None
    if not isinstance(options, dict):
        return None
    base_url = options.get("baseUrl")
    base = _normalise(_join(config_dir, base_url)) if isinstance(base_url, str) else None
    # Without baseUrl, `paths` targets are relative to the config file.
    paths_base = base if base is not None else config_dir
    raw_paths = options.get("paths")
    paths: list[tuple[str, tuple[str, ...]]] = []
    if isinstance(raw_paths, dict):
        for pattern, targets in raw_paths.items():
            if not isinstance(targets, list) or pattern.count("*") > 1:
                continue
            joined = tuple(
                _join(paths_base, t) for t in targets if isinstance(t, str) and t.count("*") <= 1
            )
            paths.append((pattern, joined))
    if base is None and not paths:
        return None
    return PathAliases(base, tuple(paths))


_JSONC_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def strip_jsonc(text: str) -> str:
    """JSON from JSONC: comments dropped (strings kept intact), trailing commas removed."""
    no_comments = _JSONC_TOKEN.sub(lambda m: m.group(0) if m.group(0).startswith('"') else "", text)
    return _strip_trailing_commas(no_comments)


def _strip_trailing_commas(text: str) -> str:
    # Only commas outside strings: split on strings, fix the pieces between them.
    parts = re.split(r'("(?:\\.|[^"\\])*")', text)
    return "".join(
        part if i % 2 else _TRAILING_COMMA.sub(r"\1", part) for i, part in enumerate(parts)
    )
