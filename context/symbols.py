"""What a source file defines and imports, read with tree-sitter queries.

One query per language finds definitions (functions, methods, classes, structs, interfaces,
enums, types, ...); a second finds import statements, which small per-language readers turn
into `Import` records. Local definitions (inside function bodies) are left out: they cannot be
referred to from elsewhere, and a workspace-wide name lookup would only find noise there.
Offsets are string indices (what the editor and the engine use), not tree-sitter's bytes.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from tree_sitter import Node, Parser, Query, QueryCursor, Tree

from nextab.context.languages import language as load_language

# Bump when what `extract` produces changes in a way the query texts do not show.
EXTRACTOR_VERSION = 1
SIGNATURE_CHARS = 400  # a signature longer than this is cut: it is a header, not the code


@dataclass(frozen=True)
class Definition:
    name: str
    kind: str  # function method constructor class struct interface trait enum union type
    #            namespace module constant variable macro
    signature: str  # the header as written, without the body
    start_line: int  # 0-based, inclusive
    end_line: int  # 0-based, inclusive
    start_offset: int  # string index in the file's text
    end_offset: int
    container: str | None = None  # the enclosing class/struct/impl/namespace, or the receiver


@dataclass(frozen=True)
class Import:
    module: str  # as written: "os.path", "..pkg.mod", "./util", "std::io", "stdio.h"
    names: tuple[str, ...] = ()  # names imported from it ("*" for a wildcard)
    alias: str | None = None  # the local name of the module itself (import x as y, * as ns)
    line: int = 0  # 0-based
    level: int = 0  # Python: the number of leading dots of a relative import
    renames: tuple[tuple[str, str], ...] = ()  # (imported name, local name) for `a as b`


@dataclass(frozen=True)
class FileSymbols:
    language: str
    definitions: tuple[Definition, ...]
    imports: tuple[Import, ...]

    def named(self, name: str) -> list[Definition]:
        return [d for d in self.definitions if d.name == name]


# --- queries ----------------------------------------------------------------------------------
# Captures: @definition.<kind> on the whole definition, @name on its name; @declarator where a
# C-family name must be dug out of a declarator; @scope.impl for a container that defines
# nothing itself (a Rust impl block). Earlier patterns win when two match the same node.

_PYTHON_DEFINITIONS = """
(function_definition name: (identifier) @name) @definition.function
(class_definition name: (identifier) @name) @definition.class
(module (type_alias_statement left: (type (identifier) @name)) @definition.type)
(module (expression_statement (assignment left: (identifier) @name) @definition.variable))
"""

_JS_DEFINITIONS = """
(function_declaration name: (identifier) @name) @definition.function
(generator_function_declaration name: (identifier) @name) @definition.function
(class_declaration name: (_) @name) @definition.class
(method_definition name: (_) @name) @definition.method
(program (lexical_declaration (variable_declarator name: (identifier) @name
  value: [(arrow_function) (function_expression)]) @definition.function))
(program (export_statement declaration: (lexical_declaration (variable_declarator
  name: (identifier) @name value: [(arrow_function) (function_expression)]) @definition.function)))
(program (lexical_declaration (variable_declarator name: (identifier) @name) @definition.variable))
(program (export_statement declaration: (lexical_declaration
  (variable_declarator name: (identifier) @name) @definition.variable)))
