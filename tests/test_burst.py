"""A burst of completion requests sent without waiting (a client with no debounce): only the newest
for a document reaches the pipeline; the others are answered empty at once, costing no parse, no
tokenization and no engine work. Each request is read at the document version it was sent for."""

from __future__ import annotations

from codestral_ls.server.options import Options
from codestral_ls.server.pipeline import Completer

from tests.inprocess import InProcess
from tests.scripted import ScriptedBackend

URI = "file:///w/burst.py"


async def started(answer=" = 1") -> tuple[InProcess, ScriptedBackend]:
    ip = InProcess(Options(multiline="never"))
    await ip.initialize(engine=False)
    backend = ScriptedBackend(answer)
    ip.server.backend = backend
    ip.server.completer = Completer(backend, ip.server.options, ip.server.stats)
    return ip, backend


async def test_only_the_newest_of_a_burst_reaches_the_engine():
    ip, backend = await started()
    ip.open(URI, "def f(values):\n    total = 0\n    \n")
    ids = []
    for i in range(200):  # one key, one request, nothing awaited in between
        ip.change(URI, i + 2, (2, 4 + i), (2, 4 + i), "x")
        ids.append(ip.send("textDocument/inlineCompletion", {
            "textDocument": {"uri": URI}, "position": {"line": 2, "character": 5 + i},
            "context": {"triggerKind": 2}}))
    answers = [await ip.answer(i) for i in ids]
    assert all(a["result"] == {"items": []} for a in answers[:-1])
    assert len(backend.asked) == 1, len(backend.asked)
    assert backend.asked[0].prefix.endswith("x" * 200)  # the newest, at its own version
    assert ip.server.stats.overtaken == 199


async def test_a_request_is_read_at_the_version_it_was_sent_for():
    """An edit that arrives after a request but before its handler runs cannot move its cursor: the
    request is read as it arrived, and an answer for a text that changed meanwhile is not sent."""
    ip, backend = await started("value")
    ip.open(URI, "x = 1\nz = \n")
    msg = ip.send("textDocument/inlineCompletion", {
        "textDocument": {"uri": URI}, "position": {"line": 1, "character": 4}, "context": {"triggerKind": 1}})
    ip.change(URI, 2, (0, 0), (0, 0), "y = 2\n")  # lines move down before the handler runs
    answer = await ip.answer(msg)
    assert all("y = 2" not in r.prefix for r in backend.asked), "read at a place the request never meant"
    assert answer["result"]["items"] == []  # the text changed since: its offsets point elsewhere now
