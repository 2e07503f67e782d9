"""The log handler (server/lsplog.py): our modules' log lines reach the editor as window/logMessage,
pygls' own do not (they would loop), and document text never does unless the user asked for it."""

from __future__ import annotations

import asyncio
import logging

import pytest
from codestral_ls.server.options import Options

from tests.inprocess import InProcess


@pytest.fixture
def server():
    ip = InProcess(Options())
    from codestral_ls.server.lsplog import install_lsp_log_handler

    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    root.setLevel(logging.INFO)  # as `codestral-ls` sets it up (--log-level, default info)
    install_lsp_log_handler(ip.server)
    yield ip
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)


async def test_a_module_log_line_reaches_the_editor(server):
    await server.initialize(engine=False)
    logging.getLogger("codestral_ls.server.pipeline").warning("the engine said %s", "hello")
    logging.getLogger("codestral_ls.engine.decoding.engine").info("loaded in %d s", 3)
    await asyncio.sleep(0.05)  # the handler hands the message to the event loop
    sent = [m["params"] for m in server.notifications("window/logMessage")]
    assert {"type": 2, "message": "codestral_ls.server.pipeline: the engine said hello"} in sent
    assert {"type": 3, "message": "codestral_ls.engine.decoding.engine: loaded in 3 s"} in sent


async def test_other_loggers_and_debug_lines_stay_out(server):
    await server.initialize(engine=False)
    logging.getLogger("pygls.protocol").warning("sending %s", "x")
    logging.getLogger("urllib3").warning("retrying")
    logging.getLogger("codestral_ls.server.pipeline").debug("detail")
    await asyncio.sleep(0.05)
    assert server.notifications("window/logMessage") == []
