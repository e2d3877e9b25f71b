"""The Neovim plugin (editors/nvim) in a real headless Neovim, against the real `nextab serve`.

pynvim drives `nvim --embed`: the plugin is loaded as a user would (`require("nextab").setup`),
keys arrive through `nvim_input`, and the assertions read what the user would see: the
extmarks of the ghost text, the screen as a UI gets it, the buffer after Tab. Each test runs
once per Neovim in NEXTAB_NVIM (comma-separated executables; default `nvim` on PATH): in CI,
Debian's 0.7.2, and trixie's 0.10 and forky's 0.12 that editors/nvim/scripts/fetch-current-nvim.sh
fetches.

With NEXTAB_SCREENSHOTS=DIR the screens are also saved there as PNG (the README's pictures).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.nvim_screen import Screen

NVIMS = [n for n in os.environ.get("NEXTAB_NVIM", "nvim").split(",") if n]
pytestmark = pytest.mark.skipif(
    not any(shutil.which(n) for n in NVIMS), reason="needs Neovim (apt install neovim)"
)


@pytest.fixture(params=NVIMS)
def nvim_bin(request: pytest.FixtureRequest) -> str:
    if shutil.which(request.param) is None:
        pytest.skip(f"{request.param} not found")
    return request.param

PLUGIN = Path(__file__).resolve().parents[1] / "editors" / "nvim"


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or check}")


def start_nvim(
    nvim_bin: str,
    model: str,
    editor_project: Path,
    cache: Path,
    settings: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    import pynvim

    # nvim and the server it starts inherit these: the acceptance log and nvim's LSP log stay
    # in the test's folder.
    monkeypatch.setenv("NEXTAB_CACHE_DIR", str(cache))
    monkeypatch.setenv("XDG_STATE_HOME", str(cache / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache / "xdg"))
    nvim = pynvim.attach("child", argv=[nvim_bin, "--embed", "--headless", "--clean", "-n"])
    nvim.exec_lua(
        """
        local rtp, cmd, settings = ...
        vim.opt.runtimepath:prepend(rtp)
        vim.o.expandtab = true
        require("nextab").setup{ cmd = cmd, settings = settings, debounce_ms = 10,
                                 next_edit = { delay_ms = 100 } }
        """,
        str(PLUGIN),
        [sys.executable, "-m", "nextab", "serve", "--model", model, "--device", "cpu"],
        settings,
    )
    nvim.command(f"cd {editor_project}")
    return nvim


@pytest.fixture
def nvim(
    nvim_bin: str, tiny_model_dir: Path, editor_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    settings = {"maxTokens": 6, "context": {"index": False}, "nextEdit": {"modelStep": False}}
    session = start_nvim(nvim_bin, str(tiny_model_dir), editor_project, tmp_path / "cache", settings, monkeypatch)
    yield session
    quit_nvim(session)


def quit_nvim(nvim: Any) -> None:
    with contextlib.suppress(Exception):  # nvim exits while answering: that is the point
        nvim.command("qa!")


def lua(nvim: Any, code: str, *args: Any) -> Any:
    return nvim.exec_lua(code, *args)


def open_and_attach(nvim: Any, name: str) -> None:
    nvim.command(f"edit {name}")
    wait_for(lambda: lua(nvim, "local c = require('nextab').client_for(0); return c ~= nil and c.initialized"),
             what="the server to attach")  # fmt: skip


def wait_ready(nvim: Any) -> None:
    # A status request can time out while the server loads the model on a busy machine (the
    # plugin's own callers take nil for "no answer"): asked again until the deadline.
    status = (
        "local s = require('nextab').status_sync(require('nextab').any_client(), 1000); "
        "return s and s.state"
    )
    wait_for(lambda: lua(nvim, status) == "ready", timeout=300, what="the model to load")


def ghost_marks(nvim: Any) -> list[Any]:
    ns = lua(nvim, "return require('nextab.ghost').ns")
    return nvim.api.buf_get_extmarks(0, ns, 0, -1, {"details": True})


def type_until_suggested(nvim: Any, keys: str, timeout: float = 5.0) -> str:
    """Type `keys` one at a time (the tiny model's suggestion for some prefixes is empty)."""
    for key in keys:
        nvim.input(key)
        try:
            return wait_for(lambda: lua(nvim, "return require('nextab').shown_text()"), timeout=timeout)
        except AssertionError:
            continue
    raise AssertionError(f"no suggestion after typing {keys!r}")


def outcomes(cache: Path, count: int) -> list[dict[str, Any]]:
    log = cache / "acceptance.jsonl"
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= count, timeout=10, what="outcomes")
    return [json.loads(line) for line in log.read_text().splitlines()]


