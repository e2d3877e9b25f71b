"""What the code at the cursor is about to use from another file: the callee of the call being
written, or the members of the object before the `.` being typed.

Cross-file context pays where the answer depends on a definition the file cannot show: the
arguments of a call to a function defined elsewhere, an attribute of an imported class or
module, a method inherited from a base class in another file (CrossCodeEval's construction).
Elsewhere repository material mostly distracts a small model. So this source is gated by the
cursor's *site*:

- a call: the cursor is inside the parentheses of `name(`, `module.name(`, `Class.method(` or
  `self.method(`, and that name resolves through the file's imports (or its class's bases) to
  a definition in another workspace file;
- an attribute: the cursor follows `Name.` (a partial member may follow it), and `Name` is an
  imported class or module, or `self`/`this` in a class whose bases live in another file.

It shows the definition as an interface, the way a stub file would: the signature and
docstring of a function; for a class, its header, docstring, fields and its methods'
signatures with their bodies left out. Resolution uses the workspace index only (no model,
well under a millisecond), and nothing is shown when the site or its target is unknown.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from nextab.context.compress import Chunk
from nextab.context.symbols import Definition, Import

# A cursor's site is looked for in this much text before it: a call's arguments rarely span more.
LOOK_BACK_CHARS = 1500
DOC_LINES = 12  # documentation lines kept per definition (enough for a short example)
DOCUMENTED = 2  # members of a class or module shown with their documentation, at most
MAX_BASES_DEPTH = 3  # base classes followed for an inherited member
MAX_REEXPORT_DEPTH = 2  # packages followed for a name they import from their modules
MAX_FIELDS = 10  # class attributes (enum members, dataclass fields) shown at most
RELEVANCE_CHARS = 400  # the code before the cursor that says which members matter
CLASS_LINES = 48  # lines of a class interface at most
MODULE_LINES = 40  # lines of a module interface at most

_NAME = r"[A-Za-z_$][\w$]*"
_CHAIN_BEFORE = re.compile(rf"({_NAME}(?:\s*\.\s*{_NAME})*)\s*$")
_ATTRIBUTE_BEFORE = re.compile(rf"({_NAME}(?:\.{_NAME})*)\.({_NAME})?$")
_NOT_CALLEES = frozenset((
    "if", "elif", "while", "for", "return", "yield", "await", "assert", "not", "and", "or", "in",
    "is", "lambda", "with", "del", "raise", "except", "match", "case", "else", "switch", "catch",
    "typeof", "new", "void", "delete", "throw",
))
_DEFINING = re.compile(r"(?:^|[\s(])(?:def|class|function|func|fn|interface)\s+$")
_SELF = frozenset({"self", "cls", "this"})
_CLASS_KINDS = frozenset({"class", "struct", "interface", "trait", "enum"})
_FUNCTION_KINDS = frozenset({"function", "method", "constructor"})
_COMMON_WORDS = frozenset({"self", "cls", "this", "get", "set", "the", "return", "def"})
_T = TypeVar("_T")
_PY_DOCSTRING = re.compile(r'\s*(?:[rRuUbB]{0,2})("""|\'\'\'|"|\')')


@dataclass(frozen=True)
class Site:
    kind: Literal["call", "attribute"]
    chain: tuple[str, ...]  # the callee, or the object before the dot: ("self", "session")
    partial: str = ""  # the member typed so far after the dot


def site_at(text: str, offset: int) -> Site | None:
    """The call or attribute the cursor is in, read off the text before it."""
    before = text[max(0, offset - LOOK_BACK_CHARS) : offset]
    line = before[before.rfind("\n") + 1 :]
    attribute = _ATTRIBUTE_BEFORE.search(line)
    if attribute is not None and not _is_number(attribute.group(1)):
        return Site("attribute", tuple(attribute.group(1).split(".")), attribute.group(2) or "")
    paren = _open_paren(before)
    if paren is None:
        return None
    head = before[:paren]
    callee = _CHAIN_BEFORE.search(head)
    if callee is None:
        return None
    chain = tuple(part.strip() for part in callee.group(1).split("."))
    if chain[-1] in _NOT_CALLEES or _DEFINING.search(head[: callee.start()]):
        return None
    return Site("call", chain)


