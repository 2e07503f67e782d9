"""What an editor shows with the default options (real 0.5B model, the server over stdio).

The first answer at a place stays on screen until the user types, so it must be a finished
suggestion; a block cut by the latency budget grows on screen for a client that opted in; a place
the user came to rest at is prefilled before the request, and warm-up never delays a request.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import pytest_asyncio
from lsprotocol import types

from benchmarks.lsp_client import inline, open_doc, plain, start, stop
from tests.test_lsp import loaded

pytestmark = pytest.mark.model

OPT_IN = {"codestral": {"suggestionUpdates": True, "status": True}}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def default_client():
    """The server with NO options, and a client of ours that opted in to the notifications."""
    c, init = await start([], init_options=None, experimental=OPT_IN)
    c.init_result = init
    await loaded(c)
    yield c
    await stop(c)


async def stats(c) -> dict:
    return plain(await c.protocol.send_request_async("codestral/stats", {}))


def _text(result: types.InlineCompletionList | None) -> str:
    return result.items[0].insert_text if result and result.items else ""


@pytest.mark.asyncio(loop_scope="session")
async def test_server_advertises_its_notifications(default_client):
    exp = default_client.init_result.capabilities.experimental
    assert exp["codestral"]["suggestionUpdates"] is True and exp["codestral"]["didFocus"] is True


@pytest.mark.asyncio(loop_scope="session")
async def test_default_first_answer_is_the_whole_line(default_client):
    # A cold prompt: prefilling it alone takes far longer than the 100 ms budget on this CPU. Before,
    # the answer was whatever token was decoded by then ("re" of a longer line).
    uri = "file:///w/whole_line.py"
    text = ("import os\n\n\ndef list_python_files(folder):\n    \"\"\"Names of the .py files in folder, sorted.\"\"\"\n"
            "    names = \n    return names\n")
    open_doc(default_client, uri, text)
    first = _text(await inline(default_client, uri, 5, 12))
    again = _text(await inline(default_client, uri, 5, 12))  # replayed from the cache: the whole line
    assert len(first) >= 8, first
    assert first == again, (first, again)
    compile(text.replace("    names = \n", f"    names = {first}\n"), "f.py", "exec")


@pytest.mark.asyncio(loop_scope="session")
async def test_budget_cut_block_grows_for_a_client_that_opted_in(default_client):
    updates = default_client.notifications.setdefault("codestral/suggestionUpdated", [])
    uri = "file:///w/grow.py"
    text = "def is_prime(n):\n    \n"
    open_doc(default_client, uri, text)
    first = _text(await inline(default_client, uri, 1, 4))
    assert first.strip() and not first.endswith("\n")
    # Whole lines only: each shown line is complete Python when the block is closed with `pass`.
    deadline = time.monotonic() + 120
    while not updates and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert updates, "no codestral/suggestionUpdated for a budget-cut block"
    assert updates[0]["textDocument"]["uri"] == uri and updates[0]["position"] == {"line": 1, "character": 4}
    grown = _text(await inline(default_client, uri, 1, 4))
    assert grown.startswith(first) and grown.count("\n") > first.count("\n"), (first, grown)
    statuses = [s["kind"] for s in default_client.notifications.get("codestral/status", [])]
    assert "answered" in statuses


@pytest.mark.asyncio(loop_scope="session")
async def test_a_generic_client_gets_no_notifications_of_ours():
    c, _ = await start([], init_options=None)
    try:
        await loaded(c)
        uri = "file:///w/generic.py"
        open_doc(c, uri, "def is_prime(n):\n    \n")
        assert _text(await inline(c, uri, 1, 4)).strip()
        await asyncio.sleep(3)
        assert not c.notifications.get("codestral/suggestionUpdated")
        assert not c.notifications.get("codestral/status")
    finally:
        await stop(c)


@pytest.mark.asyncio(loop_scope="session")
async def test_did_focus_warms_the_prompt_and_a_request_preempts_warm_up(default_client):
    c = default_client
    uri = "file:///w/focus.py"
    text = "".join(f"def helper_{i}(value):\n    return value * {i} + {i * 3}\n\n\n" for i in range(12))
    text += "def main():\n    total = \n"
    open_doc(c, uri, text)
    line = text.count("\n") - 1
    before = await stats(c)
    c.protocol.notify("codestral/didFocus", {"textDocument": {"uri": uri}, "position": {"line": line, "character": 12}})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        s = await stats(c)
        if s["prefetches"]["completed"] > before["prefetches"]["completed"]:
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("the didFocus warm-up never completed")
    t0 = time.monotonic()
    answer = _text(await inline(c, uri, line, 12))
    warm_ms = (time.monotonic() - t0) * 1000
    after = await stats(c)
    assert answer.strip()
    assert after["warm_prompts"] == before["warm_prompts"] + 1  # its prompt was prefilled already
    # Preemption: warm a long cold prompt, then ask elsewhere at once: the warm-up is cancelled.
    other = "file:///w/other.py"
    open_doc(c, other, "def square(x):\n    return \n")
    cold = "\n".join(f"value_{i} = compute({i}, scale={i * 7})" for i in range(300)) + "\nresult = \n"
    open_doc(c, "file:///w/cold.py", cold)
    c.protocol.notify("codestral/didFocus", {"textDocument": {"uri": "file:///w/cold.py"},
                                             "position": {"line": 300, "character": 9}})
    await asyncio.sleep(0.3)
    assert _text(await inline(c, other, 1, 11)).strip()
    final = await stats(c)
    assert final["prefetches"]["cancelled"] > after["prefetches"]["cancelled"], final["prefetches"]
    assert warm_ms < 60_000


def test_a_block_replayed_from_the_cache_is_never_cut_by_the_budget(qwen_engine):
    # A client asks again after codestral/suggestionUpdated; its request may start after the budget
    # ran out (a busy engine thread). Before, the replay was cut after the first line again, a
    # follow-up grew it again and announced it again: 12-42 notifications for one block.
    import dataclasses

    from codestral_ls.engine.config import EngineOptions
    from codestral_ls.engine.decoding.engine import Engine
    from codestral_ls.engine.request import FimRequest, StopRule

    engine = Engine(qwen_engine.loaded, EngineOptions())
    stop = StopRule(max_lines=12, block_indent=4)
    req = FimRequest(doc="b", prefix="def add_all(values):\n    ", suffix="\n\nprint(add_all([1, 2]))\n",
                     max_tokens=64, stop=stop, background=False)
    whole = engine.complete(req)
    assert whole.finish == "stop" and whole.text.count("\n") >= 1, whole
    late = dataclasses.replace(req, stop=dataclasses.replace(stop, line_deadline=time.monotonic() - 1))
    again = engine.complete(late)
    assert again.replayed_tokens > 0 and again.text == whole.text, (whole.text, again.text)
