"""The LSP process: thin pygls handlers around `pipeline.Completer`.

Each handler pulls the document, calls the pipeline and converts to lsprotocol types. The model
loads on the engine thread after `initialized` (with `$/progress`); until it is ready requests
answer empty at once, and a failed load turns into an error answer that says why, on every request.

Our own protocol, for clients that opt in with the client capability
`experimental.codestral = {"suggestionUpdates": true, "status": true}` (advertised back in
`capabilities.experimental.codestral`, server/protocol.py):

    codestral/suggestionUpdated  server → client  {textDocument: {uri, version}, position}: a longer
                                 suggestion is ready there (the rest of a budget-cut block): ask again
    codestral/status             server → client  {kind, message, latencyMs}: loading / ready / error /
                                 running / answered / declined (and why)
    codestral/didFocus           client → server  {textDocument: {uri}, position}: the cursor came to
                                 rest there; the prompt there is prefilled while the user reads

Warm-up (prefilling a prompt before it is asked for) also runs on didOpen and when the user pauses
after an edit without the client asking; it is always preempted by a real request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.serving.backend import Backend
from codestral_ls.server import __version__
from codestral_ls.server.documents import LspTextDocument, adopt
from codestral_ls.server.options import Options, model_changed, parse_client_options, parse_options
from codestral_ls.server.pipeline import Completer, Document, Suggestion
from codestral_ls.server.protocol import AnsweringProtocol, answer_unreadable_frame
from codestral_ls.server.retrieval import Workspace
from codestral_ls.server.stats import Stats
from lsprotocol import types
from pygls.exceptions import JsonRpcInternalError, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

log = logging.getLogger(__name__)

ACCEPT_COMMAND = "codestral.accept"
PARTIAL_ACCEPT_NOTIFICATION = "codestral/didPartiallyAccept"
STATS_REQUEST = "codestral/stats"
SUGGESTION_UPDATED = "codestral/suggestionUpdated"
STATUS_NOTIFICATION = "codestral/status"
DID_FOCUS = "codestral/didFocus"
PAUSE_S = 0.5  # after an edit, this long without a request: warm the prompt at the edit
LOAD_PROGRESS_TOKEN = "codestral-ls/model-load"


class CodestralServer(LanguageServer):
    def __init__(self, options: Options, cli_raw: dict[str, Any] | None = None) -> None:
        super().__init__("codestral-ls", __version__, protocol_cls=AnsweringProtocol)
        self.options = options
        self.cli_raw = cli_raw or {}  # command-line flags win over client settings
        self.stats = Stats()
        self.worker: Backend | None = None
        self.completer: Completer | None = None
        self.recent: list[str] = []  # URIs, most recently edited last
        self._errors_shown: set[str] = set()
        self.event_loop: asyncio.AbstractEventLoop | None = None
        self.client_features: dict[str, Any] = {}  # the client's experimental.codestral opt-ins
        self._pauses: dict[str, asyncio.TimerHandle] = {}  # pending warm-up per document
        self._asked: dict[str, float] = {}  # last request time per document
        self.roots = Workspace()  # rootUri / workspace folders: the only folders files are read from

    # -- model lifecycle --------------------------------------------------------------------

    def start_engine(self) -> None:
        from codestral_ls.server.backends import open_backend

        loop = asyncio.get_event_loop()
        if self.worker is not None:
            # A reload: the old engine stops between two tokens, but its thread may take a while to
            # leave a forward pass. Waiting for it here would freeze every request on the loop.
            loop.run_in_executor(None, self.worker.stop)
        # Load progress only where a model loads in this process (a daemon or a remote API: none).
        progress_ok = self.options.backend == "local" and bool(
            self.client_capabilities.window and self.client_capabilities.window.work_done_progress)
        if self.options.backend == "local":
            self.status("loading", "loading model")
        if progress_ok:
            self.work_done_progress.create(LOAD_PROGRESS_TOKEN)
            self.work_done_progress.begin(LOAD_PROGRESS_TOKEN, types.WorkDoneProgressBegin(
                title="codestral-ls", message="loading model", percentage=0))

        def report(message: str, percent: int) -> None:  # runs on the engine thread
            if progress_ok:
                loop.call_soon_threadsafe(self.work_done_progress.report, LOAD_PROGRESS_TOKEN,
                                          types.WorkDoneProgressReport(message=message, percentage=percent))

        self.worker = open_backend(self.options, progress=report,
                                   on_loaded=lambda: loop.call_soon_threadsafe(self._loaded, progress_ok))
        self.completer = Completer(self.worker, self.options, self.stats, self.other_documents)
        self.completer.retriever.workspace = self.roots

    def _loaded(self, progress_ok: bool) -> None:
        assert self.worker is not None
        error = self.worker.load_error
        if progress_ok:
            self.work_done_progress.end(LOAD_PROGRESS_TOKEN, types.WorkDoneProgressEnd(
                message=f"failed: {error}" if error else "model ready"))
        if error:
            self.show_error(f"codestral-ls: {error}")
            self.status("error", error)
            return
        if (engine := self.worker.engine) is not None:
            log.info("model ready: %s on %s", engine.loaded.source, engine.loaded.device)
        self.status("ready", "model ready")
        if self.recent:  # a document opened while the model loaded: warm the latest
            self.warm(self.recent[-1], None)

    def apply_settings(self, raw: Any) -> None:
        # Options that run code, load files or send data are refused from the editor (server/options.py).
        options, problems = parse_client_options(raw, self.options)
        options, _ = parse_options(self.cli_raw, options)
        for p in problems:
            self.show_error(f"codestral-ls settings: {p}", kind=types.MessageType.Warning)
        reload = self.worker is not None and model_changed(self.options, options)
        self.options = options
        if reload:
            log.info("model options changed: reloading")
            self.start_engine()
        elif self.completer is not None:
            self.completer.options = options

    def notify(self, feature: str, method: str, params: dict[str, Any]) -> None:
        """Send one of our notifications, only to a client that opted in to `feature`."""
        if self.client_features.get(feature) is True:
            self.protocol.notify(method, params)

    def status(self, kind: str, message: str, latency_ms: float | None = None) -> None:
        self.notify("status", STATUS_NOTIFICATION, {"kind": kind, "message": message, "latencyMs": latency_ms})

    def warm(self, uri: str, position: types.Position | None) -> None:
        """Prefill the prompt at `position` (None: the end of the document) while the user is not typing."""
        doc = self.open_document(uri)
        if doc is None or self.completer is None:
            return
        if position is not None and not 0 <= position.line < doc.line_count():
            return
        text = doc.model_text()
        offset = len(text.rstrip()) if position is None else doc.offset_at_position(position)
        try:
            self.completer.warm(Document(uri, text, doc.language_id or ""), offset)
        except Exception:  # warm-up is a hint: it never fails anything
            log.exception("warm-up failed")

    def warm_after_pause(self, uri: str, position: types.Position | None) -> None:
        """Warm `position` (None: the end) once the document has been left alone for PAUSE_S. A
        document just opened is usually asked about (or focused) at once, somewhere else than its
        end: warming it at once would make that request wait behind a chunk of a prompt nobody asked."""
        self.cancel_pause(uri)
        if self.event_loop is None:
            self.warm(uri, position)
            return
        self._pauses[uri] = self.event_loop.call_later(PAUSE_S, self.paused, uri, position, time.monotonic())

    def cancel_pause(self, uri: str) -> None:
        old = self._pauses.pop(uri, None)
        if old is not None:
            old.cancel()

    def paused(self, uri: str, position: types.Position | None, since: float) -> None:
        """An edit at `position` (None: opened) with no request since: the user paused there."""
        self._pauses.pop(uri, None)
        if self._asked.get(uri, 0.0) < since:
            self.warm(uri, position)

    def show_error(self, message: str, kind: types.MessageType = types.MessageType.Error) -> None:
        log.error("%s", message)
        if message not in self._errors_shown:  # once per distinct message, not per keystroke
            if len(self._errors_shown) >= 256:  # bounded: messages can differ per request
                self._errors_shown.clear()
            self._errors_shown.add(message)
            self.window_show_message(types.ShowMessageParams(type=kind, message=message))

    def report_server_error(self, error: Exception, source: Any) -> None:
        if answer_unreadable_frame(self.protocol, error):
            return
        log.error("protocol error: %s: %s", type(error).__name__, error)  # never the message text

    # -- documents --------------------------------------------------------------------------

    def open_document(self, uri: str) -> LspTextDocument | None:
        """The open document at `uri` (percent-encoded or not), or None; never a file from disk."""
        return adopt(self.workspace).open_document(uri)

    def document(self, uri: str, position: types.Position) -> tuple[Document, int]:
        """The document and the cursor offset, validated: bad params are a clear error.

        Costs one line index per text version and one line's encoding, not the whole text per
        request; a character past the end of its line means the line's end (LSP).
        """
        doc = self.open_document(uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"document {uri} is not open (send textDocument/didOpen first)")
        if position.line < 0 or position.character < 0:
            raise JsonRpcInvalidParams(f"position {position.line}:{position.character} is negative")
        lines = doc.line_count()
        if position.line >= lines:
            raise JsonRpcInvalidParams(f"line {position.line} is past the end of {uri} ({lines} lines)")
        return Document(uri, doc.model_text(), doc.language_id or ""), doc.offset_at_position(position)

    def other_documents(self, uri: str) -> list[Document]:
        out = []
        for other in reversed(self.recent):
            doc = self.open_document(other)
            if other != uri and doc is not None:
                out.append(Document(other, doc.model_text(), doc.language_id or ""))
        return out

    def touched(self, uri: str) -> None:
        if uri in self.recent:
            self.recent.remove(uri)
        self.recent.append(uri)
        del self.recent[:-16]

    async def suggest(self, uri: str, position: types.Position) -> Suggestion | None:
        doc, offset = self.document(uri, position)
        self._asked[uri] = time.monotonic()
        if self.completer is None:
            self.start_engine()
        assert self.completer is not None
        version = getattr(self.open_document(uri), "version", None)

        def grown(s: Suggestion) -> None:  # the rest of a budget-cut block is decoded: ask again
            self.notify("suggestionUpdates", SUGGESTION_UPDATED, {
                "textDocument": {"uri": uri, "version": version},
                "position": {"line": position.line, "character": position.character}})

        self.status("running", "completing")
        try:
            s = await self.completer.complete(doc, offset, on_grow=grown)
            if s is None:
                self.status("declined", self.completer.declined or "no suggestion")
            else:
                self.status("answered", s.source, s.latency_ms)
            return s
        except Cancelled:
            self.stats.cancelled += 1
            return None  # superseded by a newer request for this document
        except EngineError as exc:
            self.stats.errors += 1
            self.show_error(f"codestral-ls: {exc}")
            raise JsonRpcInternalError(f"codestral-ls: {exc}") from None
        except (asyncio.CancelledError, JsonRpcInvalidParams):
            raise
        except Exception as exc:  # an engine fault fails this request, never the server
            self.stats.errors += 1
            log.exception("completion failed")
            self.show_error(f"codestral-ls: completion failed: {type(exc).__name__}: {exc}")
            raise JsonRpcInternalError(f"completion failed: {type(exc).__name__}: {exc}") from None


def create_server(options: Options, cli_raw: dict[str, Any] | None = None) -> CodestralServer:
    server = CodestralServer(options, cli_raw)

    @server.feature(types.INITIALIZE)
    def initialize(ls: CodestralServer, params: types.InitializeParams) -> None:
        ls.event_loop = asyncio.get_running_loop()
        experimental = params.capabilities.experimental
        features = experimental.get("codestral") if isinstance(experimental, dict) else None
        ls.client_features = features if isinstance(features, dict) else {}
        folders = [f.uri for f in params.workspace_folders or []]
        ls.roots = Workspace.of(folders or ([params.root_uri] if params.root_uri else []))
        ls.apply_settings(params.initialization_options)

    @server.feature(types.INITIALIZED)
    def initialized(ls: CodestralServer, params: types.InitializedParams) -> None:
        ls.start_engine()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: CodestralServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.touched(params.text_document.uri)
        ls.warm_after_pause(params.text_document.uri, None)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: CodestralServer, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        ls.touched(uri)
        change = params.content_changes[-1] if params.content_changes else None
        if ls.completer is not None:  # where the user edits: context for the other files (server/retrieval/)
            ls.completer.retriever.edits.edited(
                uri, change.range.start.line if isinstance(change, types.TextDocumentContentChangePartial) else None)
        if isinstance(change, types.TextDocumentContentChangePartial) and ls.event_loop is not None:
            # Where the edit ended: the start of the range plus what was inserted.
            lines = change.text.split("\n")
            end = types.Position(line=change.range.start.line + len(lines) - 1,
                                 character=(change.range.start.character if len(lines) == 1 else 0)
                                 + _units(lines[-1], ls))
            ls.warm_after_pause(uri, end)

    @server.feature(DID_FOCUS)
    def did_focus(ls: CodestralServer, params: Any) -> None:
        uri = _get(_get(params, "textDocument"), "uri")
        pos = _get(params, "position")
        line, character = _get(pos, "line"), _get(pos, "character")
        if isinstance(uri, str) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                        for v in (line, character)):
            ls.cancel_pause(uri)  # the cursor is here now: not where the document was opened or edited
            ls.warm(uri, types.Position(line=line, character=character))

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: CodestralServer, params: types.DidCloseTextDocumentParams) -> None:
        uri = params.text_document.uri
        if uri in ls.recent:
            ls.recent.remove(uri)
        if ls.completer:
            ls.completer.forget(uri)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: CodestralServer, params: types.InlineCompletionParams
                                ) -> types.InlineCompletionList:
        s = await ls.suggest(params.text_document.uri, params.position)
        if s is None:
            return types.InlineCompletionList(items=[])
        # A range only where the item replaces text (auto-closed brackets after the cursor): with one,
        # Neovim draws the ghost text over the code after the cursor. Our VS Code client adds the
        # empty range VS Code needs (it would otherwise replace the word before the cursor).
        doc = ls.open_document(params.text_document.uri) if s.replace_after or s.alternatives else None
        items = []
        for c in [s, *s.alternatives]:  # the best first; the others distinct, for clients that cycle
            replaced = doc.source[c.offset:c.offset + c.replace_after] if c.replace_after and doc else ""
            rng = None
            if replaced and "\n" not in replaced and "\r" not in replaced:
                end = types.Position(line=params.position.line,
                                     character=params.position.character + _units(replaced, ls))
                rng = types.Range(start=params.position, end=end)
            items.append(types.InlineCompletionItem(
                insert_text=c.text, range=rng,
                command=types.Command(title="codestral: accepted", command=ACCEPT_COMMAND, arguments=[c.id])))
        return types.InlineCompletionList(items=items)

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]))
    async def completion(ls: CodestralServer, params: types.CompletionParams) -> types.CompletionList:
        s = await ls.suggest(params.text_document.uri, params.position)
        if s is None:
            return types.CompletionList(is_incomplete=True, items=[])
        # Clients filter items by the word before the cursor: replace that word so it matches.
        doc = ls.open_document(params.text_document.uri)  # closed meanwhile: no word to replace
        word = _word_before(doc.source[max(0, s.offset - 200):s.offset] if doc else "")
        start = types.Position(line=params.position.line,
                               character=max(0, params.position.character - _units(word, ls)))
        first_line = s.text.split("\n", 1)[0]
        return types.CompletionList(is_incomplete=True, items=[types.CompletionItem(
            label=(word + first_line).strip()[:80] or s.text.strip()[:80],
            kind=types.CompletionItemKind.Snippet,
            detail="codestral-ls",
            documentation=types.MarkupContent(kind=types.MarkupKind.Markdown, value=f"```\n{word}{s.text}\n```"),
            filter_text=word + s.text,
            sort_text="0",
            preselect=True,
            text_edit=types.TextEdit(range=types.Range(start=start, end=params.position), new_text=word + s.text),
            insert_text_format=types.InsertTextFormat.PlainText,
            command=types.Command(title="codestral: accepted", command=ACCEPT_COMMAND, arguments=[s.id]),
        )])

    @server.command(ACCEPT_COMMAND)
    def accept(ls: CodestralServer, *arguments: Any) -> None:
        if ls.completer and arguments:  # the suggestion id; a client sending none gets no error
            ls.completer.accepted(str(arguments[0]))

    @server.feature(PARTIAL_ACCEPT_NOTIFICATION)
    def partially_accept(ls: CodestralServer, params: Any) -> None:
        sid = getattr(params, "id", None) or (params.get("id") if isinstance(params, dict) else None)
        length = getattr(params, "acceptedLength", None)
        if ls.completer and sid is not None and isinstance(length, int | float | None):
            ls.completer.accepted(str(sid), int(length or 0))

    @server.feature(STATS_REQUEST)
    def stats(ls: CodestralServer, params: Any) -> dict[str, Any]:
        snap = ls.stats.snapshot()
        snap.pop("shown", None)
        if ls.completer:
            snap["typed_through_entries"] = len(ls.completer.typed._entries)
            snap["speed"] = ls.completer.speed.snapshot()
        if ls.worker is not None and hasattr(ls.worker, "prefetches"):
            snap["prefetches"] = dict(ls.worker.prefetches)
        if ls.worker and ls.worker.engine is not None:
            engine = ls.worker.engine
            snap["model"] = {"source": engine.loaded.source, "device": engine.loaded.device,
                             "dtype": engine.loaded.dtype, "quantize": engine.loaded.quantize,
                             "fim": engine.encoder.profile.name}
            # `oversized`: times one entry alone was over the budget (kept, never evicted: see kvcache.py).
            snap["kv_cache"] = {"entries": len(engine.store.entries), "bytes": engine.store.total_bytes(),
                                "budget_bytes": engine.store.budget_bytes, "oversized": engine.store.oversized}
        elif ls.worker and ls.worker.load_error:
            snap["model"] = {"error": ls.worker.load_error}
        return snap

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: CodestralServer, params: types.DidChangeConfigurationParams) -> None:
        ls.apply_settings(params.settings)

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: CodestralServer, params: Any) -> None:
        if ls.worker:
            ls.worker.stop()

    return server


def _get(obj: Any, key: str) -> Any:
    """A field of notification params, which pygls hands over as an object or a dict."""
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _word_before(text: str) -> str:
    i = len(text)
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"):
        i -= 1
    return text[i:]


def _units(word: str, ls: CodestralServer) -> int:
    """Length of `word` in the negotiated position encoding."""
    enc = ls.workspace.position_encoding
    if enc == types.PositionEncodingKind.Utf8:
        return len(word.encode("utf-8"))
    if enc == types.PositionEncodingKind.Utf32:
        return len(word)
    return len(word.encode("utf-16-le")) // 2
