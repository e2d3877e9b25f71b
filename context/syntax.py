"""The code's structure around the cursor, from a tree-sitter tree kept in step with each edit.

One `SyntaxTree` per open document. Edits arrive in the document's string offsets; tree-sitter
wants UTF-8 byte offsets and (row, byte column) points, so each edit is translated, applied to
the old tree with `Tree.edit` at once, and the re-parse that reuses the old tree waits until
someone reads the tree: a didChange carrying many content changes costs one parse.

Readers get a `Snapshot`, an immutable (text, tree) pair, from `SyntaxTree.snapshot(text)`.
A completion request carries the text as it was when it was made; the snapshot for that text
is derived from the live tree by one edit and an incremental parse, so a request never reads
a tree that does not match its text. All queries take and return string offsets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal
from urllib.parse import unquote, urlparse

from tree_sitter import Node, Parser, Point, Tree

from nextab.context.languages import language, spec_for

log = logging.getLogger(__name__)

# Beyond this a document is plain text: parsing it on every keystroke is not worth it.
MAX_SYNTAX_CHARS = 4_000_000


# --- what each grammar calls things ---------------------------------------------------------


@dataclass(frozen=True)
class Grammar:
    """The node types of one grammar that the queries below care about."""

    blocks: frozenset[str]  # nodes whose children are a sequence of statements or members
    scopes: dict[str, str] = field(hash=False)  # node type -> scope kind
    strings: frozenset[str]
    comments: frozenset[str]
    code_in_strings: frozenset[str]  # interpolations: code again inside a string
    indented: bool = False  # blocks end by dedenting, not with a closer


_JS_SCOPES = {
    "function_declaration": "function",
    "function_expression": "function",
    "function": "function",
    "generator_function_declaration": "function",
    "generator_function": "function",
    "arrow_function": "function",
    "method_definition": "method",
    "class_declaration": "class",
    "class": "class",
}
_JS_BLOCKS = frozenset(
    {"program", "statement_block", "class_body", "switch_body", "switch_case", "switch_default"}
)
_JS = Grammar(
    blocks=_JS_BLOCKS,
    scopes=_JS_SCOPES,
    strings=frozenset({"string", "template_string"}),
    comments=frozenset({"comment", "html_comment"}),
    code_in_strings=frozenset({"template_substitution"}),
)
_TS = Grammar(
    blocks=_JS_BLOCKS | {"interface_body"},
    scopes={
        **_JS_SCOPES,
        "abstract_class_declaration": "class",
        "interface_declaration": "interface",
        "enum_declaration": "enum",
        "internal_module": "namespace",
        "module": "namespace",
    },
    strings=_JS.strings,
    comments=frozenset({"comment"}),
    code_in_strings=_JS.code_in_strings,
)
_C_BLOCKS = frozenset(
    {"translation_unit", "compound_statement", "field_declaration_list", "case_statement"}
)
_C_SCOPES = {
    "function_definition": "function",
    "struct_specifier": "struct",
    "union_specifier": "struct",
    "enum_specifier": "enum",
}
_C_STRINGS = frozenset({"string_literal", "char_literal", "system_lib_string"})

GRAMMARS: dict[str, Grammar] = {
    "python": Grammar(
        blocks=frozenset({"module", "block"}),
        scopes={"function_definition": "function", "class_definition": "class"},
        strings=frozenset({"string"}),
        comments=frozenset({"comment"}),
        code_in_strings=frozenset({"interpolation"}),
        indented=True,
    ),
    "javascript": _JS,
    "typescript": _TS,
    "tsx": _TS,
    "go": Grammar(
        blocks=frozenset(
            {
                "source_file",
                "block",
                "statement_list",
                "expression_case",
                "default_case",
                "type_case",
                "communication_case",
                "field_declaration_list",
            }
        ),
        scopes={
            "function_declaration": "function",
            "method_declaration": "method",
            "func_literal": "function",
            "type_spec": "type",
        },
        strings=frozenset({"interpreted_string_literal", "raw_string_literal", "rune_literal"}),
        comments=frozenset({"comment"}),
        code_in_strings=frozenset(),
    ),
    "rust": Grammar(
        blocks=frozenset(
            {"source_file", "block", "declaration_list", "field_declaration_list", "unsafe_block"}
        ),
        scopes={
            "function_item": "function",
            "impl_item": "impl",
            "trait_item": "trait",
            "struct_item": "struct",
            "union_item": "struct",
            "enum_item": "enum",
            "mod_item": "module",
        },
        strings=frozenset({"string_literal", "raw_string_literal", "char_literal"}),
        comments=frozenset({"line_comment", "block_comment"}),
        code_in_strings=frozenset(),
    ),
    "java": Grammar(
        blocks=frozenset(
            {
                "program",
                "block",
                "class_body",
                "interface_body",
                "enum_body_declarations",
                "constructor_body",
                "switch_block",
                "switch_block_statement_group",
                "annotation_type_body",
            }
        ),
        scopes={
            "class_declaration": "class",
            "record_declaration": "class",
            "interface_declaration": "interface",
            "annotation_type_declaration": "interface",
            "enum_declaration": "enum",
            "method_declaration": "method",
            "constructor_declaration": "method",
        },
        strings=frozenset({"string_literal", "character_literal"}),
        comments=frozenset({"line_comment", "block_comment"}),
        code_in_strings=frozenset({"string_interpolation"}),
    ),
    "c": Grammar(
        blocks=_C_BLOCKS,
        scopes=_C_SCOPES,
        strings=_C_STRINGS,
        comments=frozenset({"comment"}),
        code_in_strings=frozenset(),
    ),
    "cpp": Grammar(
        blocks=_C_BLOCKS | {"declaration_list"},
        scopes={**_C_SCOPES, "class_specifier": "class", "namespace_definition": "namespace"},
        strings=_C_STRINGS | {"raw_string_literal"},
        comments=frozenset({"comment"}),
        code_in_strings=frozenset(),
    ),
}

# Scopes whose functions are methods.
_CLASS_KINDS = frozenset({"class", "struct", "impl", "trait", "interface", "enum"})


# --- what the queries return ----------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    kind: str  # function, method, class, interface, struct, enum, trait, impl, module, namespace
    name: str  # "" for anonymous functions
    start: int
    end: int
    header: str  # the signature, from the scope's start up to its body


CursorKind = Literal["body_start", "statement", "expression", "string", "comment"]


@dataclass(frozen=True)
class CursorContext:
    """What the cursor sits in.

    body_start: in a block with nothing of it before the cursor (a body just opened, or the
    end of its opener line); statement: on a blank line between statements; expression:
    inside a statement or after code on its line; string, comment: inside one.
    """

    kind: CursorKind
    block_type: str  # the innermost block-like node around the cursor
    body_empty: bool  # the block holds no statement at all (only for body_start)
    in_error: bool  # the parser could not read the code around the cursor: trust it less


@dataclass(frozen=True)
class BlockEnd:
    """Where the innermost block around the cursor ends."""

    block_type: str
    end: int  # the closing delimiter's offset; for blocks without one, the end of their code
    closer: str  # the text at `end` that closes the block ("}"), "" if none or missing
    indent: str  # the indentation of the block's body lines


# --- offsets --------------------------------------------------------------------------------


def _encode(text: str) -> bytes:
    # A lone surrogate becomes "?": one character, one byte, so offsets still line up.
    return text.encode("utf-8", "replace")


def _point(text: str, offset: int) -> Point:
    """Tree-sitter's (row, byte column) of a string offset; rows end at "\\n" only."""
    line_start = text.rfind("\n", 0, offset) + 1
    column = text[line_start:offset]
    width = len(column) if column.isascii() else len(_encode(column))
    return Point(text.count("\n", 0, offset), width)


