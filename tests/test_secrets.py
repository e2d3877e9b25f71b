"""Secrets never enter nextab (issue 10): canaries, unique tokens planted in `.env`, `.env.local`,
`id_rsa`, `server.pem`, `deploy.key`, a git-ignored `local_settings.py`, a file the user's
exclude list names and a file reached only through a symlink out of the workspace, appear zero
times in the index (in memory and its store file), the similar-code pool, the edit history (in
memory and its saved file), every prompt the model reads, and the logs (DEBUG included).

Everything is real: files on disk, a real .gitignore (checked against git itself where git is
installed), tree-sitter, the watchdog observer, the engine with the tiny random-weight model.
Each test also plants a control token in an ordinary file and finds it through the very same
channel, so a channel that went blind fails the test instead of passing it.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from nextab.config import Config, ContextConfig, load
from nextab.context.document import Document
from nextab.context.history import EditHistory
from nextab.context.imports import ImportResolver
from nextab.context.secrets import SecretPaths, is_secret_uri, resolves_inside, secret_name
from nextab.context.symbols import Import
from nextab.context.watch import WorkspaceWatcher
from nextab.context.workspace import Workspace
from nextab.engine import CompletionRequest, Engine, PrivateDocument
from nextab.nextedit import NextEditRequest

EXCLUDE = ("config/prod_*.py",)
LABELS = (
    ".env",
    ".env.local",
    "id_rsa",
    "server.pem",
    "deploy.key",
    "local_settings.py",
    "config/prod_settings.py",
    "outside/leak.py",
)
# What `.env` holds is also reached through an in-root symlink with a source name.
LINKS = {
    "linked.py": "outside/leak.py",
    "linked_dir/leak.py": "outside/leak.py",
    "env_alias.py": ".env",
}

APP = """from helpers import load_config
from local_settings import database_url


