"""Which tree-sitter grammar reads a file, chosen by LSP languageId or file extension.

The grammars come from the per-language wheels the tree-sitter project publishes on PyPI
(tree-sitter-python, -javascript, ...): each ships a prebuilt parser, is versioned with its
grammar and needs no download at first use, unlike bundles that fetch grammars at runtime and
fail offline. A grammar that is missing or fails to load is logged once; the file is then plain
text, never an error.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from functools import cache

from tree_sitter import Language, Parser

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LanguageSpec:
    name: str  # nextab's name for the language, e.g. "python", "tsx"
    module: str  # the grammar wheel's import name
    function: str  # the function in it that returns the language pointer
    extensions: tuple[str, ...]
    language_ids: tuple[str, ...]  # LSP languageId values that mean this language


SPECS: tuple[LanguageSpec, ...] = (
    LanguageSpec("python", "tree_sitter_python", "language", (".py", ".pyi", ".pyw"), ("python",)),
    LanguageSpec(
        "javascript",
        "tree_sitter_javascript",
        "language",
        (".js", ".mjs", ".cjs", ".jsx"),
        ("javascript", "javascriptreact"),
    ),
    LanguageSpec(
        "typescript",
        "tree_sitter_typescript",
        "language_typescript",
        (".ts", ".mts", ".cts"),
        ("typescript",),
    ),
    LanguageSpec("tsx", "tree_sitter_typescript", "language_tsx", (".tsx",), ("typescriptreact",)),
    LanguageSpec("go", "tree_sitter_go", "language", (".go",), ("go",)),
    LanguageSpec("rust", "tree_sitter_rust", "language", (".rs",), ("rust",)),
    LanguageSpec("java", "tree_sitter_java", "language", (".java",), ("java",)),
    LanguageSpec("c", "tree_sitter_c", "language", (".c", ".h"), ("c",)),
    LanguageSpec(
        "cpp",
        "tree_sitter_cpp",
        "language",
        (".cc", ".cpp", ".cxx", ".c++", ".hh", ".hpp", ".hxx", ".h++", ".ipp", ".tpp"),
        ("cpp", "cuda-cpp"),
    ),
)

_BY_NAME = {spec.name: spec for spec in SPECS}
_BY_EXTENSION = {ext: spec for spec in SPECS for ext in spec.extensions}
_BY_LANGUAGE_ID = {lid: spec for spec in SPECS for lid in spec.language_ids}


def spec_for(path: str | None = None, language_id: str | None = None) -> LanguageSpec | None:
    """The grammar for a document: its languageId wins, then its extension; None is plain text."""
    if language_id and language_id in _BY_LANGUAGE_ID:
        return _BY_LANGUAGE_ID[language_id]
    if path:
        return _BY_EXTENSION.get(os.path.splitext(path)[1].lower())
    return None


def spec_named(name: str) -> LanguageSpec | None:
    return _BY_NAME.get(name)


@cache
def language(name: str) -> Language | None:
    """The loaded grammar, or None (logged once) if its wheel is missing or incompatible."""
    spec = _BY_NAME.get(name)
    if spec is None:
        return None
    try:
        module = importlib.import_module(spec.module)
        return Language(getattr(module, spec.function)())
    except Exception as exc:  # an absent or ABI-incompatible wheel must not stop the server
        log.warning("tree-sitter grammar for %s unavailable (%s): treating as plain text", name, exc)
        return None


def parser(name: str) -> Parser | None:
    """A new parser for the language (parsers hold state: one per document or per thread)."""
    lang = language(name)
    return Parser(lang) if lang is not None else None
