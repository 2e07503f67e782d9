"""Spines (engine/decoding/kvcache.py, server/context.py): the start of an open file's prompts,
prefilled while the user reads, so that a prompt at a new line prefills only its tail. Counted in
tokens, not time; on both runners, with the tiny model in a prefix-suffix-middle layout."""

from __future__ import annotations

import dataclasses
import time

import pytest
from codestral_ls.engine.config import EngineOptions
from codestral_ls.engine.decoding.engine import Engine
from codestral_ls.engine.errors import Cancelled
from codestral_ls.engine.models.counting import ApproxCounter
from codestral_ls.engine.models.fim import FimEncoder, FimProfile
from codestral_ls.engine.request import FimRequest, StopRule
from codestral_ls.engine.serving.worker import EngineWorker
from codestral_ls.server.context import Spines, anchor, build_context, spine_plan
from codestral_ls.server.cursor import read_cursor
from codestral_ls.server.options import Options
from codestral_ls.server.pipeline import Completer, Document
from codestral_ls.server.warmup import warm

from tests.scripted import ScriptedBackend

PSM = FimProfile(name="test-psm", order="psm", prefix_token="[PREFIX]", suffix_token="[SUFFIX]",
                 middle_token="[MIDDLE]", stop_tokens=("</s>",))
FILE = "".join(f"def helper_{i}(value):\n    total = value * {i}\n    return total + {i}\n\n\n"
               for i in range(40))
BIG = "".join(f"def helper_{i}(value):\n    total = value * {i}\n    return total + {i}\n\n\n" for i in range(200))


@pytest.fixture(params=["torch", "llamacpp"])
def engine(request) -> Engine:
    """The tiny model in a prefix-suffix-middle layout (its own is suffix-first), on both runners."""
    tiny = request.getfixturevalue(f"tiny_{request.param}_engine")
    loaded = dataclasses.replace(tiny.loaded, encoder=FimEncoder(tiny.loaded.tokenizer, PSM))
    return Engine(loaded, EngineOptions(speculation=False))


def at(offset: int, doc: str = "f", **kw) -> FimRequest:
    return FimRequest(doc=doc, prefix=FILE[:offset], suffix=FILE[offset:offset + 200], max_tokens=6,
                      stop=StopRule(max_lines=3), background=False, **kw)


def spine(end: int, doc: str = "f") -> FimRequest:
    return FimRequest(doc=doc, prefix=FILE[:end], suffix="", spine=True, warm=True)


