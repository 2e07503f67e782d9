"""A small LSP client over stdio for tests and benchmarks: starts the real server process.

Here, not under tests/, so that a benchmark may use it too (benchmarks never import tests; tests may
import benchmarks). `benchmarks/lsp_driver.py` builds the editor-like driver of the timed benchmarks.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.lsp.client import LanguageClient

from benchmarks.measure import ROOT


class Client(LanguageClient):
    def __init__(self) -> None:
        super().__init__("codestral-ls-test", "0")
        self.messages: list[types.ShowMessageParams] = []
        self.logs: list[types.LogMessageParams] = []
        self.progress: list[Any] = []
        self.stderr = bytearray()  # the server's log (drained: a full pipe would block the server)

        @self.feature(types.WINDOW_SHOW_MESSAGE)
        def _show(params: types.ShowMessageParams) -> None:
            self.messages.append(params)

        @self.feature(types.WINDOW_LOG_MESSAGE)
        def _log(params: types.LogMessageParams) -> None:
            self.logs.append(params)

        @self.feature(types.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def _create(params: types.WorkDoneProgressCreateParams) -> None:
            return None

        @self.feature(types.PROGRESS)
        def _progress(params: types.ProgressParams) -> None:
            self.progress.append(params.value)

        # Our own notifications (server/lsp.py), kept as plain dicts per method.
        self.notifications: dict[str, list[dict[str, Any]]] = {}
        for method in ("codestral/suggestionUpdated", "codestral/status"):
            self.feature(method)(self._collector(method))

    def _collector(self, method: str) -> Any:
        def collect(params: Any) -> None:
            self.notifications.setdefault(method, []).append(plain(params))
        return collect


def plain(obj: Any) -> Any:
    """pygls hands unknown methods' params over as attribute objects: back to dicts and lists."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple) and not hasattr(obj, "_fields"):
        return [plain(v) for v in obj]
    if hasattr(obj, "_asdict"):
        return {k: plain(v) for k, v in obj._asdict().items()}
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return {k: plain(v) for k, v in vars(obj).items()}
    return obj


async def start(args: list[str], init_options: dict | None = None, encodings: list[str] | None = None,
                env: dict[str, str] | None = None, experimental: dict | None = None, cwd: Path | None = None
                ) -> tuple[Client, types.InitializeResult]:
    client = Client()
    await client.start_io(sys.executable, "-m", "codestral_ls.server", *args, cwd=str(cwd or ROOT),
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    # pygls pipes the server's stderr (its log): read it all the time, or a chatty server blocks
    # on a full pipe. It is echoed to our stderr too (pytest shows it for a failing test).
    client._stderr_task = asyncio.ensure_future(_drain_stderr(client))  # type: ignore[attr-defined]
    caps = types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=encodings or ["utf-16"]),
        window=types.WindowClientCapabilities(work_done_progress=True),
        experimental=experimental,
    )
    result = await client.initialize_async(types.InitializeParams(
        capabilities=caps, initialization_options=init_options, process_id=os.getpid()))
    client.initialized(types.InitializedParams())
    return client, result


async def _drain_stderr(client: Client, echo: bool = True, keep: int = 8 * 2**20) -> None:
    stream = client._server.stderr if client._server is not None else None
    if stream is None:
        return
    while chunk := await stream.read(65536):
        client.stderr.extend(chunk)
        del client.stderr[:-keep]
        if echo and os.environ.get("CODESTRAL_TEST_QUIET_SERVER") != "1":
            sys.stderr.write(chunk.decode("utf-8", "replace"))


async def stop(client: Client) -> None:
    try:
        await asyncio.wait_for(client.shutdown_async(None), 10)
        client.exit(None)
    except Exception:
        pass
    await client.stop()


def open_doc(client: Client, uri: str, text: str, language: str = "python", version: int = 1) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id=language, version=version, text=text)))


def insert(client: Client, uri: str, version: int, line: int, character: int, text: str) -> None:
    pos = types.Position(line=line, character=character)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=pos, end=pos), text=text)]))


async def inline(client: Client, uri: str, line: int, character: int) -> types.InlineCompletionList | None:
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))


async def send_raw(client: Client, message: dict[str, Any] | bytes, msg_id: str | None = None,
                   timeout: float = 20) -> Any:
    """Write a message as-is (malformed on purpose, if wanted) and await the answer to `msg_id`."""
    import json
    from concurrent.futures import Future

    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    fut: Future[Any] = Future()
    if msg_id is not None:
        client.protocol._request_futures[msg_id] = fut
    res = client.protocol.writer.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    if asyncio.iscoroutine(res) or isinstance(res, asyncio.Future):
        await res
    if msg_id is None:
        return None
    return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)


async def wait_loaded(client: Client, timeout: float = 600) -> dict[str, Any]:
    """Poll `codestral/stats` until it names the loaded model (until then a request is answered empty at
    once, which says nothing about the server's behaviour); a failed load fails here, saying why."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        stats = plain(await client.protocol.send_request_async("codestral/stats", {}))
        model = stats.get("model") or {}
        assert not model.get("error"), f"the model failed to load: {model['error']}"
        if model.get("source"):
            return stats
        assert loop.time() < deadline, "the model did not load in time"
        await asyncio.sleep(0.05)


def send_json(handler: Any, obj: Any, status: int = 200) -> None:
    """Answer an `http.server` request with `obj` as JSON (the stand-in HTTP APIs of tests and stress)."""
    import json

    out = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(out)))
    handler.end_headers()
    handler.wfile.write(out)

