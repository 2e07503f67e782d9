"""Remote backends against small local HTTP servers that speak each API's documented shape.

Everything listens on 127.0.0.1 (port 0) in this process: no other host is ever contacted.
"""

from __future__ import annotations

import asyncio
import json
import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.models.counting import ApproxCounter, count
from codestral_ls.engine.request import FimRequest, StopRule
from codestral_ls.engine.serving.remote import APIS, RemoteBackend
from codestral_ls.server.backends import open_backend
from codestral_ls.server.options import Options, parse_options
from codestral_ls.server.pipeline import Completer, Document
from lsprotocol import types
from pygls.exceptions import JsonRpcException

from benchmarks.lsp_client import inline, open_doc, start, stop

KEY = "sk-test-0123456789abcdef"  # a fake key: it must never show up in an error message


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeApi:
    """Answers every POST with (status, JSON body) after `delay` s; records what it was sent."""

    server: ThreadingHTTPServer
    status: int = 200
    answer: Any = None
    delay: float = 0.0
    seen: list[Seen] = field(default_factory=list)
    closed_early: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def api() -> Iterator[FakeApi]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_POST(self) -> None:  # noqa: N802
            fake: FakeApi = self.server.fake  # type: ignore[attr-defined]
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if fake.delay:
                fake.release.wait(fake.delay)
                readable, _, _ = select.select([self.connection], [], [], 0)
                if readable and self.connection.recv(1, socket.MSG_PEEK) == b"":
                    fake.closed_early.set()  # the client hung up while we were "thinking"
                    return
            out = json.dumps(fake.answer).encode()
            self.send_response(fake.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.block_on_close = False
    fake = FakeApi(server)
    server.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    fake.release.set()
    server.shutdown()
    server.server_close()


def backend(name: str, api: FakeApi, **opts: Any) -> RemoteBackend:
    options, problems = parse_options({"backend": name, "endpoint": api.url, **opts})
    assert not problems
    b = open_backend(options)
    assert isinstance(b, RemoteBackend)
    return b


def request(doc: str = "file:///w/a.py", single_line: bool = True, **kw: Any) -> FimRequest:
    return FimRequest(doc=doc, prefix="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))\n",
                      forced_middle=kw.pop("forced_middle", "a"), max_tokens=32,
                      stop=StopRule(single_line=single_line, max_lines=kw.pop("max_lines", 12)), **kw)


# -- each API's request and answer --------------------------------------------------------------------

CASES = {
    "mistral": ("/v1/fim/completions", {"model": "codestral-latest"},
                {"choices": [{"index": 0, "message": {"role": "assistant", "content": " + b\nprint()"},
                              "finish_reason": "stop"}], "usage": {"prompt_tokens": 20, "completion_tokens": 5}}),
    "openai": ("/v1/completions", {"model": "codestral-22b"},
               {"choices": [{"text": " + b\nprint()", "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 5}}),
    "llamacpp": ("/infill", {}, {"content": " + b\nprint()", "stop": True, "stop_type": "word",
                                 "tokens_evaluated": 20, "tokens_predicted": 5}),
    "ollama": ("/api/generate", {"model": "codestral"},
               {"model": "codestral", "response": " + b\nprint()", "done": True, "done_reason": "stop",
                "prompt_eval_count": 20, "eval_count": 5}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_request_shape_auth_and_answer(name, api, monkeypatch):
    path, extra, answer = CASES[name]
    monkeypatch.setenv("TEST_CODESTRAL_KEY", KEY)
    api.answer = answer
    opts = {"apiKeyEnv": "TEST_CODESTRAL_KEY"}
    if name == "openai":
        opts["remoteModel"] = "codestral-22b"
    b = backend(name, api, **opts)
    try:
        assert b.load_error is None and b.loaded.is_set()
        result = b.submit(request(extra_files=(("util.py", "def sub(a, b):\n    return a - b\n"),))).result(10)
    finally:
        b.stop()
    assert result.text == " + b"  # the single-line stop rule applied to what came back
    assert result.prompt_tokens == 20 and result.decoded_tokens == 5
    (seen,) = api.seen
    assert seen.path == path
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["content-type"] == "application/json"
    body = seen.body
    prompt = "def add(a, b):\n    return a"  # prefix + what was typed since the anchor
    suffix = "\n\nprint(add(1, 2))\n"
    if name in ("mistral", "openai"):
        assert body == {**extra, "prompt": prompt, "suffix": suffix, "max_tokens": 32, "temperature": 0,
                        "stop": ["\n"]}
    elif name == "llamacpp":
        assert body == {"input_prefix": prompt, "input_suffix": suffix, "n_predict": 32, "temperature": 0,
                        "stop": ["\n"], "cache_prompt": True,
                        "input_extra": [{"filename": "util.py", "text": "def sub(a, b):\n    return a - b\n"}]}
    else:
        assert body == {**extra, "prompt": prompt, "suffix": suffix, "stream": False,
                        "options": {"num_predict": 32, "temperature": 0, "stop": ["\n"]}}


def test_a_prefetch_sends_nothing_to_a_remote_api(api, monkeypatch):
    monkeypatch.setenv("MISTRAL_API_KEY", KEY)
    api.answer = CASES["mistral"][2]
    b = backend("mistral", api)
    try:
        b.prefetch(request(doc="file:///w/warm.py"))
        assert b.submit(request()).result(10).text == " + b"
    finally:
        b.stop()
    assert [s.path for s in api.seen] == ["/v1/fim/completions"]  # the real request only


def test_multiline_stop_rule_cuts_the_returned_text(api, monkeypatch):
    monkeypatch.setenv("MISTRAL_API_KEY", KEY)
    api.answer = {"choices": [{"message": {"content": "a + b\n    x = 1\n    y = 2\n"}, "finish_reason": "length"}]}
    b = backend("mistral", api)
    try:
        r = b.submit(request(single_line=False, max_lines=2, forced_middle="")).result(10)
    finally:
        b.stop()
    assert r.text == "a + b\n    x = 1" and r.finish == "stop"
    assert "stop" not in api.seen[0].body  # nothing to stop at server-side for a multi-line request


def test_endpoint_forms_and_defaults(monkeypatch):
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    o = Options(backend="openai", endpoint="http://127.0.0.1:9/v1", remote_model="m")
    assert RemoteBackend(APIS["openai"], o).url == "http://127.0.0.1:9/v1/completions"
    o = Options(backend="llamacpp", endpoint="http://127.0.0.1:9/infill")
    assert RemoteBackend(APIS["llamacpp"], o).url == "http://127.0.0.1:9/infill"
    assert RemoteBackend(APIS["mistral"], Options(backend="mistral")).url == "https://api.mistral.ai/v1/fim/completions"
    assert count(ApproxCounter(), "x" * 35) == 10 and count(ApproxCounter(), "") == 0


# -- configuration errors --------------------------------------------------------------------------


def test_missing_key_or_model_is_a_clear_load_error(monkeypatch):
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)
    b = open_backend(Options(backend="mistral"))
    assert b.loaded.is_set() and "MISTRAL_API_KEY" in (b.load_error or "")
    with pytest.raises(EngineError, match="MISTRAL_API_KEY"):
        b.submit(request()).result(5)
    b = open_backend(Options(backend="openai", endpoint="http://127.0.0.1:9"))
    assert "remoteModel" in (b.load_error or "")
    b = open_backend(Options(backend="llamacpp", endpoint="ftp://127.0.0.1:9"))
    assert "http://" in (b.load_error or "")
    b = open_backend(Options(backend="ollama", endpoint="http://127.0.0.1:9", api_key_env="NO_SUCH_VAR_HERE"))
    assert "NO_SUCH_VAR_HERE" in (b.load_error or "")


# -- HTTP errors, timeouts, refused connections ----------------------------------------------------


@pytest.mark.parametrize("status, words", [(401, ["401", "check the API key", "invalid api key"]),
                                           (429, ["429", "rate limited"]),
                                           (500, ["500", "boom"])])
def test_http_errors_name_backend_and_status_never_the_key(status, words, api, monkeypatch):
    monkeypatch.setenv("MISTRAL_API_KEY", KEY)
    api.status = status
    # A server that echoes the credentials it got: the message still must not carry the key.
    api.answer = {"message": f"invalid api key Bearer {KEY}" if status == 401 else f"boom ({KEY})"}
    b = backend("mistral", api)
    try:
        with pytest.raises(EngineError) as err:
            b.submit(request()).result(10)
    finally:
        b.stop()
    message = str(err.value)
    assert message.startswith("mistral backend: HTTP")
    for w in words:
        assert w in message
    assert KEY not in message and "***" in message


def test_read_timeout_is_a_clear_error(api, monkeypatch):
    monkeypatch.setenv("MISTRAL_API_KEY", KEY)
    api.delay = 30  # never answers in time (released at teardown)
    b = backend("mistral", api, readTimeoutMs=300)
    try:
        with pytest.raises(EngineError, match=r"no answer from http://127.0.0.1:\d+ within 0.3 s"):
            b.submit(request()).result(10)  # generous: the configured timeout is 0.3 s
        api.delay = 0
        api.answer = CASES["mistral"][2]
        assert b.submit(request(doc="file:///w/b.py")).result(10).text == " + b"  # and it keeps working
    finally:
        b.stop()


def test_connection_refused_is_a_clear_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = open_backend(Options(backend="llamacpp", endpoint=f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(EngineError, match="llamacpp backend: cannot connect to .* connection refused"):
            b.submit(request()).result(10)
    finally:
        b.stop()


# -- cancellation and newest-per-document --------------------------------------------------------------


def test_cancel_and_supersede_hang_up_at_once(api, monkeypatch):
    monkeypatch.setenv("MISTRAL_API_KEY", KEY)
    api.delay = 30
    api.answer = CASES["mistral"][2]
    b = backend("mistral", api)
    try:
        first = request()
        fut = b.submit(first)
        _wait_for(lambda: len(api.seen) == 1)
        newer = b.submit(request())  # same document: the first one is superseded
        with pytest.raises(Cancelled):
            fut.result(5)
        assert first.cancel.cancelled
        other = request(doc="file:///w/other.py")
        fut_other = b.submit(other)
        _wait_for(lambda: len(api.seen) == 3)
        other.cancel.cancel()  # what the pipeline does on $/cancelRequest
        with pytest.raises(Cancelled):
            fut_other.result(5)
        api.release.set()  # the server answers now: to closed connections, except the newest
        assert newer.result(10).text == " + b"
        _wait_for(api.closed_early.is_set)
    finally:
        b.stop()


def _wait_for(cond: Any, timeout: float = 10) -> None:
    import time

    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.01)


# -- the same pipeline -----------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_pipeline_appends_what_was_typed_to_the_prompt(api, monkeypatch):
    monkeypatch.setenv("MISTRAL_API_KEY", KEY)
    api.answer = {"choices": [{"message": {"content": "a + b"}, "finish_reason": "stop"}]}
    b = backend("mistral", api)
    completer = Completer(b, Options(backend="mistral"))
    try:
        text = "def add(a, b):\n    return \n"
        s = await completer.complete(Document("file:///w/p.py", text, "python"), text.index("return ") + 7)
        assert s is not None and s.text == "a + b"
        assert api.seen[-1].body["prompt"].endswith("def add(a, b):\n    return ")
        # The user types "b" (not what was shown): a new request whose prompt ends with it.
        api.answer = {"choices": [{"message": {"content": " * a\n"}, "finish_reason": "stop"}]}
        text2 = "def add(a, b):\n    return b\n"
        s2 = await completer.complete(Document("file:///w/p.py", text2, "python"), text2.index("return b") + 8)
        assert api.seen[-1].body["prompt"].endswith("    return b")
        assert api.seen[-1].body["suffix"].startswith("\n")
        assert s2 is not None and s2.text == " * a"  # post-processed like any engine answer
    finally:
        b.stop()


async def test_secrets_and_disabled_languages_are_never_sent_as_context(api):
    api.answer = CASES["llamacpp"][2]
    b = backend("llamacpp", api)
    others = [Document("file:///w/.env", "API_TOKEN=hunter2\n", "dotenv"),
              Document("file:///w/keys/server.pem", "-----BEGIN PRIVATE KEY-----\n", "plaintext"),
              Document("file:///home/u/.ssh/config", "Host *\n", "sshconfig"),
              Document("file:///w/notes.md", "my private notes\n", "markdown"),
              Document("file:///w/util.py", "def sub(a, b):\n    return a - b\n", "python")]
    completer = Completer(b, Options(backend="llamacpp", disabled_languages=("markdown",)))
    try:
        text = "def add(a, b):\n    return \n"
        await completer.complete(Document("file:///w/p.py", text, "python"), text.index("return ") + 7, others)
    finally:
        b.stop()
    sent = api.seen[-1].body["input_extra"]
    assert [f["filename"] for f in sent] == ["util.py"]
    assert "hunter2" not in json.dumps(api.seen[-1].body)


@pytest.mark.asyncio(loop_scope="session")
async def test_lsp_server_with_a_remote_backend(api):
    api.answer = {"choices": [{"message": {"content": "a + b"}, "finish_reason": "stop"}]}
    c, _ = await start(["--backend", "mistral", "--endpoint", api.url, "--api-key-env", "TEST_CODESTRAL_KEY"],
                       env={"TEST_CODESTRAL_KEY": KEY})
    try:
        open_doc(c, "file:///w/l.py", "def add(a, b):\n    return \n")
        result = await inline(c, "file:///w/l.py", 1, 11)
        assert result.items[0].insert_text == "a + b"
        assert api.seen[-1].headers["authorization"] == f"Bearer {KEY}"
        api.status, api.answer = 401, {"message": "Unauthorized"}
        open_doc(c, "file:///w/m.py", "def mul(a, b):\n    return \n")
        with pytest.raises(JsonRpcException, match="mistral backend: HTTP 401") as err:
            await inline(c, "file:///w/m.py", 1, 11)
        assert KEY not in str(err.value)
        await asyncio.sleep(0.2)
        assert any("HTTP 401" in m.message for m in c.messages) and not any(KEY in m.message for m in c.messages)
        assert not any(KEY in log.message for log in c.logs)
        api.status, api.answer = 200, {"choices": [{"message": {"content": "a * b"}, "finish_reason": "stop"}]}
        open_doc(c, "file:///w/n.py", "def mul(a, b):\n    return \n")
        assert (await inline(c, "file:///w/n.py", 1, 11)).items[0].insert_text == "a * b"  # still working
    finally:
        await stop(c)


# -- options that send data elsewhere never come from the editor (issue 16) ---------------------------


@pytest.mark.asyncio(loop_scope="session")
async def test_workspace_settings_cannot_send_code_elsewhere(api, tiny_model_dir):
    """What was tried from outside: initializationOptions (then didChangeConfiguration) carrying
    backend/endpoint/trustRemoteCode made the server send the document to that endpoint. They are
    refused with a message; the other settings (disabledLanguages here) still apply."""
    api.answer = CASES["openai"][2]
    hostile = {"backend": "openai", "endpoint": api.url, "remoteModel": "x", "trustRemoteCode": True,
               "apiKeyEnv": "HOME", "model": "evil/model", "allowDownload": True}
    c, _ = await start(["--model", str(tiny_model_dir), "--device", "cpu"],
                       init_options={**hostile, "disabledLanguages": ["python"]})
    try:
        open_doc(c, "file:///w/a.py", "def add(a, b):\n    return \n")
        assert not (await inline(c, "file:///w/a.py", 1, 11)).items  # python disabled: that part applied
        c.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"codestral": {**hostile, "disabledLanguages": []}}))
        await inline(c, "file:///w/a.py", 1, 11)  # answered by the local tiny model
        await asyncio.sleep(0.2)
    finally:
        await stop(c)
    assert api.seen == []  # nothing ever reached the endpoint
    refused = [m.message for m in c.messages if "never from editor or workspace settings" in m.message]
    for key in hostile:
        assert any(f"option {key} " in m for m in refused), (key, refused)
    assert all(m.type == types.MessageType.Warning for m in c.messages if m.message in refused)


def test_trusted_options_are_marked_and_refused_only_from_the_client():
    from codestral_ls.server.options import MORE, TRUSTED, meta, parse_client_options

    for key in ("trust_remote_code", "model", "draft_model", "allow_download", "backend", "endpoint", "api_key_env",
                "remote_model", "ca_bundle", "allow_plain_http_key", "connect_timeout_ms", "read_timeout_ms",
                "request_timeout_ms"):
        assert key in TRUSTED, key
    assert meta("secret_files").narrow == MORE  # a workspace may add patterns, never remove the user's
    o, problems = parse_options({"backend": "openai", "endpoint": "http://10.0.0.1:8000"})  # command line
    assert problems == [] and o.backend == "openai"
    o2, problems = parse_client_options({"backend": "mistral", "maxTokens": 9, "model": "embedded"}, o)
    assert o2.backend == "openai" and o2.max_tokens == 9  # refused, the rest kept
    assert len(problems) == 1 and "backend" in problems[0]  # `model` repeats the value in force: no message


# -- transport safety (issue 16): plain-http keys, response size, total time, proxies, private CAs -----


def test_an_api_key_never_goes_over_plain_http_to_another_host(monkeypatch):
    monkeypatch.setenv("TEST_CODESTRAL_KEY", KEY)
    far = Options(backend="openai", endpoint="http://10.255.255.1:8000", remote_model="m",
                  api_key_env="TEST_CODESTRAL_KEY")
    b = open_backend(far)
    assert "refusing to send the API key in TEST_CODESTRAL_KEY over plain http" in b.load_error
    assert KEY not in b.load_error
    with pytest.raises(EngineError, match="plain http"):
        b.submit(request()).result(10)
    b.stop()
    for ok in (far.replace(allow_plain_http_key=True), far.replace(endpoint="https://10.255.255.1:8000"),
               far.replace(endpoint="http://127.0.0.1:8000")):
        b = open_backend(ok)
        assert b.load_error is None, b.load_error
        b.stop()


def test_an_oversized_answer_is_refused(api, monkeypatch):
    api.answer = {"choices": [{"text": "x" * (5 * 2**20), "finish_reason": "stop"}]}
    b = backend("openai", api, remoteModel="m")
    try:
        with pytest.raises(EngineError, match="larger than 4096 KiB"):
            b.submit(request()).result(30)
    finally:
        b.stop()


@pytest.fixture
def drip() -> Iterator[str]:
    """An API that sends its headers, then one byte every 0.1 s for 5 s: never silent for long."""
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            try:
                for _ in range(50):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_total_request_time_is_bounded_not_only_each_read(drip):
    b = open_backend(Options(backend="openai", endpoint=drip, remote_model="m", read_timeout_ms=1000,
                             request_timeout_ms=500))
    t0 = time.monotonic()
    try:
        with pytest.raises(EngineError, match=r"did not finish answering within 0.5 s \(requestTimeoutMs\)"):
            b.submit(request()).result(10)
    finally:
        b.stop()
    assert time.monotonic() - t0 < 2


def test_http_proxy_from_the_environment_is_used(api, monkeypatch):
    api.answer = CASES["openai"][2]
    monkeypatch.setenv("HTTP_PROXY", api.url)  # the fake API plays the proxy: it sees the absolute URL
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    b = open_backend(Options(backend="openai", endpoint="http://api.example.invalid:8000", remote_model="m"))
    try:
        assert b.submit(request()).result(10).text == " + b"
    finally:
        b.stop()
    assert api.seen[0].path == "http://api.example.invalid:8000/v1/completions"
    monkeypatch.setenv("NO_PROXY", "api.example.invalid")
    b = open_backend(Options(backend="openai", endpoint="http://api.example.invalid:8000", remote_model="m",
                             connect_timeout_ms=2000))
    try:
        with pytest.raises(EngineError, match="cannot reach|did not accept"):  # straight to the (unknown) host
            b.submit(request()).result(10)
    finally:
        b.stop()
    assert len(api.seen) == 1


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key): a private CA as corporate networks have."""
    d = tmp_path_factory.mktemp("ca")

    def ssl_cmd(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl_cmd("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=codestral-ls test CA")
    ssl_cmd("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    ssl_cmd("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return d / "ca.pem", d / "server.pem", d / "server.key"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_with_a_private_ca_from_ca_bundle_or_ssl_cert_file(api, private_ca, monkeypatch):
    ca, cert, key = private_ca
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    api.server.socket = context.wrap_socket(api.server.socket, server_side=True)
    api.answer = CASES["openai"][2]
    url = api.url.replace("http://", "https://")
    options = Options(backend="openai", endpoint=url, remote_model="m")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    b = open_backend(options)
    try:
        with pytest.raises(EngineError, match="TLS error .*caBundle"):
            b.submit(request()).result(10)
    finally:
        b.stop()
    b = open_backend(options.replace(ca_bundle=str(ca)))
    try:
        assert b.submit(request()).result(10).text == " + b"
    finally:
        b.stop()
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    b = open_backend(options)
    try:
        assert b.submit(request()).result(10).text == " + b"
    finally:
        b.stop()


@pytest.mark.parametrize("uri, secret", [
    ("file:///w/.env", True), ("file:///w/.env.production", True), ("file:///w/certs/Server.PEM", True),
    ("file:///w/deploy/id_ed25519", True), ("file:///home/u/.aws/config", True), ("file:///w/.npmrc", True),
    ("file:///w/envoy.py", False), ("file:///w/src/keys.py", False), ("file:///w/pem.rs", False),
])
def test_the_secret_file_list(uri, secret):
    from codestral_ls.server.options import SECRET_FILES
    from codestral_ls.server.privacy import is_secret

    assert is_secret(uri, SECRET_FILES) is secret
    assert is_secret(uri, ("*.py",)) is uri.endswith(".py") or ".aws/" in uri  # the list is configurable
