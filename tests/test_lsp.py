"""End-to-end over stdio: the real server process with the embedded model, driven by an LSP client."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from benchmarks.lsp_client import inline, insert, open_doc, send_json, send_raw, start, stop

pytestmark = pytest.mark.model

ADD = "def add(a, b):\n    return \n"


async def loaded(c, timeout: float = 600) -> None:
    """Wait for the end of the model load's `$/progress`: until then requests are answered empty."""
    async def ended() -> None:
        while not any((v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)) == "end"
                      for v in c.progress):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(ended(), timeout)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client():
    c, init = await start([], init_options={"budgetMs": 0})
    c.init_result = init
    await loaded(c)
    yield c
    await stop(c)


async def stats(c) -> dict:
    s = await c.protocol.send_request_async("codestral/stats", {})
    return {k: getattr(s, k) for k in dir(s) if not k.startswith("_")} if not isinstance(s, dict) else s


@pytest.mark.asyncio(loop_scope="session")
async def test_capabilities(client):
    caps = client.init_result.capabilities
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert "codestral.accept" in caps.execute_command_provider.commands
    assert caps.position_encoding == types.PositionEncodingKind.Utf16


@pytest.mark.asyncio(loop_scope="session")
async def test_ghost_text_accept_and_typed_through(client):
    uri = "file:///work/add.py"
    open_doc(client, uri, ADD)
    result = await inline(client, uri, 1, 11)
    item = result.items[0]
    assert item.insert_text == "a + b"
    # A plain insert at the cursor: the empty range there, always sent (a client's default range is not it).
    cursor = types.Position(line=1, character=11)
    assert item.range == types.Range(start=cursor, end=cursor)
    # The user types the first character of the ghost text: the rest comes without the model.
    before = await stats(client)
    insert(client, uri, 2, 1, 11, "a")
    rest = await inline(client, uri, 1, 12)
    assert rest.items[0].insert_text == " + b"
    after = await stats(client)
    assert after["typed_through_hits"] == before["typed_through_hits"] + 1
    # Accepting: the client inserts the text and runs the item's command.
    insert(client, uri, 3, 1, 12, " + b")
    await client.workspace_execute_command_async(types.ExecuteCommandParams(
        command=rest.items[0].command.command, arguments=rest.items[0].command.arguments))
    accepted = await stats(client)
    assert accepted["accepted"] == after["accepted"] + 1
    # The line is finished: asking at its end is not answered with what was already typed.
    done = await inline(client, uri, 1, 16)
    assert (await stats(client))["typed_through_hits"] == after["typed_through_hits"]
    assert not [i for i in done.items if i.insert_text.lstrip().startswith("+ b")]


@pytest.mark.asyncio(loop_scope="session")
async def test_completion_fallback_after_an_emoji_in_utf16(client):
    uri = "file:///work/emoji.py"
    line = 's = "😀"; total = add'  # the emoji is 2 UTF-16 units
    open_doc(client, uri, f"def add(a, b):\n    return a + b\n\n\n{line}")
    character = len(line.encode("utf-16-le")) // 2
    result = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=4, character=character)))
    items = result.items if hasattr(result, "items") else result
    assert items, "a suggestion is expected after `total = add`"
    edit = items[0].text_edit
    # The edit replaces the word before the cursor: its start is 3 UTF-16 units back.
    assert edit.range.start.character == character - 3
    assert edit.new_text.startswith("add")


@pytest.mark.asyncio(loop_scope="session")
async def test_cancel_request_is_answered_and_server_keeps_working(client):
    uri = "file:///work/cancel.py"
    open_doc(client, uri, "import os\n\n\ndef walk(root):\n    for dirpath, dirs, files in os.walk(root):\n        ")
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=5, character=8),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))
    fut = client.protocol.send_request_async(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="to-cancel")
    await asyncio.sleep(0.05)  # the model is decoding a block now: far from done on any machine we test on
    client.protocol.notify("$/cancelRequest", types.CancelParams(id="to-cancel"))
    with pytest.raises(JsonRpcException) as cancelled:
        await asyncio.wait_for(fut, 60)
    assert cancelled.value.code == -32800  # RequestCancelled, not a late suggestion
    uri2 = "file:///work/after_cancel.py"
    open_doc(client, uri2, "def mul(a, b):\n    return \n")
    ok = await inline(client, uri2, 1, 11)
    assert ok.items and "a" in ok.items[0].insert_text  # the next request is answered as usual