def _is_number(text: str) -> bool:
    return text[:1].isdigit()


def _open_paren(before: str) -> int | None:
    """The index of the innermost `(` still open at the end of `before`, or None. Strings and
    comments are skipped line by line; the scan starts at the statement's first line, found
    by stepping back over lines that continue an open bracket."""
    lines = before.split("\n")
    start = len(lines) - 1
    while start > 0 and _continues(lines[start - 1]):
        start -= 1
    offset = sum(len(line) + 1 for line in lines[:start])
    stack: list[tuple[str, int]] = []
    for line in lines[start:]:
        for index, char in _code_chars(line):
            if char in "([{":
                stack.append((char, offset + index))
            elif char in ")]}" and stack:
                stack.pop()
        offset += len(line) + 1
    for char, index in reversed(stack):
        if char == "(":
            return index
        return None  # the innermost bracket is a list or dict literal
    return None


def _continues(line: str) -> bool:
    stripped = line.rstrip()
    return stripped.endswith(("(", "[", "{", ",")) or stripped.endswith("\\")


def _code_chars(line: str) -> Iterable[tuple[int, str]]:
    quote = ""
    index = 0
    while index < len(line):
        char = line[index]
        if quote:
            if char == "\\":
                index += 2
                continue
            if line.startswith(quote, index):
                index += len(quote)
                quote = ""
                continue
        elif char in "\"'`":
            quote = line[index : index + 3] if line.startswith(char * 3, index) else char
            index += len(quote)
            continue
        elif char == "#" or line.startswith("//", index):
            return
        else:
            yield index, char
        index += 1


class Index(Protocol):
    """What the lookup needs from the workspace index (context/index.py's WorkspaceIndex)."""

    def file(self, path: str) -> _IndexedFile | None: ...

    def resolved_imports(self, path: str) -> list[tuple[Import, tuple[str, ...]]]: ...

    def read_text(self, path: str) -> str | None: ...

    def definitions_named(self, name: str) -> list[_Named]: ...


class _Named(Protocol):
    @property
    def path(self) -> str: ...

    @property
    def definition(self) -> Definition: ...


class _IndexedFile(Protocol):
    @property
    def definitions(self) -> tuple[Definition, ...]: ...

    @property
    def language(self) -> str | None: ...


@dataclass(frozen=True)
class _Target:
    """A resolved name: a module (a file) or a definition in a file."""

    path: str
    definition: Definition | None = None  # None: the module itself


def api_chunks(index: Index, path: str, text: str, offset: int) -> list[Chunk]:
    """The interface of what the site at the cursor refers to, as chunks of its files; empty
    when there is no site, or it does not lead to another workspace file."""
    site = site_at(text, offset)
    if site is None:
        return []
    lookup = _Lookup(index, path)
    line = text.count("\n", 0, offset)
    targets = [t for t in lookup.resolve(site.chain, line) if t.path != path]
    if site.kind == "call":
        if not targets and len(site.chain) > 1:
            targets = lookup.unique_method(site.chain[-1])
        return [c for t in targets for c in lookup.render_callable(t)]
    relevance = _Relevance(text[max(0, offset - RELEVANCE_CHARS) : offset], site.partial)
    return [c for t in targets for c in lookup.render_members(t, relevance)]


class _Relevance:
    """How much a member's name has to do with the code just before the cursor: the words of
    its name (snake_case and camelCase parts) that occur there, and whether it starts with
    what was typed after the dot. Members are shown most relevant last, nearest the cursor."""

    def __init__(self, before: str, partial: str) -> None:
        self.partial = partial
        self.words = {w for name in re.findall(_NAME, before) for w in _words(name)}

    def __call__(self, name: str) -> int:
        typed = 10 if self.partial and name.startswith(self.partial) else 0
        return typed + len(_words(name) & self.words)


