"""Import resolution on a real temporary workspace tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from nextab.context.imports import ImportResolver, read_aliases, strip_jsonc
from nextab.context.symbols import Import, extract
from tests.files import write_files

_write = write_files


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    _write(tmp_path, {
        "shop/__init__.py": "",
        "shop/cart.py": "from .pricing import total\nfrom . import tax\n",
        "shop/pricing.py": "",
        "shop/tax/__init__.py": "from ..cart import Cart\nfrom .. import pricing\n",
        "shop/tax/rates.py": "",
        "shop/types.pyi": "",
        "src/engine/__init__.py": "",
        "src/engine/core.py": "",
        "scripts/run.py": "import shop.cart\nfrom engine import core\nfrom engine.core import go\n",
        "tools/gen/__init__.py": "",
        "tools/gen/emit.py": "from gen import helpers\n",
        "tools/gen/helpers.py": "",
        "web/tsconfig.json": """{
            // path aliases
            "compilerOptions": {
                "baseUrl": ".",
                "paths": { "@/*": ["src/*"], "#lib": ["src/lib/index.ts"], },
                /* trailing commas and comments are fine in tsconfig */
            },
        }""",
        "web/src/app.tsx": "",
        "web/src/lib/math.ts": "",
        "web/src/lib/index.ts": "",
        "web/src/components/Button.tsx": "",
        "web/src/legacy.js": "",
        "web/src/types.d.ts": "",
        "web/src/esm.ts": "",
        "web/shared/index.js": "",
        "web/shared/util.mjs": "",
        "native/src/main.c": "",
        "native/src/buffer.h": "",
        "native/include/arena.h": "",
        "include/common.h": "",
    })
    return tmp_path


def _python(root: Path, from_path: str, source: str) -> list[tuple[str, ...]]:
    resolver = ImportResolver(root)
    return [resolver.resolve(i, from_path, "python") for i in extract(source, "python").imports]


def test_python_relative_imports(workspace: Path) -> None:
    assert _python(workspace, "shop/cart.py", "from .pricing import total\nfrom . import tax\n") == [
        ("shop/pricing.py",),
        ("shop/__init__.py", "shop/tax/__init__.py"),
    ]
    assert _python(
        workspace, "shop/tax/__init__.py", "from ..cart import Cart\nfrom .. import pricing\n"
    ) == [("shop/cart.py",), ("shop/__init__.py", "shop/pricing.py")]
    # Above the workspace root there is nothing to resolve.
    assert _python(workspace, "shop/cart.py", "from .... import x\n") == [()]


def test_python_absolute_imports_with_package_roots(workspace: Path) -> None:
    source = "import shop.cart\nfrom engine import core\nfrom engine.core import go\n"
    assert _python(workspace, "scripts/run.py", source) == [
        ("shop/cart.py",),
        ("src/engine/__init__.py", "src/engine/core.py"),  # src/ layout
        ("src/engine/core.py",),
    ]


def test_python_from_package_import_submodule_and_stub(workspace: Path) -> None:
    source = "from shop.tax import rates, missing\nimport shop.types\nfrom shop import *\n"
    assert _python(workspace, "scripts/run.py", source) == [
        ("shop/tax/__init__.py", "shop/tax/rates.py"),
        ("shop/types.pyi",),
        ("shop/__init__.py",),
    ]


def test_python_sibling_root_of_a_nested_package(workspace: Path) -> None:
    # tools/gen is a package whose parent is not one: `gen` is importable from tools/.
    assert _python(workspace, "tools/gen/emit.py", "from gen import helpers\n") == [
        ("tools/gen/__init__.py", "tools/gen/helpers.py")
    ]


def test_python_third_party_and_stdlib_resolve_to_nothing(workspace: Path) -> None:
    resolver = ImportResolver(workspace)
    for imported in extract("import os\nimport numpy as np\nfrom requests import get\n",
                            "python").imports:
        assert resolver.resolve(imported, "shop/cart.py", "python") == ()
        assert resolver.resolve_module(imported, "shop/cart.py", "python") is None


@pytest.mark.parametrize(
    ("specifier", "expected"),
    [
        ("./lib/math", "web/src/lib/math.ts"),
        ("./lib", "web/src/lib/index.ts"),
        ("./components/Button", "web/src/components/Button.tsx"),
        ("./legacy", "web/src/legacy.js"),
        ("./types", "web/src/types.d.ts"),
        ("./esm.js", "web/src/esm.ts"),  # ESM TypeScript names the compiled file
        ("../shared", "web/shared/index.js"),
        ("../shared/util.mjs", "web/shared/util.mjs"),
        ("@/components/Button", "web/src/components/Button.tsx"),  # tsconfig paths
        ("#lib", "web/src/lib/index.ts"),  # an exact paths entry
        ("src/lib/math", "web/src/lib/math.ts"),  # baseUrl
        ("react", None),
        ("./missing", None),
        ("../../../outside", None),
    ],
)
def test_js_resolution(workspace: Path, specifier: str, expected: str | None) -> None:
    resolver = ImportResolver(workspace)
    imported = Import(specifier)
    assert resolver.resolve_module(imported, "web/src/app.tsx", "tsx") == expected


def test_js_without_config_only_relative(tmp_path: Path) -> None:
    _write(tmp_path, {"a/index.js": "", "b/main.js": "", "c.js": ""})
    resolver = ImportResolver(tmp_path)
    assert resolver.resolve_module(Import("../a"), "b/main.js", "javascript") == "a/index.js"
    assert resolver.resolve_module(Import("c"), "b/main.js", "javascript") is None


def test_c_includes(workspace: Path) -> None:
    resolver = ImportResolver(workspace)
    source = '#include "buffer.h"\n#include "arena.h"\n#include "include/common.h"\n'
    source += "#include <stdio.h>\n"
    resolved = [
        resolver.resolve_module(i, "native/src/main.c", "c") for i in extract(source, "c").imports
    ]
    assert resolved == ["native/src/buffer.h", None, "include/common.h", None]


def test_unsupported_languages_resolve_to_nothing(workspace: Path) -> None:
    resolver = ImportResolver(workspace)
    assert resolver.resolve(Import("github.com/x/y"), "main.go", "go") == ()
    assert resolver.resolve(Import("crate::a", ("b",)), "src/lib.rs", "rust") == ()


def test_jsonc_keeps_strings_with_comment_markers() -> None:
    text = '{"a": "http://x//y", /* c */ "b": ["/*not*/",], // end\n}'
    assert strip_jsonc(text) == '{"a": "http://x//y",  "b": ["/*not*/"] \n}'


def test_broken_tsconfig_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path, {"tsconfig.json": "{ not json", "src/a.ts": ""})
    assert read_aliases(tmp_path / "tsconfig.json", "") is None
    assert ImportResolver(tmp_path).resolve_module(Import("src/a"), "src/b.ts", "typescript") is None
    assert "tsconfig.json" in caplog.text


def test_paths_without_base_url_are_relative_to_the_config(tmp_path: Path) -> None:
    _write(tmp_path, {
        "pkg/jsconfig.json": '{"compilerOptions": {"paths": {"~/*": ["./lib/*"]}}}',
        "pkg/lib/x.js": "",
        "pkg/main.js": "",
    })
    resolver = ImportResolver(tmp_path)
    assert resolver.resolve_module(Import("~/x"), "pkg/main.js", "javascript") == "pkg/lib/x.js"