def test_a_prompt_in_a_warmed_stretch_prefills_only_its_tail(engine):
    warm = engine.complete(spine(len(FILE) // 2))
    assert warm.prefilled_tokens == warm.prompt_tokens > 300
    cold = Engine(engine.loaded, EngineOptions(speculation=False))
    for line in (3, 9, 15):  # inside the warmed half
        offset = FILE.index(f"def helper_{line}(")
        r = engine.complete(at(offset))
        tail = len(engine.encoder.encode_text(FILE[offset:offset + 200])) + 4
        assert r.prefilled_tokens <= tail, (line, r)
        assert r.reused_tokens >= len(engine.encoder.encode_text(FILE[:offset])) - 3
        assert r.text == cold.complete(at(offset, doc=f"cold{line}")).text  # the copy is exact
    assert any(e.shared for e in engine.store.entries)  # still there for the next cursor


def test_a_spine_cancelled_mid_prefill_goes_on_from_what_it_prefilled(engine):
    req = spine(len(FILE) // 2)
    forward = engine._forward
    calls = []

    def cancel_after_one_chunk(seq, ids, n_logits=1):
        calls.append(len(ids))
        out = forward(seq, ids, n_logits)
        req.cancel.cancel()
        return out

    engine._forward = cancel_after_one_chunk
    with pytest.raises(Cancelled):
        engine.complete(req)
    engine._forward = forward
    again = engine.complete(dataclasses.replace(req, cancel=type(req.cancel)()))
    assert again.reused_tokens == calls[0] and again.prefilled_tokens == again.prompt_tokens - calls[0]


def test_the_engine_takes_the_short_window_cold_and_the_long_one_warm(engine):
    offset = FILE.index("def helper_30(")
    short_start = FILE.index("def helper_25(")
    first = engine.complete(at(offset, doc="g", short_start=short_start))
    assert first.window == "short"
    again = engine.complete(at(offset, doc="g", short_start=short_start))
    assert again.window == "short" and again.prefilled_tokens <= 1  # its own cache: no switch while typing
    engine.complete(spine(FILE.index("def helper_33("), doc="g"))
    there = FILE.index("def helper_31(")  # a new place in the warmed stretch
    second = engine.complete(at(there, doc="g", short_start=there - FILE.rfind("\n\n\n", 0, there - 400)))
    assert second.window == "long" and second.prefilled_tokens < first.prefilled_tokens / 2


def test_a_cold_place_answers_first_from_its_nearest_lines(engine):
    offset = FILE.index("def helper_30(")
    first = engine.complete(at(offset, doc="q", quick_tokens=64))
    assert first.window == "quick" and first.prefilled_tokens <= 64 + 8  # not the whole prefix
    whole = engine.complete(at(offset, doc="q"))  # the follow-up: the whole prompt
    assert whole.window == "" and whole.prompt_tokens > 300
    again = engine.complete(at(offset, doc="q", quick_tokens=64))  # now cached: the whole one is cheaper
    assert again.window == "" and again.prefilled_tokens <= 1
    # A whole prompt the device prefills within a read is answered whole, however cold.
    fresh = Engine(engine.loaded, EngineOptions(speculation=False))
    within = fresh.complete(at(offset, doc="r", quick_tokens=64, quick_above=10_000))
    assert within.window == "" and within.prefilled_tokens > 300
    over = Engine(engine.loaded, EngineOptions(speculation=False)).complete(
        at(offset, doc="r", quick_tokens=64, quick_above=300))
    assert over.window == "quick"


def test_a_quick_window_keeps_whole_lines_around_the_cursor():
    from codestral_ls.engine.decoding.engine import quick_window

    offset = FILE.index("    total = value * 30")
    before, after = quick_window(ApproxCounter(), FILE[:offset], FILE[offset:], 48)
    assert FILE[:offset].endswith(before) and FILE[offset:].startswith(after)
    assert before.startswith("def helper_29(") or before.startswith("\n") or before.startswith("    ")
    assert after.endswith("\n") and 0 < len(after) < 60 and 60 < len(before) < 160
    assert quick_window(ApproxCounter(), "x = 1\n", "y\n", 48) == ("x = 1\n", "y\n")  # small: all of it


def test_a_real_request_preempts_a_spine_which_then_resumes(engine):
    worker = EngineWorker(lambda: engine).start()
    try:
        assert worker.loaded.wait(60) and worker.load_error is None
        started = time.monotonic()
        worker.plan([spine(len(FILE))])
        time.sleep(0.01)
        result = worker.submit(at(FILE.index("def helper_12("), doc="other")).result(60)
        assert result.text is not None
        while worker.spine_warms["completed"] < 1 and time.monotonic() - started < 60:
            time.sleep(0.02)
        assert worker.spine_warms["completed"] == 1
        spine_ids = engine.encoder.spine(FILE)
        # Nothing prefilled twice: what the spine prefilled before the request, and the rest after it
        # (less what the request's own prefill of the same text gave it).
        assert engine.prefilled["warm_tokens"] <= len(spine_ids)
        spines = [e for e in engine.store.entries if e.shared]
        assert len(spines) == 1 and spines[0].ids == spine_ids
    finally:
        worker.stop()


def test_windows_start_at_anchors_and_the_plan_covers_them():
    counter = ApproxCounter()
    spines = Spines.sized(512, 1600)
    assert spines is not None
    for offset in (len(BIG) // 3, len(BIG) // 2, len(BIG) - 10):
        cursor = read_cursor(BIG, offset, "python")
        ctx = build_context(cursor, counter, 512, 128, spines)
        assert ctx.short_start > 0  # deep in a file: a longer window from an anchor, the cold one inside it
        start = ctx.prefix_start
        assert start in {anchor(BIG, k, spines.grid) for k in range(len(BIG) // spines.grid + 1)}
        assert ctx.prefix.startswith(BIG[start:start + 40])
        plan = spine_plan(BIG, offset, counter, spines, 3)
        first_start, first_end = plan[0]
        assert first_start == start and first_end >= offset  # the cursor's own spine comes first
        assert len({s for s, _ in plan}) == 3


async def test_the_pipeline_sends_a_plan_with_its_warm_up():
    class WithSpines(ScriptedBackend):
        spines = 4

    backend = WithSpines("x", context_tokens=2000)
    c = Completer(backend, Options())
    offset = BIG.index("def helper_100(") - 1  # a blank line deep in the file
    assert warm(c, Document("file:///w/f.py", BIG, "python"), offset)
    assert backend.prefetched and len(backend.planned) == 4 and all(r.spine for r in backend.planned)
    req = c.request(Document("file:///w/f.py", BIG, "python"), read_cursor(BIG, offset, "python"))
    assert req is not None and req.short_start > 0
    assert backend.planned[0].prefix.startswith(req.prefix)  # the cursor's prompt starts with the first spine


async def test_a_document_asked_about_at_once_is_not_warmed_first_and_one_left_alone_is():
    """An editor opens a file and asks at the cursor at once: no warm-up of the document's start (nor
    end) is queued ahead of or after that request. A document left alone after opening gets its
    spines from the top (where an editor shows it) once the pause has passed."""
    import asyncio

    from tests.inprocess import InProcess

    class WithSpines(ScriptedBackend):
        spines = 4

    ip = InProcess(Options(multiline="never"))
    await ip.initialize(engine=False)
    backend = WithSpines("x = 1", context_tokens=2000)
    ip.server.backend = backend
    ip.server.completer = Completer(backend, ip.server.options, ip.server.stats)
    asked = "file:///w/asked.py"
    ip.open(asked, BIG)
    await ip.inline(asked, 10, 0)
    await asyncio.sleep(0.8)  # past the pause after opening
    assert not [r for r in getattr(backend, "planned", []) if r.doc == asked and r.prefix.startswith("def helper_0(")]
    alone = "file:///w/alone.py"
    ip.open(alone, BIG)
    await asyncio.sleep(0.8)
    planned = getattr(backend, "planned", [])
    assert planned and planned[0].doc == alone and planned[0].prefix.startswith("def helper_0(")
