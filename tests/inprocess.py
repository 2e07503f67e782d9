"""The real pygls server object driven in this process: messages go through the same JSON parsing,
structuring and handlers as over stdio, answers are collected from its writer. For tests that
monkeypatch the engine or look inside the server (its documents, caches)."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from codestral_ls.server.lsp import CodestralServer, create_server
from codestral_ls.server.options import Options
from pygls.exceptions import JsonRpcException


class _Writer:
    def __init__(self, owner: InProcess) -> None:
        self.owner = owner
        self.buffer = b""

    def write(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))
            if len(rest) < length:
                return
            self.owner.received.append(json.loads(rest[:length]))
            self.buffer = rest[length:]

    def close(self) -> None:
        pass


class InProcess:
    def __init__(self, options: Options | None = None) -> None:
        self.server: CodestralServer = create_server(options or Options())
        self.received: list[dict[str, Any]] = []
        self.server.protocol.set_writer(_Writer(self))
        self._ids = itertools.count(1)

    def feed(self, message: dict[str, Any] | bytes) -> None:
        """One frame, as pygls' stdio loop handles it."""
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        protocol = self.server.protocol
        try:
            protocol.handle_message(json.loads(body, object_hook=protocol.structure_message))
        except Exception as exc:
            self.server.report_server_error(exc, JsonRpcException)

    def notify(self, method: str, params: Any) -> None:
        self.feed({"jsonrpc": "2.0", "method": method, "params": params})

    def send(self, method: str, params: Any) -> int:
        msg_id = next(self._ids)
        self.feed({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return msg_id

    async def answer(self, msg_id: int | str | None, timeout: float = 120) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for msg in self.received:
                if "method" not in msg and msg.get("id") == msg_id:
                    self.received.remove(msg)
                    return msg
            if loop.time() > deadline:
                raise TimeoutError(f"no answer to {msg_id}")
            await asyncio.sleep(0.005)

    async def request(self, method: str, params: Any, timeout: float = 120) -> dict[str, Any]:
        return await self.answer(self.send(method, params), timeout)

    def notifications(self, method: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("method") == method]

    async def initialize(self, encodings: list[str] | None = None, init_options: Any = None,
                         engine: bool = True) -> dict[str, Any]:
        answer = await self.request("initialize", {
            "processId": None, "rootUri": None, "initializationOptions": init_options,
            "capabilities": {"general": {"positionEncodings": encodings or ["utf-16"]}}})
        if engine:
            self.notify("initialized", {})  # starts the engine thread
        return answer

    def open(self, uri: str, text: str, language: str = "python", version: int = 1) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": language, "version": version, "text": text}})

    def change(self, uri: str, version: int, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        self.notify("textDocument/didChange", {
            "textDocument": {"uri": uri, "version": version},
            "contentChanges": [{"range": {"start": {"line": start[0], "character": start[1]},
                                          "end": {"line": end[0], "character": end[1]}}, "text": text}]})

    async def inline(self, uri: str, line: int, character: int, timeout: float = 120) -> dict[str, Any]:
        return await self.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1}}, timeout)

    def text(self, uri: str) -> str | None:
        doc = self.server.open_document(uri)
        return None if doc is None else doc.source

    def stop(self) -> None:
        if self.server.backend is not None:
            self.server.backend.stop()