def connect_all():
    config = load_config()
    url = database_url()
    return """


def _token() -> str:
    # An identifier, so that it reaches the index's symbols and BM25 terms when a file leaks.
    return f"canary_{secrets.token_hex(8)}"


def _secret_source(token: str) -> str:
    # Defines the names app.py uses next to the cursor: a leak would be the first candidate.
    return (
        f'SECRET_KEY = "{token}"\n\n\n'
        "def database_url():\n"
        f'    return "postgres://admin:{token}@db/prod"\n\n\n'
        f"def {token}():\n"
        "    return database_url()\n"
    )


def _control_source(token: str) -> str:
    return (
        "def load_config():\n"
        f'    return {{"name": "{token}", "retries": 3}}\n\n\n'
        f"def {token}():\n"
        "    return load_config()\n"
    )


@dataclass
class Planted:
    root: Path
    canaries: dict[str, str]  # planted file -> its token
    control: str  # the token of helpers.py, an ordinary file

    def uri(self, relative: str) -> str:
        return (self.root / relative).as_uri()

    def text(self, relative: str) -> str:
        return (self.root / relative).read_text()

    @property
    def documents(self) -> list[str]:
        """The planted files as an editor would open them: in the workspace, or via a link."""
        return [label for label in LABELS if not label.startswith("outside/")] + list(LINKS)


@pytest.fixture
def planted(tmp_path: Path) -> Planted:
    root = tmp_path / "project"
    outside = tmp_path / "outside"
    (root / "config").mkdir(parents=True)
    outside.mkdir()
    canaries = {label: _token() for label in LABELS}
    control = _token()
    (root / ".gitignore").write_text("local_settings.py\n")
    (root / "app.py").write_text(APP)
    (root / "helpers.py").write_text(_control_source(control))
    (root / "config" / "__init__.py").write_text("")
    (root / ".env").write_text(f"API_KEY={canaries['.env']}\nDEBUG=1\n")
    (root / ".env.local").write_text(f"API_KEY={canaries['.env.local']}\n")
    (root / "id_rsa").write_text(
        f"-----BEGIN OPENSSH PRIVATE KEY-----\n{canaries['id_rsa']}\n-----END OPENSSH PRIVATE KEY-----\n"
    )
    (root / "server.pem").write_text(
        f"-----BEGIN PRIVATE KEY-----\n{canaries['server.pem']}\n-----END PRIVATE KEY-----\n"
    )
    (root / "deploy.key").write_text(f"{canaries['deploy.key']}\n")
    (root / "local_settings.py").write_text(_secret_source(canaries["local_settings.py"]))
    (root / "config" / "prod_settings.py").write_text(
        _secret_source(canaries["config/prod_settings.py"])
    )
    (outside / "leak.py").write_text(_secret_source(canaries["outside/leak.py"]))
    (root / "linked.py").symlink_to(outside / "leak.py")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "env_alias.py").symlink_to(root / ".env")
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(root)], check=True)
        # The fixture's idea of "git-ignored" is git's own.
        ignored = subprocess.run(["git", "check-ignore", "-q", "local_settings.py"], cwd=root)
        assert ignored.returncode == 0
    return Planted(root, canaries, control)


def _assert_no_canary(where: str, text: str, planted: Planted) -> None:
    leaked = [label for label, token in planted.canaries.items() if token in text]
    assert not leaked, f"{where} holds the canaries of {leaked}"


def _assert_control(where: str, text: str, planted: Planted) -> None:
    assert planted.control in text, f"{where} is blind: not even the control token is there"


def _eventually(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _index_text(workspace: Workspace) -> str:
    """All the index holds in memory: paths, names, signatures, imports."""
    parts = []
    for path in workspace.index.files():
        entry = workspace.index.file(path)
        assert entry is not None
        parts.append(path)
        parts.extend(f"{d.name} {d.signature}" for d in entry.definitions)
        parts.extend(f"{i.module} {' '.join(i.names)}" for i in entry.imports)
    return "\n".join(parts)


def _pool_text(workspace: Workspace, tokens: Sequence[str]) -> str:
    """Every passage of the similar-code pool that any of the tokens finds, and the candidates
    for app.py (definitions, imports, recent edits, similar code) as the prompt would get."""
    found = [h.passage.text for t in tokens for h in workspace.similar.search(t, limit=100)]
    candidates = workspace.candidates("app.py", APP, len(APP))
    return "\n".join([*found, *(c.chunk.text for c in candidates)])


def _open_all(workspace: Workspace, planted: Planted) -> None:
    """What the server does on didOpen: every planted document, and the ordinary ones."""
    for relative in [*planted.documents, "app.py", "helpers.py"]:
        workspace.open_document(workspace.relative(planted.uri(relative)), planted.text(relative))


# --- the index and the similar-code pool ----------------------------------------------------------


def test_index_and_similar_code_never_hold_secrets(
    planted: Planted, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    store = tmp_path / "store"
    settings = ContextConfig(exclude=EXCLUDE)
    workspace = Workspace(planted.root, settings, store_dir=store)
    workspace.start()
    try:
        assert workspace.index.wait_ready(30)
        _open_all(workspace, planted)  # editor buffers of every planted file
        # Watcher events that name them (as a checkout or a formatter would cause)...
        WorkspaceWatcher(workspace.index).apply([*planted.documents, "linked_dir"])
        # ...and real ones: the files change on disk, a new secret appears, so does a new file.
        with (planted.root / "local_settings.py").open("a") as out:
            out.write(f"\nEXTRA = '{planted.canaries['local_settings.py']}'\n")
        (planted.root / "new.key").write_text(planted.canaries["deploy.key"])
        (planted.root / "fresh.py").write_text(f"def fresh():\n    return '{planted.control}'\n")
        _eventually(lambda: "fresh.py" in workspace.index.files())

        tokens = [*planted.canaries.values(), planted.control]
        in_memory = _index_text(workspace)
        _assert_no_canary("the index", in_memory, planted)
        _assert_control("the index", in_memory, planted)
        assert {"app.py", "helpers.py", "fresh.py"} <= set(workspace.index.files())
        assert not set(workspace.index.files()) & {*planted.documents, "new.key"}
        pool = _pool_text(workspace, tokens)
        _assert_no_canary("the similar-code pool", pool, planted)
        _assert_control("the similar-code pool", pool, planted)
    finally:
        workspace.stop()
    stored = (store / "index.msgpack").read_bytes().decode("utf-8", "replace")
    _assert_no_canary("the index store", stored, planted)
    _assert_control("the index store", stored, planted)
    _assert_no_canary("the logs", caplog.text, planted)
    # The capture works: the refusals are in it, by path.
    assert "not indexing the buffer of .env" in caplog.text


def test_a_stored_index_from_before_a_file_became_private_is_not_trusted(
    planted: Planted, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    before = Workspace(planted.root, ContextConfig(watch=False), store_dir=store)
    before.start()
    assert before.index.wait_ready(30)
    before.stop()
    stored = (store / "index.msgpack").read_bytes().decode("utf-8", "replace")
    # Without the exclude list the excluded file was indexed: the control for this test.
    assert planted.canaries["config/prod_settings.py"] in stored

    after = Workspace(planted.root, ContextConfig(watch=False, exclude=EXCLUDE), store_dir=store)
    loaded = after.index._load_store()  # what a restart answers from before its scan
    assert "config/prod_settings.py" in loaded
    assert "config/prod_settings.py" not in after.index.files()
    assert "helpers.py" in after.index.files()


def test_a_new_exclude_pattern_drops_what_it_covers(planted: Planted) -> None:
    workspace = Workspace(planted.root, ContextConfig(watch=False), store_dir=None)
    workspace.start()
    try:
        assert workspace.index.wait_ready(30)
        workspace.open_document("helpers.py", planted.text("helpers.py"))
        workspace.history.record(planted.uri("helpers.py"), "x = 1\n", 4, 5, planted.control, 2)
        workspace.history.close_open_edits()
        assert planted.control in _index_text(workspace)
        assert planted.control in workspace.history.render(10_000)

        workspace.settings = dataclasses.replace(workspace.settings, exclude=("helpers.py",))
        _eventually(lambda: "helpers.py" not in workspace.index.files())
        assert planted.control not in _index_text(workspace)
        assert planted.control not in _pool_text(workspace, [planted.control])
        assert workspace.history.edits() == []
        assert workspace.history.unsaved  # the next save writes the history without them
    finally:
        workspace.stop()


# --- the edit history ---------------------------------------------------------------------------


def _typed(text: str, token: str) -> str:
    return text + f"# {token}\n"


def _type_into(history: EditHistory, uri: str, text: str, token: str, version: int) -> None:
    """What the server's didChange records: a comment typed at the end, then a new line."""
    end = len(text)
    history.record(uri, text, end, end, f"# {token}", version)
    typed = text + f"# {token}"
    history.record(uri, typed, len(typed), len(typed), "\n", version + 1)


