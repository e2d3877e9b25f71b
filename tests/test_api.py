"""The cursor's site and what it refers to in other files (context/api.py), over a real
workspace index (tree-sitter grammars, import resolution) on a project written to disk."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nextab.context.api import Site, api_chunks, site_at
from nextab.context.index import WorkspaceIndex

SHAPES = '''"""Shapes."""

import math


class Shape:
    """Something with an area."""

    units = "cm"

    def __init__(self, name, *, scale=1.0):
        """Name it."""
        self.name = name
        self.scale = scale
        helper = 12

    def area(self):
        return 0.0

    def describe(self, precision=2):
        """A line about the shape."""
        return f"{self.name}: {self.area():.{precision}f}"

    def _private(self):
        return None


def circle_area(radius, *, squared=False):
    """The area of a circle of the given radius.

    Uses math.pi.
    """
    secret_body_line = radius * radius
    return math.pi * secret_body_line
'''

APP = '''import pkg.shapes as geo
from pkg import shapes
from pkg.shapes import Shape, circle_area as area


class Square(Shape):
    def side(self):
        return 1

    def report(self):
        return 0
'''


@pytest.fixture
def index(tmp_path: Path) -> Iterator[WorkspaceIndex]:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "shapes.py").write_text(SHAPES)
    (tmp_path / "app.py").write_text(APP)
    with indexed(tmp_path) as ready:
        yield ready


@contextmanager
def indexed(root: Path) -> Iterator[WorkspaceIndex]:
    """The workspace index of `root`, once it has read every file."""
    index = WorkspaceIndex(root)
    index.start()
    try:
        assert index.wait_ready(timeout=30)
        yield index
    finally:
        index.stop()


def at_end(index: WorkspaceIndex, code: str, *, inside_report: bool = False) -> list:
    """The api chunks with `code` typed at the end of app.py (inside Square.report if asked)."""
    text = APP.replace("        return 0\n", f"        {code}\n") if inside_report else APP + code
    offset = text.index(code) + len(code)
    index.update_text("app.py", text)
    return api_chunks(index, "app.py", text, offset)


@pytest.mark.parametrize(
    ("before", "site"),
    [
        ("x = area(", Site("call", ("area",))),
        ("x = area(1, ", Site("call", ("area",))),
        ("x = geo.circle_area(r, f(a), ", Site("call", ("geo", "circle_area"))),
        ("x = area(\n    1,\n    ", Site("call", ("area",))),
        ("x = geo.", Site("attribute", ("geo",))),
        ("x = self.name.up", Site("attribute", ("self", "name"), "up")),
        ('x = area(")(", ', Site("call", ("area",))),
        ("x = area(1)  # call(", None),
        ("x = [area(1), ", None),
        ("if (", None),
        ("def area(", None),
        ("class Square(", None),
        ("x = 3.", None),
        ("x = 1", None),
    ],
)
def test_site_is_read_off_the_text_before_the_cursor(before: str, site: Site | None) -> None:
    assert site_at(before, len(before)) == site


def test_a_call_to_an_imported_function_shows_its_signature_and_docstring(index) -> None:
    (chunk,) = at_end(index, "x = area(")
    assert chunk.path == "pkg/shapes.py"
    assert chunk.origin == "api"
    assert chunk.text.startswith("def circle_area(radius, *, squared=False):\n")
    assert "The area of a circle of the given radius." in chunk.text
    assert "secret_body_line" not in chunk.text  # the body is left out
    assert chunk.text.rstrip().endswith("...")


def test_a_call_to_an_imported_class_shows_its_interface(index) -> None:
    (chunk,) = at_end(index, "s = Shape(")
    text = chunk.text
    assert text.startswith("class Shape:\n")
    assert '    units = "cm"' in text
    # The other public methods as signatures; the constructor, with the fields it sets, last:
    # nearest the arguments being written.
    assert "    def describe(self, precision=2):\n        ...\n" in text
    assert text.index("def area(self):") < text.index("def __init__(self, name, *, scale=1.0):")
    assert text.rstrip().endswith("        self.scale = scale\n        ...")
    assert "helper = 12" not in text
    assert "_private" not in text
    assert "return f" not in text


def test_members_that_have_to_do_with_the_code_before_the_cursor_come_last(index) -> None:
    (cls,) = at_end(index, "    def describe_twice(self):\n        return self.", inside_report=True)
    # Shown last, and with its documentation (members unrelated to the cursor have none).
    assert cls.text.rstrip().endswith(
        'def describe(self, precision=2):\n        """A line about the shape."""\n        ...'
    )


def test_module_aliases_and_submodules_lead_to_the_module(index) -> None:
    for code in ("x = geo.circle_area(", "x = shapes.circle_area("):
        (chunk,) = at_end(index, code)
        assert chunk.text.startswith("def circle_area(")
    (members,) = at_end(index, "x = geo.ci")
    assert members.kind == "module"
    # What the developer started to type comes last, nearest the cursor.
    assert members.text.rstrip().endswith('Uses math.pi.\n    """\n    ...')
    assert "def circle_area(radius, *, squared=False):\n" in members.text
    assert "class Shape:" in members.text


