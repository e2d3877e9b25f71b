"""Cross-file completion tasks mined from real multi-file Python projects (PyPI sdists).

A task is a place where the code uses something another file of the same project defines, as in
CrossCodeEval: the cursor sits in a line that fits on one line, the rest of the line removed, and
the expected completion is that rest. Four kinds, each at the first such use in its file (so the
file itself cannot show the answer):

- `call`: right after the `(` of a call to a function or class defined in another project file
  (`name(`, `module.name(`, or `self.method(` inherited from a class in another file); the
  arguments are the answer.
- `attribute`: right after the `.` of `Name.` where Name is an imported project class or
  module, or of `self.` where the attribute is inherited from a class in another file.
- `name`: right before the first use of a name the file imports from the project.
- `statement`: at the start of a one-line statement (after its indentation) that uses such a
  name: the whole statement.

Nobody here wrote the code; the projects are fetched with `pip download --no-binary :all:` at
pinned versions, so the task set is the same on every machine. The tuning projects are releases
from before 2025; the held-out projects are never used to choose a setting.
"""

from __future__ import annotations

import ast
import logging
import random
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Pure-Python projects of a few thousand to tens of thousands of lines, with imports across
# files, released before 2025: what settings are chosen on.
DEFAULT_PROJECTS: tuple[str, ...] = (
    "click==8.1.8",
    "httpx==0.28.1",
    "marshmallow==3.23.2",
    "tomlkit==0.13.2",
    "rich==13.9.4",
    "jinja2==3.1.5",
    "werkzeug==3.1.3",
    "pluggy==1.5.0",
)
# Other projects, only ever evaluated: the check that a choice made on the ones above holds.
HELD_OUT_PROJECTS: tuple[str, ...] = (
    "requests==2.32.3",
    "attrs==24.2.0",
    "black==24.10.0",
    "starlette==0.41.3",
    "httpcore==1.0.7",
    "typer==0.15.1",
    "flask==3.1.0",
    "isort==5.13.2",
)
KINDS: tuple[str, ...] = ("call", "attribute", "name", "statement")

_MIN_TARGET_CHARS = {"call": 2, "attribute": 3, "name": 8, "statement": 8}
_MAX_LINE_CHARS = 120
_MAX_FILE_LINES = 4000


@dataclass(frozen=True)
class Task:
    task_id: str
    project: str  # NAME==VERSION
    root: str  # the unpacked project's directory
    path: str  # the file, relative to root
    offset: int  # the cursor's string index in the file's text
    target: str  # the rest of the line after the cursor
    name: str  # the cross-file name the task is about
    defined_in: str  # the file, relative to root, that defines it
    kind: str = "name"

    def document_text(self) -> str:
        """The file as the developer has it: the rest of the target line not yet written."""
        text = (Path(self.root) / self.path).read_text(encoding="utf-8")
        line_end = text.find("\n", self.offset)
        return text[: self.offset] + (text[line_end:] if line_end >= 0 else "")


def fetch_project(spec: str, directory: Path) -> Path:
    """Download and unpack one sdist (once); returns its top directory."""
    directory.mkdir(parents=True, exist_ok=True)
    name, _, version = spec.partition("==")
    unpacked = [p for p in directory.iterdir() if p.is_dir() and _matches(p.name, name, version)]
    if unpacked:
        return unpacked[0]
    archives = [p for p in directory.iterdir() if p.is_file() and _matches(p.name, name, version)]
    if not archives:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
             "--no-deps", spec, "-d", str(directory)],
            check=True,
        )
        archives = [p for p in directory.iterdir() if p.is_file() and _matches(p.name, name, version)]
    with tarfile.open(archives[0]) as archive:
        archive.extractall(directory, filter="data")
    return next(p for p in directory.iterdir() if p.is_dir() and _matches(p.name, name, version))


def _matches(filename: str, name: str, version: str) -> bool:
    normalized = filename.lower().replace("_", "-")
    return normalized.startswith(f"{name.lower().replace('_', '-')}-{version}")


