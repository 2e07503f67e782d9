"""The keystroke path, one method read top to bottom (`Completer.complete`):

    document + cursor → typed through what is on screen? → the prompt (anchored windows + other
    files) → engine → post-process; a misfit asks for the next-best start → more candidates →
    the rest of a budget-cut block → Suggestion

Used by the LSP handlers and by `codestral-ls complete`; knows nothing of LSP types.

What an editor shows first stays on screen until the user types, so the first answer at a place is
a finished suggestion: the whole line in single-line mode; in multi-line mode the lines decoded
when the latency budget runs out (at least one whole line, the engine's finish "budget") — and
then the rest of the block is decoded as a follow-up, `Suggestion.growing`, which the LSP layer
announces to clients that opted in. An answer that cannot fit the code after it is replaced by the
model's next-best start (a second opinion) while that costs less than the first answer did; past
that, the answer says nothing fits yet and the next-best starts are looked for after it.

Where the whole cold prompt would not be ready while a person reads (a CPU), a place nobody prefilled
is answered first from its nearest lines (the engine's quick window) and the whole prompt's answer
follows. What follows an answer is server/followups.py; warm-up (prompts prefilled before they are
asked for) is server/warmup.py; both build on `Completer.request` and `Completer.ask`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any, Literal

from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.request import CancelToken, FimRequest, FimResult, StopRule
from codestral_ls.engine.serving.backend import Backend
from codestral_ls.server import followups
from codestral_ls.server.anchor import Anchors, Placement
from codestral_ls.server.context import Spines, build_context
from codestral_ls.server.cursor import Cursor, read_cursor
from codestral_ls.server.languages import language_for
from codestral_ls.server.options import Options
from codestral_ls.server.postprocess import first_words, misfit, postprocess, replaced_after
from codestral_ls.server.privacy import refused
from codestral_ls.server.retrieval import Retriever, Workspace
from codestral_ls.server.speed import DeviceSpeed
from codestral_ls.server.stats import Stats, Timings
from codestral_ls.server.suggestion import FINISHED, Document, Fit, Suggestion
from codestral_ls.server.typed_cache import Shown, TypedThroughCache

log = logging.getLogger(__name__)
_ids = itertools.count(1)

# A request whose prompt needed at most this many new tokens found it cached (warm).
WARM_TOKENS = 2
NOTHING_FITS = "the model had nothing that fits here"
NOTHING_FITS_YET = "nothing that fits yet: looking for another"
MIDDLE_ROOM = 128  # tokens a sequence keeps for what is typed after the window's anchor
Verdict = Literal["fits", "again", "whole", "later", "decline"]  # what becomes of an answer (`Completer._judge`)


class Completer:
    def __init__(self, backend: Backend, options: Options, stats: Stats | None = None,
                 disabled_filters: frozenset[str] = frozenset()) -> None:
        self.backend = backend
        self.options = options
        self.stats = stats or Stats()
        self.anchors = Anchors()
        self.typed = TypedThroughCache(options.typed_cache_entries)
        self.disabled_filters = disabled_filters
        self.speed = DeviceSpeed()
        self.retriever = Retriever()  # context from other files
        self.declined = ""  # why the last request got no suggestion (shown by our clients)
        self._growing: dict[str, asyncio.Task[Suggestion | None]] = {}  # follow-up decode per document
        self.refining: dict[str, str] = {}  # quick answers whose whole-prompt answer follows: id -> uri

    @property
    def workspace(self) -> Workspace:
        return self.retriever.workspace

    @workspace.setter
    def workspace(self, roots: Workspace) -> None:
        self.retriever.workspace = roots

    async def complete(self, doc: Document, offset: int, others: Iterable[Document] = ()) -> Suggestion | None:
        """The suggestion at `offset`, or None (`declined` says why). Raises Cancelled when superseded.

        `others` are the other open documents, read only when context from other files is wanted.
        """
        t0, timing = time.perf_counter(), Timings()
        self.stats.requests += 1
        self.stop_growing(doc.uri)
        language = language_for(doc.language_id, doc.uri)
        if why := self.refused(doc):
            return self._declined(t0, why, timing)  # a secret file, a language turned off: nothing is sent
        cursor = read_cursor(doc.text, offset, language, self.options.multiline)  # the one cursor analysis

        # Typing through the suggestion on screen: its rest, no model.
        if (rest := self.typed.lookup(doc.uri, cursor)) is not None:
            self.stats.typed_through_hits += 1
            self._timed(timing, t0, "typed-through", cursor_ms=_ms(t0))
            return self.show(Suggestion(self.new_id(), rest.text, cursor.line, offset, "typed-through", _ms(t0),
                                        replace_after=rest.replace_after), doc.uri, cursor)
        if why := self.not_ready():
            return self._declined(t0, why, timing)

        # The prompt: anchored windows around the cursor, and what it needs from other files.
        timing.cursor_ms = _ms(t0)
        req = self.request(doc, cursor, others) if cursor.mode != "none" else None  # (the mode parses)
        timing.prompt_ms = _ms(t0) - timing.cursor_ms
        if req is None:
            return self._declined(t0, "no suggestion inside a word", timing)

        # The engine, until an answer fits the code after it (`_judge`): a misfit asks for the model's
        # next-best start, here while that costs less than the first answer did, else after the answer.
        avoid: list[str] = []  # the first words of the answers that did not fit
        first_ms = 0.0
        while True:
            result = await self.ask(req, timing)
            first_ms = first_ms or result.elapsed_ms
            fit = self.fit(result, cursor, timing)
            verdict = self._judge(fit, result, timing, avoid, first_ms)
            if verdict == "whole":  # a quick answer with nothing to show: the whole prompt, now
                req, first_ms = dataclasses.replace(req, quick_tokens=0, cancel=CancelToken()), 0.0
            elif verdict == "again":
                req = dataclasses.replace(req, avoid=tuple(avoid), cancel=CancelToken())
            else:
                break
        if verdict == "later":  # the answer says so now; the client hears of the one that fits
            later = followups.second_opinions(self, doc.uri, req, cursor, avoid, offset)
            self._declined(t0, NOTHING_FITS_YET, timing)
            return Suggestion(self.new_id(), "", cursor.line, offset, "pending", _ms(t0), growing=later)
        if verdict == "decline" or not fit.text:
            return self._declined(t0, NOTHING_FITS, timing)
        self.stats.second_opinions_found += timing.engine_calls > 1
        shown = self.show(Suggestion(self.new_id(), cursor.in_document(fit.text), cursor.line, offset, "engine",
                                     _ms(t0), result, replace_after=fit.replace), doc.uri, cursor)
        self._timed(timing, t0, "engine")

        # More candidates: the model's next-best starts, each finished, fitting and distinct.
        if self.options.candidates > 1 and self.backend.steerable:
            shown.alternatives = await followups.alternatives(self, req, cursor, shown, [*avoid, first_words(fit.text)])

        # What follows while the user reads: the whole prompt's answer, or the rest of the block.
        shown.growing = followups.follow_up(self, doc.uri, req, result, cursor, shown)
        return shown

    # -- the steps ----------------------------------------------------------------------------

    def request(self, doc: Document, cursor: Cursor, others: Iterable[Document] = (),
                remember: bool = True) -> FimRequest | None:
        """The engine request at the cursor (anchored prompt, windows sized to the device), or None.
        `remember`: a fresh prompt becomes the document's anchor."""
        if cursor.mode == "none":
            return None
        o = self.options
        placement = self.anchors.lookup(doc.uri, doc.text, cursor.offset)
        if placement is None:
            prefix_tokens, suffix_tokens, spines = self.windows()
            ctx = build_context(cursor, self.backend.counter(), prefix_tokens, suffix_tokens, spines)
            placement = (self.anchors.remember(doc.uri, doc.text, cursor.offset, ctx) if remember
                         else Placement(ctx, "", anchored=False))
        return FimRequest(
            doc=doc.uri, prefix=placement.ctx.prefix, suffix=placement.ctx.suffix,
            forced_middle=placement.forced_middle, extra_files=self.extra_files(doc, cursor, others),
            max_tokens=o.max_tokens, path=self.workspace.relative(doc.uri), repo=self.workspace.name_of(doc.uri),
            stop=self.stop_rule(cursor), short_start=placement.ctx.short_start,
            quick_tokens=self.speed.quick_tokens() if o.quick_first else 0, quick_above=self.speed.quick_above())

    def windows(self) -> tuple[int, int, Spines | None]:
        """Token budgets of the prefix and suffix windows (sized to the device), and the spines."""
        o = self.options
        self.speed.device = self.backend.device
        prefix_tokens, suffix_tokens = self.speed.windows(o.prefix_tokens, o.suffix_tokens, o.cold_target_ms,
                                                          self._context_limit())
        limit = self._context_limit()
        spines = None
        if self.backend.spines and limit is not None:
            spines = Spines.sized(prefix_tokens, limit - suffix_tokens - MIDDLE_ROOM)
        return prefix_tokens, suffix_tokens, spines

    def extra_files(self, doc: Document, cursor: Cursor,
                    others: Iterable[Document] = ()) -> tuple[tuple[str, str], ...]:
        """What the cursor needs from other files (server/retrieval/), none where the device has no room."""
        o = self.options
        tokens = self._extra_tokens()
        if not tokens:
            return ()
        return self.retriever.select(doc.uri, doc.text, cursor.offset, cursor.language, others, o.retrieval,
                                     tokens, o.secret_files, o.disabled_languages)

    def stop_rule(self, cursor: Cursor) -> StopRule:
        """Where a suggestion ends. A budget only shortens a block by whole lines; a single line is always
        finished."""
        o, multi = self.options, cursor.mode == "multi"
        return StopRule(single_line=not multi, max_lines=o.max_lines, block_indent=cursor.block_indent,
                        line_comment=cursor.line_comment,
                        line_deadline=time.monotonic() + o.budget_ms / 1000 if o.budget_ms and multi else None)

    def _context_limit(self) -> int | None:
        """Prompt tokens one sequence of the engine can hold, leaving room for the suggestion."""
        limit = self.backend.context_tokens
        return None if limit is None else limit - self.options.max_tokens - self._extra_tokens()

    def _extra_tokens(self) -> int:
        """Tokens of context from other files: the user's, else the model's measured default
        (engine/models/catalog.py), else what the device leaves (server/speed.py)."""
        engine = self.backend.engine
        model_default = engine.loaded.extra_context_tokens if engine is not None else None
        return self.speed.extra_tokens(self.options.extra_context_tokens, model_default)

    async def ask(self, req: FimRequest, timing: Timings | None = None) -> FimResult:
        """One engine call; its time joins `timing` (the request's first answer and second opinions)."""
        try:
            result = await asyncio.wrap_future(self.backend.submit(req))
        except asyncio.CancelledError:  # $/cancelRequest: stop the engine (or close the remote stream) too
            req.cancel.cancel()
            raise
        self.stats.add_engine(result)
        if result.prompt_tokens and result.prefilled_tokens <= WARM_TOKENS:
            self.stats.warm_prompts += 1
        self.speed.observe(result)
        if timing is not None:
            timing.add_engine(result)
        return result

    def fit(self, result: FimResult, cursor: Cursor, timing: Timings | None = None) -> Fit:
        """The engine's answer as it would be shown, and whether it fits the code after the cursor."""
        t0 = time.perf_counter()
        text = postprocess(result.text, cursor, self.disabled_filters)
        replace = replaced_after(text, cursor)
        why = misfit(text, cursor, replace, self.disabled_filters) if result.finish in FINISHED else None
        if timing is not None:
            timing.post_ms += _ms(t0)
        return Fit(text, replace, why)

    def _judge(self, fit: Fit, result: FimResult, timing: Timings, avoid: list[str], first_ms: float) -> Verdict:
        """What becomes of an answer: shown ("fits"); a quick answer with nothing to show: the whole
        prompt now ("whole"); or, where it does not fit, the model's next-best start asked for now
        ("again": its first words join `avoid`) or after the answer ("later": now would more than double
        the wait of the first answer, `first_ms`); or nothing ("decline": out of second opinions, or a
        backend that cannot be steered)."""
        if result.window == "quick" and (fit.misfit is not None or not fit.text):
            self.stats.quick_missed += 1  # the nearest lines were not enough (the user is waiting anyway)
            return "whole"
        if fit.misfit is None:
            return "fits"
        log.debug("suggestion rejected (%s); asking for another", fit.misfit)
        self.stats.rejected += 1
        if len(avoid) >= self.options.second_opinions or not self.backend.steerable:
            return "decline"
        avoid.append(first_words(fit.text))
        next_ms = result.elapsed_ms - result.prefill_ms  # a second opinion re-decodes; its prompt is cached
        return "later" if timing.prefill_ms + timing.decode_ms + next_ms >= 2 * first_ms > 0 else "again"

    def follow(self, uri: str, work: Any) -> asyncio.Task[Suggestion | None]:
        """Run `work` after the answer, one per document: a newer request there cancels it."""
        task = asyncio.get_running_loop().create_task(work)
        self._growing[uri] = task
        task.add_done_callback(lambda t: self._growing.pop(uri, None) if self._growing.get(uri) is t else None)
        return task

    def stop_growing(self, uri: str) -> None:
        task = self._growing.pop(uri, None)
        if task is not None:
            task.cancel()

    def show(self, s: Suggestion, uri: str, cursor: Cursor, typed: bool = True) -> Suggestion:
        if typed:  # typing through follows the first suggestion only
            self.typed.remember(Shown.at(uri, cursor, s.text, s.replace_after))
        self.declined = ""
        self.stats.suggestions += typed
        if typed:
            self.stats.latencies_ms.append(s.latency_ms)
        self.stats.remember_shown(s.id, len(s.text))
        return s

    def _declined(self, t0: float, why: str, timing: Timings | None = None) -> None:
        self.declined = why
        self.stats.empty += 1
        self.stats.latencies_ms.append(_ms(t0))
        if timing is not None:
            self._timed(timing, t0, "declined")
        return None

    def _timed(self, timing: Timings, t0: float, source: str, **phases: float) -> None:
        for name, ms in phases.items():
            setattr(timing, name, ms)
        timing.total_ms, timing.source = _ms(t0), source
        self.stats.timed(timing)

    def refused(self, doc: Document) -> str:
        """Why nothing of `doc` may go to a backend (a secret file, a language turned off): "" if it may."""
        return refused(doc.uri, doc.language_id, self.options.secret_files, self.options.disabled_languages)

    def not_ready(self) -> str:
        """Why no request can run now ("" when one can). Never waits: a loading model answers empty."""
        if not self.backend.loaded.is_set():
            return "the model is still loading"
        if self.backend.load_error is not None:
            raise EngineError(self.backend.load_error)
        return ""

    # -- what the editor tells us -----------------------------------------------------------------

    def accepted(self, suggestion_id: str, chars: int | None = None) -> None:
        """Acceptance feedback: whole (`chars` None) or partial. A quick answer the user took needs no
        whole-prompt answer any more: stopping it lets the next line's prefetch run at once."""
        if (uri := self.refining.pop(suggestion_id, None)) is not None:
            self.stop_growing(uri)
        length = self.stats.shown.get(suggestion_id)
        if chars is None:
            self.stats.accepted += 1
            self.stats.accepted_chars += length or 0
        else:
            self.stats.partially_accepted += 1
            self.stats.accepted_chars += max(0, chars)

    def edited(self, uri: str, line: int | None) -> None:
        """An edit in `uri` at `line` (None: the whole text): context for the other files."""
        self.retriever.edits.edited(uri, line)

    def forget(self, uri: str) -> None:
        self.stop_growing(uri)
        self.retriever.forget(uri)
        self.anchors.forget(uri)
        self.typed.forget(uri)

    @staticmethod
    def new_id() -> str:
        return f"c{next(_ids)}"


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


__all__ = ["Cancelled", "Completer", "Document", "Suggestion"]
