"""Small trees of files on disk, for tests that index or open a project."""

from __future__ import annotations

from pathlib import Path


def write_files(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write each relative path's content under `root` (folders made as needed); `root`."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root
