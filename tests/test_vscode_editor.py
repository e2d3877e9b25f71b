"""The VS Code extension in a real VS Code, against the real `nextab serve`.

VS Code itself cannot be downloaded here, but its workbench can: code-server (from npm) serves
VS Code to a browser, and a headless Chromium driven by Playwright is the user. The extension is
installed from the .vsix that `vsce package` makes, keys are typed into the editor, and the
assertions read what the user would see: the ghost text, the next-edit decoration, the status
bar, and the file on disk after Tab and save.

Needs NEXTAB_CODE_SERVER (the launcher editors/vscode/scripts/fetch-code-server.sh writes),
Chromium (`chromium` on PATH, or NEXTAB_CHROMIUM), Playwright and `npm ci` in editors/vscode;
.ci/run sets them up. With NEXTAB_SCREENSHOTS=DIR the screens are saved there as PNG (the
README's pictures).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_nvim import outcomes, wait_for

EXTENSION = Path(__file__).resolve().parents[1] / "editors" / "vscode"
CODE_SERVER = os.environ.get("NEXTAB_CODE_SERVER", "")
TEST_VARIABLES = {"NEXTAB_CODE_SERVER", "NEXTAB_CHROMIUM", "NEXTAB_SCREENSHOTS", "NEXTAB_NVIM"}
CHROMIUM = os.environ.get("NEXTAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(
    not (CODE_SERVER and Path(CODE_SERVER).is_file())
    or CHROMIUM is None
    or sync_playwright is None
    or not (EXTENSION / "node_modules").is_dir(),
    reason="needs NEXTAB_CODE_SERVER (editors/vscode/scripts/fetch-code-server.sh), chromium, "
    "playwright and `npm ci` in editors/vscode",
)

# The workbench without what is not under test: no welcome page, no chat, no minimap, nothing
# saved behind the test's back, and no word-based suggestions, so that a suggest widget can only
# be nextab's (it must not show one: its suggestions are ghost text).
WORKBENCH = {
    "editor.wordBasedSuggestions": "off",
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "workbench.secondarySideBar.defaultVisibility": "hidden",
    "security.workspace.trust.enabled": False,
    "telemetry.telemetryLevel": "off",
    "editor.minimap.enabled": False,
    "files.autoSave": "off",
    "files.hotExit": "off",
    "git.enabled": False,
    "extensions.autoCheckUpdates": False,
    "extensions.autoUpdate": False,
}


@pytest.fixture(scope="module")
def extensions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The extension as users install it: compiled, packaged by vsce, installed from the .vsix."""
    folder = tmp_path_factory.mktemp("vscode-extensions")
    vsix = folder / "nextab.vsix"
    subprocess.run(["npm", "run", "--silent", "compile"], cwd=EXTENSION, check=True, timeout=300)
    subprocess.run(["npx", "vsce", "package", "--skip-license", "-o", str(vsix)], cwd=EXTENSION,
                   check=True, timeout=300, capture_output=True)  # fmt: skip
    subprocess.run([CODE_SERVER, "--extensions-dir", str(folder / "installed"), "--install-extension",
                    str(vsix)], check=True, timeout=120, capture_output=True)  # fmt: skip
    return folder / "installed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VSCode:
    """One code-server and one browser page on it: a user at VS Code with `editor_project` open."""

    def __init__(self, page: Page, server: subprocess.Popen[bytes], editor_project: Path) -> None:
        self.page = page
        self.server = server
        self.editor_project = editor_project

    # -- what the user sees ------------------------------------------------------------------

    def status(self) -> str:
        item = self.page.query_selector("[id='nextab.nextab']")
        return (item.inner_text() if item else "").strip()

    def ghost(self) -> str:
        """The first line of the ghost text at the cursor (Monaco splits it into token spans, and
        a part of it it may draw as a "preview")."""
        spans = self.page.query_selector_all(
            ".view-lines .ghost-text-decoration, .view-lines .ghost-text-decoration-preview"
        )
        return "".join(s.text_content() or "" for s in spans).replace("\u00a0", " ")

    def ghost_lines(self) -> list[str]:
        """All of the ghost text: its first line at the cursor, the rest in a zone below it."""
        lines = self.page.evaluate(
            """() => {
                 const part = '.view-lines .ghost-text-decoration, .view-lines .ghost-text-decoration-preview';
                 const first = [...document.querySelectorAll(part)].map(e => e.textContent).join('');
                 const rest = [...document.querySelectorAll('.view-zones .view-line')]
                   .filter(l => l.querySelector('.ghost-text')).map(l => l.textContent);
                 return first || rest.length ? [first, ...rest] : [];
               }"""
        )
        return [line.replace("\u00a0", " ") for line in lines]

    def after_text(self) -> str:
        """Text that decorations put after lines (`after.contentText` renders as CSS content)."""
        return self.page.evaluate(
            """() => [...document.querySelectorAll('.view-lines span')]
                 .map(e => getComputedStyle(e, '::after').content)
                 .filter(c => c && c !== 'none' && c !== 'normal').join('\\n')"""
        )

    def cursor(self) -> str:
        item = self.page.query_selector("[id='status.editor.selection']")
        return (item.inner_text() if item else "").strip()

    def screenshot(self, name: str, tmp_path: Path) -> Path:
        target = Path(os.environ.get("NEXTAB_SCREENSHOTS") or tmp_path) / name
        self.page.screenshot(path=str(target))
        return target

    # -- what the user does ------------------------------------------------------------------

    def open(self, name: str) -> None:
        self.page.click(f".explorer-folders-view .monaco-list-row >> text={name}")
        self.page.wait_for_selector(f".tab.active >> text={name}", timeout=30_000)
        self.page.wait_for_selector(".monaco-editor .view-lines", timeout=30_000)
        self.page.click(".monaco-editor .view-lines")

    def wait_ready(self, timeout: float = 120) -> None:
        wait_for(lambda: self.status().startswith("nextab:") and "loading" not in self.status(),
                 timeout=timeout, what="the model to load")  # fmt: skip

    def go_to(self, line: int, column: int) -> None:
        self.page.keyboard.press("Control+g")
        self.page.wait_for_selector(".quick-input-widget input", timeout=10_000)
        self.page.keyboard.type(f"{line}:{column}")
        self.page.keyboard.press("Enter")
        wait_for(lambda: self.cursor().startswith(f"Ln {line}, Col {column}"), timeout=10,
                 what=f"the cursor at {line}:{column}")  # fmt: skip

    def command(self, title: str) -> None:
        self.page.keyboard.press("F1")
        self.page.wait_for_selector(".quick-input-widget input", timeout=10_000)
        self.page.keyboard.type(title)
        self.page.wait_for_selector(f".quick-input-list .monaco-list-row >> text={title}", timeout=10_000)
        self.page.keyboard.press("Enter")

    def type_until_suggested(self, keys: str, timeout: float = 5.0) -> tuple[str, str]:
        """Type `keys` one at a time until a suggestion shows (the tiny model's suggestion for
        some prefixes is empty); what was typed, and the suggestion's first line."""
        for n, key in enumerate(keys, 1):
            self.page.keyboard.type(key)
            with contextlib.suppress(AssertionError):
                return keys[:n], wait_for(self.ghost, timeout=timeout)
        raise AssertionError(f"no suggestion after typing {keys!r}")

    def save(self) -> None:
        self.page.keyboard.press("Control+s")
        wait_for(lambda: not self.page.query_selector(".tab.active.dirty"), timeout=10, what="the save")


