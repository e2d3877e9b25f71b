"""One workspace's context: its index, similar-code search, edit history and prepared material.

The engine asks `material()` on every request; it answers from what is already prepared, never
running the model, so the keystroke path stays lean. Preparing (retrieval, and compression with
the model as scorer) happens in `prepare()`, which the engine runs in the background when the
cursor reaches a new place, or directly where latency does not matter (benchmarks, batch).
While the cursor stays in one place, and no other file changes, the material does not change,
so the prompt's prefix, and its KV cache, survive the keystrokes there.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote

from tree_sitter import Tree

from nextab.config import ContextConfig
from nextab.context.api import api_chunks
from nextab.context.compress import Chunk, Compressor, Scorer, split_functions
from nextab.context.history import EditHistory
from nextab.context.index import WorkspaceIndex
from nextab.context.repository import (
    Candidate,
    ContextPiece,
    Material,
    Selection,
    fill_pool,
    make_material,
    names_near,
    query_text,
)
from nextab.context.similar import Passage, SimilarityIndex

log = logging.getLogger(__name__)

PLACE_LINES = 32  # the cursor's place: its file and this many lines around it
SAVE_INTERVAL_S = 30.0
RECENT_CHUNKS = 4  # chunks around the latest edits in other files that join the candidates
VIEWED_CHUNKS = 4  # chunks where the cursor was lately in other files
VIEWS_KEPT = 64
# Places per file whose material is kept: back at one of them, the prompt is the one its cache
# may still hold (material made again from a new query would differ, and cost a pre-fill).
PLACES_KEPT = 8
# Shown to the model as one more file of the repository, right before the current one.
RECENT_EDITS_PATH = "recent_edits.diff"
_WORD = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


ProgressFn = Callable[[int, int, str], None]


class Workspace:
    def __init__(
        self,
        root: str | Path,
        settings: ContextConfig,
        *,
        scorer: Scorer | None = None,
        count_tokens: Callable[[str], int] | None = None,
        store_dir: Path | None = None,
        progress: ProgressFn | None = None,
        scoring_batch: int = 4,
    ) -> None:
        self.root = Path(root).resolve()
        self._settings = settings
        self.count_tokens = count_tokens or _approximate_tokens
        self.compressor = (
            Compressor(scorer, batch_size=scoring_batch) if scorer is not None else None
        )
        self.similar = SimilarityIndex()
        self.store_dir = store_dir
        self.index = WorkspaceIndex(
            self.root,
            store_path=store_dir / "index.msgpack" if store_dir else None,
            max_files=settings.max_files,
            max_file_bytes=settings.max_file_bytes,
            progress=progress,
            on_change=self._file_changed,
            exclude=settings.exclude,
        )
        self.history = EditHistory.load(
            store_dir / "history.msgpack" if store_dir else None,
            limit=settings.history_edits,
            pause_seconds=settings.edit_pause_ms / 1000,
            root=self.root,
            private=self.index.is_private,
        )
        self._chunks: dict[str, list[Chunk]] = {}
        # Changes seen, in all and per file: a place's material is made again once another
        # file has changed, but not for changes to its own file (the developer typing there).
        self._changes = 0
        self._changes_of: dict[str, int] = {}
        self._views: deque[tuple[str, int]] = deque(maxlen=VIEWS_KEPT)  # (path, line), latest last
        self._lock = threading.Lock()
        self._ready: dict[str, OrderedDict[tuple[object, ...], Material]] = {}  # latest last
        # Per file: the place its pinned material was made for, and the chunks (latest last).
        self._pinned: dict[str, tuple[tuple[object, ...], list[Chunk]]] = {}
        self._wanted: dict[str, tuple[tuple[object, ...], str, int]] = {}
        self._watcher = None
        self._saved_at = time.monotonic()

    @property
    def settings(self) -> ContextConfig:
        return self._settings

    @settings.setter
    def settings(self, settings: ContextConfig) -> None:
        previous, self._settings = self._settings, settings
        if previous.exclude != settings.exclude:
            # What the old list let in leaves the index, the history and prepared material.
            self.index.set_exclude(settings.exclude)
            self.history.forget_private()
            with self._lock:
                self._ready.clear()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.settings.index:
            self.index.start()
        if self.settings.watch and self.settings.index:
            from nextab.context.watch import WorkspaceWatcher

            self._watcher = WorkspaceWatcher(self.index)
            self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
        self.index.stop()
        self.save()

    def save(self) -> None:
        if self.store_dir is not None:
            self.history.save(self.store_dir / "history.msgpack")

    # -- documents ----------------------------------------------------------------------------

    def relative(self, path_or_uri: str) -> str:
        """A workspace-relative path for a URI or path; relative paths already are one."""
        path = Path(unquote(path_or_uri.removeprefix("file://")))
        if not path.is_absolute():
            return path.as_posix()
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def is_private(self, path_or_uri: str) -> bool:
        """Whether a document may never reach the index, the history or a prompt: a secret, a
        git-ignored file, one the exclude list names, or one a symlink takes out of the root."""
        return self.index.is_private(path_or_uri)

    def open_document(self, path: str, text: str) -> None:
        # The index refuses private documents: their text never joins the similar-code pool.
        self.index.update_text(path, text)

    def close_document(self, path: str) -> None:
        self.index.close_text(path)
        # A closed file's places are done with: what its last one pinned goes with them.
        with self._lock:
            self._pinned.pop(path, None)
            self._ready.pop(path, None)

    def _file_changed(
        self, path: str, text: str | None, language: str | None, tree: Tree | None = None
    ) -> None:
        chunks = split_functions(path, text, language, tree) if text is not None else []
        with self._lock:
            self._chunks[path] = chunks
            self._changes += 1
            self._changes_of[path] = self._changes_of.get(path, 0) + 1
        self.similar.set_file(
            path,
            [Passage(path, c.start_line, c.end_line, c.text) for c in chunks],
        )
        if self.compressor is not None:
            self.compressor.invalidate(path)

    # -- material -----------------------------------------------------------------------------

    def place_key(self, path: str, text: str, offset: int) -> tuple[object, ...]:
        """What the material depends on: the place, the settings, and the other files."""
        line = text.count("\n", 0, offset)
        with self._lock:
            elsewhere = self._changes - self._changes_of.get(path, 0)
        return (path, line // PLACE_LINES, self.settings.strategy, self.settings.budget_tokens,
                self.settings.pool_tokens, self.settings.sources, elsewhere)

    def material(self, path: str, text: str, offset: int) -> Material:
        """What is prepared for this place, or the last material of the file while the new one
        is prepared in the background (stable prompts), or nothing yet."""
        if self.settings.strategy == "none":
            return Material.empty()
        pinned = self._pinned_for(path, text, offset)
        key = (*self.place_key(path, text, offset), tuple(c.key for c in pinned))
        self._note_view(path, text.count("\n", 0, offset))
        with self._lock:
            places = self._ready.get(path)
            ready = places.get(key) if places else None
            if ready is not None:
                places.move_to_end(key)  # type: ignore[union-attr]
                return ready
            ready = next(reversed(places.values())) if places else None
            self._wanted[path] = (key, text, offset)
        if self.settings.strategy in ("full", "bm25"):
            # No model involved: cheap enough to do right here.
            return self.prepare(path, text, offset)
        return ready or Material.empty(key, self.settings.strategy)

    def _pinned_for(self, path: str, text: str, offset: int) -> list[Chunk]:
        """What the cursor's site refers to in other files (context/api.py), after what earlier
        sites at this place did: a place's pinned material only grows while the cursor stays
        there, so leaving a call keeps the prompt's prefix, and its cache."""
        if "api" not in self.settings.sources:
            return []
        found = api_chunks(self.index, path, text, offset)
        place = self.place_key(path, text, offset)
        with self._lock:
            earlier_place, earlier = self._pinned.get(path, (None, []))
        chunks = list(earlier) if earlier_place == place else []
        known = {c.key for c in chunks}
        chunks += [c for c in found if c.key not in known]
        return chunks

    def _note_view(self, path: str, line: int) -> None:
        # Requests arrive where the cursor is: the places the developer looked at lately.
        with self._lock:
            last = self._views[-1] if self._views else None
            if last is not None and last[0] == path and abs(last[1] - line) < PLACE_LINES:
                self._views[-1] = (path, line)
            else:
                self._views.append((path, line))

    def pending(self) -> bool:
        with self._lock:
            return bool(self._wanted)

    def prepare_pending(self, should_stop: Callable[[], bool] | None = None) -> bool:
        """Prepare one wanted place; False when nothing was waiting."""
        with self._lock:
            if not self._wanted:
                return False
            path, (_key, text, offset) = next(iter(self._wanted.items()))
        self.prepare(path, text, offset, should_stop)
        return True

    def prepare(
        self, path: str, text: str, offset: int, should_stop: Callable[[], bool] | None = None
    ) -> Material:
        pinned = self._pinned_for(path, text, offset)
        place = self.place_key(path, text, offset)
        key = (*place, tuple(c.key for c in pinned))
        query = query_text(text, offset)
        pool = self.candidates(path, text, offset)
        how = Selection(
            self.settings.strategy, self.settings.budget_tokens, self.count_tokens, self.compressor
        )
        material = make_material(
            key, pool, query, how, should_stop, [Candidate(c, "api", 0.0) for c in pinned]
        )
        material = self._with_recent_edits(material)
        with self._lock:
            places = self._ready.setdefault(path, OrderedDict())
            places[key] = material
            places.move_to_end(key)
            while len(places) > PLACES_KEPT:
                places.popitem(last=False)
            self._pinned[path] = (place, pinned)
            if self._wanted.get(path, (None,))[0] == key:
                del self._wanted[path]
        return material

    def _with_recent_edits(self, material: Material) -> Material:
        # Only closed edits: the one being typed is at the cursor, and leaving it out keeps
        # this text, and so the prompt's prefix, unchanged while the developer types. They
        # come with the "edits" source.
        budget = self.settings.recent_edits_chars if "edits" in self.settings.sources else 0
        diffs = self.history.render(budget) if budget > 0 else ""
        if not diffs:
            return material
        piece = ContextPiece(RECENT_EDITS_PATH, diffs)
        return replace(
            material,
            pieces=(*material.pieces, piece),
            tokens=material.tokens + self.count_tokens(diffs),
        )

    def save_if_due(self, now: float | None = None) -> None:
        """Persist the edit history every SAVE_INTERVAL_S while it has unsaved edits."""
        now = time.monotonic() if now is None else now
        if self.history.unsaved and now - self._saved_at >= SAVE_INTERVAL_S:
            self._saved_at = now
            self.save()

    def candidates(self, path: str, text: str, offset: int) -> list[Candidate]:
        """The pool, in the order of `settings.sources` (see repository.SOURCES)."""
        gather: dict[str, Callable[[], list[Candidate]]] = {
            "definitions": lambda: self._definitions(path, text, offset),
            "newImports": lambda: self._imported(path, text)[0],
            "edited": lambda: self._recently_edited(path),
            "viewed": lambda: self._recently_viewed(path),
            "similar": lambda: self._similar(path, text, offset),
            "imports": lambda: self._imported(path, text)[1],
        }
        # "api" is not ranked with the others: it is pinned (see prepare); "edits" are diffs,
        # not chunks, shown after them (_with_recent_edits).
        ranked = [
            c
            for source in self.settings.sources
            if source in gather
            for c in gather[source]()
            if not only_imports(c.chunk.text)
        ]
        return fill_pool(ranked, self.settings.pool_tokens, self.count_tokens)

    def _definitions(self, path: str, text: str, offset: int) -> list[Candidate]:
        imported = set(self.index.resolve_imports(path))
        found: list[tuple[int, int, Candidate]] = []
        for distance, name in enumerate(names_near(text, offset)):
            for definition in self.index.definitions_named(name):
                if definition.path == path:
                    continue
                chunk = self._chunk_at(definition.path, definition.start_line)
                if chunk is not None:
                    preference = 0 if definition.path in imported else 1
                    found.append((preference, distance, Candidate(chunk, "definition", 0.0)))
        found.sort(key=lambda item: (item[0], item[1]))
        return [candidate for _, _, candidate in found]

    def _imported(self, path: str, text: str) -> tuple[list[Candidate], list[Candidate]]:
        """Definitions of the names the file imports from the workspace, split into those the
        file does not use yet (an import written ahead of its first use says what comes next)
        and the rest, each in import order."""
        uses = Counter(_WORD.findall(text))
        unused: list[Candidate] = []
        used: list[Candidate] = []
        for imported, targets in self.index.resolved_imports(path):
            if not targets:
                continue
            local_names = dict(imported.renames)
            for name in imported.names:
                if name == "*":
                    continue
                # Once at the import itself: any further mention is a use.
                fresh = uses[local_names.get(name, name)] <= 1
                for chunk in self._imported_chunks(name, targets, path):
                    (unused if fresh else used).append(Candidate(chunk, "imported", 0.0))
        return unused, used

    def _imported_chunks(self, name: str, targets: tuple[str, ...], path: str) -> list[Chunk]:
        definitions = [d for d in self.index.definitions_named(name) if d.path != path]
        direct = [d for d in definitions if d.path in targets]
        # A package may re-export the name from one of its modules: take that definition when
        # the name is unambiguous in the workspace.
        chosen = direct or (definitions if len(definitions) == 1 else [])
        chunks = (self._chunk_at(d.path, d.start_line) for d in chosen)
        return [chunk for chunk in chunks if chunk is not None]

    def _recently_edited(self, path: str) -> list[Candidate]:
        """The chunks of other files the developer changed last, latest first."""
        found: list[Candidate] = []
        for edit in reversed(self.history.edits()):
            if len(found) >= RECENT_CHUNKS:
                break
            edited = self.relative(edit.uri)
            if edited == path:
                continue
            chunk = self._chunk_at(edited, edit.line)
            if chunk is not None and all(c.chunk.key != chunk.key for c in found):
                found.append(Candidate(chunk, "recent", 0.0))
        return found

    def _recently_viewed(self, path: str) -> list[Candidate]:
        """The chunks of other files where the cursor was lately, latest first."""
        with self._lock:
            views = list(self._views)
        found: list[Candidate] = []
        for viewed, line in reversed(views):
            if len(found) >= VIEWED_CHUNKS:
                break
            if viewed == path:
                continue
            chunk = self._chunk_at(viewed, line)
            if chunk is not None and all(c.chunk.key != chunk.key for c in found):
                found.append(Candidate(chunk, "viewed", 0.0))
        return found

    def _similar(self, path: str, text: str, offset: int) -> list[Candidate]:
        hits = self.similar.search(query_text(text, offset), limit=32, exclude=[path])
        result = []
        for hit in hits:
            chunk = self._chunk_at(hit.passage.path, hit.passage.start_line)
            if chunk is not None:
                result.append(Candidate(chunk, "similar", hit.score))
        return result

    def _chunk_at(self, path: str, line: int) -> Chunk | None:
        with self._lock:
            chunks = self._chunks.get(path)
        if chunks is None:
            return None
        for chunk in chunks:
            if chunk.start_line <= line < chunk.end_line:
                return chunk
        return None


# Lines that only bring a name in: imports, re-exports, CommonJS requires, includes.
_IMPORT_LINE = re.compile(
    r"\s*(?:import\b|from\s+\S+\s+import\b|export\s+(?:\*|\{[^}]*\})\s+from\b"
    r"|['\"]use strict['\"]|(?:const|let|var)\s+[\w${}\s,:]+=\s*require\s*\(|#\s*include\b|use\s+[\w:]+|package\s+\w)"
)


def only_imports(text: str) -> bool:
    """Whether a chunk is nothing but import lines (and blanks and comments): a file's header.
    Such chunks say nothing the current file's own imports do not, and a prompt of other files'
    headers, each followed by a file separator, reads as files that end after their imports
    (and the model ends the current one at once)."""
    lines = [line for line in text.splitlines() if line.strip()]
    code = [line for line in lines if not line.lstrip().startswith(("#", "//", "/*", "*")) or
            line.lstrip().startswith("#include")]
    return bool(code) and all(_IMPORT_LINE.match(line) for line in code)


def _approximate_tokens(text: str) -> int:
    # About 3.5 characters per token for code under BPE vocabularies.
    return max(1, len(text) * 2 // 7) if text else 0
