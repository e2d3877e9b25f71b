import assert from "node:assert/strict";
import { test } from "node:test";

import { tabAction, previewLine } from "../../nextEdit";
import { OutcomeTracker, type Report } from "../../outcomes";
import { editSuggestions, inlineItems, serverSettings, statusText, type EditSuggestion, type Status } from "../../protocol";

test("inline items come from a list or {items}, snippet values included, empty ones dropped", () => {
  const range = { start: { line: 1, character: 2 }, end: { line: 1, character: 3 } };
  assert.deepEqual(inlineItems({ items: [{ insertText: "abc", range }, { insertText: "" }] }), [{ text: "abc", range }]);
  assert.deepEqual(inlineItems([{ insertText: { kind: "snippet", value: "x" } }]), [{ text: "x", range: undefined }]);
  assert.deepEqual(inlineItems(null), []);
  assert.deepEqual(editSuggestions({ suggestions: "nope" }), []);
});

test("server settings: the extension's own win over nextab.settings, nextEdit merged", () => {
  const settings = serverSettings({
    model: "embedded", device: "cpu", decoding: "adadec", maxTokens: 32, nextEditEnable: false,
    extra: { maxTokens: 8, context: { strategy: "bm25" }, nextEdit: { push: true } },
  });
  assert.deepEqual(settings, {
    maxTokens: 32, context: { strategy: "bm25" }, model: "embedded", device: "cpu", decoding: "adadec",
    nextEdit: { push: true, enabled: false },
  });
});

test("a partial accept counts for the suggestion it was made on; all words taken is accepted", () => {
  const reports: Report[] = [];
  const tracker = new OutcomeTracker((r) => reports.push(r));
  const a = tracker.shown("file:///a.py", "foo(bar) + 1", 50);
  tracker.partial(a, 3);
  tracker.partial(a, 1);
  tracker.partial(a, 100); // never more than was shown
  const b = tracker.shown("file:///a.py", "x", 40);
  tracker.partial(a, 2); // the earlier suggestion's accept, landing after the next showed: not b's
  tracker.dismissed();
  assert.equal(b, a + 1);
  assert.deepEqual(reports.map((r) => [r.outcome, r.shownChars, r.acceptedChars]), [
    ["accepted", 12, 12], // every word taken
    ["dismissed", 1, 0],
  ]);
});

test("status bar text", () => {
  const ready: Status = {
    version: "0.1.0", state: "ready", error: null, decoding: "greedy", lastLatencyMs: 231.6,
    model: { name: "qwen", device: "cpu", dtype: "float32" }, indexing: { done: 3, total: 10, finished: false },
  };
  assert.deepEqual(statusText(ready, true), { text: "nextab: qwen · cpu · 232 ms · indexing 3/10", busy: true });
  assert.deepEqual(statusText({ ...ready, indexing: null }, true), { text: "nextab: qwen · cpu · 232 ms", busy: false });
  assert.deepEqual(statusText(undefined, true), { text: "nextab: loading model", busy: true });
  assert.equal(statusText(ready, false).text, "nextab: off");
  assert.equal(statusText({ ...ready, state: "failed" }, true).text, "nextab: model failed");
  // A server that is gone never shows as loading forever.
  assert.deepEqual(statusText(undefined, true, true), { text: "nextab: server stopped", busy: false });
});

test("each shown suggestion is reported once, with what was taken of it", () => {
  const reports: Report[] = [];
  const tracker = new OutcomeTracker((r) => reports.push(r));
  const a = tracker.shown("file:///a.py", "return x", 120);
  tracker.accepted(a);
  tracker.accepted(a); // a second accept of the same item: already settled
  const b = tracker.shown("file:///a.py", "foo(bar)", 80);
  tracker.partial(b, 3);
  tracker.shown("file:///a.py", "next", 90); // the partly taken one is superseded
  tracker.dismissed();
  tracker.shown("file:///a.py", "gone", 70);
  tracker.gone();
  const stale = tracker.shown("file:///a.py", "late", 60);
  tracker.shown("file:///a.py", "newer", 60);
  tracker.accepted(stale); // an old item's command: not the one on screen
  assert.deepEqual(reports.map((r) => [r.outcome, r.shownChars, r.acceptedChars, r.latencyMs]), [
    ["accepted", 8, 8, 120],
    ["partial", 8, 3, 80],
    ["dismissed", 4, 0, 90],
    ["ignored", 4, 0, 70],
    ["ignored", 4, 0, 60],
  ]);
  assert.equal(tracker.visible?.text, "newer");
});

test("Tab jumps to a next edit elsewhere and applies it where the cursor is", () => {
  const suggestion: EditSuggestion = {
    range: { start: { line: 3, character: 8 }, end: { line: 3, character: 13 } },
    newText: "subtotal", score: 3.3, source: "rename", reason: "renamed count to subtotal", atCursor: false,
    lines: { start: 3, end: 4 },
  };
  assert.equal(tabAction(suggestion, { line: 0, character: 0 }), "jump");
  assert.equal(tabAction(suggestion, { line: 3, character: 0 }), "apply");
  assert.equal(tabAction({ ...suggestion, atCursor: true }, { line: 9, character: 0 }), "apply");
  assert.equal(previewLine(["        count += item.price"], suggestion), "        subtotal += item.price");
  const rewrite = { ...suggestion, range: { start: { line: 3, character: 0 }, end: { line: 4, character: 9 } } };
  assert.equal(previewLine(["a = 1", "b = 2"], { ...rewrite, newText: "\n\nc = 3" }), "c = 3");
  assert.equal(previewLine(["a = 1", "b = 2"], { ...rewrite, newText: "" }), ""); // a deletion
});