def _byte_length(text: str) -> int:
    return len(text) if text.isascii() else len(_encode(text))


_local = threading.local()


def _parser(name: str) -> Parser:
    """One parser per language and thread: parsers hold state and are not thread-safe."""
    parsers: dict[str, Parser] = _local.__dict__.setdefault("parsers", {})
    if name not in parsers:
        lang = language(name)
        assert lang is not None  # a SyntaxTree exists only for loadable grammars
        parsers[name] = Parser(lang)
    return parsers[name]


# --- the live tree --------------------------------------------------------------------------


class SyntaxTree:
    """The tree of one document, kept in step with its edits.

    `edit` and `replace` record a change; the parse happens on the next `snapshot`. Safe to
    edit from the server's thread while the model thread takes snapshots.
    """

    def __init__(self, text: str, name: str, version: int | None = None) -> None:
        self.language = name
        self.grammar = GRAMMARS[name]
        self.version = version  # the document version the text reflects, if the caller says
        self._lock = threading.Lock()
        self._text = text
        self._tree: Tree | None = None  # None: parse from scratch next time
        self._shared = True  # the tree may be in a snapshot: copy before editing it
        self._dirty = True
        self.parses = 0  # how many parses ran (tests check that edits are batched)
        self._snapshot: Snapshot | None = None

    @classmethod
    def create(cls, text: str, name: str, version: int | None = None) -> SyntaxTree | None:
        """A tree for `text` in language `name`, or None for plain text (unknown language,
        grammar missing, or too big to parse on every keystroke)."""
        if name not in GRAMMARS or language(name) is None:
            return None
        if len(text) > MAX_SYNTAX_CHARS:
            log.info("not parsing a %d-character %s document", len(text), name)
            return None
        return cls(text, name, version)

    @classmethod
    def for_document(
        cls, uri: str, text: str, language_id: str = "", version: int | None = None
    ) -> SyntaxTree | None:
        spec = spec_for(_uri_path(uri), language_id)
        return cls.create(text, spec.name, version) if spec else None

    @property
    def text(self) -> str:
        return self._text

    def edit(self, start: int, old_end: int, new_text: str, version: int | None = None) -> None:
        """Replace text[start:old_end] with `new_text` (string offsets into the current text)."""
        with self._lock:
            text = self._text
            if not 0 <= start <= old_end <= len(text):
                raise ValueError(f"edit {start}..{old_end} outside the text (0..{len(text)})")
            new = text[:start] + new_text + text[old_end:]
            if self._tree is not None:
                if self._shared:
                    self._tree = self._tree.copy()
                    self._shared = False
                _edit_tree(self._tree, text, new, start, old_end, start + len(new_text))
            self._text = new
            self._dirty = True
            if version is not None:
                self.version = version

    def replace(self, text: str, version: int | None = None) -> None:
        """A full-text change: the next snapshot parses from scratch."""
        with self._lock:
            self._text = text
            self._tree = None
            self._dirty = True
            if version is not None:
                self.version = version

    def snapshot(self, text: str | None = None) -> Snapshot:
        """The parsed tree of the current text, or of `text` (e.g. a request's older copy).

        Another text is reached from the current tree by one edit (their common prefix and
        suffix stay) and an incremental parse; the live tree is not changed.
        """
        with self._lock:
            current = self._current()
        if text is None or text is current.text or text == current.text:
            return current
        start, old_end, new_end = changed_span(current.text, text)
        tree = current.tree.copy()
        _edit_tree(tree, current.text, text, start, old_end, new_end)
        return Snapshot(text, _parser(self.language).parse(_encode(text), tree), self.language)

    def _current(self) -> Snapshot:
        if self._dirty:
            source = _encode(self._text)
            parser = _parser(self.language)
            old = self._tree
            self._tree = parser.parse(source) if old is None else parser.parse(source, old)
            self.parses += 1
            self._dirty = False
        self._shared = True
        assert self._tree is not None
        snapshot = self._snapshot
        if snapshot is None or snapshot.tree is not self._tree:
            snapshot = Snapshot(self._text, self._tree, self.language)
            self._snapshot = snapshot
        return snapshot

    # The queries, on the current text.
    def scopes_at(self, offset: int) -> list[Scope]:
        return self.snapshot().scopes_at(offset)

    def cursor_at(self, offset: int) -> CursorContext:
        return self.snapshot().cursor_at(offset)

    def block_end(self, offset: int) -> BlockEnd | None:
        return self.snapshot().block_end(offset)

    def check_insertion(self, offset: int, replace_end: int, insertion: str) -> int:
        return self.snapshot().check_insertion(offset, replace_end, insertion)