def module_map(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every importable module of the project."""
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = _module_parts(root, path)
        if parts:
            modules[".".join(parts)] = path
    return modules


def _module_parts(root: Path, path: Path) -> list[str] | None:
    # A module's name starts at the topmost directory that is still a package.
    parts = [path.stem] if path.name != "__init__.py" else []
    directory = path.parent
    while (directory / "__init__.py").exists() and directory != root:
        parts.insert(0, directory.name)
        directory = directory.parent
    if not parts or not all(p.isidentifier() for p in parts):
        return None
    return parts


def top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        else:
            names.update(assigned_names(node))
    return names


def assigned_names(node: ast.stmt) -> set[str]:
    """The plain names an assignment statement binds (none for other statements)."""
    if isinstance(node, ast.Assign):
        return {t.id for t in node.targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def class_members(node: ast.ClassDef) -> set[str]:
    """What `self.` can reach that the class itself defines: methods, class attributes, and
    attributes assigned to `self` in its methods."""
    members: set[str] = set()
    for item in node.body:
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
            members.add(item.name)
            for sub in ast.walk(item):
                if (
                    isinstance(sub, ast.Attribute)
                    and isinstance(sub.ctx, ast.Store)
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id == "self"
                ):
                    members.add(sub.attr)
        else:
            members.update(assigned_names(item))
    return members


@dataclass
class _Module:
    path: Path
    text: str
    tree: ast.Module
    names: set[str]
    classes: dict[str, set[str]] = field(default_factory=dict)  # class -> its members


def _resolve_from(
    node: ast.ImportFrom, current: str, is_package: bool, modules: dict[str, Path]
) -> str | None:
    if node.level:
        base = current.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        name = ".".join([*base, node.module] if node.module else base)
    else:
        name = node.module or ""
    return name if name in modules else None


@dataclass(frozen=True)
class Imported:
    """What a file imports from the rest of its project, by local name."""

    names: dict[str, Path]  # functions, classes and constants -> their file
    modules: dict[str, Path]  # project modules imported whole -> their file
    classes: dict[str, set[str]]  # imported classes -> their members


def imported(
    tree: ast.Module, path: Path, root: Path, modules: dict[str, Path], parsed: dict[Path, _Module]
) -> Imported:
    parts = _module_parts(root, path)
    names: dict[str, Path] = {}
    whole: dict[str, Path] = {}
    classes: dict[str, set[str]] = {}
    if parts is None:
        return Imported(names, whole, classes)
    current = ".".join(parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _resolve_from(node, current, path.name == "__init__.py", modules)
            if module is None:
                continue
            for alias in node.names:
                local = alias.asname or alias.name
                submodule = modules.get(f"{module}.{alias.name}")
                if submodule is not None and submodule != path:
                    whole[local] = submodule
                    continue
                source = parsed.get(modules[module])
                if source is None or source.path == path or alias.name not in source.names:
                    continue
                names[local] = source.path
                if alias.name in source.classes:
                    classes[local] = source.classes[alias.name]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                target = modules.get(alias.name)
                if target is not None and target != path and alias.asname:
                    whole[alias.asname] = target
    return Imported(names, whole, classes)


def _parse(path: Path) -> _Module | None:
    try:
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > _MAX_FILE_LINES:
            return None
        tree = ast.parse(text)
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        log.info("skipping %s: %s", path, exc)
        return None
    classes = {n.name: class_members(n) for n in tree.body if isinstance(n, ast.ClassDef)}
    return _Module(path, text, tree, top_level_names(tree), classes)


def _statements(tree: ast.AST) -> Iterator[ast.stmt]:
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and not isinstance(
            node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
        ):
            yield node


def _own_nodes(statement: ast.stmt) -> Iterator[ast.AST]:
    # Only the statement's own expressions: nested bodies are statements of their own.
    for field_name, value in ast.iter_fields(statement):
        if field_name in ("body", "orelse", "finalbody", "handlers", "cases"):
            continue
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, ast.AST):
                yield from ast.walk(item)


@dataclass(frozen=True)
class _Use:
    kind: str
    line: int  # 1-based
    column: int  # character column of the cursor
    name: str
    defined_in: Path


class _Lines:
    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line) + 1)

    def column(self, lineno: int, byte_offset: int) -> int:
        line = self.lines[lineno - 1]
        return len(line.encode("utf-8")[:byte_offset].decode("utf-8", "replace"))


def _inherited(tree: ast.Module, found: Imported) -> dict[ast.FunctionDef | ast.AsyncFunctionDef, tuple[dict[str, Path], set[str]]]:
    """For each method of a class whose bases are project classes from other files: the
    members it inherits from them (-> file), and the members its own class defines."""
    methods: dict[ast.FunctionDef | ast.AsyncFunctionDef, tuple[dict[str, Path], set[str]]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        inherited: dict[str, Path] = {}
        for base in node.bases:
            if isinstance(base, ast.Name) and base.id in found.classes:
                for member in found.classes[base.id]:
                    inherited.setdefault(member, found.names[base.id])
        if not inherited:
            continue
        own = class_members(node)
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                methods[item] = (inherited, own)
    return methods


def uses_in_file(tree: ast.Module, text: str, found: Imported) -> list[_Use]:
    lines = _Lines(text)
    uses: list[_Use] = []
    one_line = [s for s in _statements(tree) if s.end_lineno == s.lineno]
    for statement in one_line:
        for node in _own_nodes(statement):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in found.names:
                column = lines.column(node.lineno, node.col_offset)
                uses.append(_Use("name", node.lineno, column, node.id, found.names[node.id]))
                indent = len(lines.lines[node.lineno - 1]) - len(lines.lines[node.lineno - 1].lstrip())
                uses.append(_Use("statement", node.lineno, indent, node.id, found.names[node.id]))
            if isinstance(node, ast.Call) and node.lineno == node.end_lineno and (node.args or node.keywords):
                callee = _callee(node.func, found)
                if callee is not None:
                    line = lines.lines[node.lineno - 1]
                    after = lines.column(node.lineno, node.func.end_col_offset)  # type: ignore[arg-type]
                    paren = line.find("(", after)
                    if paren >= 0 and not line[after:paren].strip():
                        uses.append(_Use("call", node.lineno, paren + 1, *callee))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                owner = node.value.id
                if owner in found.classes or owner in found.modules:
                    line = lines.lines[node.lineno - 1]
                    after = lines.column(node.lineno, node.value.end_col_offset)  # type: ignore[arg-type]
                    dot = line.find(".", after)
                    source = found.names.get(owner) or found.modules[owner]
                    if dot >= 0 and not line[after:dot].strip():
                        uses.append(_Use("attribute", node.lineno, dot + 1, f"{owner}.{node.attr}", source))
    # `self.x` inherited from a class in another file.
    for method, (inherited, own) in _inherited(tree, found).items():
        for statement in (s for s in ast.walk(method) if isinstance(s, ast.stmt) and s.lineno == s.end_lineno):
            for node in _own_nodes(statement):
                if not (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "self"
                    and node.attr in inherited
                    and node.attr not in own
                ):
                    continue
                line = lines.lines[node.lineno - 1]
                after = lines.column(node.lineno, node.value.end_col_offset)  # type: ignore[arg-type]
                dot = line.find(".", after)
                if dot >= 0 and not line[after:dot].strip():
                    uses.append(_Use("attribute", node.lineno, dot + 1, f"self.{node.attr}", inherited[node.attr]))
                    parent = _call_of(statement, node)
                    if parent is not None and (parent.args or parent.keywords) and parent.lineno == parent.end_lineno:
                        end = lines.column(node.lineno, node.end_col_offset)  # type: ignore[arg-type]
                        paren = line.find("(", end)
                        if paren >= 0 and not line[end:paren].strip():
                            uses.append(_Use("call", node.lineno, paren + 1, f"self.{node.attr}", inherited[node.attr]))
    return uses


def _callee(func: ast.expr, found: Imported) -> tuple[str, Path] | None:
    if isinstance(func, ast.Name) and func.id in found.names:
        return func.id, found.names[func.id]
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        owner = func.value.id
        if owner in found.modules:
            return f"{owner}.{func.attr}", found.modules[owner]
        if owner in found.classes and func.attr in found.classes[owner]:
            return f"{owner}.{func.attr}", found.names[owner]
    return None


def _call_of(statement: ast.stmt, attribute: ast.Attribute) -> ast.Call | None:
    for node in _own_nodes(statement):
        if isinstance(node, ast.Call) and node.func is attribute:
            return node
    return None


def tasks_in_file(project: str, root: Path, module: _Module, found: Imported) -> list[Task]:
    """The first use of each cross-file name in the file, per kind."""
    lines = _Lines(module.text)
    relative = module.path.relative_to(root).as_posix()
    seen: set[tuple[str, str]] = set()
    tasks: list[Task] = []
    for use in sorted(uses_in_file(module.tree, module.text, found), key=lambda u: (u.line, u.column)):
        if (use.kind, use.name) in seen:
            continue
        seen.add((use.kind, use.name))
        line = lines.lines[use.line - 1]
        target = line[use.column :].rstrip()
        if len(line) > _MAX_LINE_CHARS or len(target) < _MIN_TARGET_CHARS[use.kind]:
            continue
        if use.kind == "call" and target.startswith(")"):
            continue
        tasks.append(
            Task(
                task_id=f"{project}:{relative}:{use.line}:{use.kind}",
                project=project,
                root=str(root),
                path=relative,
                offset=lines.starts[use.line - 1] + use.column,
                target=target,
                name=use.name,
                defined_in=use.defined_in.relative_to(root).as_posix(),
                kind=use.kind,
            )
        )
    return tasks


def mine_project(project: str, root: Path) -> list[Task]:
    modules = module_map(root)
    parsed = {path: m for path in modules.values() if (m := _parse(path)) is not None}
    tasks: list[Task] = []
    for path, module in sorted(parsed.items()):
        found = imported(module.tree, path, root, modules, parsed)
        if found.names or found.modules:
            tasks.extend(tasks_in_file(project, root, module, found))
    return tasks


def sample(
    tasks: Sequence[Task], per_project: int, seed: int, kinds: Sequence[str] = KINDS
) -> list[Task]:
    """Up to `per_project` tasks of each kind from each project, spread over its files and
    lines (no two tasks on one line), in a fixed order."""
    rng = random.Random(seed)
    chosen: list[Task] = []
    for project in sorted({t.project for t in tasks}):
        used_lines: set[tuple[str, int]] = set()
        for kind in kinds:
            by_file: dict[str, list[Task]] = {}
            for task in tasks:
                if task.project == project and task.kind == kind:
                    by_file.setdefault(task.path, []).append(task)
            for group in by_file.values():
                group.sort(key=lambda t: t.offset)
                rng.shuffle(group)
            files = sorted(by_file)
            rng.shuffle(files)
            picked = 0
            while picked < per_project and any(by_file[f] for f in files):
                for f in files:
                    while by_file[f] and picked < per_project:
                        task = by_file[f].pop()
                        line = (task.path, _line_of(task))
                        if line in used_lines:
                            continue
                        used_lines.add(line)
                        chosen.append(task)
                        picked += 1
                        break
    return chosen


def _line_of(task: Task) -> int:
    return int(task.task_id.rsplit(":", 2)[1])


def load_tasks(
    projects: Sequence[str],
    directory: Path,
    per_project: int,
    seed: int = 0,
    kinds: Sequence[str] = KINDS,
) -> list[Task]:
    mined: list[Task] = []
    for spec in projects:
        root = fetch_project(spec, directory)
        mined.extend(mine_project(spec, root))
    return sample(mined, per_project, seed, kinds)