@pytest.mark.asyncio(loop_scope="session")
async def test_burst_of_requests_all_answered_newest_wins(client):
    uri = "file:///work/burst.py"
    text = "def square(x):\n    return \n"
    open_doc(client, uri, text)
    before = await stats(client)
    futures = [inline(client, uri, 1, 11) for _ in range(8)]
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 120)
    assert len(results) == 8
    assert not [r for r in results if isinstance(r, BaseException)]  # every request answered
    newest = results[-1].items
    assert newest and "x" in newest[0].insert_text
    # Older requests were superseded, not decoded one after the other: they answer empty, never
    # with a different ghost text than the newest one.
    after = await stats(client)
    assert after["cancelled"] > before["cancelled"]
    assert after["engine_calls"] - before["engine_calls"] < 8
    assert all(not r.items or r.items[0].insert_text == newest[0].insert_text for r in results[:-1])


@pytest.mark.asyncio(loop_scope="session")
async def test_bad_requests_get_errors_not_silence(client):
    with pytest.raises(JsonRpcException, match="not open"):
        await inline(client, "file:///nowhere.py", 0, 0)
    params = {"textDocument": {"uri": "file:///work/add.py"}, "position": {"line": -1, "character": 0},
              "context": {"triggerKind": 1}}
    with pytest.raises(JsonRpcException):
        await send_raw(client, {"jsonrpc": "2.0", "id": "neg", "method": "textDocument/inlineCompletion",
                                "params": params}, "neg")
    assert (await stats(client))["requests"] >= 1  # still alive


@pytest.mark.asyncio(loop_scope="session")
async def test_utf8_is_used_when_offered():
    c, init = await start([], init_options={"budgetMs": 0}, encodings=["utf-8", "utf-16"])
    try:
        assert init.capabilities.position_encoding == types.PositionEncodingKind.Utf8
        await loaded(c)
        uri = "file:///work/u8.py"
        line = "é = 1; print(é + é"  # é is 2 bytes in UTF-8
        open_doc(c, uri, line)
        end = len(line.encode("utf-8"))
        result = await c.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=0, character=end)))
        items = result.items if hasattr(result, "items") else result
        assert items, "a suggestion is expected after `print(é + é`"
        edit = items[0].text_edit  # replaces the word before the cursor: "é", 2 UTF-8 units back
        assert (edit.range.start.character, edit.range.end.character) == (end - 2, end)
        assert edit.new_text.startswith("é")
    finally:
        await stop(c)


@pytest.mark.asyncio(loop_scope="session")
async def test_model_that_fails_to_load_explains_on_every_request(tmp_path):
    c, _ = await start(["--model", str(tmp_path / "nope")])
    try:
        await loaded(c)
        open_doc(c, "file:///x.py", "x = ")
        for _ in range(2):
            with pytest.raises(JsonRpcException, match="does not exist"):
                await inline(c, "file:///x.py", 0, 4)
        await asyncio.sleep(0.2)
        assert any("does not exist" in m.message for m in c.messages)  # window/showMessage
    finally:
        await stop(c)


@pytest.mark.asyncio(loop_scope="session")
async def test_a_line_that_cannot_fit_the_code_below_is_replaced_by_one_that_does(client):
    """The model's first idea for the empty first line is the `return result` already below; the
    user gets the line the code needs instead, and the stats count the rejection."""
    uri = "file:///work/prefixes.py"
    head = 'def all_prefixes(string):\n    """Return list of all prefixes from shortest to longest"""\n    '
    open_doc(client, uri, head + "\n    for i in range(len(string)):\n        result.append(string[:i+1])\n"
             "    return result\n")
    before = await stats(client)
    result = await inline(client, uri, 2, 4)
    assert result.items[0].insert_text == "result = []"
    assert (await stats(client))["rejected"] >= before["rejected"] + 1
    # Python needs a block header before a deeper-indented line.
    uri = "file:///work/between.py"
    open_doc(client, uri, "def between(names, a, b):\n    i = names.index(a)\n    j = names.index(b)\n    \n"
             "        return names[i + 1:j]\n    else:\n        return names[j + 1:i]\n")
    result = await inline(client, uri, 3, 4)
    text = result.items[0].insert_text
    assert text.startswith("if ") and text.endswith(":"), text


