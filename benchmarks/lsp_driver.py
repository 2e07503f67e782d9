"""A plain LSP client that drives the real `codestral-ls` process over stdio as an editor would, and
what the benchmarks read off it (items, positions, CPU time, peak memory)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from benchmarks.lsp_client import plain
from benchmarks.measure import ROOT


def peak_rss_mib(pid: int | None = None) -> float | None:
    """Peak resident set size (VmHWM) of a process, in MiB; None where /proc is not readable."""
    path = f"/proc/{pid or 'self'}/status"
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


UPDATED_NOTIFICATION = "codestral/suggestionUpdated"  # server → client: a longer suggestion at a position


FOCUS_NOTIFICATION = "codestral/didFocus"  # client → server: the cursor landed here (warm it up)


STATS_REQUEST = "codestral/stats"


def _ignore(params: Any) -> None:
    return None


def utf16_position(text: str, offset: int) -> tuple[int, int]:
    """(line, character) of `offset` in LSP's default UTF-16 code units."""
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    return line, len(text[start:offset].encode("utf-16-le")) // 2


def utf16_offset(text: str, line: int, character: int) -> int:
    """The offset of an LSP position (UTF-16 units; past the line's end means its end)."""
    start = 0
    for _ in range(line):
        nxt = text.find("\n", start)
        if nxt < 0:
            return len(text)
        start = nxt + 1
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    units = 0
    for i in range(start, end):
        if units >= character:
            return i
        units += 2 if ord(text[i]) > 0xFFFF else 1
    return end