def test_self_reaches_members_inherited_from_another_file(index) -> None:
    (method,) = at_end(index, "return self.describe(", inside_report=True)
    assert method.text.startswith("class Shape:\n    def describe(self, precision=2):")
    (base,) = at_end(index, "return self.", inside_report=True)
    assert base.text.startswith("class Shape:")
    # A member the class defines itself is in the file already.
    assert at_end(index, "return self.side(", inside_report=True) == []


def test_nothing_for_unknown_or_local_names(index) -> None:
    assert at_end(index, "x = len(") == []
    assert at_end(index, "x = Square(") == []  # defined in this file
    assert at_end(index, "x = unknown.thing(") == []
    assert at_end(index, "x = 1 + ") == []


JS_SHAPE = """/**
 * A shape with an area.
 */
export class Shape {
  /** Make one. */
  constructor(name) {
    this.name = name;
  }

  area() {
    return 0;
  }
}

/**
 * Scale a value.
 * @param {number} value
 */
export function scale(value, factor) {
  const hidden = value * factor;
  return hidden;
}
"""


def test_javascript_shows_doc_comments_above_the_definition(tmp_path: Path) -> None:
    (tmp_path / "shape.js").write_text(JS_SHAPE)
    app = "import { Shape, scale } from './shape';\n\nconst x = scale("
    (tmp_path / "app.js").write_text(app)
    with indexed(tmp_path) as index:
        (chunk,) = api_chunks(index, "app.js", app, len(app))
        assert chunk.text.startswith("/**\n * Scale a value.")
        assert "export function scale(value, factor)" in chunk.text or "function scale(value, factor)" in chunk.text
        assert "hidden" not in chunk.text
        code = app.replace("scale(", "new Shape(")
        (cls,) = api_chunks(index, "app.js", code, len(code))
        assert "class Shape" in cls.text
        assert "constructor(name)" in cls.text
        assert "this.name = name;" in cls.text


def test_a_class_inside_a_function_reaches_its_bases(index) -> None:
    local = "def make():\n    class Local(Shape):\n        def run(self):\n            return self."
    (base,) = at_end(index, local)
    assert base.text.startswith("class Shape:")
    (method,) = at_end(index, local + "describe(")
    assert "def describe(self, precision=2):" in method.text
    # Its own members are in the file.
    own = local.replace("return self.", "self.label = 1\n            return self.label(")
    assert at_end(index, own) == []


def test_names_re_exported_by_a_package_and_inherited_twice(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from .base import Child\n")
    (tmp_path / "pkg" / "base.py").write_text(
        "class Root:\n    def rooted(self, depth):\n        return depth\n\n\n"
        "class Child(Root):\n    def child_only(self):\n        return 1\n"
    )
    app = "from pkg import Child\n\n\nclass Leaf(Child):\n    def go(self):\n        return self.rooted("
    (tmp_path / "app.py").write_text(app)
    with indexed(tmp_path) as index:
        (method,) = api_chunks(index, "app.py", app, len(app))
        assert method.path == "pkg/base.py"
        assert method.text.startswith("class Root:\n    def rooted(self, depth):")
        call = "from pkg import Child\n\nx = Child("
        (cls,) = api_chunks(index, "app.py", call, len(call))
        assert cls.text.startswith("class Child(Root):")


def test_a_method_called_on_an_unknown_object_is_shown_when_its_name_is_unique(index) -> None:
    (method,) = at_end(index, "def show(thing):\n    return thing.describe(")
    assert "def describe(self, precision=2):" in method.text
    # Defined in the current file: nothing to add.
    assert at_end(index, "def show(thing):\n    return thing.side(") == []