def _uri_path(uri: str) -> str:
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme else uri


def _edit_tree(tree: Tree, old: str, new: str, start: int, old_end: int, new_end: int) -> None:
    start_byte = _byte_length(old[:start])
    tree.edit(
        start_byte=start_byte,
        old_end_byte=start_byte + _byte_length(old[start:old_end]),
        new_end_byte=start_byte + _byte_length(new[start:new_end]),
        start_point=_point(old, start),
        old_end_point=_point(old, old_end),
        new_end_point=_point(new, new_end),
    )


def changed_span(old: str, new: str) -> tuple[int, int, int]:
    """(start, old_end, new_end) of the one edit turning `old` into `new`: their common start
    and then their common end (within what is left) taken off."""
    limit = min(len(old), len(new))
    prefix = _common_length(limit, lambda k: old[:k] == new[:k])
    limit -= prefix
    suffix = _common_length(limit, lambda k: k == 0 or old[-k:] == new[-k:])
    return prefix, len(old) - suffix, len(new) - suffix


def _common_length(limit: int, same: Callable[[int], bool]) -> int:
    # Binary search over slice comparisons: each runs at memcmp speed, a char loop would not.
    low, high = 0, limit
    while low < high:
        mid = (low + high + 1) // 2
        if same(mid):
            low = mid
        else:
            high = mid - 1
    return low


