"""Which repository material a document's prompt uses, so that new material never costs a
keystroke a long pre-fill.

Repository material comes first in the prompt (see docs/context.md). When it changes (the cursor
reached another place, a call's callee joined it, another file changed), every token after it
must be computed again: the whole file window, one to two thousand tokens, seconds on a CPU.
Where the document's cache already holds the prompt with the material it was using, a keystroke
keeps that material, and the fresh one is pre-filled in the background into a cache of its own,
in preemptible pieces, then swapped in; the next request finds it ready. A request with nothing
useful cached (a file just opened, a jump far away) takes the fresh material at once: it pays
the whole prompt either way.

"A long pre-fill" is how many more tokens the fresh prompt would compute than the one the cache
holds: `slack` tokens are paid on the keystroke (a few hundred on a CPU, thousands on a GPU,
where a thousand tokens take milliseconds).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nextab.context.repository import Material
from nextab.models.backend import KVCache, common_prefix_length

if TYPE_CHECKING:
    from nextab.context.document import Document

CPU_SLACK_TOKENS = 192
ACCELERATOR_SLACK_TOKENS = 8192


def slack_for(device: str) -> int:
    return CPU_SLACK_TOKENS if device == "cpu" else ACCELERATOR_SLACK_TOKENS


@dataclass
class _Next:
    document: weakref.ref[Document]
    cache: KVCache
    material: Material
    offset: int
    path: str | None


@dataclass(frozen=True)
class Choice:
    use_fresh: bool  # the fresh material (else the one the document's prompt was using)
    swap_in: KVCache | None = None  # a background-filled cache to make the document's first
    refresh: bool = False  # pre-fill the fresh material in the background


class MaterialSwitch:
    """Per document: the material its cached prompt was built with, and at most one
    background cache being filled with fresher material (the latest document's)."""

    def __init__(self, slack: int) -> None:
        self.slack = slack
        self._used: dict[int, tuple[weakref.ref[Document], Material]] = {}
        self._next: _Next | None = None

    def used(self, document: Document) -> Material | None:
        entry = self._used.get(id(document))
        return entry[1] if entry is not None and entry[0]() is document else None

    def choose(
        self,
        document: Document,
        cached: Sequence[int],
        fresh: tuple[Material, Sequence[int]],
        kept: tuple[Material, Sequence[int]] | None,
    ) -> Choice:
        """Fresh material unless it would pre-fill more than `slack` tokens beyond what the
        material in use would (`kept`: that material and its prompt's ids)."""
        fresh_material, fresh_ids = fresh
        fresh_cost = len(fresh_ids) - common_prefix_length(cached, fresh_ids)
        if kept is None or kept[0].shows_as(fresh_material):
            return Choice(use_fresh=True)
        kept_cost = len(kept[1]) - common_prefix_length(cached, kept[1])
        if fresh_cost <= kept_cost + self.slack:
            return Choice(use_fresh=True)
        upcoming = self._next
        if (
            upcoming is not None
            and upcoming.document() is document
            and upcoming.material.shows_as(fresh_material)
        ):
            ready = len(fresh_ids) - common_prefix_length(upcoming.cache.tokens, fresh_ids)
            if ready <= kept_cost + self.slack:
                self._next = None
                return Choice(use_fresh=True, swap_in=upcoming.cache)
        return Choice(use_fresh=False, refresh=True)

    def record(self, document: Document, material: Material) -> None:
        self._used[id(document)] = (weakref.ref(document), material)
        # Documents that are gone take their entries with them (ids are reused).
        if len(self._used) > 64:
            self._used = {k: v for k, v in self._used.items() if v[0]() is not None}

    def want(self, document: Document, material: Material, offset: int, path: str | None,
             new_cache: Callable[[], KVCache]) -> None:
        """Fill a cache with `material`'s prompt for `document` in the background."""
        upcoming = self._next
        if upcoming is not None and upcoming.document() is document:
            upcoming.material, upcoming.offset, upcoming.path = material, offset, path
            return
        self._next = _Next(weakref.ref(document), new_cache(), material, offset, path)

    def pending(self) -> _Next | None:
        upcoming = self._next
        if upcoming is not None and upcoming.document() is None:
            self._next = upcoming = None
        return upcoming

    def done(self, upcoming: _Next) -> None:
        """`upcoming` is complete: it becomes the document's cache, with its material."""
        if self._next is upcoming:
            self._next = None
        document = upcoming.document()
        if document is not None:
            document.kv = upcoming.cache
            self.record(document, upcoming.material)

    def forget(self, document: Document) -> None:
        self._used.pop(id(document), None)
        if self._next is not None and self._next.document() is document:
            self._next = None

    def clear(self) -> None:
        """Every cache was dropped (out of memory): the background one too."""
        self._next = None
        self._used.clear()
