"""Enter after an accepted line: the next line's suggestion was prefilled and decoded while the user
read the ghost text (server/warmup.py `warm_next_line`), so the request after Enter replays it.
Counted in tokens, not time: the real model, through the LSP layer."""

from __future__ import annotations

import asyncio

import pytest
from codestral_ls.engine.config import EngineOptions
from codestral_ls.engine.decoding.engine import Engine
from codestral_ls.engine.serving.worker import EngineWorker
from codestral_ls.server.options import Options
from codestral_ls.server.pipeline import Completer

from tests.inprocess import InProcess

URI = "file:///w/next_line.py"
TEXT = "import math\n\n\ndef describe(values):\n    total = sum(values)\n    \n"


@pytest.mark.model
async def test_enter_after_an_accepted_line_finds_the_next_line_ready(qwen_engine):
    ip = InProcess(Options(multiline="never"))  # one line, no block growing meanwhile
    await ip.initialize(engine=False)
    worker = EngineWorker(lambda: Engine(qwen_engine.loaded, EngineOptions())).start()
    try:
        assert await asyncio.to_thread(worker.loaded.wait, 60)
        ip.server.backend = worker
        ip.server.completer = Completer(worker, ip.server.options, ip.server.stats)
        ip.open(URI, TEXT)
        answer = await ip.inline(URI, 5, 4)
        items = answer["result"]["items"]
        assert items, answer
        shown = items[0]["insertText"]
        for _ in range(600):  # the prefetch runs once the engine is free
            if worker.prefetches["completed"] >= 1:
                break
            await asyncio.sleep(0.05)
        assert worker.prefetches["completed"] >= 1, worker.prefetches
        # The user accepts it and presses Enter (the editor keeps the last line's indentation).
        last = ("    " + shown).rsplit("\n", 1)[-1]
        indent = last[:len(last) - len(last.lstrip())]
        ip.change(URI, 2, (5, 4), (5, 4), shown + "\n" + indent)
        await ip.inline(URI, 5 + shown.count("\n") + 1, len(indent))
        last = ip.server.stats.last
        assert last.source in ("engine", "declined") and last.engine_calls >= 1, last
        assert last.prefill_tokens <= 2 and last.decoded_tokens == 0, last  # replayed: nothing computed
    finally:
        worker.stop()
