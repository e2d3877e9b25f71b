"""Repository context end to end: a real workspace on disk, the engine, the tiny model.

The prompt is read back from the document's KV cache, which holds exactly the tokens the model
saw, so these tests check what reaches the model, not what some intermediate returned.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nextab.config import Config, ContextConfig
from nextab.context.document import Document
from nextab.context.workspace import RECENT_EDITS_PATH, only_imports
from nextab.engine import CompletionRequest, Engine, Suggestion
from tests.files import write_files

GEOMETRY = '''"""Shapes."""

PI = 3.14159


def area_of_circle(radius):
    """The area of a circle of the given radius."""
    return PI * radius ** 2


def perimeter_of_circle(radius):
    return 2 * PI * radius
'''

UNRELATED = '''def parse_http_header(line):
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()
'''

APP = """from pkg.geometry import area_of_circle


def report(r):
    total = area_of_circle(
"""


WITHOUT_API = ("definitions", "newImports", "edited", "viewed", "similar", "imports")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    files = {"pkg/__init__.py": "", "pkg/geometry.py": GEOMETRY, "pkg/http.py": UNRELATED, "app.py": APP}
    return write_files(tmp_path / "project", files)


def make_engine(tiny_backend, **context: object) -> Engine:
    config = Config(max_tokens=2, context=ContextConfig(watch=False, **context))  # type: ignore[arg-type]
    return Engine(config, tiny_backend)


@pytest.fixture
def engine_factory(tiny_backend) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(**context: object) -> Engine:
        engine = make_engine(tiny_backend, **context)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close_workspace()


def complete(engine: Engine, root: Path, doc: Document | None = None) -> tuple[Suggestion, str]:
    text = (root / "app.py").read_text() if doc is None else doc.text
    doc = doc or Document((root / "app.py").as_uri(), text, "python")
    suggestion = engine.complete(
        CompletionRequest(doc, len(text), text, path=str(root / "app.py"))
    )
    prompt = engine.backend.detokenize(doc.kv.tokens[: suggestion.metrics.prompt_tokens])
    return suggestion, prompt


def open_ready(engine: Engine, root: Path, **kwargs: object):
    workspace = engine.open_workspace(root, store_dir=kwargs.pop("store_dir", None), **kwargs)  # type: ignore[arg-type]
    assert workspace.index.wait_ready(timeout=30)
    return workspace


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_full_strategy_shows_the_definition_of_the_imported_name(engine_factory, project):
    engine = engine_factory(strategy="full", pool_tokens=2048, budget_tokens=2048)
    open_ready(engine, project)
    suggestion, prompt = complete(engine, project)
    assert "<|file_sep|>pkg/geometry.py\n" in prompt
    assert "def area_of_circle(radius):" in prompt
    # The other files come before the current one, whose header comes last.
    assert prompt.index("def area_of_circle") < prompt.index("<|file_sep|>app.py")
    assert suggestion.metrics.context_tokens > 0


def test_no_workspace_and_strategy_none_show_only_the_current_file(engine_factory, project):
    for engine in (engine_factory(strategy="full"), engine_factory(strategy="none")):
        if engine.config.context.strategy == "none":
            open_ready(engine, project)
        suggestion, prompt = complete(engine, project)
        assert "def area_of_circle" not in prompt
        assert suggestion.metrics.context_tokens == 0


def test_budget_limits_the_material(engine_factory, project):
    # The definition of area_of_circle is the first candidate but does not fit; a smaller,
    # similar chunk does.
    engine = engine_factory(strategy="full", pool_tokens=2048, budget_tokens=60)
    workspace = open_ready(engine, project)
    suggestion, _ = complete(engine, project)
    assert 0 < suggestion.metrics.context_tokens <= 60
    material = workspace.material("app.py", APP, len(APP))
    assert sum(workspace.count_tokens(p.text) for p in material.pieces) <= 60
    assert "def area_of_circle" not in "".join(p.text for p in material.pieces)


def test_longcodezip_is_prepared_in_the_background_then_kept_stable(engine_factory, project):
    engine = engine_factory(strategy="longcodezip", pool_tokens=1024, budget_tokens=64)
    workspace = open_ready(engine, project)
    doc = Document((project / "app.py").as_uri(), APP, "python")
    first, prompt = complete(engine, project, doc)
    # Compression runs the model: not on the request path, so the first request goes without.
    assert first.metrics.context_tokens == 0 and "<|file_sep|>pkg/geometry.py" not in prompt
    wait_for(lambda: not workspace.pending())
    second, prompt = complete(engine, project, doc)
    assert 0 < second.metrics.context_tokens <= 64
    assert "<|file_sep|>pkg/geometry.py" in prompt
    # A keystroke at the same place keeps the material, so the prompt's prefix is reused.
    typed = APP + "r"
    third = engine.complete(CompletionRequest(doc, len(typed), typed, path=str(project / "app.py")))
    assert third.metrics.context_tokens == second.metrics.context_tokens
    assert third.metrics.reused_tokens >= second.metrics.prompt_tokens - 4


@pytest.mark.parametrize("with_edits", [True, False])
def test_recent_edits_reach_the_prompt_as_a_diff_with_the_edits_source(engine_factory, project, with_edits):
    sources = ("definitions", "similar", "edits") if with_edits else ContextConfig().sources
    engine = engine_factory(strategy="full", pool_tokens=2048, budget_tokens=2048, sources=sources)
    workspace = open_ready(engine, project)
    uri = (project / "pkg" / "http.py").as_uri()
    before = UNRELATED
    at = before.index("lower()")
    workspace.history.record(uri, before, at, at + len("lower()"), "upper()", 2, now=time.time())
    workspace.history.close_open_edits()
    _, prompt = complete(engine, project)
    if not with_edits:
        # Off by default: the material is chunks only.
        assert RECENT_EDITS_PATH not in prompt and "<|file_sep|>pkg/geometry.py" in prompt
        return
    assert f"<|file_sep|>{RECENT_EDITS_PATH}\n" in prompt
    assert "-    return name.strip().lower(), value.strip()" in prompt
    assert "+    return name.strip().upper(), value.strip()" in prompt
    # Last before the current file: what changes most sits nearest the cursor.
    assert prompt.index(RECENT_EDITS_PATH) > prompt.index("pkg/geometry.py")


def test_index_and_history_persist_across_restarts(engine_factory, project, tmp_path):
    store = tmp_path / "store"
    engine = engine_factory(strategy="full")
    workspace = open_ready(engine, project, store_dir=store)
    uri = (project / "app.py").as_uri()
    workspace.history.record(uri, APP, len(APP), len(APP), "r)\n", 2, now=time.time())
    engine.close_workspace()
    assert (store / "history.msgpack").exists() and (store / "index.msgpack").exists()
    again = open_ready(engine, project, store_dir=store)
    assert [e.new for e in again.history.edits()] == ["r)\n"]
    assert again.index.stats().parsed == 0  # nothing changed on disk: nothing re-parsed


def test_a_file_written_outside_the_editor_becomes_context(tiny_backend, project):
    engine = Engine(
        Config(max_tokens=2, context=ContextConfig(strategy="full", watch=True)), tiny_backend
    )
    try:
        workspace = open_ready(engine, project)
        (project / "pkg" / "volume.py").write_text(
            "def volume_of_sphere(radius):\n    return 4 / 3 * 3.14159 * radius ** 3\n"
        )
        wait_for(lambda: bool(workspace.index.definitions_named("volume_of_sphere")), 20)
        text = "from pkg.volume import volume_of_sphere\n\nv = volume_of_sphere("
        material = workspace.prepare("app.py", text, len(text))
        assert any(p.path == "pkg/volume.py" for p in material.pieces)
    finally:
        engine.close_workspace()


def test_relative_paths(engine_factory, project):
    workspace = open_ready(engine_factory(strategy="none"), project)
    assert workspace.relative((project / "pkg" / "geometry.py").as_uri()) == "pkg/geometry.py"
    assert workspace.relative(str(project / "app.py")) == "app.py"
    assert workspace.relative("pkg/http.py") == "pkg/http.py"
    assert dataclasses.is_dataclass(workspace.settings)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_auto_strategy_is_bm25_and_needs_no_model_calls(engine_factory, project, monkeypatch, device):
    engine = engine_factory(strategy="auto", pool_tokens=2048, budget_tokens=512)
    # On a GPU too: LongCodeZip chose no better material at the same budget.
    monkeypatch.setattr(engine.backend, "info", dataclasses.replace(engine.backend.info, device=device))
    workspace = open_ready(engine, project)
    assert workspace.settings.strategy == "bm25"
    suggestion, prompt = complete(engine, project)
    # Ready on the first request: nothing waited for a background model run.
    assert suggestion.metrics.context_tokens > 0 and not workspace.pending()
    assert "<|file_sep|>pkg/geometry.py" in prompt


def test_chunks_edited_recently_in_other_files_are_candidates(engine_factory, project):
    engine = engine_factory(strategy="full", pool_tokens=2048, budget_tokens=2048)
    workspace = open_ready(engine, project)
    uri = (project / "pkg" / "http.py").as_uri()
    at = UNRELATED.index("lower()")
    edited = UNRELATED[:at] + "casefold()" + UNRELATED[at + len("lower()"):]
    workspace.history.record(uri, UNRELATED, at, at + len("lower()"), "casefold()", 2)
    workspace.history.close_open_edits()
    workspace.open_document("pkg/http.py", edited)
    text = "x = 1\n"
    found = workspace.candidates("app.py", text, len(text))
    recent = [c for c in found if c.why == "recent"]
    assert [c.chunk.path for c in recent] == ["pkg/http.py"]
    assert "casefold()" in recent[0].chunk.text


def test_names_imported_but_not_used_yet_rank_before_similar_code(engine_factory, project):
    # The cursor sits before the first use of `perimeter_of_circle`, far below the imports: no
    # name near it points there, only the import does.
    filler = "".join(f"\n\ndef step_{i}(x):\n    return x + {i}\n" for i in range(12))
    (project / "pkg" / "shapes.py").write_text(
        "from pkg.geometry import PI as TAU_HALF, perimeter_of_circle, area_of_circle\n"
        "from pkg import http\n"
        f"{filler}\n\n"
        "def fence(r):\n"
        "    inner = area_of_circle(r)\n"
        "    return TAU_HALF * inner\n\n\n"
        "def rope(r):\n"
        "    return "
    )
    engine = engine_factory(strategy="full", pool_tokens=4096, budget_tokens=4096)
    workspace = open_ready(engine, project)
    text = (project / "pkg" / "shapes.py").read_text()
    found = workspace.candidates("pkg/shapes.py", text, len(text))
    kinds = [(c.why, c.chunk.path, c.chunk.text.split("(")[0]) for c in found]
    imported = [k for k in kinds if k[0] == "imported"]
    assert imported[0] == ("imported", "pkg/geometry.py", "def perimeter_of_circle")
    assert kinds.index(imported[0]) < min(
        (i for i, k in enumerate(kinds) if k[0] == "similar"), default=len(kinds)
    )
    # A name used near the cursor is a definition candidate already; one used elsewhere
    # (PI, under its local name) comes after the similar code.
    assert kinds[0] == ("definition", "pkg/geometry.py", "def area_of_circle")
    assert kinds[-1] == ("imported", "pkg/geometry.py", '"""Shapes."""\n\nPI = 3.14159\n\n\n')


def test_a_definition_candidate_is_the_chunk_that_holds_the_definition(engine_factory, project):
    engine = engine_factory(strategy="full")
    workspace = open_ready(engine, project)
    found = workspace.candidates("app.py", APP, len(APP))
    definitions = [c.chunk for c in found if c.why == "definition"]
    assert definitions[0].path == "pkg/geometry.py"
    assert definitions[0].text.startswith("def area_of_circle(radius):")
    assert definitions[0].start_line == 5 and definitions[0].end_line == 10


def test_material_follows_changes_to_other_files_but_not_to_its_own(engine_factory, project):
    # Whole chunks (no interface of the callee in their place).
    engine = engine_factory(
        strategy="full", pool_tokens=2048, budget_tokens=2048, sources=WITHOUT_API
    )
    workspace = open_ready(engine, project)
    first = workspace.material("app.py", APP, len(APP))
    assert "return PI * radius ** 2" in "".join(p.text for p in first.pieces)
    # Typing in the current file (the server re-indexes its buffer) keeps the material, and
    # with it the prompt's prefix.
    typed = APP + "r"
    workspace.open_document("app.py", typed)
    assert workspace.material("app.py", typed, len(typed)) is first
    # Another file changed (in an editor buffer, or on disk): the material is made again.
    workspace.open_document("pkg/geometry.py", GEOMETRY.replace("PI * radius ** 2", "PI * r2"))
    again = workspace.material("app.py", typed, len(typed))
    shown = "".join(p.text for p in again.pieces)
    assert "return PI * r2" in shown and "return PI * radius ** 2" not in shown


def test_chunks_where_the_cursor_was_in_other_files_are_candidates(engine_factory, project):
    engine = engine_factory(strategy="full", pool_tokens=2048, budget_tokens=2048)
    workspace = open_ready(engine, project)
    # Inside report(), not on app.py's import line: a file's imports alone are never material.
    text, cursor = APP, APP.index("total")
    assert not [c for c in workspace.candidates("app.py", text, cursor) if c.why == "viewed"]
    # A completion request in pkg/http.py: the developer was looking there.
    at = UNRELATED.index("name, _")
    workspace.material("pkg/http.py", UNRELATED, at)
    workspace.material("app.py", text, cursor)
    viewed = [c for c in workspace.candidates("app.py", text, cursor) if c.why == "viewed"]
    assert [(c.chunk.path, c.chunk.start_line) for c in viewed] == [("pkg/http.py", 0)]
    # From pkg/http.py, app.py is where the cursor was; its own places are not "elsewhere".
    back = [c for c in workspace.candidates("pkg/http.py", UNRELATED, at) if c.why == "viewed"]
    assert [(c.chunk.path, c.chunk.text.startswith("def report")) for c in back] == [("app.py", True)]


def test_the_callee_at_the_cursor_is_pinned_as_its_interface(engine_factory, project):
    # Only what the call refers to: the signature and docstring, not the body.
    engine = engine_factory(strategy="bm25", sources=("api",), budget_tokens=512)
    workspace = open_ready(engine, project)
    material = workspace.material("app.py", APP, len(APP))
    assert [p.path for p in material.pieces] == ["pkg/geometry.py"]
    text = material.pieces[0].text
    assert "def area_of_circle(radius):" in text
    assert '"""The area of a circle of the given radius."""' in text
    assert "return PI" not in text
    _, prompt = complete(engine, project)
    assert "def area_of_circle(radius):" in prompt
    # Where no call or attribute leads to another file, nothing: the file alone.
    fresh = open_ready(engine_factory(strategy="bm25", sources=("api",)), project)
    plain = "from pkg.geometry import area_of_circle\n\n\ndef report(r):\n    total = "
    assert fresh.material("app.py", plain, len(plain)).pieces == ()


def test_pinned_material_stays_while_the_cursor_stays_at_its_place(engine_factory, project):
    engine = engine_factory(strategy="bm25", sources=("api",), budget_tokens=512)
    workspace = open_ready(engine, project)
    doc = Document((project / "app.py").as_uri(), APP, "python")
    first, _ = complete(engine, project, doc)
    assert first.metrics.context_tokens > 0
    # Leaving the call keeps the material (and so the prompt's prefix and its cache).
    typed = APP + "r)\n    return total + "
    doc.apply_change(typed)
    after = engine.complete(CompletionRequest(doc, len(typed), typed, path=str(project / "app.py")))
    assert after.metrics.context_tokens == first.metrics.context_tokens
    assert after.metrics.reused_tokens >= first.metrics.prompt_tokens - 4
    # Elsewhere in the file (another place) it is gone.
    far = typed + "\n" * 40 + "x = "
    assert workspace.material("app.py", far, len(far)).pieces == ()


def test_pinned_material_is_kept_first_and_the_rest_fills_what_the_budget_leaves(engine_factory, project):
    engine = engine_factory(strategy="bm25", budget_tokens=200, sources=("api", "similar"))
    workspace = open_ready(engine, project)
    pinned = workspace.count_tokens(
        '…\ndef area_of_circle(radius):\n    """The area of a circle of the given radius."""\n    ...\n'
    )
    material = workspace.material("app.py", APP, len(APP))
    text = "".join(p.text for p in material.pieces)
    assert '"""The area of a circle of the given radius."""\n    ...' in text
    assert pinned < material.tokens <= 200  # similar code took the rest
    # Shown last of the material, nearest the current file.
    assert material.pieces[-1].path == "pkg/geometry.py"
    assert '"""The area of a circle of the given radius."""\n    ...' in material.pieces[-1].text
    without = engine_factory(strategy="bm25", budget_tokens=200, sources=("similar",))
    other = open_ready(without, project).material("app.py", APP, len(APP))
    assert '"""The area of a circle of the given radius."""\n    ...' not in "".join(p.text for p in other.pieces)


def test_back_at_a_place_its_material_is_the_one_it_had(engine_factory, project):
    # BM25 ranks by the code before the cursor: made again from what was typed since, the
    # material would differ, and so would the prompt's prefix the document's cache holds.
    padding = "".join(f"def helper_{i}(value):\n    return value * {i}\n\n\n" for i in range(20))
    text = "from pkg.geometry import area_of_circle\n\n\n" + padding + "def report(r):\n    "
    engine = engine_factory(strategy="bm25", sources=("similar",), budget_tokens=64)
    workspace = open_ready(engine, project)
    top = text.index("def helper_1(")
    first = workspace.material("app.py", text, top)
    assert first.pieces
    workspace.material("app.py", text, len(text))  # another place of the file
    typed = text[:top] + "name, _, value = line.partition(':')\n" + text[top:]
    workspace.open_document("app.py", typed)
    assert workspace.material("app.py", typed, top) is first


def test_new_material_is_prefilled_in_the_background_not_on_the_keystroke(engine_factory, project):
    # A long file: its window is what new material before it would make the keystroke
    # compute again.
    padding = "".join(f"def helper_{i}(value):\n    return value * {i}\n\n\n" for i in range(30))
    head = "from pkg.geometry import area_of_circle\n\n\n" + padding + "def report(r):\n    total = "
    engine = engine_factory(strategy="bm25", sources=("api",), budget_tokens=512)
    open_ready(engine, project)
    path = str(project / "app.py")
    doc = Document((project / "app.py").as_uri(), head, "python")
    first = engine.complete(CompletionRequest(doc, len(head), head, path=path))
    assert first.metrics.context_tokens == 0  # no call at the cursor: the file alone
    # Typing a call to another file's function: its interface is new material, which would
    # recompute the whole window; the keystroke keeps the cached prompt instead.
    typed = head + "area_of_circle("
    doc.apply_change(typed)
    cache = doc.kv
    second = engine.complete(CompletionRequest(doc, len(typed), typed, path=path))
    assert second.metrics.context_tokens == 0
    assert second.metrics.reused_tokens >= first.metrics.prompt_tokens - 4
    # Meanwhile the prompt with the interface is pre-filled into a cache of its own, which
    # then replaces the document's.
    wait_for(lambda: doc.kv is not cache, 60)
    more = typed + "r"
    doc.apply_change(more)
    third = engine.complete(CompletionRequest(doc, len(more), more, path=path))
    assert third.metrics.context_tokens > 0
    assert third.metrics.prompt_tokens - third.metrics.reused_tokens <= 8
    # A document with nothing cached takes the fresh material at once.
    cold = Document((project / "app.py").as_uri(), typed, "python")
    fresh = engine.complete(CompletionRequest(cold, len(typed), typed, path=path))
    assert fresh.metrics.context_tokens == third.metrics.context_tokens


def test_file_headers_of_nothing_but_imports_are_never_candidates(engine_factory, tmp_path):
    # semver's layout: many small modules, each opening with the same require. Those headers
    # are "definitions" of `parse` and similar to the query, and a prompt of them reads as
    # files that end after their imports.
    root = tmp_path / "js"
    root.mkdir()
    (root / "parse.js").write_text("const parse = (version) => {\n  return version.split('.')\n}\nmodule.exports = parse\n")
    for name in ("clean", "major", "minor"):
        (root / f"{name}.js").write_text(
            f"const parse = require('./parse')\n\nconst {name} = (v) => {{\n"
            f"  return parse(v)\n}}\nmodule.exports = {name}\n"
        )
    engine = engine_factory(strategy="full", pool_tokens=2048, budget_tokens=2048)
    workspace = open_ready(engine, root)
    text = "const parse = require('./parse')\n"
    found = workspace.candidates("valid.js", text, len(text))
    assert found, "the definition of parse and the similar modules are still candidates"
    assert not [c for c in found if c.chunk.text.strip() == "const parse = require('./parse')"]
    assert any(c.chunk.path == "parse.js" for c in found)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("import os\nfrom pkg.geometry import area_of_circle\n\n# shapes\n", True),
        ("'use strict'\nconst { a, b } = require('./x')\nconst fs = require('fs')\n", True),
        ("import { parse } from './parse'\nexport * from './range'\n", True),
        ("#include <stdio.h>\n", True),
        ("import os\nROOT = os.getcwd()\n", False),
        ("const parse = require('./parse')\nconst cache = new Map()\n", False),
        ("# only a comment\n", False),
        ("", False),
    ],
)
def test_only_imports(text, expected):
    assert only_imports(text) is expected
