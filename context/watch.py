"""Changes made outside the editor (git checkout, code generators, another tool) reach the index.

A watchdog observer reports file events; they are collected and applied in batches once the
workspace has been quiet for a moment (or at the latest after a few seconds), so a checkout
that touches hundreds of files costs one pass over distinct paths, not one per event. Events in
.git, in vendored directories and for non-source files are dropped on watchdog's thread before
any work is done; a changed .gitignore or .git/info/exclude makes the index walk again.
Nothing raised here reaches watchdog's thread: errors are logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from nextab.context.index import WorkspaceIndex, is_source_name

log = logging.getLogger(__name__)

_WANTED_EVENTS = (
    FileCreatedEvent, FileModifiedEvent, FileDeletedEvent, FileMovedEvent,
    DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
)
_RULE_FILES = (".gitignore", ".git/info/exclude")


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: WorkspaceWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self.watcher.queue_event(event)
        except Exception:  # watchdog's thread dies on an exception: never let one through
            log.exception("ignoring file event %r", event)


class WorkspaceWatcher:
    def __init__(
        self,
        index: WorkspaceIndex,
        *,
        quiet_seconds: float = 0.3,  # apply once no event came for this long
        max_delay_seconds: float = 2.0,  # but never hold a change longer than this
        poll_seconds: float = 5.0,  # between scans, where the system has no watches to give
    ) -> None:
        self.index = index
        self.quiet_seconds = quiet_seconds
        self.max_delay_seconds = max_delay_seconds
        self.poll_seconds = poll_seconds
        self.mode: str | None = None  # "native" (inotify, FSEvents, ...), "polling", or None
        self._pending: dict[str, None] = {}
        self._rules_changed = False
        self._first_at = 0.0
        self._last_at = 0.0
        self._condition = threading.Condition()
        self._stopping = False
        self._observer: Observer | None = None
        self._thread: threading.Thread | None = None
        self.batches = 0  # batches applied (for diagnostics and tests)

    def start(self) -> bool:
        """Watch the index's root; where the system refuses its watches (inotify's per-user
        limit: one watch per directory, 8,192 on many systems), scan it every `poll_seconds`
        instead; False (logged) when neither works."""
        if self._observer is not None:
            return True
        root = str(self.index.root)
        observer, error = self._observe(Observer())
        if observer is not None:
            self.mode = "native"
        else:
            observer, polling_error = self._observe(PollingObserver(timeout=self.poll_seconds))
            if observer is None:
                log.warning("not watching %s for changes: %s", root, polling_error or error)
                return False
            self.mode = "polling"
            log.warning(
                "the system gave no file watches for %s (%s): looking for changes every %g s "
                "instead (raise fs.inotify.max_user_watches to watch it natively)",
                root, error, self.poll_seconds,
            )  # fmt: skip
        self._observer = observer
        self._thread = threading.Thread(target=self._run, name="nextab-watch", daemon=True)
        self._thread.start()
        return True

    def _observe(self, observer: Any) -> tuple[Any, Exception | None]:
        try:
            observer.schedule(_Handler(self), str(self.index.root), recursive=True)
            observer.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                observer.stop()  # threads it may have started before the failure
            return None, exc
        return observer, None

    def stop(self, timeout: float = 5.0) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            try:
                observer.stop()
                observer.join(timeout)
            except Exception:
                log.exception("stopping the file observer failed")
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- events (watchdog's thread: cheap filtering only) --------------------------------------

    def queue_event(self, event: FileSystemEvent) -> None:
        if not isinstance(event, _WANTED_EVENTS):
            return  # opened/closed/attribute events and directory "modified" noise
        paths = [event.src_path]
        if event.dest_path:
            paths.append(event.dest_path)
        for path in paths:
            self.queue_path(os.fsdecode(path), event.is_directory)

    def queue_path(self, path: str, is_directory: bool = False) -> None:
        relative = self.index.relative(path)
        if relative is None or not relative:
            return
        rules = relative.endswith(_RULE_FILES[0]) or relative == _RULE_FILES[1]
        if not rules and not self._relevant(relative, is_directory):
            return
        now = time.monotonic()
        with self._condition:
            if not self._pending and not self._rules_changed:
                self._first_at = now
            self._last_at = now
            if rules:
                self._rules_changed = True
            else:
                self._pending[relative] = None
            self._condition.notify_all()

    def _relevant(self, relative: str, is_directory: bool) -> bool:
        parts = relative.split("/")
        ignore = self.index.ignore
        if any(ignore.name_ignored(part, True) for part in parts[:-1]):
            return False
        if is_directory:
            return not ignore.name_ignored(parts[-1], True)
        return is_source_name(parts[-1])

    # -- applying batches (the watcher's own thread) -------------------------------------------

    def _run(self) -> None:
        while True:
            batch, rules = self._next_batch()
            if batch is None:
                return
            try:
                self.apply(batch, rules)
            except Exception:
                log.exception("applying file changes failed")

    def _next_batch(self) -> tuple[list[str] | None, bool]:
        with self._condition:
            while True:
                if self._stopping:
                    return None, False
                if self._pending or self._rules_changed:
                    now = time.monotonic()
                    quiet_until = self._last_at + self.quiet_seconds
                    latest = self._first_at + self.max_delay_seconds
                    due = min(quiet_until, latest)
                    if now >= due:
                        batch, self._pending = list(self._pending), {}
                        rules, self._rules_changed = self._rules_changed, False
                        return batch, rules
                    self._condition.wait(due - now)
                else:
                    self._condition.wait()

    def apply(self, paths: list[str], rules_changed: bool = False) -> None:
        """Bring the index up to date with these paths (files or directories, present or not)."""
        if rules_changed:
            self.index.rescan()
        for path in paths:
            try:
                self.index.refresh(path)
            except Exception:
                log.exception("could not update the index for %s", path)
        self.batches += 1
        log.debug("applied %d changed paths", len(paths))
