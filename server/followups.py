"""What follows an answer while the user reads, and what comes with it: plain functions of the
`Completer` (server/pipeline.py), as server/warmup.py's are.

    alternatives    more candidates: the model's next-best starts, each finished, fitting, distinct
    follow_up       the decode after an answer: the whole prompt's answer after a quick one, or the
                    rest of a budget-cut block (`Suggestion.growing`)
    second_opinions the next-best starts after an answer said nothing fits yet

A follow-up runs one per document (`Completer.follow`): a newer request there cancels it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.request import CancelToken, FimRequest, FimResult
from codestral_ls.server.cursor import Cursor
from codestral_ls.server.postprocess import first_words, misfit, postprocess, replaced_after
from codestral_ls.server.suggestion import FINISHED, Suggestion

if TYPE_CHECKING:
    from codestral_ls.server.pipeline import Completer

MAX_REFINING = 64  # quick answers remembered for `Completer.accepted`


async def alternatives(c: Completer, req: FimRequest, cursor: Cursor, first: Suggestion,
                       avoid: list[str]) -> list[Suggestion]:
    """Up to `candidates - 1` more suggestions, best first: each a next-best start of the model
    (`FimRequest.avoid`), finished, fitting the code after it and distinct."""
    out: list[Suggestion] = []
    seen = {first.text.strip()}
    for _ in range(c.options.candidates - 1 + c.options.second_opinions):
        if len(out) >= c.options.candidates - 1:
            break
        alt = await c.ask(dataclasses.replace(req, avoid=tuple(avoid), stop=c.stop_rule(cursor), background=False,
                                              cancel=CancelToken()))
        fit = c.fit(alt, cursor)
        if not first_words(fit.text) or first_words(fit.text) in avoid:
            break  # nothing else the model would start with
        avoid.append(first_words(fit.text))
        if alt.finish not in FINISHED or fit.text.strip() in seen or fit.misfit:
            continue
        seen.add(fit.text.strip())
        out.append(c.show(dataclasses.replace(first, id=c.new_id(), text=cursor.in_document(fit.text), result=alt,
                                              replace_after=fit.replace), req.doc, cursor, typed=False))
    return out


def follow_up(c: Completer, uri: str, req: FimRequest, result: FimResult, cursor: Cursor,
              shown: Suggestion) -> asyncio.Task[Suggestion | None] | None:
    """The decode that follows an answer (`Suggestion.growing`), or None.

    A cold place answered from its nearest lines: the whole prompt's answer follows (and its
    prefill is what the next keys reuse), prefilled as a warm-up is, in small chunks, so that the
    next request waits behind it one small chunk at most. Else the latency budget ended the block
    early: decode the rest while the user reads."""
    if result.window == "quick":
        c.stats.quick_answers += 1
        whole = dataclasses.replace(req, quick_tokens=0, avoid=(), stop=req.stop.unbudgeted(), warm=True)
        c.refining[shown.id] = uri  # accepted as it is: the follow-up is moot (`Completer.accepted`)
        while len(c.refining) > MAX_REFINING:
            del c.refining[next(iter(c.refining))]
        return grow(c, uri, whole, cursor, shown, replaces=True)
    if result.finish == "budget":
        return grow(c, uri, dataclasses.replace(req, stop=req.stop.unbudgeted()), cursor, shown)
    return None


def grow(c: Completer, uri: str, req: FimRequest, cursor: Cursor, shown: Suggestion,
         replaces: bool = False) -> asyncio.Task[Suggestion | None]:
    """Decode the rest of a budget-cut block; the longer suggestion, remembered for typing through it,
    or None when it says nothing more. `replaces`: the whole prompt's answer after a quick one, which
    may say something else (None: it says the same, or does not fit)."""

    async def more() -> Suggestion | None:
        try:
            result = await c.ask(dataclasses.replace(req, cancel=CancelToken()))
        except (Cancelled, EngineError, asyncio.CancelledError):
            return None  # the user typed (a newer request won) or the engine failed: nothing to add
        text = postprocess(result.text, cursor, c.disabled_filters)
        if result.finish == "length" and "\n" in text:
            text = text[:text.rfind("\n")].rstrip()  # whole lines only, as the first answer
        elif result.finish in FINISHED and misfit(text, cursor, replaced_after(text, cursor), c.disabled_filters):
            return None
        text = cursor.in_document(text)
        if not text.strip() or text == shown.text or not (replaces or text.startswith(shown.text)):
            return None
        if replaces:
            c.stats.quick_replaced += 1
        else:
            c.stats.grown += 1
        return c.show(dataclasses.replace(shown, id=c.new_id(), text=text, result=result,
                                          replace_after=replaced_after(text, cursor), growing=None), uri, cursor)

    return c.follow(uri, more())


def second_opinions(c: Completer, uri: str, req: FimRequest, cursor: Cursor, avoid: list[str],
                    offset: int) -> asyncio.Task[Suggestion | None]:
    """The model's next-best starts, after the answer said nothing fits yet: the first that fits the
    code after it, remembered for the place (a request there answers it at once), or None."""

    async def look_on() -> Suggestion | None:
        while True:
            try:
                result = await c.ask(dataclasses.replace(req, avoid=tuple(avoid), cancel=CancelToken()))
            except (Cancelled, EngineError, asyncio.CancelledError):
                return None
            fit = c.fit(result, cursor)
            if fit.text and fit.misfit is None:
                c.stats.second_opinions_found += 1
                return c.show(Suggestion(c.new_id(), cursor.in_document(fit.text), cursor.line, offset, "engine",
                                         0.0, result, replace_after=fit.replace), uri, cursor)
            c.stats.rejected += 1
            if len(avoid) >= c.options.second_opinions or not first_words(fit.text):
                return None
            avoid.append(first_words(fit.text))

    return c.follow(uri, look_on())
