"""context/syntax.py: incremental trees, structure queries and insertion checks on real grammars."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tree_sitter import Point, Tree

from nextab.context.cursor import decide_mode
from nextab.context.document import Document, Position, Range
from nextab.context.languages import language, parser
from nextab.context.syntax import GRAMMARS, SyntaxTree, count_errors

SAMPLES = {
    "python": '''\
import os


class Greeter:
    """Says hello — in any language: 你好."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def greeting(self) -> str:
        # A comment with é and 😀
        if self.name:
            return f"Hello, {self.name}!"
        return "Hello"


def main(argv: list[str]) -> int:
    for arg in argv:
        print(Greeter(arg).greeting)
    return 0
''',
    "javascript": """\
// Greeter — 你好 😀
class Greeter {
  constructor(name) {
    this.name = name;
  }

  greet() {
    return `Hello, ${this.name}!`;
  }
}

const shout = (text) => {
  return text.toUpperCase() + "é";
};

function main(args) {
  for (const a of args) {
    console.log(shout(new Greeter(a).greet()));
  }
}
""",
    "typescript": """\
interface Named {
  name: string; // é
}

export class Greeter implements Named {
  constructor(public name: string) {}

  greet(times: number): string {
    let out = "";
    for (let i = 0; i < times; i++) {
      out += `Hello, ${this.name} 😀`;
    }
    return out;
  }
}

const make = async (name: string): Promise<Greeter> => {
  return new Greeter(name);
};
""",
    "tsx": """\
import React from "react";

type Props = { name: string };

export function Hello({ name }: Props) {
  const text = `Hello, ${name} — 你好`;
  return <div className="hello">{text}</div>;
}

export const List = ({ items }: { items: string[] }) => {
  return (
    <ul>
      {items.map((i) => (
        <li key={i}>{i}</li>
      ))}
    </ul>
  );
};
""",
    "go": """\
package greet

import "fmt"

// Greeter says hello — 你好 😀.
type Greeter struct {
\tName string
}

func (g *Greeter) Greet(times int) string {
\tout := ""
\tfor i := 0; i < times; i++ {
\t\tout += fmt.Sprintf("Hello, %s é", g.Name)
\t}
\treturn out
}

func Main(args []string) {
\tfor _, a := range args {
\t\tfmt.Println((&Greeter{Name: a}).Greet(1))
\t}
}
""",
    "rust": """\
/// Greeter — 你好 😀
pub struct Greeter {
    name: String,
}

impl Greeter {
    pub fn new(name: &str) -> Self {
        Greeter { name: name.to_string() }
    }

    pub fn greet(&self, times: usize) -> String {
        let mut out = String::new();
        for _ in 0..times {
            out.push_str(&format!("Hello, {} é", self.name));
        }
        out
    }
}

fn main() {
    println!("{}", Greeter::new("x").greet(2));
}
""",
    "java": """\
package greet;

/** Greeter — 你好 😀 */
public class Greeter {
    private final String name;

    public Greeter(String name) {
        this.name = name;
    }

    public String greet(int times) {
        StringBuilder out = new StringBuilder();
        for (int i = 0; i < times; i++) {
            out.append("Hello, é ").append(name);
        }
        return out.toString();
    }
}
""",
    "c": """\
#include <stdio.h>

/* Greeter — 你好 😀 */
struct greeter {
    const char *name;
};

static int greet(const struct greeter *g, int times) {
    for (int i = 0; i < times; i++) {
        printf("Hello, %s é\\n", g->name);
    }
    return times;
}

int main(int argc, char **argv) {
    struct greeter g = {argv[0]};
    return greet(&g, argc);
}
""",
    "cpp": """\
#include <string>

namespace greet {
// Greeter — 你好 😀
class Greeter {
 public:
  explicit Greeter(std::string name) : name_(name) {}

  std::string Greet(int times) const {
    std::string out;
    for (int i = 0; i < times; i++) {
      out += "Hello, é " + name_;
    }
    return out;
  }

 private:
  std::string name_;
};
}  // namespace greet

int main() { return greet::Greeter("x").Greet(1).size() > 0 ? 0 : 1; }
""",
}

LANGUAGES = sorted(SAMPLES)
# Code-ish fragments, newlines and characters of every UTF-8 width.
FRAGMENTS = [
    "(",
    ")",
    "{",
    "}",
    ":",
    ";",
    "\n",
    "    ",
    '"',
    "'",
    "x",
    "def ",
    "if ",
    "é",
    "中",
    "😀",
    "= 1",
]


def full_parse(name: str, text: str):
    return parser(name).parse(text.encode("utf-8"))


def shape(tree) -> list[tuple[str, int, int, bool, bool]]:
    """Every node's type and byte range, in document order."""
    out = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        out.append((node.type, node.start_byte, node.end_byte, node.is_error, node.is_missing))
        stack.extend(reversed(node.children))
    return out


def assert_same_tree(name: str, text: str, tree) -> None:
    expected = full_parse(name, text)
    assert str(tree.root_node) == str(expected.root_node)
    assert shape(tree) == shape(expected)
    assert tree.root_node.end_point == expected.root_node.end_point


@st.composite
def edit_scripts(draw):
    name = draw(st.sampled_from(LANGUAGES))
    steps = draw(
        st.lists(
            st.tuples(
                st.floats(0, 1),  # where
                st.integers(0, 12),  # how much to remove
                st.lists(st.sampled_from(FRAGMENTS), max_size=4),  # what to insert
                st.booleans(),  # read the tree after this edit (else batch it with the next)
            ),
            min_size=1,
            max_size=12,
        )
    )
    return name, steps


# --- incremental trees equal full parses ---------------------------------------------------


class ReferenceTree:
    """Tree-sitter driven directly, byte offsets and points computed from encoded prefixes:
    an independent check of SyntaxTree's translation of string offsets."""

    def __init__(self, name: str, text: str) -> None:
        self.parser = parser(name)
        self.text = text
        # Parsed on first read, as SyntaxTree does: edits before it need no tree.
        self.tree: Tree | None = None

    def edit(self, start: int, end: int, inserted: str) -> None:
        new = self.text[:start] + inserted + self.text[end:]
        if self.tree is None:
            self.text = new
            return

        def point(text: str, offset: int) -> Point:
            lines = text[:offset].encode("utf-8").split(b"\n")
            return Point(len(lines) - 1, len(lines[-1]))

        self.tree.edit(
            start_byte=len(self.text[:start].encode("utf-8")),
            old_end_byte=len(self.text[:end].encode("utf-8")),
            new_end_byte=len(new[: start + len(inserted)].encode("utf-8")),
            start_point=point(self.text, start),
            old_end_point=point(self.text, end),
            new_end_point=point(new, start + len(inserted)),
        )
        self.text = new

    def parse(self):
        source = self.text.encode("utf-8")
        old = self.tree
        self.tree = self.parser.parse(source) if old is None else self.parser.parse(source, old)
        return self.tree


@settings(max_examples=150, deadline=None)
@given(script=edit_scripts())
@example(script=("c", [(0.0, 0, [], True), (0.15625, 4, [], True)]))  # found by CI
def test_incremental_tree_equals_a_full_parse(script):
    # Where the result parses cleanly the incremental tree must be the full parse's. With
    # errors, tree-sitter's recovery may legitimately differ between an incremental and a
    # fresh parse (it does with tree-sitter alone): there it must equal a reference driven
    # with the same edits and the same parse points.
    name, steps = script
    text = SAMPLES[name]
    tree = SyntaxTree.create(text, name)
    reference = ReferenceTree(name, text)
    assert tree is not None
    expected = None  # the reference's tree as of the last read, if nothing was edited since
    for where, remove, pieces, read in steps:
        start = int(where * len(text))
        end = min(len(text), start + remove)
        inserted = "".join(pieces)
        tree.edit(start, end, inserted)
        reference.edit(start, end, inserted)
        text = text[:start] + inserted + text[end:]
        assert tree.text == text
        expected = None
        if read:
            expected = reference.parse()
            assert shape(tree.snapshot().tree) == shape(expected)
    # Parsing an erroneous tree again with itself as the old tree may recover differently, so
    # the reference parses again only where SyntaxTree would (an edit since the last read).
    final = tree.snapshot().tree
    expected = expected if expected is not None else reference.parse()
    assert str(final.root_node) == str(expected.root_node)
    assert shape(final) == shape(reference.tree)
    if not full_parse(name, text).root_node.has_error:
        assert_same_tree(name, text, final)


@st.composite
def retyping_scripts(draw):
    """Delete a span of a sample, then type it back in chunks: the end text is the sample."""
    name = draw(st.sampled_from(LANGUAGES))
    text = SAMPLES[name]
    start = draw(st.integers(0, len(text) - 1))
    end = draw(st.integers(start + 1, min(len(text), start + 80)))
    cuts = sorted(
        draw(st.sets(st.integers(start + 1, end - 1), max_size=10)) if end - start > 1 else []
    )
    reads = draw(st.lists(st.booleans(), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    return name, start, end, [start, *cuts, end], reads


@settings(max_examples=150, deadline=None)
@given(script=retyping_scripts())
def test_retyped_code_parses_as_the_original(script):
    name, start, end, bounds, reads = script
    original = SAMPLES[name]
    tree = SyntaxTree.create(original, name)
    tree.snapshot()
    tree.edit(start, end, "")
    for (a, b), read in zip(itertools.pairwise(bounds), reads, strict=True):
        tree.edit(a, a, original[a:b])
        if read:
            tree.snapshot()
    assert tree.text == original
    assert_same_tree(name, original, tree.snapshot().tree)


@settings(max_examples=60, deadline=None)
@given(script=edit_scripts())
def test_snapshot_of_an_older_text_equals_its_full_parse(script):
    # A request carries the text as it was; its snapshot comes from the live tree by one edit.
    name, steps = script
    tree = SyntaxTree.create(SAMPLES[name], name)
    old = tree.text
    for where, remove, pieces, _ in steps:
        start = int(where * len(tree.text))
        tree.edit(start, min(len(tree.text), start + remove), "".join(pieces))
    tree.snapshot()
    snapshot = tree.snapshot(old)
    assert snapshot.text == old
    assert_same_tree(name, old, snapshot.tree)  # the sample parses cleanly
    live = tree.snapshot()
    assert live.text == tree.text  # the live tree is untouched
    if not full_parse(name, tree.text).root_node.has_error:
        assert_same_tree(name, tree.text, live.tree)


def test_edits_are_batched_into_one_parse():
    tree = SyntaxTree.create(SAMPLES["python"], "python")
    tree.snapshot()
    assert tree.parses == 1
    for i, c in enumerate("x = 1"):
        tree.edit(i, i, c)
    assert tree.parses == 1  # nothing parsed yet
    snapshot = tree.snapshot()
    assert tree.parses == 2
    assert tree.snapshot() is snapshot  # no edit, no parse
    assert_same_tree("python", tree.text, snapshot.tree)


def test_a_snapshot_is_not_changed_by_later_edits():
    tree = SyntaxTree.create(SAMPLES["c"], "c")
    before = tree.snapshot()
    text = before.text
    tree.edit(0, 0, "int x;\n")
    tree.snapshot()
    assert before.text == text
    assert_same_tree("c", text, before.tree)


def test_full_replacement_parses_from_scratch():
    tree = SyntaxTree.create("x = 1\n", "python")
    tree.snapshot()
    tree.replace(SAMPLES["python"], version=7)
    assert tree.version == 7
    assert_same_tree("python", SAMPLES["python"], tree.snapshot().tree)


def test_edit_outside_the_text_is_a_clear_error():
    tree = SyntaxTree.create("x = 1\n", "python")
    with pytest.raises(ValueError):
        tree.edit(3, 99, "")


def test_unknown_language_is_plain_text():
    assert SyntaxTree.create("some text", "cobol") is None
    assert SyntaxTree.for_document("file:///notes.txt", "hello", "plaintext") is None
    assert SyntaxTree.for_document("file:///a/b.rs", "fn main() {}", "").language == "rust"
    # The languageId wins over the extension.
    assert SyntaxTree.for_document("file:///a/b.txt", "x = 1", "python").language == "python"


def test_grammar_tables_name_real_node_types():
    # A misspelt type would silently never match: every name must exist in its grammar.
    for name, grammar in GRAMMARS.items():
        lang = language(name)
        kinds = {lang.node_kind_for_id(i) for i in range(lang.node_kind_count)}
        names = grammar.blocks | grammar.strings | grammar.comments | grammar.code_in_strings
        missing = (names | set(grammar.scopes)) - kinds
        assert not missing, f"{name}: {sorted(missing)}"


# --- documents -----------------------------------------------------------------------------


def test_document_keeps_its_tree_in_step():
    text = SAMPLES["python"]
    doc = Document("file:///w/greet.py", text, "python", version=1)
    assert doc.syntax is not None and doc.syntax.language == "python"
    line = text.split("\n").index("        self.name = name")
    doc.apply_change("😀", Range(Position(line, 8), Position(line, 12)), version=2)
    doc.apply_change("\n        x = 1", Range(Position(line, 99), Position(line, 99)), version=3)
    assert doc.syntax.text == doc.text
    assert doc.syntax.version == 3
    assert_same_tree("python", doc.text, doc.syntax.snapshot().tree)
    doc.apply_change("fn main() {}\n", version=4)  # full replacement
    assert doc.syntax.text == doc.text == "fn main() {}\n"
    assert_same_tree("python", doc.text, doc.syntax.snapshot().tree)


def test_document_language_from_extension_or_id():
    assert Document("file:///w/a.go", "package a\n").syntax.language == "go"
    assert Document("file:///w/a", "x", "typescriptreact").syntax.language == "tsx"
    assert Document("file:///w/notes.md", "# hi").syntax is None
    assert Document("untitled:Untitled-1", "x").syntax is None


# --- scopes --------------------------------------------------------------------------------


def scopes(name: str, text: str, marker: str) -> list[tuple[str, str, str]]:
    offset = text.index(marker)
    tree = SyntaxTree.create(text, name)
    found = tree.scopes_at(offset)
    for scope in found:
        assert scope.start <= offset <= scope.end
        assert text[scope.start :].startswith(scope.header)
    return [(s.kind, s.name, s.header) for s in found]


def test_python_scopes_outermost_first():
    text = SAMPLES["python"]
    assert scopes("python", text, 'return f"Hello') == [
        ("class", "Greeter", "class Greeter:"),
        ("method", "greeting", "def greeting(self) -> str:"),
    ]
    assert scopes("python", text, "print(") == [
        ("function", "main", "def main(argv: list[str]) -> int:")
    ]
    assert scopes("python", text, "import os") == []


def test_python_scope_on_a_blank_line_below_the_body():
    # The body's last line is done; the cursor on the indented line below is still inside.
    text = "class A:\n    def f(self):\n        x = 1\n        \n\ny = 2\n"
    offset = text.index("\n\ny") - 0
    found = SyntaxTree.create(text, "python").scopes_at(offset)
    assert [(s.kind, s.name) for s in found] == [("class", "A"), ("method", "f")]
    # Dedented to the class body: only the class.
    text2 = "class A:\n    def f(self):\n        x = 1\n    \n"
    found = SyntaxTree.create(text2, "python").scopes_at(len(text2) - 1)
    assert [(s.kind, s.name) for s in found] == [("class", "A")]


def test_scopes_in_braced_languages():
    assert scopes("javascript", SAMPLES["javascript"], "return `Hello") == [
        ("class", "Greeter", "class Greeter"),
        ("method", "greet", "greet()"),
    ]
    assert scopes("javascript", SAMPLES["javascript"], "text.toUpperCase") == [
        ("function", "shout", "const shout = (text) =>"),
    ]
    assert scopes("typescript", SAMPLES["typescript"], "out += ") == [
        ("class", "Greeter", "class Greeter implements Named"),
        ("method", "greet", "greet(times: number): string"),
    ]
    assert scopes("go", SAMPLES["go"], "out += ") == [
        ("method", "Greet", "func (g *Greeter) Greet(times int) string"),
    ]
    assert scopes("go", SAMPLES["go"], "Name string") == [
        ("struct", "Greeter", "type Greeter struct")
    ]
    assert scopes("rust", SAMPLES["rust"], "out.push_str") == [
        ("impl", "Greeter", "impl Greeter"),
        ("method", "greet", "pub fn greet(&self, times: usize) -> String"),
    ]
    assert scopes("rust", SAMPLES["rust"], "println!") == [("function", "main", "fn main()")]
    assert scopes("java", SAMPLES["java"], "this.name = name") == [
        ("class", "Greeter", "public class Greeter"),
        ("method", "Greeter", "public Greeter(String name)"),
    ]
    assert scopes("c", SAMPLES["c"], "printf") == [
        ("function", "greet", "static int greet(const struct greeter *g, int times)"),
    ]
    assert scopes("cpp", SAMPLES["cpp"], "out += ") == [
        ("namespace", "greet", "namespace greet"),
        ("class", "Greeter", "class Greeter"),
        ("method", "Greet", "std::string Greet(int times) const"),
    ]


def test_scope_offsets_are_string_offsets_in_non_ascii_text():
    text = 'x = "😀中é"\n\ndef f():\n    return "é"\n'
    tree = SyntaxTree.create(text, "python")
    (scope,) = tree.scopes_at(text.index("return"))
    assert scope.start == text.index("def f")
    assert text[scope.start : scope.end] == 'def f():\n    return "é"'


# --- the cursor ----------------------------------------------------------------------------


def kind_at(name: str, text: str, offset: int) -> str:
    return SyntaxTree.create(text, name).cursor_at(offset).kind


@pytest.mark.parametrize(
    ("name", "text", "offset", "kind"),
    [
        ("python", "def f():", 8, "body_start"),  # end of the opener line
        ("python", "def f():\n", 9, "body_start"),  # the line below, not yet indented
        ("python", "def f():\n    \n", 13, "body_start"),
        ("python", "def f():\n\n    \n", 14, "body_start"),
        ("python", "if x:\n    a = 1\nelse:\n    ", 26, "body_start"),
        ("python", "def f():\n    x = 1\n    \n", 23, "statement"),
        ("python", "x = 1\n\ny = 2\n", 6, "statement"),
        ("python", "x = compute()\n", 13, "expression"),
        ("python", "x = foo(a, \n    b)\n", 11, "expression"),
        ("python", "x = 'a: {b'\n", 9, "string"),
        ("python", "x = f'a{b}c'\n", 8, "expression"),  # inside the interpolation
        ("python", "x = 1  # ends with :", 20, "comment"),
        ("c", "if (ready) {\n}\n", 12, "body_start"),
        ("c", "int f() {\n    int x = 1;\n    \n}\n", 29, "statement"),
        ("c", "int f() {\n", 10, "body_start"),  # the `}` is still missing
        ("c", "/* a { */", 6, "comment"),
        ("javascript", "foo(function () {\n  \n});\n", 20, "body_start"),
        ("javascript", "const o = {\n  \n};\n", 14, "expression"),  # an object, not a body
        ("go", "package p\nfunc f() {\n\t\n}\n", 22, "body_start"),
        ("go", "package p\nfunc f() {\n\tx := 1\n\t\n}\n", 29, "statement"),
        ("rust", "fn f() {}", 8, "body_start"),
        ("java", "class A {\n  \n}\n", 12, "body_start"),
    ],
)
def test_cursor_kinds(name, text, offset, kind):
    assert kind_at(name, text, offset) == kind


def test_unreadable_code_before_the_cursor_is_flagged():
    tree = SyntaxTree.create("x = ", "python")
    assert tree.cursor_at(4).in_error
    assert not SyntaxTree.create("x = 1\n", "python").cursor_at(6).in_error


def mode(name: str, text: str, offset: int) -> str:
    return decide_mode(text, offset, tree=SyntaxTree.create(text, name).snapshot())


@pytest.mark.parametrize(
    ("name", "text", "offset", "expected"),
    [
        # The cases the text heuristic's tests cover, with a tree: no worse.
        ("python", "x = foo(a)\n", 5, "line"),
        ("python", "x = foo()\n", 8, "line"),
        ("python", "def f():\n    \n", 13, "block"),
        ("python", "def f():\n", 9, "block"),
        ("python", "def f():\n\n    \n", 14, "block"),
        ("python", "def f():", 8, "block"),
        ("c", "if (ready) {\n}\n", 12, "block"),
        ("python", "x = compute()\n", 13, "line"),
        ("python", "x = 1\n\ny = 2\n", 6, "line"),
        ("python", "def f():\n    return 1\n", 13, "line"),
        # Where the tree knows better than the line's last character.
        ("python", 'x = """\nsetup:\n"""\n', 14, "line"),  # a string line ending with ":"
        ("python", "x = 1  # then:", 14, "line"),
        ("python", "# setup:\n", 9, "line"),  # a comment, not an opener, above the cursor
        ("javascript", "foo(\n  \n);\n", 7, "line"),  # arguments, not a body
        ("javascript", "const f = () => {\n  \n};\n", 20, "block"),
        # Broken code: the heuristic decides.
        ("python", "def f(:\n    ", 12, "block"),
    ],
)
def test_decide_mode_with_a_tree(name, text, offset, expected):
    assert mode(name, text, offset) == expected


def test_decide_mode_ignores_a_tree_of_another_text():
    stale = SyntaxTree.create("x = 1\n", "python").snapshot()
    text = "def f():\n"
    assert decide_mode(text, len(text), tree=stale) == "block"  # the heuristic's answer


# --- block ends ----------------------------------------------------------------------------


def test_block_end_of_a_braced_block_is_its_closer():
    text = "int f() {\n    int x = 1;\n    \n    return x;\n}\n"
    end = SyntaxTree.create(text, "c").block_end(text.index("    \n") + 4)
    assert end.end == text.rindex("}") and end.closer == "}"
    assert end.indent == "    "
    # Go's statements sit in a list inside the braces: the braces end the block.
    go = SAMPLES["go"]
    end = SyntaxTree.create(go, "go").block_end(go.index("out := "))
    assert go[end.end] == "}" and go[end.end + 1 :].startswith("\n\nfunc Main")
    assert end.indent == "\t"


def test_block_end_of_a_nested_block_in_non_ascii_text():
    text = 'fn f() {\n    let s = "😀é";\n    if s.is_empty() {\n        \n    }\n}\n'
    offset = text.index("        \n") + 8
    end = SyntaxTree.create(text, "rust").block_end(offset)
    assert text[end.end :] == "}\n}\n"
    assert end.indent == "        "


def test_block_end_of_a_python_body():
    text = "def f():\n    x = 1\n    y = 2\n\nz = 3\n"
    end = SyntaxTree.create(text, "python").block_end(text.index("x = 1"))
    assert end.end == text.index("\n\nz")
    assert end.indent == "    " and end.closer == ""
    # An empty body just opened: one level past the opener, or the cursor's own indentation.
    text = "class A:\n    def f(self):\n"
    assert SyntaxTree.create(text, "python").block_end(len(text)).indent == "        "
    text = "def f():\n  "
    assert SyntaxTree.create(text, "python").block_end(len(text)).indent == "  "


def test_block_end_at_the_top_level_is_none():
    assert SyntaxTree.create("x = 1\n", "python").block_end(0) is None


def test_block_end_with_a_missing_closer():
    text = "int f() {\n    int x;\n"
    end = SyntaxTree.create(text, "c").block_end(len(text))
    assert end.closer == ""


# --- insertion checks ----------------------------------------------------------------------


def check(name: str, text: str, marker: str, insertion: str, replace: int = 0) -> int:
    offset = text.index(marker) + len(marker)
    return SyntaxTree.create(text, name).check_insertion(offset, offset + replace, insertion)


def errors_after(name: str, text: str, offset: int, insertion: str) -> int:
    return count_errors(full_parse(name, text[:offset] + insertion + text[offset:]).root_node)


def test_good_code_is_kept_whole():
    text = "def f(a, b):\n    \n\ndef g():\n    return 2\n"
    insertion = "total = a + b\n    return total"
    assert check("python", text, "b):\n    ", insertion) == len(insertion)
    text = "int f(int a) {\n    \n}\n"
    insertion = "int b = a * 2;\n    return b;"
    assert check("c", text, "a) {\n    ", insertion) == len(insertion)


def test_an_unbalanced_closer_is_cut_at_the_last_good_line():
    text = "def f(a, b):\n    \n\ndef g():\n    return 2\n"
    insertion = "total = a + b\n    return total)"
    kept = check("python", text, "b):\n    ", insertion)
    assert insertion[:kept] == "total = a + b"
    offset = text.index("b):\n    ") + len("b):\n    ")
    assert errors_after("python", text, offset, insertion[:kept]) == 0


def test_a_half_definition_is_cut():
    text = "class A:\n    def f(self):\n        \n\nx = 1\n"
    insertion = "return 1\n\n    def g(self, a"
    kept = check("python", text, "self):\n        ", insertion)
    assert insertion[:kept].rstrip() == "return 1"


def test_a_body_left_empty_is_cut():
    # Python's grammar reads `def g():` with nothing below as a def with an empty body.
    text = "class A:\n    def f(self):\n        \n\nx = 1\n"
    insertion = "return 1\n\n    def g(self):"
    assert check("python", text, "self):\n        ", insertion) == len("return 1")
    insertion = "return 1\n\n    def g(self):\n        return 2"
    assert check("python", text, "self):\n        ", insertion) == len(insertion)


def test_a_statement_spread_over_lines_is_kept_when_it_closes():
    text = "def f(a):\n    \n"
    insertion = "return g(\n        a,\n        1,\n    )"
    assert check("python", text, "a):\n    ", insertion) == len(insertion)
    insertion = "return g(\n        a,\n        1,"
    assert check("python", text, "a):\n    ", insertion) == 0


def test_an_insertion_that_breaks_its_first_line_is_dropped():
    text = "function f() {\n  \n}\n"
    assert check("javascript", text, "{\n  ", "return (1;") == 0


def test_an_opened_comment_or_string_that_swallows_the_rest_is_dropped():
    text = "int f(void) {\n    \n    return 1;\n}\n"
    assert check("c", text, "{\n    ", "/* start of a note") == 0
    text = "def f():\n    \n    return 1\n"
    assert check("python", text, "():\n    ", 'x = """') == 0


def test_a_file_already_broken_at_the_cursor_is_judged_against_its_own_errors():
    # `x = foo(` is unfinished: completing the arguments without closing them adds nothing.
    text = "y = 1\nx = foo(\n\nz = 2\n"
    assert count_errors(full_parse("python", text).root_node) > 0
    assert check("python", text, "foo(", "a, b") == len("a, b")
    assert check("python", text, "foo(", "a, b)") == len("a, b)")
    # A second, new break further down is not accepted.
    assert check("python", text, "foo(", "a, b)\nw = [") == len("a, b)")


def test_replacing_an_auto_closed_bracket():
    text = "x = foo()\n"
    # `a)` replaces the `)` the editor typed: fine. Without replacing it, `))` would not be.
    assert check("python", text, "foo(", "a)", replace=1) == 2
    assert check("python", text, "foo(", "a)", replace=0) == 0


def test_check_insertion_on_every_language_keeps_a_copy_of_a_statement():
    # Re-inserting one of the file's own lines where it stands is always valid code.
    for name, text in SAMPLES.items():
        lines = text.split("\n")
        index = next(
            i for i, line in enumerate(lines) if line.strip().startswith(("return ", "let "))
        )
        offset = len("\n".join(lines[:index])) + 1
        insertion = lines[index] + "\n"
        tree = SyntaxTree.create(text, name)
        assert tree.check_insertion(offset, offset, insertion) == len(insertion), name


def test_check_insertion_clamps_bad_offsets():
    tree = SyntaxTree.create("x = 1\n", "python")
    assert tree.check_insertion(99, 120, "\ny = 2") == len("\ny = 2")
    assert tree.check_insertion(0, 0, "") == 0


def test_random_insertions_never_add_errors():
    # Whatever is kept, the file has no more errors than before.
    rng = random.Random(7)
    for name, text in SAMPLES.items():
        tree = SyntaxTree.create(text, name)
        before = count_errors(full_parse(name, text).root_node)
        for _ in range(10):
            offset = rng.randrange(len(text) + 1)
            insertion = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randrange(1, 8)))
            kept = tree.check_insertion(offset, offset, insertion)
            if 0 < kept < len(insertion):
                assert insertion[kept] == "\n"
            if kept:
                assert errors_after(name, text, offset, insertion[:kept]) <= before
