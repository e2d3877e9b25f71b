import assert from "node:assert/strict";
import { test } from "node:test";

import { InflightRequests, raceCancel, type Sent } from "../../inflight";

function deferred<T>(): { sent: Sent<T>; resolve(v: T): void; reject(e: unknown): void; cancelled: () => boolean } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  let cancelled = false;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { sent: { promise, cancel: () => { cancelled = true; } }, resolve, reject, cancelled: () => cancelled };
}

test("one request per state: asked again it is reused, a new state cancels the running one", async () => {
  const requests = new InflightRequests<string>(() => 1000);
  const a = deferred<string>();
  let sends = 0;
  const first = requests.get("doc@1:0:3", () => (sends++, a.sent));
  const again = requests.get("doc@1:0:3", () => (sends++, deferred<string>().sent));
  assert.equal(first, again);
  assert.equal(sends, 1);
  assert.equal(first.startedAt, 1000);

  const b = deferred<string>();
  const second = requests.get("doc@2:0:4", () => b.sent);
  assert.ok(a.cancelled() && !requests.isCurrent("doc@1:0:3") && requests.isCurrent("doc@2:0:4"));
  b.resolve("ghost");
  assert.equal(await second.promise, "ghost");
  assert.ok(second.settled);
  requests.get("doc@3:0:5", () => deferred<string>().sent);
  assert.ok(!b.cancelled()); // an answered request has nothing left to cancel

  const failing = deferred<string>();
  const failed = requests.get("doc@4:0:6", () => failing.sent);
  failing.reject(new Error("server gone"));
  assert.equal(await failed.promise, undefined);
});

test("a caller that gives up does not lose the answer: it waits for the next ask", async () => {
  const requests = new InflightRequests<string>();
  const a = deferred<string>();
  const request = requests.get("doc@1:0:3", () => a.sent);
  let fire = () => {};
  let disposed = false;
  const gaveUp = raceCancel(request.promise, (f) => ((fire = f), { dispose: () => { disposed = true; } }), "cancelled");
  fire();
  assert.equal(await gaveUp, "cancelled");
  assert.ok(!a.cancelled()); // VS Code's ask was cancelled, not the request
  a.resolve("late ghost");
  const next = requests.get("doc@1:0:3", () => deferred<string>().sent);
  assert.equal(await raceCancel(next.promise, () => ({ dispose() {} }), "cancelled"), "late ghost");
  assert.ok(disposed);
  requests.cancel();
  assert.ok(!requests.isCurrent("doc@1:0:3"));
});