"""

_TS_DEFINITIONS = _JS_DEFINITIONS + """
(abstract_class_declaration name: (_) @name) @definition.class
(interface_declaration name: (_) @name) @definition.interface
(type_alias_declaration name: (_) @name) @definition.type
(enum_declaration name: (_) @name) @definition.enum
(function_signature name: (_) @name) @definition.function
(abstract_method_signature name: (_) @name) @definition.method
(method_signature name: (_) @name) @definition.method
(internal_module name: (identifier) @name) @definition.namespace
"""

_GO_DEFINITIONS = """
(function_declaration name: (identifier) @name) @definition.function
(method_declaration name: (field_identifier) @name) @definition.method
(type_spec name: (type_identifier) @name type: (struct_type)) @definition.struct
(type_spec name: (type_identifier) @name type: (interface_type)) @definition.interface
(type_spec name: (type_identifier) @name) @definition.type
(type_alias name: (type_identifier) @name) @definition.type
(source_file (const_declaration (const_spec name: (identifier) @name) @definition.constant))
(source_file (var_declaration (var_spec name: (identifier) @name) @definition.variable))
"""

_RUST_DEFINITIONS = """
(function_item name: (identifier) @name) @definition.function
(function_signature_item name: (identifier) @name) @definition.function
(struct_item name: (type_identifier) @name) @definition.struct
(enum_item name: (type_identifier) @name) @definition.enum
(union_item name: (type_identifier) @name) @definition.union
(trait_item name: (type_identifier) @name) @definition.trait
(type_item name: (type_identifier) @name) @definition.type
(const_item name: (identifier) @name) @definition.constant
(static_item name: (identifier) @name) @definition.constant
(macro_definition name: (identifier) @name) @definition.macro
(mod_item name: (identifier) @name) @definition.module
(impl_item type: (_) @name) @scope.impl
"""

_JAVA_DEFINITIONS = """
(class_declaration name: (identifier) @name) @definition.class
(interface_declaration name: (identifier) @name) @definition.interface
(enum_declaration name: (identifier) @name) @definition.enum
(record_declaration name: (identifier) @name) @definition.class
(annotation_type_declaration name: (identifier) @name) @definition.interface
(method_declaration name: (identifier) @name) @definition.method
(constructor_declaration name: (identifier) @name) @definition.constructor
"""

_C_DEFINITIONS = """
(function_definition declarator: (_) @declarator) @definition.function
(declaration declarator: [(function_declarator) (pointer_declarator)] @declarator)
  @definition.function
(struct_specifier name: (type_identifier) @name body: (_)) @definition.struct
(union_specifier name: (type_identifier) @name body: (_)) @definition.union
(enum_specifier name: (type_identifier) @name body: (_)) @definition.enum
(type_definition declarator: (type_identifier) @name) @definition.type
(preproc_def name: (identifier) @name) @definition.macro
(preproc_function_def name: (identifier) @name) @definition.macro
"""

_CPP_DEFINITIONS = _C_DEFINITIONS + """
(class_specifier name: (type_identifier) @name body: (_)) @definition.class
(namespace_definition name: (namespace_identifier) @name) @definition.namespace
(alias_declaration name: (type_identifier) @name) @definition.type
(field_declaration declarator: (function_declarator) @declarator) @definition.method
"""

_DEFINITIONS = {
    "python": _PYTHON_DEFINITIONS,
    "javascript": _JS_DEFINITIONS,
    "typescript": _TS_DEFINITIONS,
    "tsx": _TS_DEFINITIONS,
    "go": _GO_DEFINITIONS,
    "rust": _RUST_DEFINITIONS,
    "java": _JAVA_DEFINITIONS,
    "c": _C_DEFINITIONS,
    "cpp": _CPP_DEFINITIONS,
}

_JS_IMPORTS = """
(import_statement) @import
(export_statement source: (_)) @import
(call_expression function: [(identifier) (import)] arguments: (arguments . (string))) @import
"""

_IMPORTS = {
    "python": "(import_statement) @import (import_from_statement) @import",
    "javascript": _JS_IMPORTS,
    "typescript": _JS_IMPORTS,
    "tsx": _JS_IMPORTS,
    "go": "(import_spec) @import",
    "rust": "(use_declaration) @import",
    "java": "(import_declaration) @import",
    "c": "(preproc_include) @import",
    "cpp": "(preproc_include) @import",
}

LANGUAGES: tuple[str, ...] = tuple(_DEFINITIONS)

# Definitions that hold methods; a function inside one of them is a method of it.
_TYPE_KINDS = frozenset({"class", "struct", "interface", "trait", "enum", "union", "impl"})
_SCOPE_KINDS = _TYPE_KINDS | {"namespace", "module"}
_FUNCTION_KINDS = frozenset({"function", "method", "constructor"})
# Ancestors that make a definition local: code inside a function body.
_FUNCTION_NODE_SUFFIXES = (
    "function_definition", "function_declaration", "function_item", "method_declaration",
    "method_definition", "constructor_declaration", "arrow_function", "function_expression",
    "generator_function", "lambda", "lambda_expression", "func_literal",
)
# Nodes that hold a definition's body: its signature is the text before them.
_BODY_TYPES = frozenset({
    "block", "statement_block", "class_body", "field_declaration_list", "declaration_list",
    "compound_statement", "interface_body", "enum_body", "enumerator_list",
    "enum_variant_list", "constructor_body", "annotation_type_body",
})
_SINGLE_DECLARATIONS = frozenset({
    "type_declaration", "lexical_declaration", "variable_declaration", "const_declaration",
    "var_declaration",
})
_DECLARATOR_WRAPPERS = frozenset({
    "pointer_declarator", "reference_declarator", "parenthesized_declarator",
    "attributed_declarator",
})
_NAME_TYPES = frozenset({
    "identifier", "field_identifier", "type_identifier", "destructor_name", "operator_name",
})


@cache
def _queries(name: str) -> tuple[Query, Query] | None:
    lang = load_language(name)
    if lang is None or name not in _DEFINITIONS:
        return None
    return Query(lang, _DEFINITIONS[name]), Query(lang, _IMPORTS[name])


@cache
def extractor_version(name: str) -> str:
    """Changes whenever what `extract` makes of a language's files may change (for caches)."""
    text = f"{EXTRACTOR_VERSION}\0{_DEFINITIONS.get(name, '')}\0{_IMPORTS.get(name, '')}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