# -- through a local API server: what the user sees for a known model answer -----------------------


class _Api:
    """A local Mistral FIM endpoint (127.0.0.1, port 0) answering `answer` to every request."""

    def __init__(self) -> None:
        self.answer = ""
        self.requests = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                api.requests += 1
                send_json(self, {"choices": [{"message": {"content": api.answer}, "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 20, "completion_tokens": 5}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def api() -> Iterator[_Api]:
    a = _Api()
    yield a
    a.server.shutdown()
    a.server.server_close()


@pytest.mark.asyncio(loop_scope="session")
async def test_what_the_editor_gets_for_closers_crlf_and_stale_typed_through(api):
    c, _ = await start(["--backend", "mistral", "--endpoint", api.url, "--api-key-env", "TEST_LSP_KEY"],
                       init_options={"budgetMs": 0}, env={"TEST_LSP_KEY": "k"})
    try:
        # The editor auto-closed `foo(`: a suggestion that closes it itself replaces that `)`.
        open_doc(c, "file:///w/call.py", "x = foo()\n")
        api.answer = "a, b) + 1"
        item = (await inline(c, "file:///w/call.py", 0, 8)).items[0]
        assert item.insert_text == "a, b) + 1"
        assert item.range == types.Range(start=types.Position(line=0, character=8),
                                         end=types.Position(line=0, character=9))
        # A closer the suggestion needs is kept, and nothing after the cursor is replaced.
        open_doc(c, "file:///w/nested.py", "x = foo()\n")
        api.answer = "bar(1)"
        item = (await inline(c, "file:///w/nested.py", 0, 8)).items[0]
        assert item.insert_text == "bar(1)"
        assert item.range.start == item.range.end == types.Position(line=0, character=8)

        # A suggestion that would add a syntax error is not shown (this backend has no next-best).
        open_doc(c, "file:///w/broken.py", "def f(a, b):\n    x = \n    return x\n")
        api.answer = "a b c"
        assert not (await inline(c, "file:///w/broken.py", 1, 8)).items
        api.answer = "a * b"
        assert (await inline(c, "file:///w/broken.py", 1, 8)).items[0].insert_text == "a * b"

        # A CRLF document gets CRLF line ends in a multi-line suggestion.
        open_doc(c, "file:///w/crlf.py", "def f(x):\r\n    \r\n")
        api.answer = "if x:\n        return 1\n    return 2"
        item = (await inline(c, "file:///w/crlf.py", 1, 4)).items[0]
        assert item.insert_text == "if x:\r\n        return 1\r\n    return 2"

        # Typed-through: typing the ghost text is answered without the model, until the code
        # around the line changes.
        uri = "file:///w/total.py"
        open_doc(c, uri, "def f(v):\n    total = 0\n    for x in v:\n        total += x\n    \n")
        api.answer = "return total"
        assert (await inline(c, uri, 4, 4)).items[0].insert_text == "return total"
        seen = api.requests
        insert(c, uri, 2, 4, 4, "r")
        assert (await inline(c, uri, 4, 5)).items[0].insert_text == "eturn total"
        assert api.requests == seen  # no model call
        # Rename `total` above (the user left the line and came back): the old rest is stale.
        c.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=3),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=types.Position(line=1, character=4), end=types.Position(line=1, character=9)),
                text="acc")]))
        api.answer = "eturn acc"
        assert (await inline(c, uri, 4, 5)).items[0].insert_text == "eturn acc"
        assert api.requests == seen + 1
    finally:
        await stop(c)