# --- the queries ----------------------------------------------------------------------------


class Snapshot:
    """One text and its tree; never edited, so any thread may query it."""

    def __init__(self, text: str, tree: Tree, name: str) -> None:
        self.text = text
        self.tree = tree
        self.language = name
        self.grammar = GRAMMARS[name]
        self._ascii = text.isascii()

    @cached_property
    def source(self) -> bytes:
        return _encode(self.text)

    def _byte(self, offset: int) -> int:
        offset = max(0, min(offset, len(self.text)))
        return offset if self._ascii else len(_encode(self.text[:offset]))

    def _char(self, byte: int) -> int:
        if self._ascii:
            return byte
        return len(self.source[:byte].decode("utf-8", "replace"))

    def node_text(self, node: Node) -> str:
        return self.source[node.start_byte : node.end_byte].decode("utf-8", "replace")

    # --- where the cursor is -----------------------------------------------------------------

    def _path(self, byte: int) -> list[Node]:
        """The nodes holding the cursor, root first.

        A node holds it when the cursor is strictly inside, or right at its end where it ends
        in an empty or missing node (`def f():|` has an empty body there; `{|` at the end of a
        file has a missing `}`). In indentation languages a blank line below a block belongs
        to it while the cursor is indented past the block's header.
        """
        node = self.tree.root_node
        path = [node]
        while (child := self._holding_child(node, byte)) is not None:
            path.append(child)
            node = child
        if self.grammar.indented:
            self._extend_by_indentation(path, byte)
        return path

    def _holding_child(self, node: Node, byte: int) -> Node | None:
        open_end: Node | None = None
        blocks = self.grammar.blocks
        for child in node.children:
            start, end = child.start_byte, child.end_byte
            if start < byte < end:
                return child
            # Just before a body: `def f():\n    |return` is at the start of the block.
            if start >= byte and child.type in blocks and self._blank(byte, start):
                return child
            if start > byte:
                break
            # A missing `}` or `;` alone is no place to be: its statement or block is.
            inner = child.child_count > 0 or child.type in blocks
            if end <= byte and inner and _ends_open(child) and self._blank(end, byte):
                open_end = child
        return open_end

    def _blank(self, start_byte: int, end_byte: int) -> bool:
        return not self.source[start_byte:end_byte].strip()

    def _extend_by_indentation(self, path: list[Node], byte: int) -> None:
        indent = self._blank_line_indent(byte)
        if indent is None or path[-1].type not in self.grammar.blocks:
            return
        while True:
            last = _last_statement_before(path[-1], byte)
            if last is None:
                return
            body = self._trailing_body(last, indent)
            if body is None:
                return
            path.extend(body)

    def _trailing_body(self, statement: Node, indent: int) -> list[Node] | None:
        """The nodes down to the last body of `statement`, if a blank line indented by
        `indent` below it continues that body."""
        chain = [statement]
        node = statement
        while node.type not in self.grammar.blocks:
            if node.child_count == 0:
                return None
            node = node.children[-1]
            chain.append(node)
        empty = not _statements(node)
        # An empty body takes the next line whatever its indentation: it must get a statement.
        if empty or indent > self._line_indent(statement.start_byte):
            return chain
        return None

    def _blank_line_indent(self, byte: int) -> int | None:
        """Width of the cursor's line up to the cursor if that is all whitespace, else None."""
        line_start = self.source.rfind(b"\n", 0, byte) + 1
        prefix = self.source[line_start:byte]
        if prefix.strip():
            return None
        return len(prefix.expandtabs(4))

    def _line_indent(self, byte: int) -> int:
        line_start = self.source.rfind(b"\n", 0, byte) + 1
        line = self.source[line_start:byte].expandtabs(4)
        return len(line) - len(line.lstrip())

    def cursor_at(self, offset: int) -> CursorContext:
        byte = self._byte(offset)
        path = self._path(byte)
        block_index = _innermost(path, self.grammar.blocks)
        block = path[block_index]
        in_error = (
            any(node.is_error or node.is_missing for node in path)
            or any(node.has_error for node in path[block_index + 1 :])
            or self._after_error(byte)
        )
        literal = self._literal_kind(path, byte)
        if literal is not None:
            return CursorContext(literal, block.type, False, in_error)
        if path[block_index + 1 :]:
            return CursorContext("expression", block.type, False, in_error)
        if _statement_before(block, byte) or block.parent is None:
            blank = self._blank_line_indent(byte) is not None
            kind: CursorKind = "statement" if blank else "expression"
            return CursorContext(kind, block.type, False, in_error)
        return CursorContext("body_start", block.type, not _statements(block), in_error)

    def _literal_kind(self, path: list[Node], byte: int) -> CursorKind | None:
        for node in reversed(path):
            if node.type in self.grammar.code_in_strings:
                return None
            if node.type in self.grammar.strings:
                return "string"
            if node.type in self.grammar.comments:
                return "comment"
        # At the end of a line comment the cursor is still in it.
        before = self.tree.root_node.descendant_for_byte_range(max(byte - 1, 0), byte)
        if (
            before is not None
            and before.type in self.grammar.comments
            and before.end_byte == byte
            and not self.source[before.start_byte : byte].endswith(b"*/")
            and b"\n" not in self.source[before.start_byte : byte]
        ):
            return "comment"
        return None

    def _after_error(self, byte: int) -> bool:
        # The code just before the cursor is unreadable: `x = |` parses as an ERROR ending there.
        at = len(self.source[:byte].rstrip()) - 1
        if at < 0:
            return False
        node = self.tree.root_node.descendant_for_byte_range(at, at)
        while node is not None:
            if node.is_error or node.is_missing:
                return True
            node = node.parent
        return False

    # --- scopes -----------------------------------------------------------------------------

    def scopes_at(self, offset: int) -> list[Scope]:
        """The functions, methods and classes around the cursor, outermost first."""
        scopes: list[Scope] = []
        for node in self._path(self._byte(offset)):
            kind = self._scope_kind(node)
            if kind is None:
                continue
            if kind == "function" and scopes and scopes[-1].kind in _CLASS_KINDS:
                kind = "method"  # the nearest scope around it is a class
            start = self._scope_start(node)
            scopes.append(
                Scope(
                    kind=kind,
                    name=self._scope_name(node),
                    start=self._char(start),
                    end=self._char(node.end_byte),
                    header=self._header(node, start),
                )
            )
        return scopes

    def _scope_kind(self, node: Node) -> str | None:
        kind = self.grammar.scopes.get(node.type)
        if kind == "type":  # Go: a struct or interface type is a scope, an alias is not
            inner = node.child_by_field_name("type")
            return {"struct_type": "struct", "interface_type": "interface"}.get(
                inner.type if inner else ""
            )
        if kind in ("struct", "enum", "class") and node.child_by_field_name("body") is None:
            return None  # `struct point p;` names a type, it does not open one
        return kind

    def _scope_name(self, node: Node) -> str:
        name = node.child_by_field_name("name")
        if name is None and node.type == "impl_item":
            name = node.child_by_field_name("type")
        if name is None and node.type == "function_definition":
            name = _function_declarator_name(node)
        if name is None and node.type in ("arrow_function", "function_expression", "function"):
            parent = node.parent
            if parent is not None and parent.type == "variable_declarator":
                name = parent.child_by_field_name("name")
            elif parent is not None and parent.type in ("pair", "assignment_expression"):
                name = parent.child_by_field_name("key") or parent.child_by_field_name("left")
        return self.node_text(name) if name is not None else ""

    def _scope_start(self, node: Node) -> int:
        # `const f = () => {` reads better whole than from the arrow function alone.
        parent = node.parent
        if parent is not None and parent.type == "type_declaration":  # Go: `type T struct {`
            return parent.start_byte
        if parent is not None and parent.type == "variable_declarator":
            grand = parent.parent
            if grand is not None and grand.type in ("lexical_declaration", "variable_declaration"):
                return grand.start_byte
        return node.start_byte

    def _header(self, node: Node, start: int) -> str:
        body = _body(node, self.grammar.blocks)
        if body is not None:
            # Up to the body, less the comments the grammar puts between header and body.
            before = body.prev_sibling
            while before is not None and before.is_extra:
                before = before.prev_sibling
            end = before.end_byte if before is not None else body.start_byte
        else:
            newline = self.source.find(b"\n", start, node.end_byte)
            end = node.end_byte if newline < 0 else newline
        return self.source[start:end].decode("utf-8", "replace").rstrip()

    # --- blocks -----------------------------------------------------------------------------

    def block_end(self, offset: int) -> BlockEnd | None:
        """Where the innermost block holding the cursor ends; None at the top level."""
        byte = self._byte(offset)
        path = self._path(byte)
        blocks = [node for node in path if node.type in self.grammar.blocks]
        if not self.grammar.indented:
            # A statement list inside braces (Go, a `case`) ends where its braces do.
            blocks = [node for node in blocks if node.parent is None or _closer(node)]
        block = blocks[-1] if blocks else path[0]
        if block.parent is None:
            return None
        indent = self._body_indent(block, byte)
        closer = _closer(block)
        if closer is None:
            end = max(block.end_byte, self._line_end(byte))
            return BlockEnd(block.type, self._char(end), "", indent)
        if closer.is_missing:
            return BlockEnd(block.type, self._char(block.end_byte), "", indent)
        return BlockEnd(block.type, self._char(closer.start_byte), closer.type, indent)

    def _line_end(self, byte: int) -> int:
        end = self.source.find(b"\n", byte)
        return len(self.source) if end < 0 else end

    def _body_indent(self, block: Node, byte: int) -> str:
        """The body's indentation: its first statement's, else the cursor line's, else one
        level past the opener's."""
        statements = _statements(block)
        if statements:
            return self._indent_text(statements[0].start_byte)
        line_start = self.source.rfind(b"\n", 0, byte) + 1
        owner = block.parent if block.parent is not None else block
        opener = self._indent_text(owner.start_byte)
        prefix = self.source[line_start:byte].decode("utf-8", "replace")
        if not prefix.strip() and len(prefix.expandtabs(4)) > len(opener.expandtabs(4)):
            return prefix
        return opener + ("\t" if opener.startswith("\t") else "    ")

    def _indent_text(self, byte: int) -> str:
        line_start = self.source.rfind(b"\n", 0, byte) + 1
        line = self.source[line_start:byte].decode("utf-8", "replace")
        return line[: len(line) - len(line.lstrip())]

    # --- insertions -------------------------------------------------------------------------

    def check_insertion(self, offset: int, replace_end: int, insertion: str) -> int:
        """How much of `insertion`, put at `offset` over text[offset:replace_end], to keep.

        Candidates are the whole insertion and its prefixes ending at a line end. Each is
        parsed (incrementally, from a copy of this tree) and its errors counted: ERROR regions,
        MISSING nodes, and in indentation languages bodies it leaves empty. A candidate adds
        no errors if it has no more than the file without it and than every shorter candidate
        (a line that breaks the code is not forgiven because the file was broken before, but
        a multi-line statement may be broken until its last line), and the end of the file
        still parses as before (an opened string or comment swallows it). The longest such
        candidate wins; 0 if none. A shortened insertion is judged replacing nothing: the
        text it would have replaced was its own tail.
        """
        if not insertion:
            return 0
        offset = max(0, min(offset, len(self.text)))
        replace_end = max(offset, min(replace_end, len(self.text)))
        whole = self._errors_with(offset, replace_end, insertion)
        if whole == 0:
            return len(insertion)
        cuts = [
            i
            for i in range(1, len(insertion))
            # At the end of a line with code: trailing blank lines are no reason to keep more.
            if insertion[i] == "\n" and insertion[insertion.rfind("\n", 0, i) + 1 : i].strip()
        ]
        counts = [self._errors_with(offset, offset, insertion[:cut]) for cut in cuts]
        best, lowest = 0, self.error_count
        for keep, count in zip([*cuts, len(insertion)], [*counts, whole], strict=True):
            if count is None:
                continue  # it swallowed the rest of the file
            if count <= lowest:
                best = keep
            lowest = min(lowest, count)
        return best

    @cached_property
    def error_count(self) -> int:
        return count_errors(self.tree.root_node)

    def _errors_with(self, start: int, old_end: int, inserted: str) -> int | None:
        """The error count of the text with `inserted` over text[start:old_end]; None if
        the insertion changed how the end of the file parses."""
        text = self.text[:start] + inserted + self.text[old_end:]
        tree = self.tree.copy()
        _edit_tree(tree, self.text, text, start, old_end, start + len(inserted))
        new = _parser(self.language).parse(_encode(text), tree)
        swallowed = _last_leaf_type(new.root_node) != _last_leaf_type(self.tree.root_node)
        if swallowed and self.text[old_end:].strip():
            return None
        count = count_errors(new.root_node)
        if self.grammar.indented:
            start_byte = self._byte(start)
            end_byte = start_byte + _byte_length(inserted)
            count += _empty_blocks(new.root_node, start_byte, end_byte)
        return count


