"""The pipeline's `Completer` (server/pipeline.py) on a stand-in backend (tests/scripted.py): what it
does with the engine's answers, read top to bottom — typed through, second opinions, candidates,
the grown block, the window limit — without a model."""

from __future__ import annotations

import asyncio
import time

from codestral_ls.engine.models.counting import ApproxCounter
from codestral_ls.engine.request import FimRequest
from codestral_ls.server import warmup
from codestral_ls.server.options import Options
from codestral_ls.server.pipeline import NOTHING_FITS, Completer, Document

from tests.scripted import ScriptedBackend

TEXT = "def mean(values):\n    total = sum(values)\n    \n"
CURSOR = TEXT.index("    \n") + 4


def doc(text: str = TEXT) -> Document:
    return Document("file:///w/mean.py", text, "python")


async def test_typing_through_a_suggestion_asks_the_engine_nothing():
    backend = ScriptedBackend(["return total / len(values)"])
    c = Completer(backend, Options(multiline="never"))
    s = await c.complete(doc(), CURSOR)
    assert s is not None and s.text == "return total / len(values)" and s.source == "engine"
    typed = TEXT[:CURSOR] + "ret" + TEXT[CURSOR:]
    rest = await c.complete(doc(typed), CURSOR + 3)
    assert rest is not None and rest.source == "typed-through" and rest.text == "urn total / len(values)"
    assert len(backend.asked) == 1


async def test_a_line_that_cannot_fit_is_replaced_by_the_next_best_start():
    # `return` right above code at the same depth can never run: the engine is asked again, avoiding it.
    text = "def f(x):\n    \n    y = x + 1\n    return y\n"
    backend = ScriptedBackend(["return x", "x = abs(x)"])
    c = Completer(backend, Options(multiline="never"))
    s = await c.complete(doc(text), text.index("    \n") + 4)
    assert s is not None and s.text == "x = abs(x)"
    assert [r.avoid for r in backend.asked] == [(), ("return x",)]
    assert c.stats.rejected == 1


async def test_second_opinions_run_out_and_say_why():
    text = "def f(x):\n    \n    y = x + 1\n    return y\n"
    backend = ScriptedBackend(lambda req: "return x")
    c = Completer(backend, Options(multiline="never", second_opinions=2))
    assert await c.complete(doc(text), text.index("    \n") + 4) is None
    assert len(backend.asked) == 3 and c.declined == NOTHING_FITS


async def test_candidates_are_distinct_next_best_starts():
    backend = ScriptedBackend(["return total / len(values)", "return 0.0", "raise ValueError"])
    c = Completer(backend, Options(multiline="never", candidates=3))
    s = await c.complete(doc(), CURSOR)
    assert s is not None and [a.text for a in s.alternatives] == ["return 0.0", "raise ValueError"]
    assert backend.asked[1].avoid == ("return total / len(values)",)


async def test_a_budget_cut_block_comes_first_and_grows():
    block = "total = 0\n    for v in values:\n        total += v\n    return total"  # the last line still decoding

    def slow(req: FimRequest) -> str:
        time.sleep(0.01)  # past the 1 ms budget: the first answer ends after its last whole line
        return block

    text = "def mean(values):\n    "
    c = Completer(ScriptedBackend(slow), Options(multiline="always", budget_ms=1))
    s = await c.complete(doc(text), len(text))
    assert s is not None and s.result is not None and s.result.finish == "budget"
    assert s.text == "total = 0\n    for v in values:\n        total += v" and s.growing is not None
    grown = await s.growing
    assert grown is not None and len(grown.text) > len(s.text) and grown.text.startswith(s.text)


async def test_windows_never_exceed_what_an_engine_sequence_holds():
    long_file = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(400))
    text = long_file + "def g(y):\n    "
    backend = ScriptedBackend("return y", context_tokens=300)
    c = Completer(backend, Options(multiline="never", prefix_tokens=0, suffix_tokens=0))
    await c.complete(doc(text), len(text))
    req = backend.asked[-1]
    count = ApproxCounter()
    used = len(count.starts(req.prefix)) + len(count.starts(req.suffix))
    assert used <= 300 - Options().max_tokens, used


async def test_a_turned_off_language_is_declined_before_any_work():
    backend = ScriptedBackend("x")
    c = Completer(backend, Options(disabled_languages=("python",)))
    assert await c.complete(doc(), CURSOR) is None
    assert backend.asked == [] and "off for python" in c.declined


