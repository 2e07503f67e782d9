"""The remote backends against a real serving engine, not only request shapes we wrote ourselves:
llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) on loopback with the
embedded GGUF, reached through `--backend openai` (completions with `suffix`, the path vLLM serves).

Slow-ish: each server takes a few seconds to start (two are started: one is killed mid-request).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.request import FimRequest, StopRule
from codestral_ls.server.backends import open_backend
from codestral_ls.server.options import Options

from benchmarks.lsp_client import inline, open_doc, start, stop

pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python's server extra (the dev extra)")
pytestmark = pytest.mark.model

PREFIX = "def add(a, b):\n    return "
SUFFIX = "\n\n\nprint(add(1, 2))\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server() -> tuple[subprocess.Popen[bytes], str]:
    from codestral_ls.engine.models import embedded

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(embedded.gguf_path()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
                             "--verbose", "False"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 180
    while True:
        assert proc.poll() is None, "llama_cpp.server exited"
        assert time.monotonic() < end, "llama_cpp.server did not start in 180 s"
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.3)


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    proc, url = start_llama_server()
    yield url
    proc.kill()  # uvicorn would first finish what the model is decoding
    proc.wait(30)


def openai(url: str, **kw) -> object:
    # Generous limits: a busy 2-core machine decodes slowly (the limits have their own tests).
    kw = {"read_timeout_ms": 120_000, "request_timeout_ms": 0, **kw}
    b = open_backend(Options(backend="openai", endpoint=url, remote_model="qwen2.5-coder-0.5b", **kw))
    assert b.load_error is None
    return b


def long_request(doc: str = "file:///w/long.py") -> FimRequest:
    # Multi-line, no stop but the line cap: seconds of decoding on this CPU. Kept short: llama_cpp.server
    # decodes an abandoned non-streaming request to its end before it takes the next one.
    return FimRequest(doc=doc, prefix="# a long module of many small functions\n\n", suffix="", max_tokens=100,
                      stop=StopRule(max_lines=1000))


def test_a_completion_with_suffix_from_llama_cpp_server(llama_server):
    b = openai(llama_server)
    try:
        r = b.submit(FimRequest(doc="file:///w/a.py", prefix=PREFIX, suffix=SUFFIX, max_tokens=16,
                                stop=StopRule(single_line=True))).result(120)
    finally:
        b.stop()
    assert r.text.strip() and "\n" not in r.text  # a single line came back
    assert r.prompt_tokens > 10 and r.decoded_tokens > 0  # usage from the server


@pytest.mark.asyncio(loop_scope="session")
async def test_the_lsp_server_with_backend_openai(llama_server):
    c, _ = await start(["--backend", "openai", "--endpoint", llama_server, "--remote-model", "qwen",
                        "--read-timeout-ms", "120000", "--request-timeout-ms", "0"])
    try:
        open_doc(c, "file:///w/b.py", PREFIX + SUFFIX)
        result = await asyncio.wait_for(inline(c, "file:///w/b.py", 1, 11), 120)
        assert result.items and result.items[0].insert_text.strip()
    finally:
        await stop(c)


def test_cancelling_hangs_up_at_once_and_the_server_answers_after(llama_server):
    b = openai(llama_server)
    try:
        req = long_request()
        fut = b.submit(req)
        time.sleep(0.3)  # decoding by now
        t0 = time.monotonic()
        req.cancel.cancel()
        with pytest.raises(Cancelled):
            fut.result(5)
        assert time.monotonic() - t0 < 1
        # A newer request for the same document supersedes the running one the same way.
        first = b.submit(long_request("file:///w/s.py"))
        time.sleep(0.3)
        second = b.submit(FimRequest(doc="file:///w/s.py", prefix=PREFIX, suffix=SUFFIX, max_tokens=8,
                                     stop=StopRule(single_line=True)))
        with pytest.raises(Cancelled):
            first.result(5)
        assert second.result(180).text.strip()  # the server (which may finish the abandoned work first) answers
    finally:
        b.stop()


def test_a_server_killed_mid_request_is_a_clear_error_not_a_hang():
    proc, url = start_llama_server()
    b = openai(url)
    try:
        fut = b.submit(long_request())
        time.sleep(0.5)
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        with pytest.raises(EngineError, match="openai backend: .*(closed the connection|cannot reach|refused)") as err:
            fut.result(10)
        assert not isinstance(err.value, Cancelled)
        assert time.monotonic() - t0 < 5
        proc.wait(30)
        with pytest.raises(EngineError, match="connection refused"):  # and the next one says why at once
            b.submit(FimRequest(doc="file:///w/n.py", prefix=PREFIX, suffix=SUFFIX)).result(10)
    finally:
        b.stop()
        proc.wait(30)
