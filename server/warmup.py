"""Warm-up: prompts prefilled before anyone asks for them, at the lowest priority.

    warm           the prompt at a place the user is about to type at (didFocus, a pause after an
                   edit), and the spines of the file around it
    warm_spines    only the spines (a document just opened: the cursor is not known yet)
    warm_next_line the line after a suggestion, as the document will be once it is accepted and
                   Enter opens the next line: Enter finds its prompt (and answer) ready
    spine_requests the spines of a file around a place, nearest first, as warm-up requests

Each is a plain function of the `Completer` (server/pipeline.py) whose prompt it warms: the same
windows, anchors and context from other files as the request that will follow, so that request
finds its prompt cached. Warm-up is a hint: any real request preempts it (engine/serving/worker.py),
and where the model is not ready, the language is off or the file is secret it does nothing.
"""

from __future__ import annotations

import dataclasses

from codestral_ls.engine.request import FimRequest
from codestral_ls.server.context import spine_plan, spine_text
from codestral_ls.server.cursor import BLOCK_OPENERS, read_cursor
from codestral_ls.server.languages import language_for
from codestral_ls.server.pipeline import Completer, Document, Suggestion


def warm(c: Completer, doc: Document, offset: int, plan: bool = True, remember: bool = True) -> bool:
    """Prefill the prompt at `offset` while the user is not typing (preempted by any request), and
    with `plan` the spines of the file around it; `remember`: anchor the document there.

    Returns whether warm-up work was queued. The next request there finds its prompt cached.
    """
    if c.not_ready():
        return False
    language = language_for(doc.language_id, doc.uri)
    if c.refused(doc):
        return False  # a secret file, or a language turned off: nothing of it goes anywhere
    req = c.request(doc, read_cursor(doc.text, offset, language, c.options.multiline), remember=remember)
    if req is None:
        return False
    c.stats.warm_ups += 1
    c.backend.prefetch(dataclasses.replace(req, stop=req.stop.unbudgeted(), warm=True, quick_tokens=0))
    if plan:
        c.backend.plan(spine_requests(c, doc, offset))
    return True


def warm_spines(c: Completer, doc: Document, offset: int) -> bool:
    """Only the spines of `doc` around `offset` (no prompt at a place): whether any were planned."""
    if c.not_ready() or c.refused(doc):
        return False
    plan = spine_requests(c, doc, offset)
    c.backend.plan(plan)
    return bool(plan)


def warm_next_line(c: Completer, doc: Document, offset: int, shown: Suggestion) -> bool:
    """Prefill the suggestion for the line after `shown`, as the document will be once it is accepted
    and Enter opens the next line (llama.vim's prefetch after a hint): Enter finds it ready. Only
    for a suggestion that ends its line."""
    text = shown.text
    if shown.replace_after or not text.strip():
        return False
    cursor = read_cursor(doc.text, offset, language_for(doc.language_id, doc.uri), "never")
    if cursor.after.strip():
        return False
    last = (cursor.before + text).replace("\r\n", "\n").rsplit("\n", 1)[-1]
    indent = last[:len(last) - len(last.lstrip())]
    if last.rstrip().endswith(BLOCK_OPENERS):
        indent += "\t" if "\t" in indent else "    "
    inserted = text + cursor.newline + indent
    after = Document(doc.uri, doc.text[:offset] + inserted + doc.text[offset:], doc.language_id)
    # The document's anchor stays: the request after Enter has the anchored prompt plus what was
    # accepted and the new line as typed text, and that is the prompt warmed here.
    return warm(c, after, offset + len(inserted), plan=False, remember=False)


def spine_requests(c: Completer, doc: Document, offset: int) -> list[FimRequest]:
    """The spines of `doc` around `offset`, nearest first, as warm-up requests (none where the
    backend keeps none)."""
    capacity = c.backend.spines
    _, _, spines = c.windows()
    if not capacity or spines is None:
        return []
    language = language_for(doc.language_id, doc.uri)
    extra = c.extra_files(doc, read_cursor(doc.text, offset, language, c.options.multiline))
    return [FimRequest(doc=doc.uri, prefix=spine_text(doc.text, a, e), suffix="", extra_files=extra,
                       max_tokens=1, path=c.workspace.relative(doc.uri), repo=c.workspace.name_of(doc.uri),
                       spine=True, warm=True)
            for a, e in spine_plan(doc.text, offset, c.backend.counter(), spines, capacity)]