def screenshot(screen: Screen, name: str, tmp_path: Path) -> Path:
    target = Path(os.environ.get("NEXTAB_SCREENSHOTS") or tmp_path) / name
    screen.png(target)
    return target


def test_ghost_text_appears_and_tab_inserts_it(nvim: Any, tmp_path: Path) -> None:
    screen = Screen(nvim, cols=60, rows=6)
    open_and_attach(nvim, "notes.txt")
    nvim.command("normal! 3G$")
    nvim.input("a")
    shown = type_until_suggested(nvim, "abcdefgh")
    line = nvim.current.line
    (mark,) = ghost_marks(nvim)
    _, row, col, details = mark
    assert (row, col) == (2, len(line))  # at the cursor, after what was typed
    assert details["virt_text"][0][0] == shown.split("\n")[0]
    # Inline virtual text where Neovim has it (0.10+); at the end of the line an overlay before.
    inline = lua(nvim, "return vim.fn.has('nvim-0.10') == 1")
    assert details["virt_text_pos"] == ("inline" if inline else "overlay")
    screen.update()
    assert (line + shown.split("\n")[0])[: screen.cols].rstrip() in screen.text().splitlines()
    # The repeat-edit proposer has a next edit for this too (the letters into line 2), but while
    # Tab takes the ghost text the next edit waits: no preview crowds it.
    time.sleep(0.5)
    edit_ns = lua(nvim, "return require('nextab.ghost').edit_ns")
    assert not nvim.api.buf_get_extmarks(0, edit_ns, 0, -1, {})
    picture = screenshot(screen, "nvim-ghost-text.png", tmp_path)
    assert picture.stat().st_size > 1000

    nvim.input("<Tab>")
    wait_for(lambda: nvim.current.line != line, timeout=5, what="Tab to insert")
    assert nvim.current.line == line + shown.split("\n")[0]
    assert nvim.api.get_mode()["mode"] == "i"
    assert tuple(nvim.current.window.cursor) == (3, len(line) + len(shown))
    (accepted,) = [o for o in outcomes(tmp_path / "cache", 1) if o["result"] == "accepted"]
    assert accepted["shown_chars"] == accepted["accepted_chars"] == len(shown)
    assert accepted["language"] == "text" or accepted["language"]


def test_ctrl_bracket_dismisses_and_the_server_hears_of_it(nvim: Any, tmp_path: Path) -> None:
    open_and_attach(nvim, "notes.txt")
    wait_ready(nvim)  # keys typed while the model loads would be one edit, not the one meant here
    nvim.command("normal! 3G$")
    nvim.input("a")
    type_until_suggested(nvim, "abcdefgh")
    line = nvim.current.line
    nvim.input("<C-]>")
    wait_for(lambda: not ghost_marks(nvim), timeout=5, what="the ghost text to go")
    assert nvim.current.line == line and not lua(nvim, "return require('nextab').visible()")
    assert any(o["result"] == "dismissed" for o in outcomes(tmp_path / "cache", 1))
    # The next edit that waited behind the ghost text shows now.
    edit_ns = lua(nvim, "return require('nextab.ghost').edit_ns")
    wait_for(lambda: nvim.api.buf_get_extmarks(0, edit_ns, 0, -1, {}), timeout=5, what="the deferred next edit")
    # Turned off, nothing is shown (no next edit either) and Tab is a Tab again.
    nvim.command("NextabToggle")
    assert not ghost_marks(nvim) and not nvim.api.buf_get_extmarks(0, edit_ns, 0, -1, {})
    nvim.input("<Tab>")
    wait_for(lambda: nvim.current.line != line, timeout=5)
    assert nvim.current.line.startswith(line) and nvim.current.line[len(line):].strip() == ""