# --- node helpers ---------------------------------------------------------------------------


def count_errors(node: Node) -> int:
    """ERROR regions and MISSING nodes under `node`.

    An ERROR inside an ERROR is the same break (tree-sitter nests them as it recovers), so
    only the outermost counts; only subtrees that have errors are visited.
    """
    if not node.has_error:
        return 0
    count = 0
    stack = [node]
    while stack:
        current = stack.pop()
        if current.is_error or current.is_missing:
            count += 1
            if current.is_error:
                continue
        stack.extend(child for child in current.children if child.has_error)
    return count


def _empty_blocks(node: Node, start: int, end: int) -> int:
    """Empty bodies (`def f():` and nothing) that begin in (start, end]: an insertion that
    opens a body and stops leaves a syntax error the grammar does not flag."""
    count = 0
    stack = [node]
    while stack:
        current = stack.pop()
        if current.start_byte == current.end_byte and current.type == "block":
            count += start < current.start_byte <= end
        stack.extend(
            child
            for child in current.children
            if child.start_byte <= end and child.end_byte >= start
        )
    return count


def _last_leaf_type(node: Node) -> str:
    while node.child_count:
        node = node.children[-1]
    return node.type


def _ends_open(node: Node) -> bool:
    """The node is, or ends in, an empty or missing node: it is still waiting for its end."""
    while True:
        if node.is_missing or node.start_byte == node.end_byte:
            return True
        if not node.child_count:
            return False
        node = node.children[-1]


