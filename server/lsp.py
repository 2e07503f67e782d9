"""The LSP process: thin pygls handlers around `pipeline.Completer`, one per method.

Each handler pulls what it needs from the params, calls one method of `CodestralServer` (the
server's state: documents, the backend, warm-up timers) or of the pipeline, and converts the
answer to lsprotocol types. The model loads on the engine thread after `initialized` (with
`$/progress`); until it is ready requests answer empty at once, and a failed load turns into an
error answer that says why, on every request.

Our own protocol, for clients that opt in with the client capability
`experimental.codestral = {"suggestionUpdates": true, "status": true}` (advertised back in
`capabilities.experimental.codestral`, server/protocol.py):

    codestral/suggestionUpdated  server → client  {textDocument: {uri, version}, position}: a longer
                                 suggestion is ready there (the rest of a budget-cut block): ask again
    codestral/status             server → client  {kind, message, latencyMs}: loading / ready / error /
                                 running / answered / declined (and why)
    codestral/didFocus           client → server  {textDocument: {uri}, position}: the cursor came to
                                 rest there; the prompt there is prefilled while the user reads
    codestral/didPartiallyAccept client → server  {id, acceptedLength}
    codestral/stats              client → server  counters, latencies, the model and its cache, the options
                                 in force (what editor and workspace settings changed)

Warm-up (prefilling a prompt before it is asked for) also runs on didOpen and when the user pauses
after an edit without the client asking; it is always preempted by a real request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from codestral_ls.server.pipeline import Suggestion
from codestral_ls.server.session import ACCEPT_COMMAND, CodestralServer, Place, units
from lsprotocol import types

PARTIAL_ACCEPT_NOTIFICATION = "codestral/didPartiallyAccept"
STATS_REQUEST = "codestral/stats"
DID_FOCUS = "codestral/didFocus"


def initialize(ls: CodestralServer, params: types.InitializeParams) -> None:
    ls.initialize(params)


def initialized(ls: CodestralServer, params: types.InitializedParams) -> None:
    ls.show_notices()
    ls.start_engine()


def did_open(ls: CodestralServer, params: types.DidOpenTextDocumentParams) -> None:
    ls.touched(params.text_document.uri)
    ls.warm_after_pause(params.text_document.uri, None)


def did_change(ls: CodestralServer, params: types.DidChangeTextDocumentParams) -> None:
    change = params.content_changes[-1] if params.content_changes else None
    ls.edited(params.text_document.uri, change)


def did_save(ls: CodestralServer, params: types.DidSaveTextDocumentParams) -> None:
    """Nothing to do (the text came with didChange); handled so that a save is not an unknown method."""


def did_close(ls: CodestralServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.closed(params.text_document.uri)


def did_focus(ls: CodestralServer, params: Any) -> None:
    uri = _get(_get(params, "textDocument"), "uri")
    pos = _get(params, "position")
    line, character = _get(pos, "line"), _get(pos, "character")
    if isinstance(uri, str) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                    for v in (line, character)):
        ls.focused(uri, types.Position(line=line, character=character))


async def inline_completion(ls: CodestralServer, params: types.InlineCompletionParams
                            ) -> types.InlineCompletionList:
    place = ls.place_of(params.text_document.uri, params.position)
    s = await ls.suggest(place) if place is not None else None
    if s is None or place is None:
        return types.InlineCompletionList(items=[])
    items = []
    for c in [s, *s.alternatives]:  # the best first; the others distinct, for clients that cycle
        items.append(types.InlineCompletionItem(
            insert_text=c.text, range=inline_range(ls, place, c),
            command=types.Command(title="codestral: accepted", command=ACCEPT_COMMAND, arguments=[c.id])))
    return types.InlineCompletionList(items=items)


def inline_range(ls: CodestralServer, place: Place, c: Suggestion) -> types.Range:
    """What an inline item replaces, always explicit: from the cursor over the auto-closed brackets the
    suggestion closes itself, else the empty range at the cursor. A client left to choose takes its own
    default (VS Code: from the start of the word before the cursor to the end of the line), which drops
    the item after a partial word or deletes the rest of the line on accept. Neovim and Emacs draw an
    empty range as a plain insertion at the cursor."""
    replaced = place.doc.text[c.offset:c.offset + c.replace_after]
    end = place.position
    if replaced and "\n" not in replaced and "\r" not in replaced:
        end = types.Position(line=place.position.line, character=place.position.character + units(replaced, ls))
    return types.Range(start=place.position, end=end)


async def completion(ls: CodestralServer, params: types.CompletionParams) -> types.CompletionList:
    place = ls.place_of(params.text_document.uri, params.position)
    s = await ls.suggest(place) if place is not None else None
    if s is None or place is None:
        return types.CompletionList(is_incomplete=True, items=[])
    return types.CompletionList(is_incomplete=True, items=[completion_item(ls, place, s)])


def completion_item(ls: CodestralServer, place: Place, s: Suggestion) -> types.CompletionItem:
    """The suggestion as a completion item: clients filter items by the word before the cursor, so it
    replaces that word (and the auto-closed brackets the suggestion closes itself)."""
    position = place.position  # where the cursor really is (a character past the line's end is its end)
    word = _word_before(place.doc.text[max(0, s.offset - 200):s.offset])
    start = types.Position(line=position.line, character=max(0, position.character - units(word, ls)))
    replaced = place.doc.text[s.offset:s.offset + s.replace_after]
    end = position if not replaced or "\n" in replaced or "\r" in replaced else types.Position(
        line=position.line, character=position.character + units(replaced, ls))
    first_line = s.text.split("\n", 1)[0]
    return types.CompletionItem(
        label=(word + first_line).strip()[:80] or s.text.strip()[:80],
        kind=types.CompletionItemKind.Snippet,
        detail="codestral-ls",
        documentation=types.MarkupContent(kind=types.MarkupKind.Markdown, value=f"```\n{word}{s.text}\n```"),
        filter_text=word + s.text,
        sort_text="0",
        preselect=True,
        text_edit=types.TextEdit(range=types.Range(start=start, end=end), new_text=word + s.text),
        insert_text_format=types.InsertTextFormat.PlainText,
        command=types.Command(title="codestral: accepted", command=ACCEPT_COMMAND, arguments=[s.id]),
    )


def accept(ls: CodestralServer, *arguments: Any) -> None:
    if arguments:  # the suggestion id; a client sending none gets no error
        ls.accepted(str(arguments[0]))


def partially_accept(ls: CodestralServer, params: Any) -> None:
    sid, length = _get(params, "id"), _get(params, "acceptedLength")
    if sid is not None and isinstance(length, int | float | None) and not isinstance(length, bool):
        ls.accepted(str(sid), int(length or 0))


def stats(ls: CodestralServer, params: Any) -> dict[str, Any]:
    return ls.stats_snapshot()


def did_change_configuration(ls: CodestralServer, params: types.DidChangeConfigurationParams) -> None:
    ls.apply_settings(params.settings)


def shutdown(ls: CodestralServer, params: Any) -> None:
    ls.stop()


FEATURES: list[tuple[str, Any, Any]] = [  # (method, options, handler)
    (types.INITIALIZE, None, initialize),
    (types.INITIALIZED, None, initialized),
    (types.TEXT_DOCUMENT_DID_OPEN, None, did_open),
    (types.TEXT_DOCUMENT_DID_CHANGE, None, did_change),
    (types.TEXT_DOCUMENT_DID_SAVE, None, did_save),
    (types.TEXT_DOCUMENT_DID_CLOSE, None, did_close),
    (DID_FOCUS, None, did_focus),
    (types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions(), inline_completion),
    (types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]), completion),
    (PARTIAL_ACCEPT_NOTIFICATION, None, partially_accept),
    (STATS_REQUEST, None, stats),
    (types.WORKSPACE_DID_CHANGE_CONFIGURATION, None, did_change_configuration),
    (types.SHUTDOWN, None, shutdown),
]


def create_server(options: Any, cli_raw: dict[str, Any] | None = None, notices: list[str] | None = None
                  ) -> CodestralServer:
    server = CodestralServer(options, cli_raw, notices)
    for method, feature_options, handler in FEATURES:
        server.feature(method, feature_options)(handler) if feature_options else server.feature(method)(handler)
    server.command(ACCEPT_COMMAND)(accept)
    return server


def _get(obj: Any, key: str) -> Any:
    """A field of notification params, which pygls hands over as an object or a dict."""
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _word_before(text: str) -> str:
    i = len(text)
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"):
        i -= 1
    return text[i:]


__all__ = ["CodestralServer", "asyncio", "create_server"]
