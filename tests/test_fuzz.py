"""Property tests: random LSP message sequences against the real server process (tiny model), and
random edits against the server's documents checked with an independent reference.

Bounded example counts keep this under a couple of minutes on two cores; `database=None` keeps
hypothesis from writing into the checkout.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from benchmarks.lsp_client import Client, plain, send_raw, start, stop, wait_loaded
from tests.inprocess import InProcess

HANG_GUARD = 120  # seconds; only so a hang fails instead of stalling the suite
INVALID_PARAMS, CANCELLED = -32602, -32800

# Pieces that break naive line handling or position conversion.
PIECES = ["a", "b", "x = 1", " ", "\t", "\n", "\r\n", "\r", "\u2028", "\u2029", "\x0c", "\x0b", "\x85", "\x1c",
          "\x00", "😀", "中文", "é", "\ud800", "def f(x):", "    return ", "(", ")", "'", "#"]
texts = st.lists(st.sampled_from(PIECES) | st.text(max_size=6), max_size=30).map("".join)


# -- an independent reference for LSP positions ----------------------------------------------------


def ref_lines(text: str) -> list[tuple[int, int]]:
    """(start, end without the line break) of each line; breaks are \\n, \\r\\n and \\r only."""
    out, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\r" and text[i + 1:i + 2] == "\n":
            out.append((start, i))
            i += 2
            start = i
        elif text[i] in "\r\n":
            out.append((start, i))
            i += 1
            start = i
        else:
            i += 1
    out.append((start, len(text)))
    return out


def ref_units(char: str, encoding: str) -> int:
    if encoding == "utf-8":
        return len(char.encode("utf-8", "surrogatepass"))
    if encoding == "utf-16":
        return 2 if ord(char) > 0xFFFF else 1
    return 1


def ref_offset(text: str, line: int, character: int, encoding: str) -> int:
    lines = ref_lines(text)
    if line >= len(lines):
        return len(text)
    i, end = lines[line]
    units = 0
    while i < end and units + ref_units(text[i], encoding) <= character:
        units += ref_units(text[i], encoding)
        i += 1
    return i


positions = st.tuples(st.integers(0, 8), st.integers(0, 24))
edits = st.lists(st.tuples(positions, positions, texts, st.booleans()), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, database=None)
@given(text=texts, changes=edits, encoding=st.sampled_from(["utf-16", "utf-8", "utf-32"]))
def test_document_edits_match_the_lsp_reference(text: str, changes: list[Any], encoding: str) -> None:
    async def run() -> None:
        ip = InProcess()
        await ip.initialize(encodings=[encoding], engine=False)
        uri = "file:///w/fuzz.txt"
        ip.open(uri, text)
        expected = text
        for version, (begin, end, new, whole) in enumerate(changes, 2):
            if whole:  # a full-document change (no range)
                ip.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                                     "contentChanges": [{"text": new}]})
                expected = new
            else:
                ip.change(uri, version, begin, end, new)
                a = ref_offset(expected, *begin, encoding)
                b = max(a, ref_offset(expected, *end, encoding))
                expected = expected[:a] + new + expected[b:]
            assert ip.text(uri) == expected
        doc = ip.server.open_document(uri)
        assert doc is not None and doc.line_count() == len(ref_lines(expected))
        for line, character in itertools.product(range(len(ref_lines(expected)) + 1), (0, 1, 3, 99)):
            position = types.Position(line=line, character=character)
            if line < doc.line_count():
                offset = ip.server.place(uri, position).offset
                assert offset == ref_offset(expected, line, character, encoding)
            else:
                with pytest.raises(JsonRpcException):
                    ip.server.place(uri, position)

    asyncio.run(run())


# -- the cursor and the judge on random code --------------------------------------------------------

CODE = ["def f(x):", "    ", "return ", "(", ")", "[", "]", "{", "}", "'", '"', "#", "//", "x", " = ", ":", "\n",
        "\n", "\t", "if x:", "foo(", "\\", "😀", "é", "a, b", ";", "/*", "*/"]
code = st.lists(st.sampled_from(CODE) | st.text(alphabet=st.characters(blacklist_characters="\r"), max_size=4),
                max_size=30).map("".join)


@settings(max_examples=120, deadline=None, database=None)
@given(text=code, where=st.integers(0, 10**6), suggestion=code,
       language=st.sampled_from(["python", "javascript", "typescriptreact", "go", "rust", "java", "c", "cpp", "text"]))
def test_a_crlf_document_reads_and_is_judged_like_the_lf_one(text: str, where: int, suggestion: str,
                                                             language: str) -> None:
    """Issue 16: the CRLF copy of a document reads the same at the same place (mode, line, lines
    around) and judges a suggestion the same way; nothing raises, and what goes back into the
    document has the document's line ending."""
    from codestral_ls.engine.models.counting import ApproxCounter
    from codestral_ls.server.context import build_context
    from codestral_ls.server.cursor import read_cursor
    from codestral_ls.server.postprocess import misfit, postprocess, replaced_after

    offset = where % (len(text) + 1)
    crlf = text.replace("\n", "\r\n")
    lf_cursor = read_cursor(text, offset, language)
    cr_cursor = read_cursor(crlf, offset + text.count("\n", 0, offset), language)
    assert (cr_cursor.mode, cr_cursor.block_indent) == (lf_cursor.mode, lf_cursor.block_indent)
    assert (cr_cursor.line, cr_cursor.before, cr_cursor.after, cr_cursor.next_line, cr_cursor.prev_lines,
            cr_cursor.suffix) == (lf_cursor.line, lf_cursor.before, lf_cursor.after, lf_cursor.next_line,
                                  lf_cursor.prev_lines, lf_cursor.suffix)
    one = ApproxCounter(1)  # a token a character
    a, b = build_context(lf_cursor, one, 200, 50), build_context(cr_cursor, one, 400, 100)
    assert "\r" not in b.prefix + b.suffix and a.prefix.endswith(b.prefix[-50:])
    judged = []
    for c in (lf_cursor, cr_cursor):
        shown = postprocess(suggestion, c)
        replace = replaced_after(shown, c)
        judged.append((shown, replace, misfit(shown, c, replace)))
        back = c.in_document(shown)
        assert back.count("\n") == shown.count("\n") and back.count("\r\n") == (shown.count("\n") if c is cr_cursor
                                                                                  and "\n" in text else 0)
    assert judged[0] == judged[1]


