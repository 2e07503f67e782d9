"""The server's state between messages: `CodestralServer`.

It holds the open documents (pygls' workspace, server/documents.py), the backend that answers FIM
requests and the `Completer` around it, the warm-up timers, and what the client opted in to. The
handlers in server/lsp.py each call one of its methods. `place` reads the document and the
cursor once per request; `suggest` runs the pipeline and maps its failures to LSP errors.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.serving.backend import Backend
from codestral_ls.server import __version__, warmup
from codestral_ls.server.documents import LspTextDocument, adopt
from codestral_ls.server.options import Options, in_force, model_changed, parse_client_options, parse_options
from codestral_ls.server.pipeline import Completer, Document, Suggestion
from codestral_ls.server.privacy import refused
from codestral_ls.server.protocol import AnsweringProtocol, answer_unreadable_frame
from codestral_ls.server.retrieval import Workspace
from codestral_ls.server.stats import Stats
from lsprotocol import types
from pygls.exceptions import JsonRpcInternalError, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

log = logging.getLogger(__name__)

ACCEPT_COMMAND = "codestral.accept"
SUGGESTION_UPDATED = "codestral/suggestionUpdated"
STATUS_NOTIFICATION = "codestral/status"
PAUSE_S = 0.5  # after an edit, this long without a request: warm the prompt at the edit
LOAD_PROGRESS_TOKEN = "codestral-ls/model-load"
RECENT_DOCS = 16  # documents remembered as recently edited (context from other files)
MAX_ARRIVALS = 1024  # completion requests read but not yet handled


@dataclass(frozen=True)
class Arrival:
    """What a completion request was about when it arrived: its place (or why it has none) and its
    number among the requests for that document (the newest one wins)."""

    place: Place | None
    error: JsonRpcInvalidParams | None
    number: int


@dataclass(frozen=True)
class Place:
    """Where a request asks: the document's text, the cursor offset, and the position it really is
    at (a character past the end of its line is the line's end)."""

    doc: Document
    offset: int
    version: int | None
    position: types.Position


class CodestralServer(LanguageServer):
    def __init__(self, options: Options, cli_raw: dict[str, Any] | None = None,
                 notices: list[str] | None = None) -> None:
        super().__init__("codestral-ls", __version__, protocol_cls=AnsweringProtocol)
        self.options = options
        # The user's own options (config file, command line): editor and workspace settings may only
        # make them more private (server/options.py parse_client_options).
        self.user_options = options
        self.cli_raw = cli_raw or {}  # command-line flags win over client settings
        self.notices = list(notices or [])  # said at start up (a config file refused): shown once initialized
        self.stats = Stats()
        self.backend: Backend | None = None
        self.completer: Completer | None = None
        self.recent: list[str] = []  # URIs, most recently edited last
        self.event_loop: asyncio.AbstractEventLoop | None = None
        self.client_features: dict[str, Any] = {}  # the client's experimental.codestral opt-ins
        self.roots = Workspace()  # rootUri / workspace folders: the only folders files are read from
        self._errors_shown: set[str] = set()
        self._pauses: dict[str, asyncio.TimerHandle] = {}  # pending warm-up per document
        self._asked: dict[str, float] = {}  # last request time per document
        self._arrivals: dict[Any, Arrival] = {}  # by request id, until its handler runs
        self._newest: dict[str, int] = {}  # per document: the number of its newest completion request
        self._numbers = itertools.count(1)
        for method in (types.TEXT_DOCUMENT_INLINE_COMPLETION, types.TEXT_DOCUMENT_COMPLETION):
            self.protocol.on_arrival[method] = self.arrived

    # -- lifecycle --------------------------------------------------------------------------

    def initialize(self, params: types.InitializeParams) -> None:
        self.event_loop = asyncio.get_running_loop()
        experimental = params.capabilities.experimental
        features = experimental.get("codestral") if isinstance(experimental, dict) else None
        self.client_features = features if isinstance(features, dict) else {}
        folders = [f.uri for f in params.workspace_folders or []]
        self.roots = Workspace.of(folders or ([params.root_uri] if params.root_uri else []))
        self.apply_settings(params.initialization_options)

    def show_notices(self) -> None:
        """What went wrong before the editor could be told (the config file refused): window/showMessage,
        not only stderr, which most editors hide."""
        for notice in self.notices:
            self.show_error(f"codestral-ls: {notice}", kind=types.MessageType.Warning)
        self.notices = []

    def start_engine(self) -> None:
        from codestral_ls.server.backends import open_backend

        loop = asyncio.get_event_loop()
        if self.backend is not None:
            # A reload: the old engine stops between two tokens, but its thread may take a while to
            # leave a forward pass. Waiting for it here would freeze every request on the loop.
            loop.run_in_executor(None, self.backend.stop)
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

        self.backend = open_backend(self.options, progress=report,
                                    on_loaded=lambda: loop.call_soon_threadsafe(self._loaded, progress_ok))
        self.completer = Completer(self.backend, self.options, self.stats)
        self.completer.workspace = self.roots

    def _loaded(self, progress_ok: bool) -> None:
        assert self.backend is not None
        error = self.backend.load_error
        if progress_ok:
            self.work_done_progress.end(LOAD_PROGRESS_TOKEN, types.WorkDoneProgressEnd(
                message=f"failed: {error}" if error else "model ready"))
        if error:
            self.show_error(f"codestral-ls: {error}")
            self.status("error", error)
            return
        if (engine := self.backend.engine) is not None:
            log.info("model ready: %s on %s", engine.loaded.source, engine.loaded.device)
        self.status("ready", "model ready")
        if self.recent:  # a document opened while the model loaded: warm the latest
            self.warm(self.recent[-1], None)

    def apply_settings(self, raw: Any) -> None:
        # Options that run code, load files or send data are refused from the editor (server/options.py).
        options, problems = parse_client_options(raw, self.options, self.user_options)
        options, _ = parse_options(self.cli_raw, options)
        for p in problems:
            self.show_error(f"codestral-ls settings: {p}", kind=types.MessageType.Warning)
        reload = self.backend is not None and model_changed(self.options, options)
        self.options = options
        if reload:
            log.info("model options changed: reloading")
            self.start_engine()
        elif self.completer is not None:
            self.completer.options = options

    def stop(self) -> None:
        if self.backend:
            self.backend.stop()

    # -- messages to the client ---------------------------------------------------------------

    def notify(self, feature: str, method: str, params: dict[str, Any]) -> None:
        """Send one of our notifications, only to a client that opted in to `feature`."""
        if self.client_features.get(feature) is True:
            self.protocol.notify(method, params)

    def status(self, kind: str, message: str, latency_ms: float | None = None) -> None:
        self.notify("status", STATUS_NOTIFICATION, {"kind": kind, "message": message, "latencyMs": latency_ms})

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

    # -- documents ----------------------------------------------------------------------------

    def open_document(self, uri: str) -> LspTextDocument | None:
        """The open document at `uri` (percent-encoded or not), or None; never a file from disk."""
        return adopt(self.workspace).open_document(uri)

    def place(self, uri: str, position: types.Position) -> Place:
        """The document and the cursor of a request, validated: bad params are a clear error.

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
        offset = doc.offset_at_position(position)
        text = doc.model_text()
        column = units(text[doc.line_starts()[position.line]:offset], self)
        return Place(Document(uri, text, doc.language_id or ""), offset, doc.version,
                     types.Position(line=position.line, character=column))

    def others(self, uri: str) -> Iterator[Document]:
        """The other open documents, most recently edited first (read only when they are needed)."""
        for other in reversed(self.recent):
            doc = self.open_document(other)
            if other != uri and doc is not None:
                yield Document(other, doc.model_text(), doc.language_id or "")

    def touched(self, uri: str) -> None:
        if uri in self.recent:
            self.recent.remove(uri)
        self.recent.append(uri)
        del self.recent[:-RECENT_DOCS]

    def edited(self, uri: str, change: Any) -> None:
        """A didChange was applied: remember where (context for the other files), warm after a pause."""
        if self.open_document(uri) is None:
            return  # a change to a document never opened: nothing to remember it by
        self.touched(uri)
        partial = isinstance(change, types.TextDocumentContentChangePartial)
        if self.completer is not None:
            self.completer.edited(uri, change.range.start.line if partial else None)
        if partial and self.event_loop is not None:
            # Where the edit ended: the start of the range plus what was inserted.
            lines = change.text.split("\n")
            end = types.Position(line=change.range.start.line + len(lines) - 1,
                                 character=(change.range.start.character if len(lines) == 1 else 0)
                                 + units(lines[-1], self))
            self.warm_after_pause(uri, end)

    def closed(self, uri: str) -> None:
        if uri in self.recent:
            self.recent.remove(uri)
        self.cancel_pause(uri)
        self._asked.pop(uri, None)
        self._newest.pop(uri, None)
        if self.completer:
            self.completer.forget(uri)

    # -- warm-up ------------------------------------------------------------------------------

    def warm(self, uri: str, position: types.Position | None) -> None:
        """Prefill the prompt at `position` while the user is not typing, and the spines around it;
        None (a document just opened, the cursor unknown): the spines from the top, where an editor
        shows a file first."""
        doc = self.open_document(uri)
        if doc is None or self.completer is None or self.refused(uri, doc.language_id or ""):
            return
        if position is not None and not 0 <= position.line < doc.line_count():
            return
        text = doc.model_text()
        document = Document(uri, text, doc.language_id or "")
        try:
            if position is None:
                warmup.warm_spines(self.completer, document, 0)
            else:
                warmup.warm(self.completer, document, doc.offset_at_position(position))
        except Exception:  # warm-up is a hint: it never fails anything
            log.exception("warm-up failed")

    def focused(self, uri: str, position: types.Position) -> None:
        """The cursor came to rest here: not where the document was opened or edited."""
        self.cancel_pause(uri)
        self.warm(uri, position)

    def warm_after_pause(self, uri: str, position: types.Position | None) -> None:
        """Warm `position` (None: the end) once the document has been left alone for PAUSE_S. A
        document just opened is usually asked about (or focused) at once, somewhere else than its
        end: warming it at once would make that request wait behind a chunk of a prompt nobody asked."""
        self.cancel_pause(uri)
        if self.event_loop is None:
            self.warm(uri, position)
            return
        self._pauses[uri] = self.event_loop.call_later(PAUSE_S, self._paused, uri, position, time.monotonic())

    def cancel_pause(self, uri: str) -> None:
        old = self._pauses.pop(uri, None)
        if old is not None:
            old.cancel()

    def _paused(self, uri: str, position: types.Position | None, since: float) -> None:
        """An edit at `position` (None: opened) with no request since: the user paused there."""
        self._pauses.pop(uri, None)
        if self._asked.get(uri, 0.0) < since:
            self.warm(uri, position)

    # -- requests -----------------------------------------------------------------------------

    def arrived(self, msg_id: Any, params: Any) -> None:
        """A completion request arrived (before its handler runs, and before the messages read after it):
        read its place now, at the document version it was sent for, and number it. A request that a
        newer one for its document overtakes before its handler starts costs nothing more."""
        try:
            uri, position = params.text_document.uri, params.position
            place, error = self.place(uri, position), None
        except JsonRpcInvalidParams as exc:
            place, error = None, exc
        except Exception:  # malformed params: the handler answers them as it always did
            return
        number = next(self._numbers)
        self._newest[uri] = number
        self._arrivals[msg_id] = Arrival(place, error, number)
        while len(self._arrivals) > MAX_ARRIVALS:  # requests whose handler never ran (cancelled first)
            del self._arrivals[next(iter(self._arrivals))]

    def place_of(self, uri: str, position: types.Position) -> Place | None:
        """The request's place as it arrived; None when a newer request for the document came since."""
        arrival = self._arrivals.pop(self.protocol.msg_id, None)
        if arrival is None:  # not from the message stream (called directly)
            return self.place(uri, position)
        if arrival.error is not None:
            raise arrival.error
        if self._newest.get(uri) != arrival.number:
            self.stats.overtaken += 1
            return None
        return arrival.place

    def refused(self, uri: str, language_id: str) -> str:
        """Why nothing of this document may go to a backend (a secret file, a language turned off): "" if it may."""
        return refused(uri, language_id, self.options.secret_files, self.options.disabled_languages)

    async def suggest(self, place: Place) -> Suggestion | None:
        uri = place.doc.uri
        self._asked[uri] = time.monotonic()
        if why := self.refused(uri, place.doc.language_id):  # before the engine starts, whatever the backend
            self.status("declined", why)
            return None
        if self.completer is None:
            self.start_engine()
        assert self.completer is not None
        self.status("running", "completing")
        try:
            s = await self.completer.complete(place.doc, place.offset, self.others(uri))
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
        doc = self.open_document(uri)
        if s is not None and (doc is None or doc.version != place.version):
            return None  # the text changed while this was computed: its offsets point elsewhere now
        if s is not None and s.growing is not None:  # more to come: a grown block, or a second opinion
            s.growing.add_done_callback(lambda task: self._grown(task, place))
        skipped = self.completer.retriever.skipped  # a file too big to be (or get) context: say so
        if s is None or not s.text:
            self.status("declined", "; ".join(filter(None, (self.completer.declined or "no suggestion", skipped))))
            return None
        self.status("answered", "; ".join(filter(None, (s.source, skipped))), s.latency_ms)
        if s.source == "engine":
            warmup.warm_next_line(self.completer, place.doc, place.offset, s)  # accepted, then Enter: ready
        return s

    def _grown(self, task: asyncio.Task[Suggestion | None], place: Place) -> None:
        """A longer or a new suggestion is ready here (the rest of a budget-cut block, a second opinion
        that fits): tell an opted-in client to ask again (it is answered from the typed-through cache)."""
        if not task.cancelled() and task.exception() is None and (grown := task.result()) is not None:
            if self.completer is not None:  # the whole block accepted, then Enter
                warmup.warm_next_line(self.completer, place.doc, place.offset, grown)
            self.notify("suggestionUpdates", SUGGESTION_UPDATED, {
                "textDocument": {"uri": place.doc.uri, "version": place.version},
                "position": {"line": place.position.line, "character": place.position.character}})

    def accepted(self, suggestion_id: str, chars: int | None = None) -> None:
        if self.completer:
            self.completer.accepted(suggestion_id, chars)

    def stats_snapshot(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        snap.pop("shown", None)
        snap["options"] = in_force(self.options)
        if self.completer:
            snap["typed_through_entries"] = len(self.completer.typed)
            snap["speed"] = self.completer.speed.snapshot()
        if self.backend is not None and hasattr(self.backend, "prefetches"):
            snap["prefetches"] = dict(self.backend.prefetches)
            snap["spines"] = dict(self.backend.spine_warms)
        if self.backend and (engine := self.backend.engine) is not None:
            snap["prefill"] = {k: round(v, 1) for k, v in engine.prefilled.items()}
            snap["model"] = {"source": engine.loaded.source, "device": engine.loaded.device,
                             "dtype": engine.loaded.dtype, "quantize": engine.loaded.quantize,
                             "fim": engine.encoder.profile.name}
            snap["kv_cache"] = engine.store.summary()
        elif self.backend and self.backend.load_error:
            snap["model"] = {"error": self.backend.load_error}
        return snap


def units(text: str, ls: LanguageServer) -> int:
    """Length of `text` in the negotiated position encoding."""
    enc = ls.workspace.position_encoding
    if enc == types.PositionEncodingKind.Utf8:
        return len(text.encode("utf-8", "surrogatepass"))  # JSON may carry a lone surrogate
    if enc == types.PositionEncodingKind.Utf32:
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2
