"""MaterialSwitch: which material a keystroke's prompt uses (nextab/material.py)."""

from __future__ import annotations

from nextab.context.document import Document
from nextab.context.repository import ContextPiece, Material
from nextab.material import MaterialSwitch

KEY = ("app.py", 0)


def material(text: str, key: tuple[object, ...] = KEY) -> Material:
    return Material(key, (ContextPiece("lib.py", text),), 10, "bm25", 1, 0.0)


def test_new_material_that_would_recompute_the_window_waits_for_the_background():
    switch = MaterialSwitch(slack=8)
    doc = Document("file:///app.py", "")
    cached = list(range(100))
    kept = (material("old"), [*cached, 7])  # the cache holds all but one token of it
    fresh = (material("new", key=("app.py", 1)), [999, *cached])  # differs from the start
    choice = switch.choose(doc, cached, fresh, kept)
    assert not choice.use_fresh and choice.refresh


def test_material_made_again_for_the_same_place_is_new_material():
    # Same key, other text (the place's material was made again): a prompt built with it is
    # not the cached one, and must not be taken for it.
    switch = MaterialSwitch(slack=8)
    doc = Document("file:///app.py", "")
    cached = list(range(100))
    choice = switch.choose(doc, cached, (material("new"), [999, *cached]), (material("old"), [*cached, 7]))
    assert not choice.use_fresh


def test_cheap_or_identical_material_is_taken_at_once():
    switch = MaterialSwitch(slack=8)
    doc = Document("file:///app.py", "")
    cached = list(range(100))
    same = material("same")
    assert switch.choose(doc, cached, (same, [*cached, 1]), (material("same", key=("x",)), cached)).use_fresh
    # New material costing a few tokens more than the kept one (within the slack).
    assert switch.choose(doc, cached, (material("new"), [*cached[:95], 5]), (material("old"), cached)).use_fresh
