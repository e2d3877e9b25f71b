// The extension's protocol code against the real `nextab serve`, over stdio with a Node LSP
// client (vscode-jsonrpc), as the extension talks to it. Run by tests/test_vscode.py, which
// builds the tiny model and sets NEXTAB_TEST_SERVER (the command, JSON) and NEXTAB_CACHE_DIR.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { createMessageConnection, StreamMessageReader, StreamMessageWriter } from "vscode-jsonrpc/node";

import { tabAction } from "../../nextEdit";
import * as P from "../../protocol";

const SHOP = "def total(items):\n    count = 0\n    for item in items:\n        count += item.price\n    return count\n";

test("completions, next edits, status and outcomes against nextab serve", { timeout: 120_000 }, async () => {
  const command: string[] = JSON.parse(process.env.NEXTAB_TEST_SERVER ?? "[]");
  assert.ok(command.length > 0, "NEXTAB_TEST_SERVER is not set");
  const server = spawn(command[0], command.slice(1), { stdio: ["pipe", "pipe", "inherit"] });
  const connection = createMessageConnection(new StreamMessageReader(server.stdout), new StreamMessageWriter(server.stdin));
  connection.listen();
  try {
    const init: any = await connection.sendRequest("initialize", {
      processId: process.pid,
      rootUri: null,
      capabilities: {},
      initializationOptions: P.serverSettings({
        model: process.env.NEXTAB_TEST_MODEL ?? "embedded", device: "cpu", decoding: "greedy", maxTokens: 6,
        nextEditEnable: true, extra: { context: { index: false }, nextEdit: { modelStep: false } },
      }),
    });
    assert.ok(init.capabilities.inlineCompletionProvider);
    assert.equal(init.capabilities.experimental.nextab.nextEdit, true);
    await connection.sendNotification("initialized", {});

    const uri = "file:///work/shop.py";
    await connection.sendNotification("textDocument/didOpen", {
      textDocument: { uri, languageId: "python", version: 1, text: SHOP },
    });
    const answer = await connection.sendRequest(P.INLINE_COMPLETION, P.inlineParams(uri, { line: 4, character: 16 }, true));
    for (const item of P.inlineItems(answer)) {
      assert.deepEqual(item.range?.start, { line: 4, character: 16 });
    }

    await connection.sendNotification("textDocument/didChange", {
      textDocument: { uri, version: 2 },
      contentChanges: [{ range: { start: { line: 1, character: 4 }, end: { line: 1, character: 9 } }, text: "subtotal" }],
    });
    const edits = P.editSuggestions(await connection.sendRequest(P.NEXT_EDIT, P.nextEditParams(uri, { line: 1, character: 12 })));
    assert.deepEqual(edits.slice(0, 2).map((e) => [e.range.start.line, e.newText]), [[3, "subtotal"], [4, "subtotal"]]);
    assert.equal(tabAction(edits[0], { line: 1, character: 12 }), "jump");
    assert.equal(tabAction(edits[0], { line: 3, character: 0 }), "apply");

    const status = await connection.sendRequest<P.Status>(P.STATUS, null);
    assert.equal(status.state, "ready");
    assert.match(P.statusText(status, true).text, /^nextab: .+ · cpu/);

    await connection.sendNotification(P.OUTCOME, {
      textDocument: { uri }, kind: "nextEdit", outcome: "accepted", shownChars: 8, acceptedChars: 8, latencyMs: 12,
    });
    await connection.sendRequest(P.STATUS, null); // the notification before it is handled
    await connection.sendRequest("shutdown", null);
    await connection.sendNotification("exit");
  } finally {
    connection.dispose();
    server.kill();
  }
  const log = readFileSync(join(process.env.NEXTAB_CACHE_DIR ?? "", "acceptance.jsonl"), "utf8");
  const records = log.trim().split("\n").map((line) => JSON.parse(line));
  assert.deepEqual(records.map((r) => [r.kind, r.result, r.language]), [["nextEdit", "accepted", "python"]]);
});