def test_next_edit_is_previewed_then_jumped_to_then_applied(nvim: Any, tmp_path: Path) -> None:
    screen = Screen(nvim, cols=60, rows=9)
    open_and_attach(nvim, "shop.py")
    nvim.command("2s/count = 0/subtotal = 0/")  # an edit in normal mode; the rename is followed
    edit_ns = lua(nvim, "return require('nextab.ghost').edit_ns")
    marks = wait_for(lambda: nvim.api.buf_get_extmarks(0, edit_ns, 0, -1, {"details": True}),
                     timeout=30, what="the next-edit preview")  # fmt: skip
    previews = [m for m in marks if "virt_lines" in m[3]]
    assert previews and previews[0][3]["virt_lines"][0][0][0] == "        subtotal += item.price"
    screen.update()
    assert "subtotal += item.price" in screen.text()
    screenshot(screen, "nvim-next-edit.png", tmp_path)

    nvim.command("normal! gg")
    nvim.command("NextabNextEdit")  # jump
    assert nvim.current.window.cursor[0] == 4
    nvim.command("NextabNextEdit")  # apply
    assert nvim.current.buffer[3] == "        subtotal += item.price"
    assert not nvim.api.buf_get_extmarks(0, edit_ns, 0, -1, {})


def test_checkhealth_reports_server_model_and_version(nvim: Any, tiny_model_dir: Path) -> None:
    from nextab import __version__
    from nextab.models.torch_backend import pick_dtype

    # "auto" picks bf16 on CPUs with AVX512-BF16 or AMX, float32 elsewhere.
    dtype = str(pick_dtype("auto", "cpu")).removeprefix("torch.")
    open_and_attach(nvim, "notes.txt")
    wait_ready(nvim)
    nvim.command("checkhealth nextab")
    report = "\n".join(nvim.current.buffer[:])
    assert f"server nextab {__version__} running" in report
    assert f"model {tiny_model_dir.name} on cpu ({dtype}), decoding greedy" in report
    assert "ERROR" not in report


@pytest.mark.model
def test_the_real_model_suggests_code_in_neovim(
    nvim_bin: str, editor_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (editor_project / "stats.py").write_text(
        "def mean(values):\n    return sum(values) / len(values)\n\n\ndef variance(values):\n    m = \n"
    )
    from nextab.models.resolve import resolve_model

    # Resolved here, from the user's cache: the server's cache is the test's folder.
    model = str(resolve_model("embedded", progress=False).path)
    nvim = start_nvim(nvim_bin, model, editor_project, tmp_path / "cache", {"context": {"index": False}}, monkeypatch)
    try:
        screen = Screen(nvim, cols=72, rows=9)
        open_and_attach(nvim, "stats.py")
        wait_ready(nvim)
        nvim.command("normal! 6G$")
        nvim.input("a")
        shown = type_until_suggested(nvim, "m", timeout=120)
        assert "values" in shown
        screen.update()
        screenshot(screen, "nvim-real-model.png", tmp_path)
        line = nvim.current.line
        nvim.input("<Tab>")
        wait_for(lambda: nvim.current.line != line, timeout=10)
        assert nvim.current.buffer[5] == line + shown.split("\n")[0]
    finally:
        quit_nvim(nvim)
