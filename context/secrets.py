"""Which paths hold secrets: their text is never indexed, recorded as an edit or put in a prompt.

A path is secret when its file name is one that holds credentials by convention
(DEFAULT_PATTERNS, at any depth, case-insensitive), when it lies in a directory of keys
(SECRET_DIRS), or when the user's `context.exclude` globs match it (gitignore syntax, relative
to the workspace root). Git-ignored files and symlinks that lead out of the workspace are
private too, but only a workspace knows its ignore rules and its root: `WorkspaceIndex.
is_private` adds those to what is decided here.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pathspec import GitIgnoreSpec

# File names whose content is a credential by convention. None of them is a source file name
# (`secrets.py` is code: private only when git-ignored or excluded by the user), so no code is
# lost; where a name is only often a secret (`.env.example`, `*.tfvars`) it is in, since a
# miss leaks a key and a false hit costs completions in a file that is not code.
DEFAULT_PATTERNS = (
    # dotenv files in all their variants (.env.local, .env.production, prod.env), and direnv's
    # .envrc, which exports the same variables
    ".env",
    ".env.*",
    "*.env",
    ".envrc",
    # private keys and key stores: PEM, PKCS#8/#12, Java and Android key stores, PuTTY, KeePass
    "*.pem",
    "*.key",
    "*.p8",
    "*.p12",
    "*.pfx",
    "*.jks",
    "*.keystore",
    "*.ppk",
    "*.kdbx",
    # ssh keys (the .pub halves too: nothing to gain from them, a typo'd name to lose)
    "id_rsa*",
    "id_dsa*",
    "id_ecdsa*",
    "id_ed25519*",
    # tools' stored logins: netrc (curl, git, ftp; _netrc on Windows), npm and PyPI tokens,
    # PostgreSQL passwords, git's credential store, htpasswd hashes, AWS's shared file
    ".netrc",
    "_netrc",
    ".npmrc",
    ".pypirc",
    ".pgpass",
    ".git-credentials",
    ".htpasswd",
    "credentials",
    # cloud SDKs' key files as their consoles name them when downloaded
    "credentials*.json",
    "client_secret*.json",
    "service-account*.json",
    # Terraform state and variable files hold provider secrets in plain text
    "*.tfstate",
    "*.tfstate.*",
    "*.tfvars",
)
# Directories that hold nothing but keys: a workspace opened at the home directory has them.
SECRET_DIRS = frozenset({".ssh", ".gnupg", ".aws"})

_SECRET_NAME = re.compile("|".join(fnmatch.translate(p) for p in DEFAULT_PATTERNS))
# A URI's scheme (file:, untitled:, vscode-notebook-cell:); two letters at least, so that a
# Windows drive (C:) stays a path.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


def secret_name(name: str) -> bool:
    """Whether a file name is one of DEFAULT_PATTERNS."""
    return _SECRET_NAME.match(name.lower()) is not None


def compile_exclude(patterns: Sequence[str]) -> GitIgnoreSpec:
    """The user's exclude list as one gitignore spec; raises ValueError for a bad pattern."""
    try:
        return GitIgnoreSpec.from_lines(list(patterns))
    except Exception as exc:  # pathspec's own error types vary with its version
        raise ValueError(str(exc)) from exc


class SecretPaths:
    """Decides whether a path is secret: by name, by directory, or by the user's exclude list.

    Paths are workspace-relative with forward slashes; an absolute one (a document outside the
    workspace) is judged by its names, and by the exclude globs that are not anchored."""

    def __init__(self, exclude: Sequence[str] = ()) -> None:
        self.exclude = tuple(exclude)
        self._spec = compile_exclude(self.exclude) if self.exclude else None

    def is_secret(self, path: str, is_dir: bool = False) -> bool:
        parts = [part for part in path.split("/") if part]
        if not parts:
            return False
        directories = parts if is_dir else parts[:-1]
        if any(part.lower() in SECRET_DIRS for part in directories):
            return True
        if not is_dir and secret_name(parts[-1]):
            return True
        if self._spec is None:
            return False
        relative = "/".join(parts)
        return self._spec.match_file(relative + "/" if is_dir else relative)


DEFAULT = SecretPaths()


def uri_path(uri: str) -> str:
    """The path of a file URI (or of any URI with one), or the string as is for a path."""
    if _SCHEME.match(uri) is None:
        return uri
    return unquote(urlsplit(uri).path)


def is_secret_uri(uri: str) -> bool:
    """Whether a document is secret by the defaults alone (no workspace, no exclude list)."""
    return DEFAULT.is_secret(uri_path(uri))


def resolves_inside(root: Path, relative: str) -> str | None:
    """Where `relative` leads once every symlink on the way is followed, as a path relative to
    `root` (itself when no link is involved); None when it leads out of `root`. `root` must be
    resolved already."""
    target = os.path.realpath(root / relative)
    try:
        inside = Path(target).relative_to(root).as_posix()
    except ValueError:
        return None
    return "" if inside == "." else inside
