"""The server keeps a completion running while the typing follows it, and the next request
takes it over; anything else cancels it as before."""

from __future__ import annotations

from nextab.context.document import Document
from nextab.engine import CompletionRequest
from nextab.lsp_server.server import CompletionWork, _cancel_all, _claim_completion, _release
from nextab.models.decoding import CancelToken

TEXT = "def f(x):\n    return \n"
CURSOR = len("def f(x):\n    return ")


def typed(doc: Document, chars: str) -> CompletionRequest:
    doc.apply_change(TEXT[:CURSOR] + chars + TEXT[CURSOR:])
    return CompletionRequest(doc, CURSOR + len(chars), doc.text)


def running(partial: str) -> tuple[Document, CompletionWork]:
    doc = Document("file:///f.py", TEXT)
    work = _claim_completion(doc, CompletionRequest(doc, CURSOR, TEXT))
    work.partial = partial
    return doc, work


def test_a_request_that_types_what_is_being_written_takes_it_over() -> None:
    doc, first = running("x * 2")
    second = _claim_completion(doc, typed(doc, "x "))
    assert not first.cancelled and first.adopted
    assert second.earlier == [first] and doc.inflight["completion"] is second
    # Not written that far yet: still worth finishing.
    third = _claim_completion(doc, typed(doc, "x * 2 + 1"))
    assert not first.cancelled and third.earlier == [second, first]


def test_a_request_that_types_something_else_cancels_it() -> None:
    doc, first = running("x * 2")
    second = _claim_completion(doc, typed(doc, "y"))
    assert first.cancelled and second.earlier == []


def test_the_same_request_again_cancels_the_old_one() -> None:
    doc, first = running("x")
    _claim_completion(doc, CompletionRequest(doc, CURSOR, TEXT))
    assert first.cancelled


def test_a_change_keeps_only_what_agrees_with_the_typing() -> None:
    doc, first = running("x * 2")
    typed(doc, "x")
    _cancel_all(doc, keep=lambda work: work.agrees_with(doc.text))
    assert not first.cancelled and doc.inflight["completion"] is first
    typed(doc, "x +")
    _cancel_all(doc, keep=lambda work: work.agrees_with(doc.text))
    assert first.cancelled and "completion" not in doc.inflight


def test_an_edit_elsewhere_cancels() -> None:
    doc, first = running("x")
    doc.apply_change("# note\n" + TEXT)
    _cancel_all(doc, keep=lambda work: work.agrees_with(doc.text))
    assert first.cancelled


def test_other_kinds_are_cancelled_by_any_change() -> None:
    doc, first = running("x")
    other = CancelToken()
    doc.inflight["nextEdit"] = other
    typed(doc, "x")
    _cancel_all(doc, keep=lambda work: work.agrees_with(doc.text))
    assert other.cancelled and not first.cancelled


def test_a_client_cancel_nobody_takes_over_stops_the_work() -> None:
    doc, first = running("x")
    _release(doc, first)
    assert first.cancelled and "completion" not in doc.inflight
    doc, first = running("x * 2")
    _claim_completion(doc, typed(doc, "x"))
    _release(doc, first)  # taken over in the meantime: it runs on
    assert not first.cancelled