def _closer(block: Node) -> Node | None:
    """The block's closing token (`}`), missing or not; None for blocks closed by dedent."""
    last = block.children[-1] if block.child_count else None
    return last if last is not None and not last.is_named and block.child_count > 1 else None


def _statements(block: Node) -> list[Node]:
    return [c for c in block.named_children if not c.is_extra]


def _statement_before(block: Node, byte: int) -> bool:
    return any(child.end_byte <= byte for child in _statements(block))


def _last_statement_before(block: Node, byte: int) -> Node | None:
    before = [child for child in _statements(block) if child.end_byte <= byte]
    return before[-1] if before else None


def _innermost(path: list[Node], types: frozenset[str]) -> int:
    for index in range(len(path) - 1, -1, -1):
        if path[index].type in types:
            return index
    return 0


def _body(node: Node, blocks: frozenset[str]) -> Node | None:
    body = node.child_by_field_name("body")
    if body is not None:
        return body
    for child in _descendants_first_level(node):
        if child.type in blocks:
            return child
    return None


def _descendants_first_level(node: Node) -> Iterator[Node]:
    # Go's `type T struct {...}` keeps its field list one level down, in the type.
    for child in node.children:
        yield child
        yield from child.children


def _function_declarator_name(node: Node) -> Node | None:
    """C/C++: the name inside `int *f(int)`'s chain of declarators."""
    declarator = node.child_by_field_name("declarator")
    while declarator is not None:
        if declarator.type == "function_declarator":
            return declarator.child_by_field_name("declarator")
        declarator = declarator.child_by_field_name("declarator")
    return None