_local = threading.local()


def _parser(name: str) -> Parser | None:
    # Parsers hold state: one per language and thread (the index scans on its own thread).
    parsers: dict[str, Parser] = _local.__dict__.setdefault("parsers", {})
    if name not in parsers:
        lang = load_language(name)
        if lang is None:
            return None
        parsers[name] = Parser(lang)
    return parsers[name]


def encode(text: str) -> bytes:
    # A lone surrogate becomes "?": one character, one byte, so offsets still line up.
    return text.encode("utf-8", "replace")


def parse(text: str, language: str) -> Tree | None:
    ts_parser = _parser(language) if language in _DEFINITIONS else None
    return ts_parser.parse(encode(text)) if ts_parser is not None else None


# --- offsets ----------------------------------------------------------------------------------


class _Offsets:
    """Tree-sitter points (row, byte column) to string indices."""

    def __init__(self, text: str) -> None:
        self.ascii = text.isascii()
        # Bytes are characters in ASCII text, the common case: no table needed then.
        self.lines = [] if self.ascii else text.split("\n")
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line) + 1)

    def index(self, node_point: tuple[int, int], byte: int) -> int:
        if self.ascii:
            return byte
        row, column = node_point
        if row >= len(self.lines):
            return self.starts[-1] - 1
        prefix = encode(self.lines[row])[:column].decode("utf-8", "replace")
        return self.starts[row] + len(prefix)


# --- extraction -------------------------------------------------------------------------------


def extract(text: str, language: str) -> FileSymbols:
    """Definitions and imports of `text`; a language without a grammar yields empty symbols."""
    tree = parse(text, language)
    if tree is None:
        return FileSymbols(language, (), ())
    return symbols_of_tree(tree, text, language)


def symbols_of_tree(tree: Tree, text: str, language: str) -> FileSymbols:
    """As `extract`, for a caller that already holds the file's tree."""
    queries = _queries(language)
    if queries is None:
        return FileSymbols(language, (), ())
    source = encode(text)
    offsets = _Offsets(text)
    definitions = _definitions(queries[0], tree.root_node, source, offsets)
    imports = _imports(queries[1], tree.root_node, source, language)
    return FileSymbols(language, tuple(definitions), tuple(imports))


def _text(node: Node | None, source: bytes) -> str:
    if node is None:
        return ""
    return source[node.start_byte : node.end_byte].decode("utf-8", "replace")


def _key(node: Node) -> tuple[int, int, str]:
    return (node.start_byte, node.end_byte, node.type)


@dataclass(frozen=True)
class _Found:
    node: Node
    kind: str
    name: str
    container: str | None  # known from the definition itself (receiver, Foo::bar)


def _definitions(query: Query, root: Node, source: bytes, offsets: _Offsets) -> list[Definition]:
    found: dict[tuple[int, int, str], tuple[int, _Found]] = {}
    for pattern, captures in QueryCursor(query).matches(root):
        item = _found(captures, source)
        if item is None:
            continue
        key = _key(item.node)
        if key not in found or found[key][0] > pattern:
            found[key] = (pattern, item)
    items = sorted((item for _, item in found.values()), key=lambda f: f.node.start_byte)
    scopes = {_key(f.node): f for f in items if f.kind in _SCOPE_KINDS}
    result = []
    for item in items:
        placed = _place(item, scopes)
        if placed is not None and placed.kind != "impl":
            result.append(_definition(placed, source, offsets))
    return result


