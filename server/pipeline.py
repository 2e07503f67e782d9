"""The keystroke path, one straight line:

    document + cursor → typed-through cache? → context (anchored) → FimRequest → engine worker
    → postprocess + fit (second opinions) → Suggestion (+ alternatives: the next-best starts)

Used by the LSP handlers and by `codestral-ls complete`; knows nothing of LSP types.

What an editor shows first stays on screen until the user types, so the first answer at a place is
a finished suggestion: the whole line in single-line mode; in multi-line mode the lines decoded
when the latency budget runs out (at least one whole line) — and then the rest of the block is
decoded as a follow-up whose result `on_grow` announces (the LSP layer tells clients that opted
in). `warm` prefills the prompt of a place the user is about to type at, at the lowest priority.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.request import CancelToken, FimRequest, FimResult, StopRule
from codestral_ls.server.anchor import Anchors
from codestral_ls.server.context import build_context
from codestral_ls.server.cursor import Cursor, language_for, read_cursor
from codestral_ls.server.options import Options
from codestral_ls.server.postprocess import first_words, misfit, postprocess, replaced_after
from codestral_ls.server.privacy import shareable
from codestral_ls.server.retrieval import Retriever
from codestral_ls.server.speed import DeviceSpeed
from codestral_ls.server.stats import Stats
from codestral_ls.server.typed_cache import Shown, TypedThroughCache

if TYPE_CHECKING:
    from codestral_ls.engine.backend import Backend

log = logging.getLogger(__name__)
_ids = itertools.count(1)

# A request whose prompt needed at most this many new tokens found it cached (warm).
WARM_TOKENS = 2


@dataclass(frozen=True)
class Document:
    uri: str
    text: str
    language_id: str = ""


@dataclass
class Suggestion:
    id: str
    text: str  # inserted at the cursor
    line: int
    offset: int  # cursor offset in the document (characters)
    source: str  # "engine" or "typed-through"
    latency_ms: float
    result: FimResult | None = None
    replace_after: int = 0  # characters after the cursor that `text` replaces (auto-closed brackets)
    # Other distinct finished suggestions here, best first (the `candidates` option): clients cycle.
    alternatives: list[Suggestion] = dataclasses.field(default_factory=list)


@dataclass
class _Ask:
    """One place to complete at: the engine request and what judging its answer needs."""

    req: FimRequest
    cursor: Cursor


class Completer:
    def __init__(self, worker: Backend, options: Options, stats: Stats | None = None,
                 other_documents: Callable[[str], list[Document]] | None = None,
                 disabled_filters: frozenset[str] = frozenset()) -> None:
        self.worker = worker
        self.options = options
        self.stats = stats or Stats()
        self.anchors = Anchors()
        self.typed = TypedThroughCache(options.typed_cache_entries)
        self.other_documents = other_documents or (lambda uri: [])
        self.disabled_filters = disabled_filters
        self.speed = DeviceSpeed()
        self.declined = ""  # why the last request got no suggestion (shown by our clients)
        self._growing: dict[str, asyncio.Task[None]] = {}  # follow-up decode per document
        self.retriever = Retriever()  # context from other files; its workspace is set by the LSP layer

    async def complete(self, doc: Document, offset: int,
                       on_grow: Callable[[Suggestion], None] | None = None) -> Suggestion | None:
        """The suggestion at `offset`, or None (`declined` says why). Raises Cancelled when superseded.

        `on_grow` is called once if a multi-line suggestion cut by the latency budget is later
        decoded further: with the longer suggestion, which a new request here then answers at once.
        """
        t0 = time.perf_counter()
        self.stats.requests += 1
        self._stop_growing(doc.uri)
        language = language_for(doc.language_id, doc.uri)
        if language in self.options.disabled_languages:
            return self._empty(t0, f"completions are off for {language}")
        cursor = read_cursor(doc.text, offset, language, self.options.multiline)  # the one cursor analysis
        line = cursor.line

        rest = self.typed.lookup(doc.uri, cursor)
        if rest is not None:
            self.stats.typed_through_hits += 1
            return self._shown(Suggestion(self._new_id(), rest.text, line, offset, "typed-through", _ms(t0),
                                          replace_after=rest.replace_after), doc.uri, cursor)

        ready = self._ready()
        if ready:
            return self._empty(t0, ready)
        ask = self._ask(doc, cursor)
        if ask is None:
            return self._empty(t0, "no suggestion inside a word")
        suggestion, replace, result = await self._answer(ask)
        if not suggestion:
            return self._empty(t0, "the model had nothing that fits here")
        shown = self._shown(Suggestion(self._new_id(), suggestion, line, offset, "engine", _ms(t0), result,
                                       replace_after=replace), doc.uri, cursor)
        if self.options.candidates > 1:
            shown.alternatives = await self._alternatives(ask, shown)
        deadline = ask.req.stop.line_deadline
        if deadline is not None and result is not None and result.finish == "stop" and time.monotonic() >= deadline:
            # The budget ended the block early: decode the rest while the user reads the first lines.
            self._grow(doc.uri, ask, shown, on_grow)
        return shown

    def warm(self, doc: Document, offset: int) -> bool:
        """Prefill the prompt at `offset` while the user is not typing (preempted by any request).

        Returns whether warm-up work was queued. The next request there finds its prompt cached.
        """
        if self._ready():
            return False
        language = language_for(doc.language_id, doc.uri)
        if language in self.options.disabled_languages:
            return False
        ask = self._ask(doc, read_cursor(doc.text, offset, language, self.options.multiline))
        if ask is None:
            return False
        self.stats.warm_ups += 1
        self.worker.prefetch(dataclasses.replace(ask.req, stop=ask.req.stop.unbudgeted(), warm=True))
        return True

    # -- phases -----------------------------------------------------------------------------

    def _ask(self, doc: Document, cursor: Cursor) -> _Ask | None:
        """The engine request at the cursor (anchored prompt, windows sized to the device), or None."""
        o, mode = self.options, cursor.mode
        if mode == "none":
            return None
        if not self.speed.device:  # the local engine's device; unknown (a fallback target) for the others
            loaded = getattr(getattr(self.worker, "engine", None), "loaded", None)
            self.speed.device = str(getattr(loaded, "device", "") or "").split(":")[0]
        prefix_tokens, suffix_tokens = self.speed.windows(o.prefix_tokens, o.suffix_tokens, o.cold_target_ms)
        placement = self.anchors.place(doc.uri, doc.text, cursor.offset, lambda: build_context(
            cursor, self.worker.count_tokens, prefix_tokens, suffix_tokens))
        ctx = placement.ctx
        # A budget only shortens a block by whole lines; a single line is always finished.
        deadline = time.monotonic() + o.budget_ms / 1000 if o.budget_ms and mode == "multi" else None
        req = FimRequest(
            doc=doc.uri, prefix=ctx.prefix, suffix=ctx.suffix, forced_middle=placement.forced_middle,
            extra_files=self._extra_files(doc, cursor), max_tokens=o.max_tokens,
            path=self.retriever.workspace.relative(doc.uri), repo=self.retriever.workspace.name_of(doc.uri),
            stop=StopRule(single_line=mode == "single", max_lines=o.max_lines, block_indent=cursor.block_indent,
                          line_comment=cursor.line_comment, line_deadline=deadline),
        )
        return _Ask(req, cursor)

    async def _answer(self, ask: _Ask) -> tuple[str, int, FimResult | None]:
        """Ask the engine; a line that cannot fit the code after it is replaced by the next-best start.

        Returns the suggestion in the document's line ending, the number of characters after the
        cursor it replaces, and the engine's result.
        """
        req, avoid = ask.req, []
        while True:
            result = await self._engine(req)
            suggestion = postprocess(result.text, ask.cursor, self.disabled_filters)
            replace = replaced_after(suggestion, ask.cursor)
            # Only a finished line is judged (a cut one is the start of one, still decoding).
            why = misfit(suggestion, ask.cursor, replace, self.disabled_filters) if result.finish == "stop" else None
            if why is None:
                return ask.cursor.in_document(suggestion), replace, result
            # A line that cannot be right here: ask for the model's next-best start instead.
            log.debug("suggestion rejected (%s); asking for another", why)
            self.stats.rejected += 1
            if len(avoid) >= self.options.second_opinions or not getattr(self.worker, "steerable", False):
                return "", 0, result
            avoid.append(first_words(suggestion))
            req = dataclasses.replace(req, avoid=tuple(avoid), cancel=CancelToken())

    def _grow(self, uri: str, ask: _Ask, shown: Suggestion, on_grow: Callable[[Suggestion], None] | None) -> None:
        """Decode the rest of a budget-cut block; remember it and announce it if it says more."""
        req = dataclasses.replace(ask.req, stop=ask.req.stop.unbudgeted(), cancel=CancelToken())
        grown = dataclasses.replace(ask, req=req)

        async def follow_up() -> None:
            try:
                text, replace, result = await self._answer(grown)
            except (Cancelled, EngineError, asyncio.CancelledError):
                return  # the user typed (a newer request won) or the engine failed: nothing to add
            if not text or text == shown.text or not text.startswith(shown.text):
                return
            self.stats.grown += 1
            longer = self._shown(dataclasses.replace(shown, id=self._new_id(), text=text, result=result,
                                                     replace_after=replace), uri, ask.cursor)
            if on_grow is not None:
                on_grow(longer)

        task = asyncio.get_running_loop().create_task(follow_up())
        self._growing[uri] = task
        task.add_done_callback(lambda t: self._growing.pop(uri, None) if self._growing.get(uri) is t else None)

    def _stop_growing(self, uri: str) -> None:
        task = self._growing.pop(uri, None)
        if task is not None:
            task.cancel()

    async def _engine(self, req: FimRequest) -> FimResult:
        try:
            result = await asyncio.wrap_future(self.worker.submit(req))
        except asyncio.CancelledError:  # $/cancelRequest: stop the engine (or close the remote stream) too
            req.cancel.cancel()
            raise
        self.stats.add_engine(result)
        if result.prompt_tokens and result.prefilled_tokens <= WARM_TOKENS:
            self.stats.warm_prompts += 1
        self.speed.observe(result)
        return result

    def _shown(self, s: Suggestion, uri: str, cursor: Cursor) -> Suggestion:
        self.typed.remember(Shown.at(uri, cursor, s.text, s.replace_after))
        self.declined = ""
        self.stats.suggestions += 1
        self.stats.latencies_ms.append(s.latency_ms)
        self.stats.shown[s.id] = len(s.text)
        if len(self.stats.shown) > 1000:
            self.stats.shown.pop(next(iter(self.stats.shown)))
        return s

    def _empty(self, t0: float, why: str) -> None:
        self.declined = why
        self.stats.empty += 1
        self.stats.latencies_ms.append(_ms(t0))
        return None

    def _ready(self) -> str:
        """Why no request can run now ("" when one can). Never waits: a loading model answers empty."""
        if not self.worker.loaded.is_set():
            return "the model is still loading"
        if self.worker.load_error is not None:
            raise EngineError(self.worker.load_error)
        return ""

    def _extra_files(self, doc: Document, cursor: Cursor) -> tuple[tuple[str, str], ...]:
        """What the cursor needs from other files (server/retrieval.py), the same across keystrokes
        in a block. Credentials and turned-off languages are never sent (server/privacy.py)."""
        o = self.options
        others = [d for d in self.other_documents(doc.uri)
                  if shareable(d.uri, d.language_id, o.secret_files, o.disabled_languages)]
        return self.retriever.select(doc.uri, doc.text, cursor.offset, cursor.language, others, o.retrieval,
                                     self.speed.extra_tokens(o.extra_context_tokens, self._model_extra_tokens()),
                                     o.secret_files,
                                     o.disabled_languages)

    def _model_extra_tokens(self) -> int | None:
        """The loaded model's own default for context from other files (engine/catalog.py), if any."""
        loaded = getattr(getattr(self.worker, "engine", None), "loaded", None)
        return getattr(loaded, "extra_context_tokens", None)

    async def _alternatives(self, ask: _Ask, first: Suggestion) -> list[Suggestion]:
        """Up to `candidates - 1` more suggestions, each finished, fitting and distinct: the model's
        next-best starts (`FimRequest.avoid`), best first. Never for a backend that cannot steer."""
        if not getattr(self.worker, "steerable", False):
            return []
        o, out = self.options, []
        seen = {first.text.strip()}
        avoid = [first_words(first.text)]
        for _ in range(o.candidates - 1 + o.second_opinions):
            if len(out) >= o.candidates - 1:
                break
            stop = ask.req.stop
            if stop.line_deadline is not None:  # each candidate gets its own budget
                stop = dataclasses.replace(stop, line_deadline=time.monotonic() + o.budget_ms / 1000)
            req = dataclasses.replace(ask.req, avoid=tuple(avoid), stop=stop, background=False, cancel=CancelToken())
            result = await self._engine(req)
            text = postprocess(result.text, ask.cursor, self.disabled_filters)
            replace = replaced_after(text, ask.cursor)
            if not first_words(text) or first_words(text) in avoid:
                break  # nothing else the model would start with
            avoid.append(first_words(text))
            if result.finish != "stop" or text.strip() in seen or misfit(text, ask.cursor, replace,
                                                                         self.disabled_filters):
                continue
            seen.add(text.strip())
            alt = dataclasses.replace(first, id=self._new_id(), text=ask.cursor.in_document(text), result=result,
                                      replace_after=replace, alternatives=[])
            self.stats.shown[alt.id] = len(alt.text)  # for acceptance feedback; typing through is the first's
            out.append(alt)
        return out

    def accepted(self, suggestion_id: str, chars: int | None = None) -> None:
        """Acceptance feedback: whole (`chars` None) or partial."""
        length = self.stats.shown.get(suggestion_id)
        if chars is None:
            self.stats.accepted += 1
            self.stats.accepted_chars += length or 0
        else:
            self.stats.partially_accepted += 1
            self.stats.accepted_chars += max(0, chars)

    def forget(self, uri: str) -> None:
        self._stop_growing(uri)
        self.retriever.forget(uri)
        self.anchors.forget(uri)
        self.typed.forget(uri)

    @staticmethod
    def _new_id() -> str:
        return f"c{next(_ids)}"


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


__all__ = ["Cancelled", "Completer", "Document", "Suggestion"]