@pytest.fixture
def vscode_for(
    extensions: Path, editor_project: Path, tmp_path: Path
) -> Iterator[Callable[..., VSCode]]:
    """Start VS Code with the given nextab settings; everything started is stopped after."""
    assert sync_playwright is not None
    started: list[tuple[subprocess.Popen[bytes], Any]] = []
    playwright = sync_playwright().start()

    def start(settings: dict[str, Any], width: int = 1100, height: int = 520) -> VSCode:
        data = tmp_path / f"user-data-{len(started)}"
        (data / "User").mkdir(parents=True)
        (data / "User" / "settings.json").write_text(json.dumps({**WORKBENCH, **settings}, indent=2))
        port = free_port()
        # The server inherits this: the acceptance log lands in the test's folder. (The tests'
        # own NEXTAB_* variables are not server settings: they stay here.)
        env = {k: v for k, v in os.environ.items() if k not in TEST_VARIABLES}
        env["NEXTAB_CACHE_DIR"] = str(tmp_path / "cache")
        server = subprocess.Popen(
            [CODE_SERVER, "--auth", "none", "--bind-addr", f"127.0.0.1:{port}", "--user-data-dir",
             str(data), "--extensions-dir", str(extensions), "--disable-telemetry",
             "--disable-update-check", "--disable-workspace-trust", str(editor_project)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        started.append((server, browser))
        page = browser.new_page(viewport={"width": width, "height": height})
        wait_for(lambda: _answers(port), timeout=30, what="code-server to listen")
        page.goto(f"http://127.0.0.1:{port}/?folder={editor_project}")
        page.wait_for_selector(".explorer-folders-view .monaco-list-row", timeout=60_000)
        return VSCode(page, server, editor_project)

    yield start
    for server, browser in started:
        with contextlib.suppress(Exception):
            browser.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # code-server, its extension host, nextab serve
        server.wait(timeout=10)
    playwright.stop()


def _answers(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def tiny_settings(model: Path, **more: Any) -> dict[str, Any]:
    return {
        "nextab.serverCommand": sys.executable,
        "nextab.serverArgs": ["-m", "nextab", "serve"],
        "nextab.model": str(model),
        "nextab.device": "cpu",
        "nextab.maxTokens": 6,
        "nextab.nextEdit.delayMs": 100,
        "nextab.settings": {"context": {"index": False}, "nextEdit": {"modelStep": False}},
        **more,
    }


def test_ghost_text_appears_and_tab_inserts_it(
    vscode_for: Callable[..., VSCode], tiny_model_dir: Path, editor_project: Path, tmp_path: Path
) -> None:
    code = vscode_for(tiny_settings(tiny_model_dir))
    code.open("notes.txt")
    code.wait_ready()
    assert code.status() == f"nextab: {tiny_model_dir.name} · cpu"
    code.go_to(3, 10)  # after "The shop "
    typed, shown = code.type_until_suggested("abcdefgh")
    assert re.fullmatch(rf"nextab: {tiny_model_dir.name} · cpu · \d+ ms", code.status())  # its latency
    # Ghost text only: no suggest widget (the server's plain completions are for other editors),
    # and the next edit waits while Tab belongs to the ghost text.
    time.sleep(1.0)
    assert not code.page.query_selector(".suggest-widget.visible")
    assert "(Tab)" not in code.after_text()
    code.screenshot("vscode-ghost-text.png", tmp_path)

    code.page.keyboard.press("Tab")
    wait_for(lambda: not code.ghost(), timeout=5, what="Tab to take the ghost text")
    code.save()
    assert editor_project.joinpath("notes.txt").read_text().splitlines()[2] == "The shop " + typed + shown

    # The server's log is one command away.
    code.command("nextab: Show Server Log")
    log = ".output .view-line, .output-view .view-line"  # its last lines: the server's log lines
    wait_for(lambda: any("nextab" in line.inner_text() for line in code.page.query_selector_all(log)),
             timeout=10, what="the server log in the Output panel")  # fmt: skip
    (accepted,) = [o for o in outcomes(tmp_path / "cache", 1) if o["result"] == "accepted"]
    assert accepted["kind"] == "completion" and accepted["accepted_chars"] == accepted["shown_chars"]
    assert accepted["shown_chars"] >= len(shown)  # more if it ran on to further lines


def test_escape_dismisses_ctrl_right_takes_a_word_and_toggle_turns_off(
    vscode_for: Callable[..., VSCode], tiny_model_dir: Path, editor_project: Path, tmp_path: Path
) -> None:
    code = vscode_for(tiny_settings(tiny_model_dir))
    code.open("notes.txt")
    code.wait_ready()
    code.go_to(3, 10)
    typed, shown = code.type_until_suggested("abcdefgh")
    # The repeat-edit proposer has a next edit for this too (the same letters into line 2), but
    # Tab belongs to the ghost text: the next edit waits until the ghost text is turned down.
    time.sleep(1.0)
    assert "(Tab)" not in code.after_text()
    code.page.keyboard.press("Escape")
    wait_for(lambda: not code.ghost(), timeout=5, what="Escape to dismiss")
    wait_for(lambda: "(Tab)" in code.after_text(), timeout=10, what="the deferred next edit")
    (dismissed,) = outcomes(tmp_path / "cache", 1)
    assert dismissed["result"] == "dismissed" and dismissed["shown_chars"] >= len(shown)

    more, shown = code.type_until_suggested("ijklmnop")
    typed += more
    code.page.keyboard.press("Control+ArrowRight")
    wait_for(lambda: code.ghost() != shown, timeout=5, what="a word to be taken")
    if code.ghost():  # the rest is still offered: Escape turns it down
        code.page.keyboard.press("Escape")
        wait_for(lambda: not code.ghost(), timeout=5, what="Escape to dismiss")
    code.save()
    line = editor_project.joinpath("notes.txt").read_text().splitlines()[2]
    taken = line.removeprefix("The shop " + typed)
    assert taken and shown.startswith(taken)  # VS Code's idea of a word: some of it, from the start
    # The server hears of exactly what was taken.
    (report,) = [o for o in outcomes(tmp_path / "cache", 2) if o["result"] in ("partial", "accepted")]
    assert report["accepted_chars"] == len(taken)
    assert report["result"] == ("accepted" if report["shown_chars"] == len(taken) else "partial")

    # Turned off, nothing more is suggested.
    code.command("nextab: Toggle Suggestions")
    wait_for(lambda: code.status() == "nextab: off", timeout=10, what="the status bar to say off")
    code.page.keyboard.type("abcd")
    time.sleep(2)
    assert not code.ghost()
    code.save()
    assert editor_project.joinpath("notes.txt").read_text().splitlines()[2] == line + "abcd"


def test_next_edit_is_shown_then_jumped_to_then_applied(
    vscode_for: Callable[..., VSCode], tiny_model_dir: Path, editor_project: Path, tmp_path: Path
) -> None:
    code = vscode_for(tiny_settings(tiny_model_dir))
    code.open("shop.py")
    code.wait_ready()
    code.go_to(2, 5)
    code.page.keyboard.press("Control+Shift+ArrowRight")  # select "count"
    code.page.keyboard.type("subtotal")
    # Moving on: any ghost text at the end of "subtotal" goes, and the next edit shows.
    code.page.keyboard.press("Control+Home")
    wait_for(lambda: "subtotal += item.price" in code.after_text(), timeout=30, what="the next-edit preview")
    assert "(Tab)" in code.after_text()
    code.screenshot("vscode-next-edit.png", tmp_path)

    code.page.keyboard.press("Tab")  # jump
    wait_for(lambda: code.cursor().startswith("Ln 4,"), timeout=5, what="Tab to jump to the edit")
    code.page.keyboard.press("Tab")  # apply
    wait_for(lambda: "subtotal += item.price" not in code.after_text(), timeout=5)
    code.save()
    lines = editor_project.joinpath("shop.py").read_text().splitlines()
    assert lines[1] == "    subtotal = 0"
    assert lines[3] == "        subtotal += item.price"
    assert any(o["kind"] == "nextEdit" and o["result"] == "accepted" for o in outcomes(tmp_path / "cache", 1))


def test_a_server_that_cannot_start_says_so(
    vscode_for: Callable[..., VSCode], tiny_model_dir: Path
) -> None:
    code = vscode_for(tiny_settings(tiny_model_dir, **{"nextab.serverCommand": "/nonexistent/nextab"}))
    wait_for(lambda: code.status() == "nextab: server stopped", timeout=60,
             what="the status bar to say the server stopped")  # fmt: skip
    notice = code.page.wait_for_selector(".notifications-toasts >> text=could not start", timeout=30_000)
    assert notice is not None


@pytest.mark.model
def test_the_real_model_suggests_code_in_vscode(
    vscode_for: Callable[..., VSCode], editor_project: Path, tmp_path: Path
) -> None:
    (editor_project / "stats.py").write_text(
        "def mean(values):\n    return sum(values) / len(values)\n\n\ndef variance(values):\n    m = \n"
    )
    from nextab.models.resolve import resolve_model

    # Resolved here, from the user's cache: the server's cache is the test's folder.
    model = str(resolve_model("embedded", progress=False).path)
    code = vscode_for(
        {
            "nextab.serverCommand": sys.executable,
            "nextab.serverArgs": ["-m", "nextab", "serve"],
            "nextab.model": model,
            "nextab.device": "cpu",
            "nextab.settings": {"context": {"index": False}},
        },
        width=1000,
        height=360,
    )
    code.open("stats.py")
    code.wait_ready(timeout=300)
    code.go_to(6, 9)
    # A cold request takes seconds here, and VS Code gives up on its ask before that when its
    # suggest widget opens and closes empty: the extension keeps the request and asks VS Code again.
    _, shown = code.type_until_suggested("m", timeout=120)
    assert "values" in shown
    time.sleep(1.0)  # past the next-edit delay: nothing else crowds the ghost text
    assert not code.page.query_selector(".suggest-widget.visible")
    assert "(Tab)" not in code.after_text()
    code.screenshot("vscode-real-model.png", tmp_path)
    code.page.keyboard.press("Tab")
    wait_for(lambda: not code.ghost(), timeout=5)
    code.save()
    assert editor_project.joinpath("stats.py").read_text().splitlines()[5] == "    m = m" + shown

    # Where a body starts, a block: several lines of ghost text, and Tab takes them all.
    (editor_project / "fizz.py").write_text("def fizzbuzz(n):\n    \n")
    code.open("fizz.py")
    code.go_to(2, 5)
    code.command("Trigger Inline Suggestion")
    lines = wait_for(lambda: len(code.ghost_lines()) > 1 and code.ghost_lines(), timeout=120,
                     what="a multi-line suggestion")  # fmt: skip
    code.screenshot("vscode-multiline.png", tmp_path)
    code.page.keyboard.press("Tab")
    wait_for(lambda: not code.ghost_lines(), timeout=5)
    code.save()
    written = editor_project.joinpath("fizz.py").read_text().splitlines()[1 : 1 + len(lines)]
    assert [line.rstrip() for line in written] == ["    " + lines[0].rstrip()] + [line.rstrip() for line in lines[1:]]