def _found(captures: dict[str, list[Node]], source: bytes) -> _Found | None:
    for capture, nodes in captures.items():
        if capture.startswith(("definition.", "scope.")):
            node, kind = nodes[0], capture.split(".", 1)[1]
            break
    else:
        return None
    if "declarator" in captures:
        named = _declarator_name(captures["declarator"][0], source)
        if named is None:
            return None
        name, container = named
        return _Found(node, "method" if container else kind, name, container)
    name_node = captures["name"][0]
    if kind == "impl":
        return _Found(node, kind, _type_name(name_node, source), None)
    container = _receiver(node, source) if node.type == "method_declaration" else None
    return _Found(node, kind, _text(name_node, source), container)


def _declarator_name(node: Node | None, source: bytes) -> tuple[str, str | None] | None:
    """(name, qualifying scope) of a C/C++ function declarator; None if it declares no function."""
    is_function = False
    scope = None
    while node is not None:
        if node.type == "function_declarator":
            is_function = True
            node = node.child_by_field_name("declarator")
        elif node.type in _DECLARATOR_WRAPPERS:
            node = node.child_by_field_name("declarator") or (
                node.named_children[-1] if node.named_children else None
            )
        elif node.type == "qualified_identifier":
            part = _text(node.child_by_field_name("scope"), source)
            scope = f"{scope}::{part}" if scope and part else part or scope
            node = node.child_by_field_name("name")
        elif node.type in _NAME_TYPES:
            return (_text(node, source), scope) if is_function else None
        else:
            return None
    return None


def _type_name(node: Node, source: bytes) -> str:
    # `impl<T> Foo<T>` and `impl a::Foo` are Foo's methods: the bare type name is the container.
    while node.type in ("generic_type", "scoped_type_identifier", "reference_type"):
        inner = node.child_by_field_name("type") or node.child_by_field_name("name")
        if inner is None:
            break
        node = inner
    return _text(node, source)


def _receiver(node: Node, source: bytes) -> str | None:
    receiver = node.child_by_field_name("receiver")
    for child in _descendants(receiver):
        if child.type == "type_identifier":
            return _text(child, source)
    return None


def _descendants(node: Node | None) -> Iterator[Node]:
    if node is None:
        return
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.named_children))


def _place(item: _Found, scopes: dict[tuple[int, int, str], _Found]) -> _Found | None:
    """The item with its container and method-ness, or None for a definition local to a body."""
    ancestor = item.node.parent
    while ancestor is not None:
        scope = scopes.get(_key(ancestor))
        if scope is not None:
            kind = item.kind
            if kind == "function" and scope.kind in _TYPE_KINDS:
                kind = "method"
            return _Found(item.node, kind, item.name, item.container or scope.name)
        if ancestor.type.endswith(_FUNCTION_NODE_SUFFIXES):
            return None
        ancestor = ancestor.parent
    return item


def _definition(item: _Found, source: bytes, offsets: _Offsets) -> Definition:
    node = _outer(item.node)
    return Definition(
        name=item.name,
        kind=item.kind,
        signature=_signature(node, item.node, source),
        start_line=node.start_point[0],
        end_line=_end_line(node),
        start_offset=offsets.index(tuple(node.start_point), node.start_byte),
        end_offset=offsets.index(tuple(node.end_point), node.end_byte),
        container=item.container,
    )


def _end_line(node: Node) -> int:
    # A preprocessor definition's node takes in the newline that ends it.
    row, column = node.end_point
    return row - 1 if column == 0 and row > node.start_point[0] else row


def _outer(node: Node) -> Node:
    # `type Foo struct` and `const x = () => ...` read best with their keyword, when the
    # declaration holds this one definition only.
    parent = node.parent
    if (
        parent is not None
        and parent.type in _SINGLE_DECLARATIONS
        and parent.named_child_count == 1
    ):
        return parent
    return node


def _signature(outer: Node, node: Node, source: bytes) -> str:
    body = _body(node)
    end = body.start_byte if body is not None else outer.end_byte
    text = source[outer.start_byte : end].decode("utf-8", "replace")
    if body is None:
        text = text.split("\n", 1)[0]
    return text.rstrip()[:SIGNATURE_CHARS]


