"""The keystroke path, one straight line:

    document + cursor → typed-through cache? → context (anchored) → FimRequest → engine worker
    → postprocess → Suggestion

Used by the LSP handlers and by `codestral-ls complete`; knows nothing of LSP types.
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
from codestral_ls.server.context import build_context, cursor_mode, language_for
from codestral_ls.server.fit import LINE_COMMENTS, first_words, misfit
from codestral_ls.server.options import Options
from codestral_ls.server.postprocess import Surroundings, postprocess
from codestral_ls.server.stats import Stats
from codestral_ls.server.typed_cache import Shown, TypedThroughCache

if TYPE_CHECKING:
    from codestral_ls.server.backends import Backend  # engine.worker.EngineWorker or a remote backend

log = logging.getLogger(__name__)
_ids = itertools.count(1)


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

    async def complete(self, doc: Document, offset: int) -> Suggestion | None:
        """The suggestion at `offset`, or None. Raises Cancelled when superseded."""
        t0 = time.perf_counter()
        self.stats.requests += 1
        text = doc.text
        line = text.count("\n", 0, offset)
        line_start = text.rfind("\n", 0, offset) + 1
        line_end = text.find("\n", offset)
        line_before, line_after = text[line_start:offset], text[offset:len(text) if line_end < 0 else line_end]
        language = language_for(doc.language_id, doc.uri)
        if language in self.options.disabled_languages:
            return None

        rest = self.typed.lookup(doc.uri, line, line_before, line_after)
        if rest is not None:
            self.stats.typed_through_hits += 1
            return self._shown(Suggestion(self._new_id(), rest, line, offset, "typed-through", _ms(t0)),
                               doc.uri, line_before, line_after)

        await self._ready()
        mode, block_indent = cursor_mode(text, offset, language, self.options.multiline)
        if mode == "none":
            return self._empty(t0)
        o = self.options
        placement = self.anchors.place(doc.uri, text, offset, lambda: build_context(
            text, offset, language, self.worker.count_tokens, o.prefix_tokens, o.suffix_tokens, o.multiline))
        ctx = placement.ctx
        comment = LINE_COMMENTS.get(language, "")
        req = FimRequest(
            doc=doc.uri, prefix=ctx.prefix, suffix=ctx.suffix, forced_middle=placement.forced_middle,
            extra_files=self._extra_files(doc), max_tokens=o.max_tokens,
            stop=StopRule(single_line=mode == "single", max_lines=o.max_lines, block_indent=block_indent,
                          line_comment=comment),
            budget_ms=o.budget_ms or None,
        )
        surroundings = Surroundings(line_before, line_after, text[offset:offset + 2000],
                                    tuple(text[max(0, line_start - 1600):line_start].split("\n")[-12:]),
                                    single_line=mode == "single", line_comment=comment)
        avoid: list[str] = []
        while True:
            result = await self._engine(req)
            suggestion = postprocess(result.text, surroundings, self.disabled_filters)
            # Only a finished line is judged (a budget cut is the start of one, still decoding).
            why = misfit(suggestion, line_before, line_after, surroundings.suffix, language) \
                if result.finish == "stop" else None
            if why is None:
                break
            # A line that cannot be right here: ask for the model's next-best start instead.
            log.debug("suggestion rejected (%s); asking for another", why)
            self.stats.rejected += 1
            if len(avoid) >= o.second_opinions or not getattr(self.worker, "steerable", False):
                return self._empty(t0)
            avoid.append(first_words(suggestion))
            req = dataclasses.replace(req, avoid=tuple(avoid), cancel=CancelToken())
        if not suggestion:
            return self._empty(t0)
        return self._shown(Suggestion(self._new_id(), suggestion, line, offset, "engine", _ms(t0), result),
                           doc.uri, line_before, line_after)

    async def _engine(self, req: FimRequest) -> FimResult:
        try:
            result = await asyncio.wrap_future(self.worker.submit(req))
        except asyncio.CancelledError:  # $/cancelRequest: stop the engine (or close the remote stream) too
            req.cancel.cancel()
            raise
        self.stats.add_engine(result)
        return result

    def _shown(self, s: Suggestion, uri: str, line_before: str, line_after: str) -> Suggestion:
        self.typed.remember(Shown(uri, s.line, line_before, line_after, s.text))
        self.stats.suggestions += 1
        self.stats.latencies_ms.append(s.latency_ms)
        self.stats.shown[s.id] = len(s.text)
        if len(self.stats.shown) > 1000:
            self.stats.shown.pop(next(iter(self.stats.shown)))
        return s

    def _empty(self, t0: float) -> None:
        self.stats.empty += 1
        self.stats.latencies_ms.append(_ms(t0))
        return None

    async def _ready(self) -> None:
        if not self.worker.loaded.is_set():
            await asyncio.get_running_loop().run_in_executor(None, self.worker.loaded.wait)
        if self.worker.load_error is not None:
            raise EngineError(self.worker.load_error)

    def _extra_files(self, doc: Document) -> tuple[tuple[str, str], ...]:
        budget = self.options.extra_context_tokens * 3  # characters, roughly 3 per token
        out = []
        for other in self.other_documents(doc.uri):
            if budget <= 0:
                break
            head = other.text[:budget]
            head = head[: head.rfind("\n") + 1] or head
            out.append((other.uri.rsplit("/", 1)[-1], head))
            budget -= len(head)
        return tuple(out)

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
        self.anchors.forget(uri)
        self.typed.forget(uri)

    @staticmethod
    def _new_id() -> str:
        return f"c{next(_ids)}"


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


__all__ = ["Cancelled", "Completer", "Document", "Suggestion"]
