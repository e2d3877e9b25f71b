"""Cross-file completion tasks mined from real multi-file Python projects (PyPI sdists).

A task is a line that uses a name the file imports from another file of the same project
(CrossCodeEval's construction): the cursor sits right before the first use of that name in a
statement that fits on one line, and the expected completion is the rest of the line. Nobody here
wrote the code; the projects are fetched with `pip download --no-binary :all:` at pinned versions,
so the task set is the same on every machine.
"""

from __future__ import annotations

import ast
import logging
import random
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# Pure-Python projects of a few thousand to tens of thousands of lines, with imports across files.
DEFAULT_PROJECTS: tuple[str, ...] = (
    "click==8.1.8",
    "httpx==0.28.1",
    "marshmallow==3.26.1",
    "tomlkit==0.13.2",
    "rich==13.9.4",
    "jinja2==3.1.5",
    "werkzeug==3.1.3",
    "pluggy==1.5.0",
)

_MIN_TARGET_CHARS = 8
_MAX_FILE_LINES = 4000


@dataclass(frozen=True)
class Task:
    task_id: str
    project: str  # NAME==VERSION
    root: str  # the unpacked project's directory
    path: str  # the file, relative to root
    offset: int  # the cursor's string index in the file's text
    target: str  # the rest of the line after the cursor
    name: str  # the imported name used at the cursor
    defined_in: str  # the file, relative to root, that defines it

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
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


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


def _imported_names(
    tree: ast.Module, path: Path, root: Path, modules: dict[str, Path], parsed: dict[Path, set[str]]
) -> dict[str, Path]:
    """Local name -> defining file, for names this file imports from other project files."""
    parts = _module_parts(root, path)
    if parts is None:
        return {}
    current = ".".join(parts)
    found: dict[str, Path] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = _resolve_from(node, current, path.name == "__init__.py", modules)
        if module is None or modules[module] == path:
            continue
        source = modules[module]
        defined = parsed.get(source)
        if defined is None:
            continue
        for alias in node.names:
            if alias.name in defined:
                found[alias.asname or alias.name] = source
    return found


def _parse(path: Path) -> tuple[str, ast.Module] | None:
    try:
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > _MAX_FILE_LINES:
            return None
        return text, ast.parse(text)
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        log.info("skipping %s: %s", path, exc)
        return None


def _statements(tree: ast.AST) -> Iterator[ast.stmt]:
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and not isinstance(
            node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
        ):
            yield node


def _uses(statement: ast.stmt, names: dict[str, Path]) -> Iterator[ast.Name]:
    # Only the statement's own expressions: nested bodies are statements of their own.
    for field_name, value in ast.iter_fields(statement):
        if field_name in ("body", "orelse", "finalbody", "handlers", "cases"):
            continue
        for node in ast.walk(value) if isinstance(value, ast.AST) else _walk_list(value):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in names:
                yield node


def _walk_list(value: object) -> Iterator[ast.AST]:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, ast.AST):
                yield from ast.walk(item)


def tasks_in_file(
    project: str, root: Path, path: Path, text: str, tree: ast.Module, names: dict[str, Path]
) -> list[Task]:
    """The first one-line use of each imported name in the file."""
    lines = text.split("\n")
    line_starts = [0]
    for line in lines:
        line_starts.append(line_starts[-1] + len(line) + 1)
    seen: set[str] = set()
    tasks: list[Task] = []
    uses = sorted(
        ((s, n) for s in _statements(tree) for n in _uses(s, names)),
        key=lambda item: (item[1].lineno, item[1].col_offset),
    )
    for statement, node in uses:
        if node.id in seen or statement.end_lineno != statement.lineno:
            continue
        line = lines[node.lineno - 1]
        column = len(line.encode("utf-8")[: node.col_offset].decode("utf-8", "replace"))
        target = line[column:].rstrip()
        if len(target) < _MIN_TARGET_CHARS or not target.startswith(node.id):
            continue
        seen.add(node.id)
        relative = path.relative_to(root).as_posix()
        tasks.append(
            Task(
                task_id=f"{project}:{relative}:{node.lineno}",
                project=project,
                root=str(root),
                path=relative,
                offset=line_starts[node.lineno - 1] + column,
                target=target,
                name=node.id,
                defined_in=names[node.id].relative_to(root).as_posix(),
            )
        )
    return tasks


def mine_project(project: str, root: Path) -> list[Task]:
    modules = module_map(root)
    parsed_files = {path: _parse(path) for path in modules.values()}
    defined = {path: top_level_names(p[1]) for path, p in parsed_files.items() if p is not None}
    tasks: list[Task] = []
    for path, parsed in sorted(parsed_files.items()):
        if parsed is None:
            continue
        text, tree = parsed
        names = _imported_names(tree, path, root, modules, defined)
        if names:
            tasks.extend(tasks_in_file(project, root, path, text, tree, names))
    return tasks


def sample(tasks: Sequence[Task], per_project: int, seed: int) -> list[Task]:
    """Up to `per_project` tasks from each project, spread over its files, in a fixed order."""
    rng = random.Random(seed)
    chosen: list[Task] = []
    for project in sorted({t.project for t in tasks}):
        by_file: dict[str, list[Task]] = {}
        for task in tasks:
            if task.project == project:
                by_file.setdefault(task.path, []).append(task)
        for group in by_file.values():
            rng.shuffle(group)
        files = sorted(by_file)
        rng.shuffle(files)
        picked: list[Task] = []
        while len(picked) < per_project and any(by_file[f] for f in files):
            for f in files:
                if by_file[f] and len(picked) < per_project:
                    picked.append(by_file[f].pop())
        chosen.extend(picked)
    return chosen


def load_tasks(
    projects: Sequence[str], directory: Path, per_project: int, seed: int = 0
) -> list[Task]:
    mined: list[Task] = []
    for spec in projects:
        root = fetch_project(spec, directory)
        mined.extend(mine_project(spec, root))
    return sample(mined, per_project, seed)