def _body(node: Node) -> Node | None:
    body = node.child_by_field_name("body")
    if body is not None and body.type != "identifier":
        return body
    for child in node.named_children:
        if child.type in _BODY_TYPES:
            return child
    for field_name in ("value", "type"):
        inner = node.child_by_field_name(field_name)
        if inner is not None and inner.type.endswith(
            ("function", "function_expression", "struct_type", "interface_type")
        ):
            return _body(inner)
    return body


# --- imports ----------------------------------------------------------------------------------


def _imports(query: Query, root: Node, source: bytes, language: str) -> list[Import]:
    reader = _IMPORT_READERS[language]
    result: list[Import] = []
    for node in sorted(
        (n for nodes in QueryCursor(query).captures(root).values() for n in nodes),
        key=lambda n: n.start_byte,
    ):
        result.extend(reader(node, source))
    return result


def _python_imports(node: Node, source: bytes) -> list[Import]:
    line = node.start_point[0]
    if node.type == "import_statement":
        result = []
        for child in node.children_by_field_name("name"):
            if child.type == "aliased_import":
                module = _text(child.child_by_field_name("name"), source)
                alias = _text(child.child_by_field_name("alias"), source)
                result.append(Import(module, alias=alias, line=line))
            else:
                result.append(Import(_text(child, source), line=line))
        return result
    module_node = node.child_by_field_name("module_name")
    module = _text(module_node, source)
    level = 0
    if module_node is not None and module_node.type == "relative_import":
        prefix = next((c for c in module_node.children if c.type == "import_prefix"), None)
        level = len(_text(prefix, source).strip())
    names: list[str] = []
    renames: list[tuple[str, str]] = []
    for child in node.children_by_field_name("name"):
        if child.type == "aliased_import":
            name = _text(child.child_by_field_name("name"), source)
            renames.append((name, _text(child.child_by_field_name("alias"), source)))
            names.append(name)
        else:
            names.append(_text(child, source))
    if any(c.type == "wildcard_import" for c in node.children):
        names.append("*")
    return [Import(module, tuple(names), None, line, level, tuple(renames))]


def _string_value(node: Node | None, source: bytes) -> str:
    return _text(node, source)[1:-1] if node is not None else ""


def _js_imports(node: Node, source: bytes) -> list[Import]:
    line = node.start_point[0]
    if node.type == "call_expression":
        return _js_call_import(node, source)
    module = _string_value(node.child_by_field_name("source"), source)
    names: list[str] = []
    renames: list[tuple[str, str]] = []
    alias = None
    for child in _descendants(node):
        if child.type in ("import_specifier", "export_specifier"):
            name = _text(child.child_by_field_name("name"), source)
            names.append(name)
            local = child.child_by_field_name("alias")
            if local is not None:
                renames.append((name, _text(local, source)))
        elif child.type in ("namespace_import", "namespace_export"):
            ident = child.named_children[-1] if child.named_children else None
            alias = _text(ident, source) or None
        elif child.type == "import_clause":
            for part in child.named_children:
                if part.type == "identifier":  # the default import
                    names.append("default")
                    renames.append(("default", _text(part, source)))
        elif child.type == "import_require_clause":
            ident = child.named_children[0] if child.named_children else None
            alias = _text(ident, source) or None
            module = _string_value(child.child_by_field_name("source"), source)
    if node.type == "export_statement" and not names and alias is None:
        names.append("*")
    return [Import(module, tuple(names), alias, line, 0, tuple(renames))]


def _js_call_import(node: Node, source: bytes) -> list[Import]:
    function = node.child_by_field_name("function")
    if function is None or (function.type != "import" and _text(function, source) != "require"):
        return []
    arguments = node.child_by_field_name("arguments")
    first = arguments.named_children[0] if arguments and arguments.named_children else None
    module = _string_value(first, source)
    names: list[str] = []
    alias = None
    parent = node.parent
    if parent is not None and parent.type == "variable_declarator":
        target = parent.child_by_field_name("name")
        if target is not None and target.type == "identifier":
            alias = _text(target, source)
        elif target is not None and target.type == "object_pattern":
            for part in target.named_children:
                key = part.child_by_field_name("key") if part.type == "pair_pattern" else part
                names.append(_text(key, source))
    return [Import(module, tuple(names), alias, node.start_point[0])]


def _go_imports(node: Node, source: bytes) -> list[Import]:
    module = _string_value(node.child_by_field_name("path"), source)
    name = node.child_by_field_name("name")
    return [Import(module, (), _text(name, source) or None, node.start_point[0])]