class LspServer:
    """The `codestral-ls` process with the given flags, and a client that talks to it as an editor would.

    `suggestion_updates=True` is one of our own editor clients: it opts in with the client capability
    `experimental.codestral.suggestionUpdates` and asks again when the server says a suggestion grew.
    Otherwise it is a generic LSP client (no experimental capabilities).
    """

    def __init__(self, flags: list[str], suggestion_updates: bool = False, folders: list[str] | None = None) -> None:
        self.flags = flags
        self.suggestion_updates = suggestion_updates
        self.folders = folders or []  # workspace folder URIs an editor sends (files are read only under them)
        self.client: Any = None
        self.init_result: Any = None
        self.updates: list[dict[str, Any]] = []  # suggestionUpdated params, in arrival order
        self.updated = asyncio.Event()
        self.stderr = bytearray()
        self._stderr_task: asyncio.Task[None] | None = None
        self.versions: dict[str, int] = {}

    async def start(self, wait_for_model: bool = True) -> float:
        """Start, initialize, wait until the model is loaded; returns the seconds it took."""
        from lsprotocol import types
        from pygls.lsp.client import LanguageClient

        t0 = time.perf_counter()
        client = LanguageClient("codestral-ls-bench", "0")

        for method in (types.WINDOW_WORK_DONE_PROGRESS_CREATE, types.PROGRESS, types.WINDOW_SHOW_MESSAGE,
                       types.WINDOW_LOG_MESSAGE):  # the request answered with null, the rest dropped
            client.feature(method)(_ignore)

        @client.feature(UPDATED_NOTIFICATION)
        def _updated(params: Any) -> None:
            self.updates.append({"t": time.perf_counter(), **(plain(params) or {})})
            self.updated.set()

        await client.start_io(sys.executable, "-m", "codestral_ls.server", *self.flags, cwd=str(ROOT),
                              env=dict(os.environ))
        self.client = client
        self._stderr_task = asyncio.ensure_future(self._drain())
        experimental = {"codestral": {"suggestionUpdates": True}} if self.suggestion_updates else None
        caps = types.ClientCapabilities(
            general=types.GeneralClientCapabilities(position_encodings=["utf-16"]),
            window=types.WindowClientCapabilities(work_done_progress=True),
            experimental=experimental)
        folders = [types.WorkspaceFolder(uri=u, name=u.rsplit("/", 1)[-1]) for u in self.folders] or None
        self.init_result = await client.initialize_async(types.InitializeParams(
            capabilities=caps, process_id=os.getpid(), root_uri=self.folders[0] if self.folders else None,
            workspace_folders=folders))
        client.initialized(types.InitializedParams())
        while wait_for_model:  # the model loads after `initialized`; the first request must not be the load
            model = (await self.stats()).get("model") or {}
            if "error" in model:
                raise RuntimeError(f"server: the model did not load: {model['error']}")
            if model:
                break
            if client._server is not None and client._server.returncode is not None:
                raise RuntimeError(f"server exited ({client._server.returncode}): {self.log_tail()}")
            await asyncio.sleep(0.5)
        return time.perf_counter() - t0

    async def _drain(self, keep: int = 2**20) -> None:
        # The server logs to stderr: read it all the time, or a chatty server blocks on a full pipe.
        stream = self.client._server.stderr if self.client._server is not None else None
        echo = os.environ.get("CODESTRAL_BENCH_SERVER_LOG") == "1"
        while stream is not None and (chunk := await stream.read(65536)):
            self.stderr.extend(chunk)
            del self.stderr[:-keep]
            if echo:
                sys.stderr.write(chunk.decode("utf-8", "replace"))

    def log_tail(self, n: int = 2000) -> str:
        return self.stderr[-n:].decode("utf-8", "replace")

    def pid(self) -> int | None:
        return getattr(getattr(self.client, "_server", None), "pid", None)

    async def stats(self) -> dict[str, Any]:
        return plain(await self.client.protocol.send_request_async(STATS_REQUEST, {}))

    def open(self, uri: str, text: str, language: str = "python") -> None:
        from lsprotocol import types

        self.versions[uri] = 1
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)))

    def close(self, uri: str) -> None:
        from lsprotocol import types

        self.versions.pop(uri, None)
        self.client.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=uri)))

    def insert(self, uri: str, line: int, character: int, text: str) -> None:
        from lsprotocol import types

        self.versions[uri] += 1
        pos = types.Position(line=line, character=character)
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=pos, end=pos),
                                                                   text=text)]))

    def focus(self, uri: str, line: int, character: int) -> None:
        """Our clients' `codestral/didFocus`: the cursor landed at a new place (harmless if ignored)."""
        self.client.protocol.notify(FOCUS_NOTIFICATION, {"textDocument": {"uri": uri},
                                                         "position": {"line": line, "character": character}})

    async def inline(self, uri: str, line: int, character: int) -> dict[str, Any] | None:
        """One `textDocument/inlineCompletion`; the first item as {text, range, command}, None when empty."""
        return first_item(await self.inline_request(uri, line, character))

    def inline_request(self, uri: str, line: int, character: int, msg_id: str | None = None) -> Any:
        """Send one `textDocument/inlineCompletion` without waiting: an awaitable of the raw result
        (`first_item` reads it). With `msg_id`, `cancel_request(msg_id)` can cancel it."""
        from lsprotocol import types

        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri),
            position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))
        return self.client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id=msg_id)

    def cancel_request(self, msg_id: str) -> None:
        """`$/cancelRequest` for a request sent with `msg_id` (as VS Code sends for a superseded one)."""
        from lsprotocol import types

        self.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=msg_id))

    def edit(self, uri: str, start: tuple[int, int], end: tuple[int, int], text: str) -> None:
        """One incremental `didChange`: the range start..end (LSP positions) replaced by `text`."""
        from lsprotocol import types

        self.versions[uri] += 1
        rng = types.Range(start=types.Position(line=start[0], character=start[1]),
                          end=types.Position(line=end[0], character=end[1]))
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            content_changes=[types.TextDocumentContentChangePartial(range=rng, text=text)]))

    async def execute_command(self, command: str, arguments: list[Any] | None) -> Any:
        """`workspace/executeCommand`, as VS Code runs an accepted inline item's `command`."""
        from lsprotocol import types

        return await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=command, arguments=arguments))

    def server_experimental(self) -> dict[str, Any]:
        """The server's `capabilities.experimental.codestral` ({} when it advertises none)."""
        caps = getattr(self.init_result, "capabilities", None)
        experimental = plain(getattr(caps, "experimental", None))
        ours = experimental.get("codestral") if isinstance(experimental, dict) else None
        return ours if isinstance(ours, dict) else {}

    async def stop(self) -> None:
        if self.client is None:
            return
        try:
            await asyncio.wait_for(self.client.shutdown_async(None), 10)
            self.client.exit(None)
        except Exception:  # a server that died already: nothing to shut down
            pass
        await self.client.stop()
        if self._stderr_task is not None:
            self._stderr_task.cancel()


def first_item(result: Any) -> dict[str, Any] | None:
    """The first item of an inlineCompletion result as {text, range, command}; None when empty.
    `command` is {"command", "arguments"} (what the editor runs when the item is accepted) or None."""
    items = (result if isinstance(result, list) else getattr(result, "items", None) or []) if result else []
    if not items:
        return None
    item = items[0]
    text = item.insert_text if isinstance(item.insert_text, str) else getattr(item.insert_text, "value", "")
    r = item.range
    rng = None if r is None else ((r.start.line, r.start.character), (r.end.line, r.end.character))
    cmd = getattr(item, "command", None)
    command = None if cmd is None else {"command": cmd.command, "arguments": plain(cmd.arguments)}
    return {"text": text, "range": rng, "command": command}


def cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU seconds a process has used (/proc/<pid>/stat utime+stime); None where unreadable."""
    try:
        with open(f"/proc/{pid or 'self'}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, IndexError, ValueError):
        return None


def apply_item(text: str, offset: int, item: dict[str, Any] | None) -> str:
    """The document after accepting an inline completion item at `offset` (its range, if any, replaced)."""
    if item is None:
        return text
    if item.get("range") is None:
        start = end = offset
    else:
        (l0, c0), (l1, c1) = item["range"]
        start, end = utf16_offset(text, l0, c0), utf16_offset(text, l1, c1)
    return text[:start] + item["text"] + text[end:]