def test_edit_history_never_records_secrets(planted: Planted, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    store = tmp_path / "store"
    workspace = Workspace(
        planted.root, ContextConfig(watch=False, exclude=EXCLUDE), store_dir=store
    )
    history = workspace.history
    for version, relative in enumerate(planted.documents, start=1):
        # The edit carries the file's own canary, and the text around it holds it too.
        label = LINKS.get(relative, relative)
        _type_into(
            history, planted.uri(relative), planted.text(relative), planted.canaries[label], version
        )
    _type_into(history, planted.uri("app.py"), APP, planted.control, 1)
    history.close_open_edits()

    edits = history.edits(include_open=True)
    in_memory = "\n".join(f"{e.uri} {e.head}{e.old}{e.new}{e.tail}" for e in edits)
    _assert_no_canary("the edit history", in_memory, planted)
    _assert_control("the edit history", in_memory, planted)
    assert {e.uri for e in edits} == {planted.uri("app.py")}
    diffs = history.render(100_000, include_open=True)
    _assert_no_canary("the recent-edit diffs", diffs, planted)
    _assert_control("the recent-edit diffs", diffs, planted)

    workspace.save()
    saved = (store / "history.msgpack").read_bytes().decode("utf-8", "replace")
    _assert_no_canary("the saved edit history", saved, planted)
    _assert_control("the saved edit history", saved, planted)
    _assert_no_canary("the logs", caplog.text, planted)


def test_a_saved_history_with_secret_edits_loses_them_on_loading(
    planted: Planted, tmp_path: Path
) -> None:
    # A history saved by a nextab that recorded everything (or before the exclude list grew).
    path = tmp_path / "store" / "history.msgpack"
    everything = EditHistory(root=planted.root, private=lambda _: False)
    _type_into(
        everything, planted.uri("local_settings.py"), "", planted.canaries["local_settings.py"], 1
    )
    _type_into(everything, planted.uri("app.py"), APP, planted.control, 1)
    everything.close_open_edits()
    assert everything.save(path)
    assert planted.canaries["local_settings.py"] in path.read_bytes().decode("utf-8", "replace")

    workspace = Workspace(planted.root, ContextConfig(watch=False), store_dir=path.parent)
    rendered = workspace.history.render(100_000)
    _assert_no_canary("the loaded edit history", rendered, planted)
    _assert_control("the loaded edit history", rendered, planted)


def test_a_history_without_a_workspace_refuses_secret_names() -> None:
    history = EditHistory()
    for uri in ("file:///w/.env", "file:///w/keys/server.pem", "file:///home/u/.ssh/config"):
        history.record(uri, "A=1\n", 4, 4, "B=2\n", 2)
    history.record("file:///w/app.py", "x = 1\n", 6, 6, "y = 2\n", 2)
    assert [e.uri for e in history.edits(include_open=True)] == ["file:///w/app.py"]


# --- prompts --------------------------------------------------------------------------------------


class RecordingBackend:
    """The tiny model, keeping every text it tokenizes and every token sequence it runs: all
    that any prompt (completion, next edit, context scoring) can show the model."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.seen: list[str] = []
        self.model_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def text(self) -> str:
        return "\n".join(self.seen)

    def tokenize(self, text: str) -> list[int]:
        self.seen.append(text)
        return self._backend.tokenize(text)

    def _ran(self, *sequences: Sequence[int]) -> None:
        self.model_calls += 1
        self.seen.extend(self._backend.detokenize(list(s)) for s in sequences)

    def forward(self, cache: Any, tokens: Sequence[int], every: bool = False) -> Any:
        self._ran(tokens)
        return self._backend.forward(cache, tokens, every)

    def forward_tree(self, cache: Any, tokens: Sequence[int], parents: Sequence[int]) -> Any:
        self._ran(tokens)
        return self._backend.forward_tree(cache, tokens, parents)

    def add_rows(self, batch: Any, prompts: Sequence[Sequence[int]]) -> Any:
        self._ran(*prompts)
        return self._backend.add_rows(batch, prompts)

    def forward_batch(self, batch: Any, tokens: Sequence[int]) -> Any:
        self._ran(tokens)
        return self._backend.forward_batch(batch, tokens)

    def token_logprobs(
        self, sequences: Sequence[Sequence[int]], starts: Sequence[int], should_stop: Any = None
    ) -> Any:
        self._ran(*sequences)
        return self._backend.token_logprobs(sequences, starts, should_stop)

    def token_stats(self, sequences: Sequence[Sequence[int]], starts: Sequence[int]) -> Any:
        self._ran(*sequences)
        return self._backend.token_stats(sequences, starts)


@pytest.fixture
def recording(tiny_backend) -> Iterator[tuple[Engine, RecordingBackend]]:
    backend = RecordingBackend(tiny_backend)
    context = ContextConfig(
        watch=False, strategy="full", pool_tokens=4096, budget_tokens=4096, exclude=EXCLUDE
    )
    engine = Engine(Config(max_tokens=2, context=context), backend)  # type: ignore[arg-type]
    yield engine, backend
    engine.close_workspace()


def _request(planted: Planted, relative: str, text: str | None = None) -> CompletionRequest:
    text = planted.text(relative) if text is None else text
    doc = Document(
        planted.uri(relative), text, "python" if relative.endswith(".py") else "plaintext"
    )
    return CompletionRequest(doc, len(text), text, path=str(planted.root / relative))


def _next_edit_request(
    planted: Planted, relative: str, history: EditHistory, text: str | None = None
) -> NextEditRequest:
    """As the server builds it: the workspace's edits and their diffs, the document's text."""
    text = planted.text(relative) if text is None else text
    doc = Document(
        planted.uri(relative), text, "python" if relative.endswith(".py") else "plaintext"
    )
    return NextEditRequest(
        document=doc,
        text=text,
        offset=len(text),
        edits=tuple(history.edits(include_open=True)),
        diffs=history.render(100_000, include_open=True),
        path=str(planted.root / relative),
    )


def test_prompts_never_hold_secrets(planted: Planted, recording, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    engine, backend = recording
    workspace = engine.open_workspace(planted.root, store_dir=None)
    assert workspace.index.wait_ready(30)
    _open_all(workspace, planted)
    for version, relative in enumerate(planted.documents, start=1):
        label = LINKS.get(relative, relative)
        _type_into(
            workspace.history,
            planted.uri(relative),
            planted.text(relative),
            planted.canaries[label],
            version,
        )
    _type_into(workspace.history, planted.uri("app.py"), APP, planted.control, 1)
    workspace.history.close_open_edits()

    # In an ordinary file: the prompt shows the repository, the control token included.
    suggestion = engine.complete(_request(planted, "app.py"))
    assert suggestion.metrics.context_tokens > 0
    _assert_control("the completion prompt", backend.text(), planted)
    engine.complete_batch([_request(planted, "app.py"), _request(planted, ".env")])
    engine.next_edit(
        _next_edit_request(planted, "app.py", workspace.history, _typed(APP, planted.control))
    )

    # In a planted file: an empty suggestion, and the model is not called at all.
    calls = backend.model_calls
    for relative in planted.documents:
        refused = engine.complete(_request(planted, relative))
        assert (refused.text, refused.stop_reason) == ("", "private"), relative
        assert (
            engine.next_edit(_next_edit_request(planted, relative, workspace.history)).suggestions
            == ()
        )
        with pytest.raises(PrivateDocument):
            engine.prompt_for(_request(planted, relative))
    assert engine.complete_batch([_request(planted, ".env")])[0].text == ""
    assert backend.model_calls == calls

    _assert_no_canary("the prompts", backend.text(), planted)
    _assert_no_canary("the logs", caplog.text, planted)
    assert f"no completion in {planted.root / '.env'}" in caplog.text


def test_next_edit_drops_edits_a_history_could_not_judge(planted: Planted, recording) -> None:
    # The server records edits before the workspace opens, in a history that knows secret
    # names but not the workspace's .gitignore or exclude list.
    engine, backend = recording
    early = EditHistory()
    _type_into(
        early, planted.uri("local_settings.py"), "", planted.canaries["local_settings.py"], 1
    )
    _type_into(
        early,
        planted.uri("config/prod_settings.py"),
        "",
        planted.canaries["config/prod_settings.py"],
        1,
    )
    _type_into(early, planted.uri("app.py"), APP, planted.control, 1)
    early.close_open_edits()
    # The control for this test: that history took them all.
    assert planted.uri("local_settings.py") in {e.uri for e in early.edits()}
    workspace = engine.open_workspace(planted.root, store_dir=None)
    assert workspace.index.wait_ready(30)

    engine.next_edit(_next_edit_request(planted, "app.py", early, _typed(APP, planted.control)))
    assert backend.model_calls > 0
    _assert_no_canary("the next-edit prompts", backend.text(), planted)
    _assert_control("the next-edit prompts", backend.text(), planted)


def test_without_a_workspace_secret_names_still_count(planted: Planted, recording) -> None:
    # (No root, no .gitignore: the names are all there is to judge by.)
    engine, backend = recording
    for relative in (".env", ".env.local", "id_rsa", "server.pem", "deploy.key"):
        assert engine.complete(_request(planted, relative)).stop_reason == "private"
    assert backend.model_calls == 0
    engine.complete(_request(planted, "helpers.py"))
    assert backend.model_calls > 0
    _assert_no_canary("the prompts", backend.text(), planted)
    _assert_control("the prompts", backend.text(), planted)


# --- symlinks -------------------------------------------------------------------------------------


def test_symlinks_out_of_the_root_are_not_followed(planted: Planted) -> None:
    root = planted.root
    (root / "alias.py").symlink_to(root / "helpers.py")  # inside: followed as before
    # A directory linked from one the walk skips (vendored), so only the link reaches it.
    (root / "vendor" / "lib").mkdir(parents=True)
    (root / "vendor" / "lib" / "util.py").write_text("def util():\n    return 1\n")
    (root / "lib").symlink_to(root / "vendor" / "lib", target_is_directory=True)
    (root / "web").mkdir()
    tsconfig = root.parent / "outside" / "tsconfig.json"
    tsconfig.write_text('{"compilerOptions": {"baseUrl": "."}}')
    (root / "web" / "tsconfig.json").symlink_to(tsconfig)

    assert resolves_inside(root, "alias.py") == "helpers.py"
    assert resolves_inside(root, "linked.py") is None
    assert resolves_inside(root, "linked_dir/leak.py") is None

    workspace = Workspace(root, ContextConfig(watch=False), store_dir=None)
    workspace.start()
    try:
        assert workspace.index.wait_ready(30)
        files = set(workspace.index.files())
        assert {"alias.py", "lib/util.py"} <= files
        assert not files & {"linked.py", "linked_dir/leak.py", "env_alias.py"}
        for path in ("linked.py", "linked_dir", "linked_dir/leak.py", "env_alias.py"):
            workspace.index.refresh(path)
            assert not workspace.index.update_file(path)
        assert workspace.index.read_text("linked.py") is None
        assert workspace.index.read_text("alias.py") == planted.text("helpers.py")
        assert workspace.is_private(planted.uri("linked_dir/leak.py"))
        assert not workspace.is_private(planted.uri("alias.py"))
        skipped = workspace.index.stats().skipped
        assert skipped.get("symlink out of the workspace", 0) >= 2
    finally:
        workspace.stop()

    resolver = ImportResolver(root)  # on its own it asks the disk
    assert resolver.resolve(Import("linked"), "app.py", "python") == ()
    assert resolver.resolve(Import("linked_dir.leak"), "app.py", "python") == ()
    assert resolver.resolve(Import("alias"), "app.py", "python") == ("alias.py",)
    assert resolver.aliases_for("web/main.ts") is None


# --- the path matcher and the setting ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        "deploy/.env",
        ".env.local",
        ".env.production",
        ".envrc",
        "prod.env",
        "server.pem",
        "a/b/deploy.key",
        "cert.p12",
        "Server.PEM",
        "id_rsa",
        "keys/id_ed25519.pub",
        ".netrc",
        "_netrc",
        ".npmrc",
        ".pypirc",
        ".git-credentials",
        "credentials.json",
        "credentials-prod.json",
        "home/.ssh/config",
        ".aws/config",
        "infra/terraform.tfstate",
    ],
)
def test_secret_paths_match_by_name_at_any_depth(path: str) -> None:
    assert SecretPaths().is_secret(path)
    assert is_secret_uri("file:///home/dev/project/" + path.replace(".", "%2E", 1))


@pytest.mark.parametrize(
    "path",
    [
        "app.py",
        "secrets.py",
        "context/secrets.py",
        "env.py",
        "environment.ts",
        "keys.py",
        "monkey.py",
        "keyboard.js",
        ".env/lib/python3.11/site.py",
        "docs/credentials.md",
        "id.py",
        "pem.go",
    ],
)
def test_ordinary_paths_are_not_secret(path: str) -> None:
    assert not SecretPaths().is_secret(path)


def test_the_exclude_list_is_gitignore_globs_relative_to_the_root() -> None:
    paths = SecretPaths(["config/prod/", "*.sql", "/local.py", "!keep.sql", "fixtures"])
    assert paths.is_secret("config/prod/db.py")
    assert paths.is_secret("config/prod", is_dir=True)
    assert not paths.is_secret("app/config/prod/db.py")  # a slash anchors it at the root
    assert paths.is_secret("db/schema.sql") and not paths.is_secret("db/keep.sql")
    assert paths.is_secret("local.py") and not paths.is_secret("pkg/local.py")
    assert paths.is_secret("tests/fixtures/data.py")
    assert not paths.is_secret("app.py")
    assert secret_name("ID_RSA") and not secret_name("rsa.py")


def test_exclude_setting() -> None:
    assert Config().context.exclude == ()
    config, messages = load({"context": {"exclude": ["config/prod/", "*.sql"]}})
    assert (config.context.exclude, messages) == (("config/prod/", "*.sql"), [])
    # The environment and the CLI give strings: a JSON list, or patterns split at commas.
    assert load({"context": {"exclude": '["a/", "b.py"]'}})[0].context.exclude == ("a/", "b.py")
    assert load({"context": {"exclude": "a/, b.py"}})[0].context.exclude == ("a/", "b.py")
    for bad in (42, "[1", [1, 2], {"a": 1}, ["!"], [None]):
        config, messages = load({"context": {"exclude": bad, "maxFiles": 7}})
        assert config.context.exclude == ()
        assert config.context.max_files == 7  # the other keys still apply
        assert len(messages) == 1 and "'context.exclude'" in messages[0], (bad, messages)


def test_fetching_a_model_never_runs_workspace_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An editor may start the server in the workspace: a pip.py there must not be what runs
    # when nextab calls pip.
    from nextab.models.resolve import pip_download

    workspace = tmp_path / "workspace"
    workspace.mkdir()
    marker = tmp_path / "ran"
    (workspace / "pip.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # fail fast: nothing to download from
    with pytest.raises(RuntimeError):
        pip_download("nextab-no-such-package", "1.0", tmp_path / "dest")
    assert not marker.exists()