async def test_other_documents_are_read_only_when_context_from_them_is_wanted():
    read: list[str] = []

    def others():
        read.append("read")
        yield Document("file:///w/util.py", "def helper():\n    return 1\n", "python")

    c = Completer(ScriptedBackend("return total"), Options(multiline="never"))
    c.speed.device = "cpu"  # the default context from other files is sized to the device: none here
    await c.complete(doc(), CURSOR, others())
    assert read == []
    c2 = Completer(ScriptedBackend("return total"), Options(multiline="never", extra_context_tokens=128))
    await c2.complete(doc(), CURSOR, others())
    assert read == ["read"]


def test_stand_in_backend_answers_in_order():
    assert asyncio.run(Completer(ScriptedBackend([]), Options()).complete(doc(), CURSOR)) is None


async def test_a_second_opinion_that_would_double_the_wait_is_looked_for_after_the_answer():
    """A warm prompt's answer is all decoding: another decode would double the wait. The answer says
    nothing fits yet, the second opinion runs after it, and a request there then gets it at once."""
    import dataclasses

    text = "def f(x):\n    \n    y = x + 1\n    return y\n"
    offset = text.index("    \n") + 4

    class Timed(ScriptedBackend):
        def submit(self, req):
            fut = super().submit(req)
            r = fut.result()
            out = type(fut)()
            out.set_result(dataclasses.replace(r, elapsed_ms=300.0, prefill_ms=0.0))  # decoding only
            return out

    backend = Timed(["return x", "x = abs(x)"])
    c = Completer(backend, Options(multiline="never"))
    first = await c.complete(doc(text), offset)
    assert first is not None and first.text == "" and first.growing is not None  # nothing yet
    found = await first.growing
    assert found is not None and found.text == "x = abs(x)" and c.stats.second_opinions_found == 1
    again = await c.complete(doc(text), offset)
    assert again is not None and again.text == "x = abs(x)" and again.source == "typed-through"
    assert len(backend.asked) == 2


async def test_a_quick_first_answer_is_replaced_by_the_whole_prompts_when_it_differs():
    # A cold place on a CPU: the engine answered from the nearest lines ("quick"); the whole prompt's
    # answer follows, replaces it where it says something else, and is what a re-ask there gets.
    backend = ScriptedBackend(["return total", "return total / len(values)"],
                              window=lambda req: "quick" if req.quick_tokens else "long")
    c = Completer(backend, Options(multiline="never"))
    s = await c.complete(doc(), CURSOR)
    assert s is not None and s.text == "return total" and s.growing is not None
    whole = await s.growing
    assert whole is not None and whole.text == "return total / len(values)"
    assert backend.asked[0].quick_tokens > 0 and backend.asked[1].quick_tokens == 0
    assert not backend.asked[0].warm and backend.asked[1].warm  # preempted within a warm-up's chunk
    assert (c.stats.quick_answers, c.stats.quick_replaced) == (1, 1)
    again = await c.complete(doc(), CURSOR)
    assert again is not None and again.text == "return total / len(values)" and len(backend.asked) == 2
    # Off (the ablation), or a whole prompt saying the same: one answer, nothing follows.
    backend = ScriptedBackend(["return total", "return total"], window=lambda req: "quick" if req.quick_tokens else "")
    s = await Completer(backend, Options(multiline="never")).complete(doc(), CURSOR)
    assert s is not None and s.growing is not None and await s.growing is None
    backend = ScriptedBackend(["return total"], window=lambda req: "quick" if req.quick_tokens else "")
    s = await Completer(backend, Options(multiline="never", quick_first=False)).complete(doc(), CURSOR)
    assert s is not None and s.growing is None and backend.asked[0].quick_tokens == 0
    # Accepted as it is: its follow-up stops (the next line's prefetch must not wait behind it).
    backend = ScriptedBackend(["return total"], window=lambda req: "quick" if req.quick_tokens else "")
    c = Completer(backend, Options(multiline="never"))
    s = await c.complete(doc(), CURSOR)
    assert s is not None and s.growing is not None and not s.growing.done()
    c.accepted(s.id)
    await asyncio.sleep(0)
    assert s.growing.cancelled() or (s.growing.done() and s.growing.result() is None)
    # A quick answer with nothing to show (empty, or it does not fit): the whole prompt answers at once.
    for quick in ("", "return total +"):
        backend = ScriptedBackend([quick, "return total / len(values)"],
                                  window=lambda req: "quick" if req.quick_tokens else "")
        c = Completer(backend, Options(multiline="never"))
        s = await c.complete(doc(), CURSOR)
        assert s is not None and s.text == "return total / len(values)" and s.growing is None
        assert [r.quick_tokens > 0 for r in backend.asked] == [True, False] and c.stats.quick_missed == 1
    # A warm-up prefills the whole prompt, never a quick window.
    c = Completer(ScriptedBackend(), Options(multiline="never"))
    assert warmup.warm(c, doc(), CURSOR) and c.backend.prefetched[0].quick_tokens == 0