# -- random message sequences against the real server process --------------------------------------


class Remote:
    """The client on its own event loop thread, so synchronous hypothesis tests can drive it."""

    def __init__(self, args: list[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client: Client = self.run(start(args, init_options={"budgetMs": 0}))[0]
        self._ids: Iterator[int] = itertools.count(1)

    def run(self, coro: Any, timeout: float = HANG_GUARD) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def request(self, method: str, params: Any) -> Future[Any]:
        """Send without waiting; the future holds the answer (a result or a JsonRpcException)."""
        msg_id = f"f{next(self._ids)}"
        fut: Future[Any] = Future()
        self.client.protocol._request_futures[msg_id] = fut
        fut.msg_id = msg_id  # type: ignore[attr-defined]
        self.notify_raw({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return fut

    def notify_raw(self, message: dict[str, Any]) -> None:
        async def send() -> None:
            await send_raw(self.client, message)

        self.run(send())

    def close(self) -> None:
        self.run(stop(self.client))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def remote(tiny_model_dir: Path) -> Iterator[Remote]:
    r = Remote(["--model", str(tiny_model_dir), "--device", "cpu", "--max-tokens", "6"])

    # Until the model is loaded every request is answered empty at once: wait for the load's end.
    r.run(wait_loaded(r.client), timeout=600)
    yield r
    r.close()


URIS = ["file:///w/a.py", "file:///w/b%20c.js", "file:///w/d.txt"]
# Mostly a line of the document (its index modulo the line count), sometimes a raw position:
# negative or past the end.
request_positions = st.tuples(st.sampled_from(["line", "line", "line", "raw"]), st.integers(-1, 6),
                              st.integers(0, 8) | st.integers(-1, 40))
STEPS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "open": st.tuples(st.just("open"), st.sampled_from(URIS), texts, st.sampled_from(["python", "javascript", "text"])),
    "change": st.tuples(st.just("change"), st.sampled_from(URIS), st.tuples(positions, positions), texts),
    "replace": st.tuples(st.just("replace"), st.sampled_from(URIS), texts),
    "close": st.tuples(st.just("close"), st.sampled_from(URIS)),
    "inline": st.tuples(st.just("inline"), st.sampled_from(URIS), request_positions),
    "completion": st.tuples(st.just("completion"), st.sampled_from(URIS), request_positions),
    "cancel": st.tuples(st.just("cancel"), st.integers(0, 10)),
    "accept": st.tuples(st.just("accept"), st.text(max_size=5)),
    "stats": st.tuples(st.just("stats")),
}
# Weighted towards what an editor sends most: keystrokes and suggestion requests.
WEIGHTS = {"change": 6, "inline": 6, "completion": 2, "open": 1, "replace": 1, "close": 1, "cancel": 1,
           "accept": 1, "stats": 1}
actions = st.sampled_from([k for k, n in WEIGHTS.items() for _ in range(n)]).flatmap(STEPS.__getitem__)


def _position(line: int, character: int) -> dict[str, int]:
    return {"line": line, "character": character}


@settings(max_examples=50, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(initial=st.lists(texts, min_size=len(URIS), max_size=len(URIS)),
       steps=st.lists(actions, min_size=5, max_size=30))
def test_random_message_sequences_are_all_answered(remote: Remote, initial: list[str],
                                                   steps: list[tuple[Any, ...]]) -> None:
    pending: list[tuple[Future[Any], bool]] = []  # (answer, whether it must be a result)
    asked: dict[int, tuple[int, int]] = {}  # an inline request's position, by its index in pending
    version = itertools.count(100)
    docs: dict[str, str | None] = {}  # the client's copy (utf-16 positions, the LSP reference above)
    before = remote.request("codestral/stats", None).result(HANG_GUARD)
    for uri, text in zip(URIS, initial, strict=True):  # every document open to start with
        steps.insert(0, ("open", uri, text, "python"))
    for step in steps:
        kind = step[0]
        if kind == "open":
            remote.notify_raw({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": {
                "uri": step[1], "languageId": step[3], "version": 1, "text": step[2]}}})
            docs[step[1]] = step[2]
        elif kind == "change":
            (begin, end), text = step[2], step[3]
            remote.notify_raw({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
                "textDocument": {"uri": step[1], "version": next(version)},
                "contentChanges": [{"range": {"start": _position(*begin), "end": _position(*end)}, "text": text}]}})
            if (old := docs.get(step[1])) is not None:
                a = ref_offset(old, *begin, "utf-16")
                docs[step[1]] = old[:a] + text + old[max(a, ref_offset(old, *end, "utf-16")):]
        elif kind == "replace":
            remote.notify_raw({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
                "textDocument": {"uri": step[1], "version": next(version)}, "contentChanges": [{"text": step[2]}]}})
            if docs.get(step[1]) is not None:
                docs[step[1]] = step[2]
        elif kind == "close":
            remote.notify_raw({"jsonrpc": "2.0", "method": "textDocument/didClose",
                               "params": {"textDocument": {"uri": step[1]}}})
            docs[step[1]] = None
        elif kind in ("inline", "completion"):
            text = docs.get(step[1])
            how, line, character = step[2]
            if how == "line" and text is not None:
                line = abs(line) % len(ref_lines(text))
            valid = text is not None and 0 <= line < len(ref_lines(text)) and character >= 0
            params: dict[str, Any] = {"textDocument": {"uri": step[1]}, "position": _position(line, character)}
            if kind == "inline":
                params["context"] = {"triggerKind": 2}
            method = "textDocument/inlineCompletion" if kind == "inline" else "textDocument/completion"
            if kind == "inline" and valid:
                asked[len(pending)] = (line, character)
            pending.append((remote.request(method, params), valid))
        elif kind == "cancel" and pending:
            target = pending[-1 - step[1] % len(pending)][0]
            remote.notify_raw({"jsonrpc": "2.0", "method": "$/cancelRequest",
                               "params": {"id": target.msg_id}})  # type: ignore[attr-defined]
        elif kind == "accept":
            pending.append((remote.request("workspace/executeCommand",
                                           {"command": "codestral.accept", "arguments": [step[1]]}), True))
        elif kind == "stats":
            pending.append((remote.request("codestral/stats", None), True))
    for i, (fut, valid) in enumerate(pending):
        try:
            result = fut.result(HANG_GUARD)  # every request is answered
            if i in asked and result is not None:  # an answer inserts at the cursor, clamped to its line
                line, character = asked[i]
                for item in plain(result).get("items", []):
                    start, end = item["range"]["start"], item["range"]["end"]
                    assert start["line"] == end["line"] == line and start["character"] <= character, item
        except JsonRpcException as exc:
            # A valid request gets a result (or is cancelled, if the client asked); negative
            # positions, lines past the end and closed documents get InvalidParams. Never an
            # internal error.
            assert exc.code in ((CANCELLED,) if valid else (INVALID_PARAMS, CANCELLED)), (exc.code, str(exc))
    stats = remote.request("codestral/stats", None).result(HANG_GUARD)  # still alive and well
    assert stats is not None and remote.client._server.returncode is None
    assert stats.errors == before.errors  # no request failed inside the server
    assert "Traceback" not in bytes(remote.client.stderr[-20000:]).decode("utf-8", "replace"), "a server error"
