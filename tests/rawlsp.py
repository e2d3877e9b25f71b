"""A JSON-RPC client over a subprocess's stdio that can also send what no LSP client would:
bytes that are not JSON, messages of the wrong shape, params of the wrong types.

pygls's client cannot send those (it structures every message first), so the fuzz and load
tests speak the wire format themselves: Content-Length framing, responses matched by id, the
server's notifications and requests collected.
"""

from __future__ import annotations

import itertools
import json
import queue
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any


class ServerGone(RuntimeError):
    """The server exited or closed its stdout."""


class NoAnswer(TimeoutError):
    """A request got no response in time: the client would hang."""


class RawServer:
    def __init__(
        self, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._responses: dict[Any, queue.Queue[dict[str, Any]]] = {}
        self.unmatched: list[dict[str, Any]] = []  # responses with an id nobody waits for (or null)
        self.notifications: list[dict[str, Any]] = []
        self.stderr_tail: deque[str] = deque(maxlen=200)
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    @classmethod
    def nextab(
        cls, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> RawServer:
        return cls([sys.executable, "-m", "nextab", "serve", *args], env=env, cwd=cwd)

    # --- writing ------------------------------------------------------------------------------

    def send_bytes(self, body: bytes, header: bytes | None = None) -> None:
        assert self.process.stdin is not None
        if header is None:
            header = b"Content-Length: %d\r\n\r\n" % len(body)
        with self._lock:
            try:
                self.process.stdin.write(header + body)
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError) as error:
                raise ServerGone(self.describe()) from error

    def send(self, message: Any) -> None:
        self.send_bytes(json.dumps(message).encode())

    def notify(self, method: str, params: Any = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def expect(self, msg_id: Any) -> None:
        """Wait for a response to `msg_id` (sent by `send_bytes`), for `wait`."""
        self._responses[msg_id] = queue.Queue()

    def request_async(self, method: str, params: Any = None, msg_id: Any = None) -> Any:
        """Send a request; its id, for `wait`."""
        msg_id = next(self._ids) if msg_id is None else msg_id
        self.expect(msg_id)
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return msg_id

    def wait(self, msg_id: Any, timeout: float = 30.0) -> dict[str, Any]:
        """The whole response: {"result": ...} or {"error": {...}}."""
        try:
            return self._responses[msg_id].get(timeout=timeout)
        except queue.Empty:
            raise NoAnswer(f"no response to request {msg_id!r}; {self.describe()}") from None
        finally:
            self._responses.pop(msg_id, None)

    def request(self, method: str, params: Any = None, timeout: float = 30.0) -> dict[str, Any]:
        return self.wait(self.request_async(method, params), timeout)

    def result(self, method: str, params: Any = None, timeout: float = 30.0) -> Any:
        response = self.request(method, params, timeout)
        if "error" in response:
            raise AssertionError(f"{method} failed: {response['error']}")
        return response.get("result")

    def initialize(self, options: dict[str, Any] | None = None, **params: Any) -> dict[str, Any]:
        result = self.result(
            "initialize",
            {
                "processId": None,
                "capabilities": {},
                "initializationOptions": options or {},
                **params,
            },
        )
        self.notify("initialized", {})
        return result

    def close(self, timeout: float = 10.0) -> int | None:
        if self.process.poll() is None:
            try:
                self.request("shutdown", None, timeout=timeout)
                self.notify("exit")
            except (ServerGone, NoAnswer):
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def describe(self) -> str:
        code = self.process.poll()
        state = "running" if code is None else f"exited with {code}"
        return f"server {state}; stderr tail:\n" + "\n".join(list(self.stderr_tail)[-30:])

    # --- reading ------------------------------------------------------------------------------

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    self._gone()
                    return
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.decode("ascii").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length is None:
                continue
            body = stream.read(length)
            if len(body) < length:
                self._gone()
                return
            self._dispatch(json.loads(body))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" in message:
            if "id" in message:  # a request from the server: work-done progress, configuration
                self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})
            self.notifications.append(message)
            return
        waiting = self._responses.get(message.get("id"))
        if waiting is None:
            self.unmatched.append(message)
        else:
            waiting.put(message)

    def _gone(self) -> None:
        for waiting in list(self._responses.values()):
            waiting.put({"error": {"code": -1, "message": "server gone"}, "gone": True})

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())