def _words(name: str) -> set[str]:
    parts = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", name)
    return {p.lower() for p in parts if len(p) >= 3} - _COMMON_WORDS


def _most_relevant_last(items: list[_T], name: Callable[[_T], str], relevance: _Relevance, keep: int) -> list[_T]:
    """The `keep` most relevant items (ties: the earlier first), least relevant first."""
    ranked = sorted(enumerate(items), key=lambda pair: (-relevance(name(pair[1])), pair[0]))[:keep]
    ranked.sort(key=lambda pair: (relevance(name(pair[1])), pair[0]))
    return [item for _, item in ranked]


class _Lookup:
    def __init__(self, index: Index, path: str) -> None:
        self.index = index
        self.path = path
        self._texts: dict[str, str | None] = {}

    # -- resolution ------------------------------------------------------------------------

    def resolve(self, chain: Sequence[str], line: int) -> list[_Target]:
        first, rest = chain[0], tuple(chain[1:])
        if first in _SELF:
            enclosing = self._enclosing_class(line)
            if enclosing is None:
                return []
            targets = [t for t in self._bases(self.path, enclosing) if t.path != self.path]
            if rest and self._defines(enclosing, rest[0]):
                return []  # the class itself defines it: the file shows it
            if rest:
                targets = [m for t in targets if (m := self._member(t, rest[0])) is not None][:1]
                rest = rest[1:]
        else:
            targets = self._imported(chain)
            if not targets:
                return []
            consumed = 1 if targets[0].definition is not None else self._module_depth(chain)
            rest = tuple(chain[consumed:])
        for name in rest:
            targets = [m for t in targets if (m := self._member(t, name)) is not None][:1]
        return targets

    def unique_method(self, name: str) -> list[_Target]:
        """`obj.name(` with `obj` of unknown type: the method of that name, where the
        workspace has exactly one and it is in another file."""
        found = [d for d in self.index.definitions_named(name) if d.kind in _FUNCTION_KINDS]
        if len(found) != 1 or found[0].path == self.path or found[0].definition.container is None:
            return []
        return [_Target(found[0].path, found[0].definition)]

    def _module_depth(self, chain: Sequence[str]) -> int:
        # `import a.b` is used as `a.b.name`: the module takes the chain's first parts.
        for imported, _ in self.index.resolved_imports(self.path):
            parts = imported.module.split(".")
            if imported.alias is None and not imported.names and list(chain[: len(parts)]) == parts:
                return len(parts)
        return 1

    def _imported(self, chain: Sequence[str], depth: int = 0) -> list[_Target]:
        """What the chain's first name means through the file's imports."""
        first = chain[0]
        for imported, targets in self.index.resolved_imports(self.path):
            if not targets:
                continue
            renamed = dict(imported.renames)  # imported name -> local name
            names = {renamed.get(n, n): n for n in imported.names if n != "*"}
            if first in names:
                name = names[first]
                submodule = next((t for t in targets if _module_name(t) == name), None)
                if submodule is not None and submodule != self.path:
                    return [_Target(submodule)]
                return self._defined(name, targets, depth)
            if imported.alias == first:
                # `const Range = require('./range')`, `import Range from './range'`: the
                # module's main export where it has one, else the module.
                return [self._main_export(targets[0], first)]
            parts = imported.module.split(".")
            if imported.alias is None and not imported.names and list(chain[: len(parts)]) == parts:
                return [_Target(targets[0])]
        return []

    def _main_export(self, module: str, local: str) -> _Target:
        entry = self.index.file(module)
        if entry is None or entry.language == "python":
            return _Target(module)  # `import pkg.mod as m`: Python aliases name modules
        top = [d for d in entry.definitions if d.container is None]
        named = [d for d in top if d.name == local]
        callables = [d for d in top if d.kind in _CLASS_KINDS or d.kind in _FUNCTION_KINDS]
        chosen = named or (callables if len(callables) == 1 else [])
        return _Target(module, chosen[0]) if chosen else _Target(module)

    def _defined(self, name: str, files: Iterable[str], depth: int = 0) -> list[_Target]:
        """The top-level definition of `name` in the first of `files` that has one; a file
        that only re-exports it (a package's `__init__`) is followed through its imports."""
        for file in files:
            entry = self.index.file(file)
            if entry is None:
                continue
            for d in entry.definitions:
                if d.name == name and d.container is None:
                    return [_Target(file, d)]
        if depth >= MAX_REEXPORT_DEPTH:
            return []
        for file in files:
            if file == self.path or self.index.file(file) is None:
                continue
            through = _Lookup(self.index, file)._imported((name,), depth + 1)
            if through and through[0].definition is not None:
                return through[:1]
        return []

    def _member(self, target: _Target, name: str, depth: int = 0) -> _Target | None:
        if target.definition is None:  # a module: its top-level definition
            return next(iter(self._defined(name, [target.path])), None)
        if target.definition.kind not in _CLASS_KINDS:
            return None  # a function's result: unknown without types
        for member in self._members_of(target.path, target.definition.name):
            if member.name == name:
                return _Target(target.path, member)
        if depth >= MAX_BASES_DEPTH:
            return None
        for base in self._bases(target.path, target.definition):
            found = self._member(base, name, depth + 1)
            if found is not None:
                return found
        return None

    def _members_of(self, path: str, class_name: str) -> list[Definition]:
        entry = self.index.file(path)
        if entry is None:
            return []
        return [d for d in entry.definitions if d.container == class_name]

    def _enclosing_class(self, line: int) -> Definition | None:
        entry = self.index.file(self.path)
        if entry is None:
            return None
        classes = [
            d for d in entry.definitions
            if d.kind in _CLASS_KINDS and d.start_line <= line <= d.end_line
        ]
        found = max(classes, key=lambda d: d.start_line, default=None)
        nested = _class_around(self.text_of(self.path) or "", line)
        # A class inside a function is not in the index: its header is read off the text.
        if nested is not None and (found is None or nested.start_line > found.start_line):
            return nested
        return found

    def _defines(self, enclosing: Definition, name: str) -> bool:
        """Whether the current file's class defines `name` itself (then the file shows it)."""
        if any(d.name == name for d in self._members_of(self.path, enclosing.name)):
            return True
        text = self.text_of(self.path) or ""
        block = "\n".join(text.split("\n")[enclosing.start_line : enclosing.end_line + 1])
        pattern = rf"(?:\bdef\s+{re.escape(name)}\b|\b(?:self|this)\.{re.escape(name)}\s*(?::[^=\n]+)?=[^=])"
        return re.search(pattern, block) is not None

    def _bases(self, path: str, definition: Definition) -> list[_Target]:
        """The classes `definition` (in `path`) extends, resolved through `path`'s imports or
        defined in `path` itself."""
        lookup = self if path == self.path else _Lookup(self.index, path)
        bases: list[_Target] = []
        for base in _base_names(definition.signature):
            chain = tuple(base.split("."))
            found = lookup._imported(chain) or [
                t for t in self._defined(chain[0], [path]) if t.definition != definition
            ]
            for target in found[:1]:
                consumed = 1 if target.definition is not None else lookup._module_depth(chain)
                for name in chain[consumed:]:
                    member = lookup._member(target, name)
                    if member is None:
                        break
                    target = member
                else:
                    if target.definition is not None and target.definition.kind in _CLASS_KINDS:
                        bases.append(target)
        return bases

    # -- rendering -------------------------------------------------------------------------

    def text_of(self, path: str) -> str | None:
        if path not in self._texts:
            self._texts[path] = self.index.read_text(path)
        return self._texts[path]

    def render_callable(self, target: _Target) -> list[Chunk]:
        definition = target.definition
        if definition is None:
            return []
        if definition.kind in _CLASS_KINDS:
            return self.render_class(target)
        if definition.kind not in _FUNCTION_KINDS:
            return []
        lines = self._function_lines(target.path, definition)
        if definition.container is not None:
            owner = self._class_named(target.path, definition.container)
            if owner is not None:
                text = self.text_of(target.path) or ""
                lines = [_header(owner, _indent_of(text, owner))[0], *lines]
        return [self._chunk(target, lines, "function")]

    def render_members(self, target: _Target, relevance: _Relevance) -> list[Chunk]:
        definition = target.definition
        if definition is None:
            return [self._module_chunk(target, relevance)] if self.index.file(target.path) else []
        if definition.kind in _CLASS_KINDS:
            return self.render_class(target, relevance)
        return []

    def render_class(self, target: _Target, relevance: _Relevance | None = None) -> list[Chunk]:
        """A class as its interface: header, docstring, fields, the constructor with the
        fields it sets, then the public methods' signatures. For a call (no relevance) the
        constructor comes last, nearest the cursor; for an attribute, the members that have
        most to do with the code before the cursor do, and are the ones kept."""
        definition = target.definition
        assert definition is not None
        text = self.text_of(target.path) or ""
        leading, trailing = self._doc(target.path, definition, 4)
        indent = _indent_of(text, definition)
        head = [*leading, *_header(definition, indent), *trailing]
        braces = not definition.signature.rstrip().endswith(":")
        if braces:
            head[-1] = head[-1].rstrip() + " {"
        members = [
            m for m in self._members_of(target.path, definition.name)
            if not m.name.startswith("_") or m.name.endswith("__")
        ]
        constructors = [m for m in members if m.name in ("__init__", "constructor") or m.kind == "constructor"]
        methods = [m for m in members if m not in constructors]
        fields = _fields(text, definition, _body_indent(text, definition))
        init = [line for c in constructors for line in self._function_lines(target.path, c, doc_lines=2, self_fields=True)]
        if relevance is None:
            room = max(0, CLASS_LINES - len(head) - len(init))
            fields = fields[:MAX_FIELDS]
            shown = self._member_lines(target.path, methods, room - len(fields))
            return [self._chunk(target, _closed([*head, *fields, *shown, *init], indent, braces), "class")]
        fields = _most_relevant_last(fields, _field_name, relevance, MAX_FIELDS)
        room = max(0, CLASS_LINES - len(head) - len(init) - len(fields))
        kept = _most_relevant_last(methods, lambda m: m.name, relevance, room // 2)
        shown = self._member_lines(target.path, kept, room, relevance)
        return [self._chunk(target, _closed([*head, *init, *fields, *shown], indent, braces), "class")]

    def _member_lines(
        self, path: str, members: list[Definition], room: int, relevance: _Relevance | None = None
    ) -> list[str]:
        """Members as signatures with their bodies left out, the most relevant last; the
        (at most DOCUMENTED) last ones that share words with the code at the cursor keep their
        documentation too. Over `room` lines, the first (least relevant) go."""
        text = self.text_of(path) or ""
        documented = {
            id(m) for m in members[-DOCUMENTED:] if relevance is not None and relevance(m.name) > 0
        }
        blocks: list[list[str]] = []
        for member in members:
            indent = _indent_of(text, member)
            if id(member) in documented:
                blocks.append(self._function_lines(path, member))
            elif member.kind in _FUNCTION_KINDS or member.kind in _CLASS_KINDS:
                header = [*_decorators(text, member), *_header(member, indent)]
                blocks.append(_without_body(header, member, indent))
            else:
                blocks.append(_header(member, indent)[:1])
        while blocks and sum(len(b) for b in blocks) > room:
            blocks.pop(0)
        return [line for block in blocks for line in block]

    def _module_chunk(self, target: _Target, relevance: _Relevance) -> Chunk:
        entry = self.index.file(target.path)
        definitions = [d for d in entry.definitions if d.container is None] if entry else []
        public = [d for d in definitions if not d.name.startswith("_")] or definitions
        kept = _most_relevant_last(public, lambda d: d.name, relevance, MODULE_LINES // 2)
        lines = self._member_lines(target.path, kept, MODULE_LINES, relevance)
        return Chunk(
            key=f"api:{target.path}", path=target.path, text="\n".join(lines) + "\n",
            kind="module", origin="api", language=entry.language if entry else None,
        )

    def _class_named(self, path: str, name: str) -> Definition | None:
        entry = self.index.file(path)
        if entry is None:
            return None
        return next((d for d in entry.definitions if d.name == name and d.kind in _CLASS_KINDS), None)

    def _function_lines(
        self, path: str, definition: Definition, doc_lines: int = DOC_LINES, self_fields: bool = False
    ) -> list[str]:
        """The definition's header and documentation as written (at its own indentation),
        its body left out; a constructor keeps its `self.x = ...` lines (the fields)."""
        text = self.text_of(path) or ""
        indent = _indent_of(text, definition)
        leading, trailing = self._doc(path, definition, doc_lines)
        lines = [*leading, *_decorators(text, definition), *_header(definition, indent), *trailing]
        fields = _self_assignments(text, definition, indent) if self_fields else []
        return _without_body(lines, definition, indent, fields)

    def _doc(self, path: str, definition: Definition, limit: int) -> tuple[list[str], list[str]]:
        """The definition's documentation: a comment block before it (JSDoc, Go, Rust...), or
        a Python docstring after the header; at most `limit` lines."""
        text = self.text_of(path)
        if not text:
            return [], []
        body = definition.start_offset + len(definition.signature)
        if text[definition.start_offset : body] == definition.signature:
            match = _PY_DOCSTRING.match(text, body)
            if match is not None:
                end = text.find(match.group(1), match.end())
                if end > 0:
                    line_start = text.rfind("\n", 0, match.start(1)) + 1
                    doc = text[line_start : end + len(match.group(1))].split("\n")
                    if len(doc) > limit:
                        doc = [*doc[:limit], _line_indent(doc[0]) + match.group(1)]
                    return [], doc
        return _leading_comment(text, definition, limit), []

    def _chunk(self, target: _Target, lines: list[str], kind: str) -> Chunk:
        definition = target.definition
        assert definition is not None
        return Chunk(
            key=f"api:{target.path}:{definition.start_line}",
            path=target.path,
            text="\n".join(lines) + "\n",
            kind=kind,
            origin="api",
            start_line=definition.start_line,
            language=entry.language if (entry := self.index.file(target.path)) else None,
        )


_CLASS_HEADER = re.compile(r"^(\s*)class\s+(\w+)\s*(\([^)]*\))?\s*:")


def _class_around(text: str, line: int) -> Definition | None:
    """The Python class whose block holds `line`, from the headers in the text above it."""
    lines = text.split("\n")
    if not 0 <= line < len(lines):
        return None
    indent = len(lines[line]) - len(lines[line].lstrip()) if lines[line].strip() else 10**6
    for row in range(line - 1, -1, -1):
        current = lines[row]
        if not current.strip():
            continue
        width = len(current) - len(current.lstrip())
        if width >= indent:
            continue
        indent = width
        match = _CLASS_HEADER.match(current)
        if match is not None:
            end = row + 1
            while end < len(lines) and (
                not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > width
            ):
                end += 1
            offset = sum(len(x) + 1 for x in lines[:row]) + width
            return Definition(
                name=match.group(2), kind="class", signature=current.strip(), start_line=row,
                end_line=end - 1, start_offset=offset, end_offset=offset,
            )
        if width == 0:
            return None
    return None


def _module_name(path: str) -> str:
    stem = path.rsplit("/", 1)[-1]
    if stem.startswith("__init__."):
        return path.rsplit("/", 2)[-2] if "/" in path else ""
    return stem.split(".", 1)[0]


def _base_names(signature: str) -> list[str]:
    """The base classes named in a class header: Python `class A(B, m.C):`, JS/TS/Java
    `class A extends B`."""
    header = signature.split(":", 1)[0] if signature.lstrip().startswith("class ") else signature
    python = re.search(r"class\s+\w+\s*\((.*)\)", header, re.S)
    if python is not None:
        names = []
        for part in python.group(1).split(","):
            part = part.strip()
            if "=" in part:  # metaclass=..., keyword arguments
                continue
            match = re.fullmatch(rf"{_NAME}(?:\.{_NAME})*", part.split("[", 1)[0].strip())
            if match is not None:
                names.append(match.group(0))
        return names
    extends = re.search(rf"\bextends\s+({_NAME}(?:\.{_NAME})*)", header)
    return [extends.group(1)] if extends is not None else []


def _line_indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _body_indent(text: str, definition: Definition) -> str:
    lines = text.split("\n")
    header_indent = _line_indent(lines[definition.start_line]) if definition.start_line < len(lines) else ""
    for line in lines[definition.start_line + 1 : definition.end_line + 1]:
        if line.strip():
            indent = _line_indent(line)
            if len(indent) > len(header_indent):
                return indent
    return header_indent + "    "


def _indent_of(text: str, definition: Definition) -> str:
    line_start = text.rfind("\n", 0, definition.start_offset) + 1
    return _line_indent(text[line_start : definition.start_offset + 1])


def _header(definition: Definition, indent: str) -> list[str]:
    # The index keeps a header from its first character: its first line lost its indentation.
    first, *rest = definition.signature.split("\n")
    return [indent + first, *rest]


def _closed(lines: list[str], indent: str, braces: bool) -> list[str]:
    return [*lines, indent + "}"] if braces else lines


def _decorators(text: str, definition: Definition) -> list[str]:
    """`@property`, `@classmethod`...: they say how a member is used."""
    lines = text.split("\n")
    row, found = definition.start_line, []
    while row > 0 and lines[row - 1].lstrip().startswith("@"):
        found.insert(0, lines[row - 1].rstrip())
        row -= 1
    return found


def _without_body(
    lines: list[str], definition: Definition, indent: str, kept: Sequence[str] = ()
) -> list[str]:
    """`...` where the body was (a Python block) or `{ … }` (braces), with the body lines
    that are `kept`."""
    if definition.signature.rstrip().endswith(":"):
        return [*lines, *kept, indent + "    ..."]
    if not lines:
        return lines
    if not kept:
        return [*lines[:-1], lines[-1].rstrip() + " { … }"]
    return [*lines[:-1], lines[-1].rstrip() + " {", *kept, indent + "  …", indent + "}"]


def _fields(text: str, definition: Definition, indent: str) -> list[str]:
    """A class body's own assignments (class attributes, dataclass fields, enum members)."""
    lines = text.split("\n")
    found = []
    pattern = re.compile(rf"^{re.escape(indent)}({_NAME})\s*(?::[^=]+)?=|^{re.escape(indent)}({_NAME})\s*:\s*\S")
    for line in lines[definition.start_line + 1 : definition.end_line + 1]:
        if pattern.match(line) and len(line) < 160:
            found.append(line.rstrip())
        if len(found) >= 16:
            break
    return found


def _field_name(line: str) -> str:
    match = re.match(rf"\s*({_NAME})", line)
    return match.group(1) if match else ""


def _self_assignments(text: str, definition: Definition, indent: str) -> list[str]:
    """A constructor's `self.x = ...` / `this.x = ...` lines: the fields it sets, each once,
    one level inside the constructor."""
    lines = text.split("\n")[definition.start_line + 1 : definition.end_line + 1]
    step = "    " if definition.signature.rstrip().endswith(":") else "  "
    found: dict[str, str] = {}
    for line in lines:
        match = re.match(r"^\s*((?:self|this)\.(\w+)\s*(?::[^=]+)?=(?!=).*)$", line)
        if match is not None and match.group(2) not in found:
            statement = match.group(1).rstrip()
            found[match.group(2)] = statement if len(statement) < 150 else statement[:147] + "..."
        if len(found) >= 16:
            break
    return [indent + step + statement for statement in found.values()]


def _leading_comment(text: str, definition: Definition, limit: int) -> list[str]:
    lines = text.split("\n")
    row = definition.start_line
    found: list[str] = []
    while row > 0:
        line = lines[row - 1].strip()
        if line.startswith(("//", "/*", "*", "#")) or line.endswith("*/"):
            found.insert(0, lines[row - 1])
            row -= 1
        else:
            break
    return found[-limit:] if len(found) > limit else found
