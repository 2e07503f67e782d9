"""The server never hangs, dies, leaks or leaks data: every request answered (a result or a proper
JSON-RPC error), big and odd documents, bursts, bounded caches, engine faults, security defaults.

Most tests drive the real server process on the tiny random model (`benchmarks/tiny_model.py`); those that
monkeypatch the engine or look inside the server run it in-process (`tests/inprocess.py`). Timeouts
here only guard against hangs: nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
from codestral_ls.server.documents import LspTextDocument, line_starts
from codestral_ls.server.options import Options
from lsprotocol import converters, types
from pygls.exceptions import JsonRpcException

from benchmarks.lsp_client import (
    ROOT,
    Client,
    _drain_stderr,
    inline,
    insert,
    open_doc,
    plain,
    send_raw,
    start,
    stop,
    wait_loaded,
)
from tests.inprocess import InProcess

IC = "textDocument/inlineCompletion"
INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32600, -32601, -32602, -32603
PARSE_ERROR, NOT_INITIALIZED, CANCELLED = -32700, -32002, -32800
HANG_GUARD = 120  # seconds: only so that a hang fails the test instead of stalling the suite


def tiny_args(model: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--device", "cpu", "--max-tokens", "8", *extra]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def srv(tiny_model_dir: Path):
    c, _ = await start(tiny_args(tiny_model_dir), init_options={"budgetMs": 0})
    # Until the model is loaded every request is answered empty at once: the tests would test nothing.
    await wait_loaded(c)
    yield c
    await stop(c)


def ic_params(uri: str, line: Any, character: Any) -> dict[str, Any]:
    return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 1}}


_ids = iter(range(1, 10**9))


async def call(c: Client, method: Any, params: Any = None, omit_params: bool = False, **fields: Any) -> Any:
    """A raw request (fields may be malformed on purpose); its result, or raises its error."""
    msg_id = f"r{next(_ids)}"
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method, **fields}
    if not omit_params:
        msg["params"] = params
    return await send_raw(c, msg, msg_id, timeout=HANG_GUARD)


async def error_code(coro: Any) -> int:
    with pytest.raises(JsonRpcException) as info:
        await coro
    return info.value.code


async def null_id_answer(c: Client, body: bytes) -> JsonRpcException:
    """Send a frame that has no usable id: the answer is an error with a null id."""
    fut: Future[Any] = Future()
    c.protocol._request_futures[None] = fut
    await send_raw(c, body)
    with pytest.raises(JsonRpcException) as info:
        await asyncio.wait_for(asyncio.wrap_future(fut), HANG_GUARD)
    return info.value


async def alive(c: Client) -> None:
    stats = plain(await call(c, "codestral/stats", omit_params=True))
    assert stats["model"]["source"], stats  # answered, by a server with its model


def answered_at(result: Any, line: int, character: int | None = None) -> list[dict[str, Any]]:
    """An inline completion result whose every item inserts text at the cursor: its range starts at
    (line, character), where the request really was (None: anywhere on `line`). Returns the items."""
    if isinstance(result, types.InlineCompletionList):
        result = converters.get_converter().unstructure(result)
    result = plain(result)
    assert isinstance(result, dict) and isinstance(result.get("items"), list), result
    for item in result["items"]:
        assert isinstance(item["insertText"], str), item
        start = item["range"]["start"]
        assert start["line"] == line and (character is None or start["character"] == character), (item, line, character)
        assert item["range"]["end"]["line"] == line, item
    return result["items"]


# -- invalid params -------------------------------------------------------------------------------


async def test_invalid_positions_documents_and_types_get_invalid_params(srv):
    uri = "file:///w/three.py"
    open_doc(srv, uri, "abc\ndef f():\n    return ")  # three lines, no final line break
    open_doc(srv, "file:///w/closed.py", "x = 1\n")
    srv.text_document_did_close(types.DidCloseTextDocumentParams(
        text_document=types.TextDocumentIdentifier(uri="file:///w/closed.py")))
    cases = {
        "negative line": ic_params(uri, -1, 0),
        "negative character": ic_params(uri, 0, -5),
        "line == number of lines": ic_params(uri, 3, 0),
        "line far past the end": ic_params(uri, 2**31 - 1, 0),
        "line beyond uinteger": ic_params(uri, 2**40, 0),
        "unknown document": ic_params("file:///w/never-opened.py", 0, 0),
        "closed document": ic_params("file:///w/closed.py", 0, 0),
        "line is a string": ic_params(uri, "1", 0),
        "character is a float": ic_params(uri, 1, 2.5),
        "line is a boolean": ic_params(uri, True, 0),
        "uri is a number": ic_params(7, 0, 0),  # type: ignore[arg-type]
        "uri is null": ic_params(None, 0, 0),  # type: ignore[arg-type]
        "position missing": {"textDocument": {"uri": uri}, "context": {"triggerKind": 1}},
        "params is a list": [uri, 0, 0],
        "params is null": None,
    }
    for name, params in cases.items():
        assert await error_code(call(srv, IC, params)) == INVALID_PARAMS, name
    assert await error_code(call(srv, IC, omit_params=True)) == INVALID_PARAMS
    assert await error_code(call(srv, "textDocument/completion", ic_params(uri, -1, 0))) == INVALID_PARAMS
    # The message names the problem.
    with pytest.raises(JsonRpcException, match="past the end"):
        await call(srv, IC, ic_params(uri, 3, 0))
    with pytest.raises(JsonRpcException, match="not open"):
        await call(srv, IC, ic_params("file:///w/closed.py", 0, 0))
    await alive(srv)


async def test_a_character_past_the_end_of_its_line_means_the_line_end(srv):
    uri = "file:///w/clamp.py"
    open_doc(srv, uri, "x = 1\ny = 'é😀'\n")  # the last line is empty (line 2)
    # Where each really is: a character past the end of its line is the line's end (UTF-16 units).
    for (line, character), really in [((0, 99), 5), ((1, 99), 9), ((1, 8), 8), ((2, 50), 0), ((1, 2**31 - 1), 9)]:
        answered_at(await call(srv, IC, ic_params(uri, line, character)), line, really)
    result = plain(await call(srv, "textDocument/completion", ic_params(uri, 0, 99)))
    assert result["isIncomplete"] is True and isinstance(result["items"], list), result
    for item in result["items"]:  # the word before the line's end (`1`) is replaced, nothing past the end
        edit = item["textEdit"]
        assert edit["range"] == {"start": {"line": 0, "character": 4}, "end": {"line": 0, "character": 5}}, edit
        assert edit["newText"].startswith("1"), edit


# -- unknown methods, malformed frames, bad notifications -----------------------------------------


async def test_unknown_methods_and_malformed_frames_are_answered(srv):
    assert await error_code(call(srv, "codestral/noSuchThing", {})) == METHOD_NOT_FOUND
    assert await error_code(call(srv, "$/noSuchThing", {"a": 1})) == METHOD_NOT_FOUND
    assert await error_code(call(srv, 5, {})) == INVALID_REQUEST  # method is not a string
    assert await error_code(call(srv, ["x"], {})) == INVALID_REQUEST
    assert await error_code(call(srv, IC, ic_params("file:///w/warm.py", 0, 0), jsonrpc="1.0")) == INVALID_REQUEST
    assert await error_code(call(srv, "workspace/executeCommand", {"command": "nope", "arguments": []})
                            ) == INVALID_PARAMS
    # The accept command without its argument, or with an odd one, is no error.
    for arguments in ([], [None], [{"x": 1}]):
        await call(srv, "workspace/executeCommand", {"command": "codestral.accept", "arguments": arguments})
    srv.protocol.notify("codestral/noSuchNotification", {"x": 1})  # ignored
    frames = {
        b"{not json": PARSE_ERROR,
        b'{"jsonrpc": "2.0", "id": "u", "method": "codestral/stats", "params": "\xff\xfe"}': PARSE_ERROR,
        b"[1, 2]": INVALID_REQUEST,
        b'"just a string"': INVALID_REQUEST,
        b"42": INVALID_REQUEST,
        b'{"jsonrpc": "2.0"}': INVALID_REQUEST,
        b'{"jsonrpc": "2.0", "id": {"no": "such id"}, "method": "codestral/stats"}': INVALID_REQUEST,
    }
    for body, code in frames.items():
        assert (await null_id_answer(srv, body)).code == code, body
    await alive(srv)


async def test_notifications_with_bad_params_never_kill_the_server(srv):
    uri = "file:///w/notify.py"
    open_doc(srv, uri, "def g(y):\n    return ")
    bad = [
        ("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": "v"}}),
        ("textDocument/didOpen", None),
        ("textDocument/didChange", {"textDocument": {"uri": uri, "version": 3},
                                    "contentChanges": [{"range": 5, "text": "zzz"}]}),
        ("textDocument/didChange", {"textDocument": {"uri": uri, "version": 3}, "contentChanges": "zzz"}),
        ("textDocument/didChange", {"textDocument": {"uri": "file:///w/not-open.py", "version": 2},
                                    "contentChanges": [{"text": "whole new text"}]}),
        ("textDocument/didClose", {"textDocument": {"uri": "file:///w/not-open.py"}}),
        ("textDocument/didClose", {"textDocument": 5}),
        ("codestral/didPartiallyAccept", {"id": "c1", "acceptedLength": "many"}),
        ("codestral/didPartiallyAccept", [1, 2, 3]),
        ("workspace/didChangeConfiguration", {"settings": {"codestral": {"maxTokens": "lots"}}}),
        ("$/cancelRequest", {"id": "no-such-request"}),
        ("$/cancelRequest", {"id": {"nested": True}}),
    ]
    for method, params in bad:
        await send_raw(srv, {"jsonrpc": "2.0", "method": method, "params": params})
    # A change whose range lies past the end appends; the document is still served.
    srv.protocol.notify("textDocument/didChange", {
        "textDocument": {"uri": uri, "version": 4},
        "contentChanges": [{"range": {"start": {"line": 99, "character": 0}, "end": {"line": 120, "character": 9}},
                            "text": "\n# appended"}]})
    answered_at(await call(srv, IC, ic_params(uri, 1, 11)), 1, 11)
    with pytest.raises(JsonRpcException, match="not open"):  # the change did not open it
        await call(srv, IC, ic_params("file:///w/not-open.py", 0, 0))
    await alive(srv)


async def test_requests_before_initialize_and_after_shutdown_are_answered(tmp_path):
    client = Client()
    await client.start_io(sys.executable, "-m", "codestral_ls.server", "--model", str(tmp_path / "none"), cwd=str(ROOT),
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    drain = asyncio.ensure_future(_drain_stderr(client))
    try:
        uri = "file:///w/early.py"
        assert await error_code(call(client, IC, ic_params(uri, 0, 0))) == NOT_INITIALIZED
        assert await error_code(call(client, "codestral/stats", omit_params=True)) == NOT_INITIALIZED
        open_doc(client, uri, "x = ")  # a notification before initialize: dropped
        await client.initialize_async(types.InitializeParams(capabilities=types.ClientCapabilities()))
        client.initialized(types.InitializedParams())
        with pytest.raises(JsonRpcException, match="not open"):
            await call(client, IC, ic_params(uri, 0, 0))
        open_doc(client, uri, "x = ")
        assert await error_code(call(client, "initialize", {"capabilities": {}})) == INVALID_REQUEST
        for _ in range(300):  # a loading model answers empty at once: wait until its load has failed
            if getattr(getattr(await call(client, "codestral/stats", omit_params=True), "model", None), "error", None):
                break
            await asyncio.sleep(0.1)
        with pytest.raises(JsonRpcException, match="does not exist"):  # the document is still open
            await call(client, IC, ic_params(uri, 0, 4))
        await asyncio.wait_for(client.shutdown_async(None), HANG_GUARD)
        assert await error_code(call(client, "codestral/stats", omit_params=True)) == INVALID_REQUEST
        client.exit(None)
        assert await asyncio.wait_for(client._server.wait(), HANG_GUARD) == 0  # a clean exit
    finally:
        await client.stop()
        drain.cancel()


async def test_percent_encoded_uris_find_their_document(srv):
    uri = "file:///w/my%20file%2Bv2.py"
    open_doc(srv, uri, "def h(z):\n    return ")
    answered_at(await call(srv, IC, ic_params(uri, 1, 11)), 1, 11)


# -- big and odd input ----------------------------------------------------------------------------


async def test_big_and_odd_documents_are_answered(srv):
    line = "    total = compute(alpha, beta) + 😀 + '中文'  # note\n"
    big = "def f():\n" + line * (2_000_000 // len(line))
    long_line = "x = [" + ", ".join(str(i) for i in range(30_000)) + "]"
    docs = {
        "file:///w/big.py": (big, [(0, 8), (big.count("\n"), 0), (big.count("\n") // 2, 20)]),
        "file:///w/long.py": (f"a = 1\n{long_line}\nb = ", [(1, 50_000), (1, len(long_line)), (2, 4)]),
        "file:///w/nul.py": ("x = '\x00\x00'\ny = \x00", [(0, 6), (1, 5)]),
        "file:///w/crlf.py": ("def f(x):\r\n    return \r\n\r\n", [(1, 11), (1, 99), (2, 0)]),
        "file:///w/lone-cr.py": ("a = 1\rb = 2\rc = ", [(2, 4), (1, 5)]),
        "file:///w/unicode.py": ("s = '😀😀中文'\nt = 'é' + \ud800\n", [(0, 5), (0, 6), (0, 99), (1, 10)]),
        "file:///w/separators.js": ("let a = 1;\u2028let b = 2;\x0c\nlet c = ", [(1, 8), (0, 30)]),
        "file:///w/empty.py": ("", [(0, 0)]),
    }
    for uri, (text, positions) in docs.items():
        open_doc(srv, uri, text, language="javascript" if uri.endswith(".js") else "python")
        for line_no, character in positions:
            answered_at(await call(srv, IC, ic_params(uri, line_no, character)), line_no)
    # Keystrokes in the 2 MB document, then a suggestion.
    last = big.count("\n")
    for i, ch in enumerate("value = "):
        insert(srv, "file:///w/big.py", 2 + i, last, i, ch)
    answered_at(await call(srv, IC, ic_params("file:///w/big.py", last, 8)), last, 8)
    result = plain(await call(srv, "textDocument/completion", ic_params("file:///w/big.py", last, 8)))
    for item in result["items"]:  # the word before the cursor (`value = `: none) up to the cursor
        assert item["textEdit"]["range"]["end"] == {"line": last, "character": 8}, item
    await alive(srv)


# -- load -----------------------------------------------------------------------------------------


async def test_a_burst_of_200_keystrokes_is_all_answered_and_the_server_answers_after(srv):
    uri = "file:///w/burst.py"
    open_doc(srv, uri, "def f(x):\n    return \n")
    futures = []
    for i in range(200):
        insert(srv, uri, 2 + i, 1, 11 + i, "x+"[i % 2])
        futures.append(srv.protocol.send_request_async(IC, types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=1, character=12 + i),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)),
            msg_id=f"burst-{i}"))
        if i % 10 == 5:  # the editor gives up on some of them
            srv.protocol.notify("$/cancelRequest", types.CancelParams(id=f"burst-{i - 1}"))
    results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), HANG_GUARD * 2)
    assert len(results) == 200
    for r in results:
        if isinstance(r, BaseException):
            assert isinstance(r, JsonRpcException) and r.code == CANCELLED, repr(r)
        else:
            assert isinstance(r.items, list | tuple)
    assert not isinstance(results[-1], BaseException)  # the newest one is answered
    ok = await asyncio.wait_for(inline(srv, uri, 1, 211), HANG_GUARD)
    answered_at(ok, 1, 211)
    await alive(srv)


# -- security defaults ----------------------------------------------------------------------------


async def test_no_network_listener_and_no_connections_by_default(srv):
    # After everything above: the server process never listened nor connected anywhere.
    proc = psutil.Process(srv._server.pid)
    inet = [conn for conn in proc.net_connections(kind="inet")]
    assert inet == [], inet
    children = proc.children(recursive=True)
    assert all(child.net_connections(kind="inet") == [] for child in children)


class _Payload:
    """Unpickling this runs a shell command: what a malicious pytorch_model.bin carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_checkpoint_is_never_unpickled(tiny_model_dir, tmp_path):
    """Behaviour, not a grep: a model folder whose weights are a pickle that runs code when loaded
    is refused, and the code never runs (the CLI, as a user would pass it)."""
    import shutil
    import subprocess

    import torch

    folder = tmp_path / "pickled-model"
    shutil.copytree(tiny_model_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "code-ran"
    torch.save({"model.embed_tokens.weight": _Payload(marker)}, folder / "pytorch_model.bin")
    r = subprocess.run([sys.executable, "-m", "codestral_ls.server", "complete", "--model", str(folder),
                        "--device", "cpu", "server/samples/sample.py:8:11"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "CODESTRAL_LS_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2 and "codestral-ls: error: cannot load model" in r.stderr, r.stderr[-2000:]
    assert not marker.exists()  # the payload never ran
    torch.load(folder / "pytorch_model.bin", weights_only=False)  # the control: loading it does run it
    assert marker.exists()


def test_allow_download_later_is_not_undone_by_an_earlier_offline_load(tiny_model_dir, monkeypatch):
    """Issue 16: the first offline load set $HF_HUB_OFFLINE for the whole process, so turning
    allowDownload on later could never download. Offline is now per call (local_files_only)."""
    import transformers
    from codestral_ls.engine.models.loading import ModelSpec, load_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    load_model(ModelSpec(model=str(tiny_model_dir), device="cpu", runner="torch"))
    assert "HF_HUB_OFFLINE" not in os.environ
    seen: list[Any] = []

    def model(source: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("local_files_only"))
        raise RuntimeError("stop here")  # nothing is downloaded

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    for allow in (False, True):
        with pytest.raises(Exception, match="stop here"):
            load_model(ModelSpec(model=str(tiny_model_dir), device="cpu", runner="torch", allow_download=allow))
    assert seen == [True, False]


def test_folder_models_load_from_safetensors_and_no_remote_code(tiny_model_dir, monkeypatch):
    import transformers
    from codestral_ls.engine.errors import ModelLoadError
    from codestral_ls.engine.models.loading import ModelSpec, load_model

    seen: dict[str, Any] = {}

    def tokenizer(source: Any, **kwargs: Any) -> Any:
        seen["tokenizer"] = kwargs
        return object()

    def model(source: Any, **kwargs: Any) -> Any:
        seen["model"] = kwargs
        raise RuntimeError("stop here")  # nothing is loaded, nothing downloaded

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    for spec in (ModelSpec(model=str(tiny_model_dir), device="cpu"),  # a folder
                 ModelSpec(model="someone/some-model", device="cpu", allow_download=True)):  # a hub id
        seen.clear()
        with pytest.raises(ModelLoadError):
            load_model(spec)
        assert seen["model"]["use_safetensors"] is True  # never a pickled .bin
        assert seen["model"]["trust_remote_code"] is False
        assert seen["tokenizer"]["trust_remote_code"] is False
    assert Options().trust_remote_code is False and ModelSpec().trust_remote_code is False
    assert Options().allow_download is False


async def test_logs_never_contain_document_text(tiny_model_dir):
    secret = f"sk_live_{uuid.uuid4().hex}"
    c, _ = await start(tiny_args(tiny_model_dir, "--log-level", "debug"), init_options={"budgetMs": 0})
    try:
        uri = "file:///w/secret.py"
        open_doc(c, uri, f"API_KEY = '{secret}'\n\ndef connect():\n    return ")
        await asyncio.wait_for(inline(c, uri, 3, 11), HANG_GUARD)
        insert(c, uri, 2, 3, 11, f"'{secret}' + ")
        await call(c, IC, ic_params(uri, 3, 11 + len(secret) + 5))
        await call(c, "textDocument/completion", ic_params(uri, 0, 11))
        # Bad messages that carry the secret where the document text goes, or in a bad value.
        raw = [
            {"method": "textDocument/didOpen", "params": {"textDocument": {
                "uri": "file:///w/s2.py", "languageId": "python", "version": secret, "text": secret}}},
            {"method": "textDocument/didChange", "params": {"textDocument": {"uri": uri, "version": 9},
                                                           "contentChanges": [{"range": secret, "text": secret}]}},
            {"method": "textDocument/didChange", "params": {"textDocument": {"uri": "file:///w/closed.py",
                                                                            "version": 9},
                                                           "contentChanges": [{"text": secret}]}},
            {"method": "codestral/noSuchNotification", "params": {"text": secret}},
            {"method": "codestral/didPartiallyAccept", "params": {"id": "c1", "acceptedLength": secret}},
        ]
        for msg in raw:
            await send_raw(c, {"jsonrpc": "2.0", **msg})
        for method, params in ((IC, ic_params(uri, secret, 0)), ("codestral/noSuchMethod", {"text": secret}),
                               (IC, {"textDocument": {"uri": uri, "text": secret}})):
            with pytest.raises(JsonRpcException):
                await call(c, method, params)
        await null_id_answer(c, f'{{"jsonrpc": "2.0", "method": "x", "params": "{secret}'.encode())
        await alive(c)
    finally:
        await stop(c)
    await asyncio.sleep(0.2)
    stderr = bytes(c.stderr).decode("utf-8", "replace")
    assert "DEBUG" in stderr  # the debug log was on
    assert secret not in stderr
    assert secret[8:20] not in stderr  # nor a piece of it
    assert not [m for m in c.logs if secret[8:20] in m.message]
    assert not [m for m in c.messages if secret[8:20] in m.message]


def test_pygls_records_are_withheld_unless_the_flag_is_set():
    from codestral_ls.server.lsplog import WithholdDocumentText

    allowed = False
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Collect()
    handler.addFilter(WithholdDocumentText(lambda: allowed))
    logger = logging.getLogger("pygls.protocol.json_rpc")
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        body = json.dumps({"params": {"text": "password = hunter2"}})
        for allowed in (False, True):
            records.clear()
            logger.info("Sending data: %s", body)
            logger.warning("Failed to handle notification %r: %s", "textDocument/didOpen", {"text": "hunter2"})
            try:
                int(json.loads(body)["params"]["text"])  # the message quotes the value
            except ValueError:
                logger.exception("Unable to deserialize message")
            joined = "\n".join(records)
            assert ("hunter2" in joined) is allowed
            assert "textDocument/didOpen" in joined and "ValueError" in joined
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


# -- a model that fails to load -------------------------------------------------------------------


async def test_a_model_that_fails_to_load_explains_on_every_request(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors at all")
    for model, why in ((tmp_path / "missing", "does not exist"), (broken, "cannot load")):
        c, _ = await start(["--model", str(model), "--device", "cpu"])
        try:
            open_doc(c, "file:///w/x.py", "x = ")
            # While it loads a request is answered empty at once; once the load failed, every one says why.
            for _ in range(300):
                if getattr(getattr(await call(c, "codestral/stats", omit_params=True), "model", None), "error", None):
                    break
                await asyncio.sleep(0.1)
            for _ in range(3):
                with pytest.raises(JsonRpcException, match=why):
                    await call(c, IC, ic_params("file:///w/x.py", 0, 4))
            stats = await call(c, "codestral/stats", omit_params=True)
            assert why in stats.model.error
            await asyncio.sleep(0.2)
            assert any(why in m.message for m in c.messages)  # window/showMessage
        finally:
            await stop(c)


# -- in-process: engine faults, bounded caches, document sync ---------------------------------------


@pytest.fixture()
def local(tiny_model_dir):
    # No typed-through cache: every request below must reach the engine.
    ip = InProcess(Options(model=str(tiny_model_dir), device="cpu", budget_ms=0, max_tokens=8,
                           typed_cache_entries=0))
    yield ip
    ip.stop()


async def test_engine_faults_fail_one_request_and_the_next_one_works(local, monkeypatch):
    import torch
    from codestral_ls.engine.decoding.engine import Engine

    await local.initialize()
    uri = "file:///w/fault.py"
    local.open(uri, "def f(x):\n    return ")
    first = await local.inline(uri, 1, 11)
    assert "result" in first
    real = Engine.complete
    faults = iter([RuntimeError("engine exploded"),
                   torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")])

    worker = local.server.backend
    # A loading model answers empty at once: load first, so the faults below meet real requests.
    await asyncio.get_running_loop().run_in_executor(None, worker.loaded.wait)

    def failing(self: Engine, req: Any) -> Any:
        running = worker._running  # a request's job; a warm-up prefetch is not one and must not eat a fault
        if running is None or running.req is not req:
            return real(self, req)
        fault = next(faults, None)
        if fault is not None:
            raise fault
        return real(self, req)

    monkeypatch.setattr(Engine, "complete", failing)
    for version, why in ((2, "engine exploded"), (3, "out of memory")):
        local.change(uri, version, (1, 11), (1, 11), "x" if version == 2 else " ")  # a new prompt each time
        answer = await local.inline(uri, 1, 12 if version == 2 else 13)
        assert answer["error"]["code"] == INTERNAL_ERROR and why in answer["error"]["message"]
        shown = [m["params"]["message"] for m in local.notifications("window/showMessage")]
        assert any(why in m for m in shown)
    assert local.server.backend.engine.store.entries == []  # the OOM freed the KV cache
    after = await local.inline(uri, 1, 13)
    assert "result" in after and isinstance(after["result"]["items"], list)
    assert local.server.stats.errors == 2


async def test_caches_and_bookkeeping_stay_bounded_over_a_soak():
    from codestral_ls.engine.decoding.kvcache import Entry, PrefixStore, Sequence
    from codestral_ls.server.pipeline import Completer, Document
    from codestral_ls.server.stats import Stats

    from tests.scripted import ScriptedBackend

    stats = Stats()
    completer = Completer(ScriptedBackend("value + 1"), Options(), stats)
    for i in range(3000):
        text = f"def f{i}(x):\n    return {'x' * (i % 7)}"
        s = await completer.complete(Document(f"file:///w/soak{i}.py", text, "python"), len(text))
        if s is not None:
            completer.accepted(s.id)
    assert len(stats.latencies_ms) <= 2000
    assert len(stats.shown) <= 1000
    assert len(completer.typed) <= completer.options.typed_cache_entries
    assert len(completer.anchors) <= 64

    class FakeKV:  # a runner's cache of `size` bytes
        def __init__(self, size: int) -> None:
            self.size = size

        def crop(self, n: int) -> None:
            pass

        def nbytes(self, n_tokens: int) -> int:
            return self.size

        def release(self) -> None:
            pass

    for budget in (10_000, 10**9):  # bounded in bytes, and in count
        store = PrefixStore(budget_bytes=budget)
        for i in range(500):
            store.put(Entry(doc=f"d{i}", seq=Sequence(ids=[i], kv=FakeKV(8 * (10 + i % 50)))))
        assert len(store.entries) <= store.max_entries and store.total_bytes() <= store.budget_bytes

    # The server's own bookkeeping, over many documents and keystrokes.
    ip = InProcess()
    await ip.initialize(engine=False)
    for i in range(300):
        uri = f"file:///w/many{i}.py"
        ip.open(uri, "x = 1\n")
        ip.change(uri, 2, (0, 5), (0, 5), "2")
        if i % 2:
            ip.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    for i in range(400):
        ip.server.show_error(f"codestral-ls: completion failed at {i}")
    assert len(ip.server.recent) <= 16
    assert len(ip.server._errors_shown) <= 256
    assert ip.server.protocol._request_futures == {}  # pygls kept one future per notification
    assert ip.text("file:///w/many0.py") == "x = 12\n" and ip.text("file:///w/many1.py") is None


async def test_document_sync_follows_lsp_line_rules():
    ip = InProcess()
    await ip.initialize(engine=False)
    cases = [
        # (text, change start, end, new text, expected)
        ("a\u2028b\nc", (1, 0), (1, 0), "X", "a\u2028b\nXc"),  # U+2028 is no line break in LSP
        ("a\x0cb\x85c\nd", (1, 1), (1, 1), "Y", "a\x0cb\x85c\ndY"),
        ("ab\r\ncd\r\n", (1, 2), (1, 2), "!", "ab\r\ncd!\r\n"),
        ("ab\rcd", (1, 0), (1, 1), "", "ab\rd"),  # a lone CR ends a line
        ("ab\ncd", (0, 99), (0, 99), "?", "ab?\ncd"),  # past the end of a line: its end
        ("ab\ncd", (1, 99), (1, 99), "?", "ab\ncd?"),  # also on the last line
        ("ab\ncd", (7, 0), (9, 0), "!", "ab\ncd!"),  # past the last line: the end
        ("😀x", (0, 2), (0, 3), "", "😀"),  # UTF-16: the emoji is two units
        ("😀x", (0, 1), (0, 1), "_", "_😀x"),  # inside a character: before it
        ("x\x00y", (0, 2), (0, 2), "\x00", "x\x00\x00y"),
    ]
    for n, (text, begin, end, new, expected) in enumerate(cases):
        uri = f"file:///w/sync{n}.txt"
        ip.open(uri, text)
        ip.change(uri, 2, begin, end, new)
        assert ip.text(uri) == expected, (text, begin, end, new)
    doc = ip.server.open_document("file:///w/sync0.txt")
    assert isinstance(doc, LspTextDocument) and doc.line_count() == 2
    assert line_starts("a\r\nb\rc\n") == [0, 3, 5, 7]
    # Lines counted the LSP way for validation too: U+2028 does not make a second line.
    ip.open("file:///w/one-line.js", "a\u2028b")
    answer = await ip.inline("file:///w/one-line.js", 1, 0)
    assert answer["error"]["code"] == INVALID_PARAMS


async def test_utf8_and_utf32_position_encodings():
    for encoding, units in (("utf-8", 6), ("utf-32", 2)):  # "é😀" then "x"
        ip = InProcess()
        await ip.initialize(encodings=[encoding], engine=False)
        ip.open("file:///w/enc.py", "é😀x")
        ip.change("file:///w/enc.py", 2, (0, units), (0, units), "|")
        assert ip.text("file:///w/enc.py") == "é😀|x", encoding


def test_a_request_never_splits_or_parses_the_whole_document(monkeypatch):
    import codestral_ls.server.context as context
    import codestral_ls.server.cursor as cursor
    from codestral_ls.server.lsp import create_server
    from pygls.workspace import TextDocument

    line = "    value = compute(alpha, beta)  # 中文 😀\n"
    big = "def f():\n" + line * (2_000_000 // len(line))
    server = create_server(Options())
    from codestral_ls.server.documents import adopt
    from pygls.workspace import Workspace

    server.protocol._workspace = Workspace(None)
    adopt(server.protocol._workspace).put_text_document(types.TextDocumentItem(
        uri="file:///w/big.py", language_id="python", version=1, text=big))

    def forbidden(self: Any) -> Any:
        raise AssertionError("the whole document was split")

    monkeypatch.setattr(TextDocument, "lines", property(forbidden))
    last = big.count("\n")
    place = server.place("file:///w/big.py", types.Position(line=last - 1, character=18))
    doc, offset = place.doc, place.offset
    assert doc.text[offset - 18:offset] == "    value = comput"

    tokenized: list[int] = []
    parsed: list[int] = []
    real_parser = cursor.parser_for("python")

    class Parser:
        def parse(self, data: bytes) -> Any:
            parsed.append(len(data))
            return real_parser.parse(data)

    monkeypatch.setattr(cursor, "parser_for", lambda language: Parser())

    class Counting:
        def starts(self, text: str) -> list[int]:
            tokenized.append(len(text))
            return list(range(0, len(text), 3))

    count = Counting()

    context.build_context(cursor.read_cursor(big, offset, "python"), count, 512, 128)
    assert cursor.read_cursor(big, offset, "python").mode
    one_line = "x = [" + ";".join(f"f({i})" for i in range(300_000)) + "]"
    context.build_context(cursor.read_cursor(one_line, len(one_line) // 2, "python"), count, 512, 128)
    assert cursor.read_cursor(one_line, len(one_line) // 2, "python").mode
    assert max(tokenized) < 10_000
    assert max(parsed) < 200_000 and len(big) > 1_900_000


def test_a_window_inside_a_huge_line_fits_the_token_budget():
    from codestral_ls.server.context import build_context
    from codestral_ls.server.cursor import read_cursor

    class ByteCounter:  # byte-level: a digit is a token, a CJK character three
        def starts(self, text: str) -> list[int]:
            return [i for i, ch in enumerate(text) for _ in range(len(ch.encode("utf-8")))]

    count = ByteCounter()

    for line in ("x = [" + ", ".join(str(i) for i in range(30_000)) + "]", "s = '" + "中文字符" * 20_000 + "'"):
        text = f"a = 1\n{line}\nb = "
        starts = set()
        for k in range(20):  # the cursor moving along the line
            offset = 6 + len(line) // 2 + k
            ctx = build_context(read_cursor(text, offset, "python"), count, 512, 128)
            assert 0 < len(count.starts(ctx.prefix)) <= 512 and 0 < len(count.starts(ctx.suffix)) <= 128
            starts.add(ctx.prefix_start)
        assert len(starts) <= 2  # the window's edge stays put, for the KV cache


def test_a_cancelled_queued_request_then_a_newer_one_leaves_the_engine_thread_alive():
    """Found by the fuzz test: `$/cancelRequest` cancels the queued job's future; the next request
    for that document then failed to supersede it, and the engine thread died (every later request
    hung)."""
    import threading

    from codestral_ls.engine.request import FimRequest, FimResult
    from codestral_ls.engine.serving.worker import EngineWorker

    started, gate = threading.Event(), threading.Event()

    class FakeEngine:
        def complete(self, req: FimRequest) -> FimResult:
            if req.doc == "busy":
                started.set()
                gate.wait(HANG_GUARD)
            return FimResult(text=req.doc, finish="stop", prompt_tokens=1)

        def has_background_work(self) -> bool:
            return False

    worker = EngineWorker(FakeEngine).start()
    try:
        worker.submit(FimRequest(doc="busy", prefix="", suffix=""))
        assert started.wait(HANG_GUARD)
        queued = worker.submit(FimRequest(doc="d", prefix="", suffix=""))
        assert queued.cancel()  # what asyncio.wrap_future does when the LSP request is cancelled
        newer = worker.submit(FimRequest(doc="d", prefix="", suffix=""))
        gate.set()
        assert newer.result(HANG_GUARD).text == "d"
        assert worker.submit(FimRequest(doc="e", prefix="", suffix="")).result(HANG_GUARD).text == "e"
        assert worker._thread.is_alive()
    finally:
        gate.set()
        worker.stop()


def test_every_private_pygls_member_we_reach_is_listed_and_still_there(monkeypatch):
    """pygls is reached below its public API in one documented place (server/pygls_seam.py): an
    upgrade that removes or re-signs any of those members fails here, by name."""
    import ast

    from codestral_ls.server import pygls_seam
    from pygls.protocol import LanguageServerProtocol

    assert pygls_seam.missing() == []
    # Every private pygls member protocol.py/documents.py touch is in the list (ours, like
    # LspTextDocument._starts, are not pygls'; dunders are Python's).
    instances = pygls_seam._instances()
    listed = {(r.owner, r.member) for r in pygls_seam.REACHED}
    used = set()
    for name in ("protocol.py", "documents.py"):
        tree = ast.parse((ROOT / "server" / name).read_text(encoding="utf-8"))
        used |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                 and node.attr.startswith("_") and not node.attr.startswith("__")}
        used |= {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
                 and node.name.startswith("_") and not node.name.startswith("__")}
    for owner, obj in instances.items():
        for member in used:
            if hasattr(obj, member):
                assert (owner, member) in listed, f"pygls private {type(obj).__name__}.{member} is not in REACHED"
    # The check does catch a pygls that changed: one member gone, one re-signed.
    owner = next(c for c in LanguageServerProtocol.__mro__ if "_send_data" in vars(c))
    monkeypatch.delattr(owner, "_send_data")

    def changed(self, fut, *, message_id):
        pass

    monkeypatch.setattr(LanguageServerProtocol, "_send_handler_result", changed)
    assert [m.split(" ")[0].split("(")[0] for m in pygls_seam.missing()] == [
        "LanguageServerProtocol._send_data", "LanguageServerProtocol._send_handler_result"]


async def test_a_settings_reload_never_waits_for_the_old_engine_on_the_event_loop(monkeypatch):
    # A reload stops the old engine, whose thread may be inside a forward pass for a while: joining it
    # on the event loop froze every request for up to 10 s.
    import threading
    import time

    from codestral_ls.server import backends
    from codestral_ls.server.lsp import create_server

    stopped_on: list[threading.Thread] = []

    class Busy:  # the old engine, still inside a forward pass
        def stop(self) -> None:
            stopped_on.append(threading.current_thread())
            time.sleep(0.3)

    class New:
        loaded = threading.Event()
        load_error = None

        def stop(self) -> None:
            pass

    monkeypatch.setattr(backends, "open_backend", lambda *a, **kw: New())
    server = create_server(Options(backend="mistral"))
    server.backend = Busy()
    t0 = time.perf_counter()
    server.start_engine()
    assert time.perf_counter() - t0 < 0.3  # the loop went on while the old engine stopped
    for _ in range(100):
        if stopped_on:
            break
        await asyncio.sleep(0.01)
    assert stopped_on and stopped_on[0] is not threading.current_thread()
    assert isinstance(server.backend, New)