def _rust_imports(node: Node, source: bytes) -> list[Import]:
    argument = node.child_by_field_name("argument")
    line = node.start_point[0]
    leaves = list(_rust_use(argument, "", source)) if argument is not None else []
    merged: dict[str, tuple[list[str], list[tuple[str, str]], str | None]] = {}
    for module, name, local in leaves:
        names, renames, _ = merged.setdefault(module, ([], [], None))
        if name is None:
            merged[module] = (names, renames, local)
            continue
        names.append(name)
        if local is not None:
            renames.append((name, local))
    return [
        Import(module, tuple(names), alias, line, 0, tuple(renames))
        for module, (names, renames, alias) in merged.items()
    ]


def _join(prefix: str, path: str) -> str:
    return f"{prefix}::{path}" if prefix and path else prefix or path


def _rust_use(node: Node, prefix: str, source: bytes) -> Iterator[tuple[str, str | None, str | None]]:
    """(module, imported name or None for the module itself, local alias) per leaf of a use."""
    kind = node.type
    if kind == "scoped_identifier":
        path = _text(node.child_by_field_name("path"), source)
        yield _join(prefix, path), _text(node.child_by_field_name("name"), source), None
    elif kind == "use_as_clause":
        path = node.child_by_field_name("path")
        alias = _text(node.child_by_field_name("alias"), source)
        for module, name, _ in _rust_use(path, prefix, source) if path is not None else ():
            yield module, name, alias
    elif kind == "use_wildcard":
        inner = node.named_children[0] if node.named_children else None
        yield _join(prefix, _text(inner, source)), "*", None
    elif kind == "scoped_use_list":
        inner = _join(prefix, _text(node.child_by_field_name("path"), source))
        listed = node.child_by_field_name("list")
        for child in listed.named_children if listed is not None else ():
            yield from _rust_use(child, inner, source)
    elif kind == "use_list":
        for child in node.named_children:
            yield from _rust_use(child, prefix, source)
    elif prefix:  # a bare name inside a list: an item of the prefix
        yield prefix, _text(node, source), None
    else:  # `use foo;`: the crate or module itself
        yield _text(node, source), None, None


def _java_imports(node: Node, source: bytes) -> list[Import]:
    path = next(
        (c for c in node.named_children if c.type in ("scoped_identifier", "identifier")), None
    )
    if path is None:
        return []
    line = node.start_point[0]
    if any(c.type == "asterisk" for c in node.named_children):
        return [Import(_text(path, source), ("*",), line=line)]
    if path.type == "identifier":
        return [Import(_text(path, source), line=line)]
    scope = _text(path.child_by_field_name("scope"), source)
    return [Import(scope, (_text(path.child_by_field_name("name"), source),), line=line)]


def _c_imports(node: Node, source: bytes) -> list[Import]:
    path = node.child_by_field_name("path")
    if path is None or path.type not in ("string_literal", "system_lib_string"):
        return []  # `#include MACRO`: nothing to read without the preprocessor
    return [Import(_string_value(path, source), line=node.start_point[0])]


_IMPORT_READERS = {
    "python": _python_imports,
    "javascript": _js_imports,
    "typescript": _js_imports,
    "tsx": _js_imports,
    "go": _go_imports,
    "rust": _rust_imports,
    "java": _java_imports,
    "c": _c_imports,
    "cpp": _c_imports,
}


# --- names used -------------------------------------------------------------------------------


def identifiers(text: str, language: str, start: int = 0, end: int | None = None) -> list[str]:
    """The identifiers used in text[start:end], in order, each once (not keywords, strings or
    comments): the names whose definitions may help near a cursor. Positions past the end are
    clamped."""
    tree = parse(text, language)
    if tree is None:
        return []
    end = len(text) if end is None else min(max(end, 0), len(text))
    start = min(max(start, 0), end)
    source = encode(text)
    start_byte = len(encode(text[:start]))
    end_byte = start_byte + len(encode(text[start:end]))
    seen: dict[str, None] = {}
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.end_byte <= start_byte or node.start_byte >= end_byte:
            continue
        if node.child_count:
            stack.extend(reversed(node.children))
        elif node.type.endswith("identifier") and node.start_byte >= start_byte:
            seen.setdefault(_text(node, source), None)
    return list(seen)
