"""The VS Code extension (editors/vscode): its unit tests, and its protocol code driving the real
`nextab serve` from a Node LSP client. Needs Node and the extension's packages (`npm ci` in
editors/vscode, as .ci/run does); VS Code itself cannot run here (no display, no network to
fetch it), so the extension's VS Code glue is exercised only through the modules it calls.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXTENSION = Path(__file__).resolve().parents[1] / "editors" / "vscode"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (EXTENSION / "node_modules").is_dir(),
    reason="needs Node and `npm ci` in editors/vscode",
)


@pytest.fixture(scope="module")
def compiled() -> Path:
    subprocess.run(["npm", "run", "--silent", "compile"], cwd=EXTENSION, check=True, timeout=300)
    return EXTENSION / "out"


def _node_test(folder: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", "--test", str(folder)], cwd=EXTENSION, capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_extension_unit_tests(compiled: Path) -> None:
    done = _node_test(compiled / "test" / "unit")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# fail 0" in done.stdout and "# pass 8" in done.stdout


def test_extension_protocol_against_the_real_server(compiled: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    server = [sys.executable, "-m", "nextab", "serve", "--device", "cpu"]
    done = _node_test(
        compiled / "test" / "e2e",
        {
            "NEXTAB_TEST_SERVER": json.dumps(server),
            "NEXTAB_TEST_MODEL": str(tiny_model_dir),
            "NEXTAB_CACHE_DIR": str(tmp_path),
        },
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# pass 1" in done.stdout
