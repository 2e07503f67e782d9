"""Engine behaviour on the tiny random Codestral-architecture model: reuse, replay, speculation,
cancellation, budget, memory bound."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from codestral_ls.engine import EngineOptions, ModelSpec, load_engine
from codestral_ls.engine.engine import Engine
from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.kvcache import Sequence, common_prefix
from codestral_ls.engine.request import FimRequest, StopRule
from codestral_ls.engine.worker import EngineWorker

PREFIX = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\ndef add(a, b):\n    ret"
SUFFIX = "\n\n\nfor i in range(10):\n    print(add(i, i))\n"


def fresh(engine: Engine, **opts) -> Engine:
    """Same weights, new cache and options."""
    return Engine(engine.loaded, EngineOptions(**opts))


def req(doc: str = "a", **kw) -> FimRequest:
    kw.setdefault("max_tokens", 12)
    kw.setdefault("stop", StopRule(max_lines=50))
    return FimRequest(doc=doc, prefix=kw.pop("prefix", PREFIX), suffix=kw.pop("suffix", SUFFIX), **kw)


def test_reused_cache_gives_the_same_logits_as_recompute(tiny_engine):
    e = fresh(tiny_engine)
    a = e.encoder.build(PREFIX, SUFFIX).ids
    b = e.encoder.build(PREFIX + "urn a", SUFFIX).ids
    shared = min(common_prefix(a, b), len(b) - 1)
    assert shared > 10
    cached = Sequence(doc="a")
    e._prefill(cached, a, req().cancel)
    cached.truncate(shared)
    reused = e._prefill(cached, b[shared:], req().cancel)
    recomputed = e._prefill(Sequence(doc="b"), b, req().cancel)
    assert torch.allclose(reused, recomputed, rtol=1e-4, atol=1e-3)
    assert int(reused.argmax()) == int(recomputed.argmax())


def test_same_request_again_replays_without_the_model(tiny_engine):
    e = fresh(tiny_engine, speculation=False)
    first = e.complete(req(background=False))
    calls = e.forward_calls
    again = e.complete(req(background=False))
    assert again.text == first.text
    assert e.forward_calls == calls  # no forward at all
    assert again.replayed_tokens >= 1 and again.reused_tokens == again.prompt_tokens


@pytest.mark.model
def test_typing_what_was_suggested_replays_the_rest(qwen_engine):
    """Real model: typing the start of the suggestion costs no decoding, and the answer is what a
    cold engine would give for the same text."""
    e = fresh(qwen_engine, speculation=False)
    prefix = "def fib(n):\n    if n < 2:\n        return n\n    return "
    suffix = "\n\n\nprint(fib(10))\n"
    stop = StopRule(single_line=True)
    first = e.complete(FimRequest(doc="f", prefix=prefix, suffix=suffix, stop=stop, background=False))
    assert first.text.startswith("fib(")
    calls = e.forward_calls
    for typed in ("f", "fi", "fib", "fib("):
        r = e.complete(FimRequest(doc="f", prefix=prefix, suffix=suffix, forced_middle=typed, stop=stop,
                                  background=False))
        assert r.text == first.text[len(typed):], typed
    assert e.forward_calls - calls <= 1
    cold = fresh(qwen_engine, kv_reuse=False).complete(
        FimRequest(doc="g", prefix=prefix, suffix=suffix, forced_middle="fib(", stop=stop, background=False))
    assert cold.text == first.text[len("fib("):]


def test_kv_reuse_off_recomputes_everything(tiny_engine):
    e = fresh(tiny_engine, kv_reuse=False)
    e.complete(req(background=False))
    r = e.complete(req(background=False))
    assert r.reused_tokens == 0 and r.prefilled_tokens == r.prompt_tokens


@pytest.mark.parametrize("drafts", ["right", "wrong"])
@pytest.mark.parametrize("prefix", [PREFIX, "x = 1\nx = 1\nx = 1\nx", "def f():\n    "])
def test_speculative_greedy_equals_plain_greedy(tiny_engine, prefix, drafts):
    plain_engine = fresh(tiny_engine, speculation=False, kv_reuse=False)
    plain = plain_engine.complete(req(prefix=prefix, max_tokens=24, background=False))
    reference = fresh(tiny_engine, speculation=False)
    reference.complete(req(prefix=prefix, max_tokens=24, background=False))
    greedy = reference.store.entries[-1].ids
    spec = fresh(tiny_engine, speculation=True, kv_reuse=False)
    vocab = spec.model.config.vocab_size

    def draft(ids):
        # Right drafts are the true greedy continuation; wrong ones are shifted tokens.
        n = len(ids)
        true_next = greedy[n:n + 3]
        return true_next if drafts == "right" else [(t + 1) % vocab for t in true_next]

    spec._lookup_draft = draft
    got = spec.complete(req(prefix=prefix, max_tokens=24, background=False))
    assert got.text == plain.text
    assert got.draft_proposed > 0
    if drafts == "right":
        assert got.draft_accepted > 0 and spec.forward_calls < plain_engine.forward_calls
    else:
        assert got.draft_accepted == 0


def test_cancel_stops_within_one_token(tiny_engine):
    e = fresh(tiny_engine, speculation=False, kv_reuse=False)
    r = req(max_tokens=64, stop=StopRule(max_lines=1000))
    calls_at_cancel = []
    real_forward = e._forward

    def forward(seq, ids, n_logits=1):
        out = real_forward(seq, ids, n_logits)
        if e.forward_calls == 3:
            r.cancel.cancel()
            calls_at_cancel.append(e.forward_calls)
        return out

    e._forward = forward
    with pytest.raises(Cancelled):
        e.complete(r)
    assert e.forward_calls - calls_at_cancel[0] <= 1


def test_budget_answers_early_and_background_decodes_the_rest(tiny_engine):
    e = fresh(tiny_engine, speculation=False)
    slow_forward = e._forward

    def forward(seq, ids, n_logits=1):
        time.sleep(0.02)  # make each token take visible time
        return slow_forward(seq, ids, n_logits)

    e._forward = forward
    stop = StopRule(max_lines=1000)
    quick = e.complete(req(budget_ms=1, max_tokens=30, stop=stop))
    if quick.finish != "budget":
        pytest.skip(f"the tiny model stopped by itself ({quick.finish}) before the budget")
    steps = 0
    while e.has_background_work() and steps < 100:
        e.background_step()
        steps += 1
    assert steps > 0
    calls = e.forward_calls
    later = e.complete(req(budget_ms=None, max_tokens=30, stop=stop, background=False))
    assert later.text.startswith(quick.text) and len(later.text) > len(quick.text)
    assert later.replayed_tokens > 0
    assert e.forward_calls - calls <= 2


def test_kv_store_stays_under_its_byte_budget(tiny_engine):
    e = fresh(tiny_engine, kv_budget_bytes=64 * 1024)
    for i in range(12):
        e.complete(req(doc=f"d{i}", prefix=f"# file {i}\n" + PREFIX, background=False))
    assert e.store.total_bytes() <= 64 * 1024
    assert len(e.store.entries) < 12


def test_worker_newest_request_per_document_wins(tiny_engine):
    gate = threading.Event()
    e = fresh(tiny_engine)
    real = e.complete

    def slow(r):
        gate.wait(10)
        return real(r)

    e.complete = slow
    w = EngineWorker(lambda: e).start()
    try:
        w.loaded.wait(10)
        first = w.submit(req(doc="x"))
        time.sleep(0.05)  # first is now running (blocked on the gate)
        second = w.submit(req(doc="x"))
        third = w.submit(req(doc="x"))  # supersedes `second` while it is queued
        gate.set()
        with pytest.raises(Cancelled):
            second.result(10)
        with pytest.raises(Cancelled):
            first.result(10)  # running one is cancelled between tokens
        assert third.result(30).finish
    finally:
        w.stop()


def test_worker_with_a_model_that_failed_to_load_explains_on_every_request(tmp_path):
    w = EngineWorker(lambda: load_engine(ModelSpec(model=str(tmp_path / "missing"))))
    w.start()
    w.loaded.wait(30)
    for _ in range(2):
        with pytest.raises(EngineError, match="does not exist"):
            w.submit(req()).result(5)


@pytest.mark.model
def test_suggestion_after_an_auto_indent_is_code_not_more_spaces(qwen_engine):
    """Real model, cursor after a 12-space auto-indent where it would rather have dedented: the
    healed indent must not strand it mid-indent (it used to answer a line of spaces)."""
    prefix = ("def separate_paren_groups(paren_string):\n    result = []\n    current_string = []\n"
              "    current_depth = 0\n\n    for c in paren_string:\n        if c == '(':\n"
              "            current_depth += 1\n            current_string.append(c)\n        elif c == ')':\n"
              "            current_depth -= 1\n            current_string.append(c)\n\n            ")
    suffix = ("\n                result.append(''.join(current_string))\n                current_string.clear()\n"
              "\n    return result\n")
    r = fresh(qwen_engine).complete(FimRequest(doc="p", prefix=prefix, suffix=suffix,
                                               stop=StopRule(single_line=True), background=False))
    assert r.text.startswith("if ") and r.text.rstrip().endswith(":"), repr(r.text)


def test_avoid_steers_the_first_words_and_leaves_the_greedy_cache_honest(tiny_engine):
    """A rejected start is passed over for the next best; the plain request afterwards still gets
    the plain greedy answer (the steered continuation in the cache is not replayed as greedy)."""
    e = fresh(tiny_engine, speculation=False)
    stop = StopRule(single_line=True)
    plain = e.complete(req(prefix="def f():\n    ", stop=stop, max_tokens=8, background=False))
    assert plain.text.strip()
    steered = e.complete(req(prefix="def f():\n    ", stop=stop, max_tokens=8, background=False,
                             avoid=(plain.text.strip(),)))
    assert steered.text.strip() and steered.text.strip() != plain.text.strip()
    assert not plain.text.strip().startswith(steered.text.strip())
    again = e.complete(req(prefix="def f():\n    ", stop=stop, max_tokens=8, background=False))
    assert again.text == plain.text
    cold = fresh(tiny_engine, kv_reuse=False).complete(
        req(prefix="def f():\n    ", stop=stop, max_tokens=8, background=False, avoid=(plain.text.strip(),)))
    assert cold.text == steered.text


@pytest.mark.parametrize("drafter", ["same", "other"])
def test_draft_model_greedy_equals_plain_greedy(tiny_engine, tiny_model_dir, tmp_path_factory, drafter):
    """--draft-model: a model with the same tokenizer proposes, the target verifies. With the
    target itself as drafter every draft is accepted (fewer target forwards); with another random
    model most are rejected. The text is plain greedy's either way."""
    from codestral_ls.engine.draft import DraftModel
    from codestral_ls.engine.loading import load_draft

    from tests.conftest import build_tiny_model

    folder = tiny_model_dir if drafter == "same" else build_tiny_model(tmp_path_factory.mktemp("draft"), seed=1,
                                                                        layers=1)
    spec = ModelSpec(model=str(tiny_model_dir), device="cpu")
    opts = EngineOptions(kv_reuse=False, draft_model=str(folder))
    draft = load_draft(spec, tiny_engine.loaded, opts)
    assert isinstance(draft, DraftModel)
    for prefix in (PREFIX, "def f():\n    "):
        plain_engine = fresh(tiny_engine, speculation=False, kv_reuse=False)
        plain = plain_engine.complete(req(prefix=prefix, max_tokens=24, background=False))
        spec_engine = Engine(tiny_engine.loaded, opts, draft)
        spec_engine._lookup_draft = lambda ids: []  # the draft model alone
        got = spec_engine.complete(req(prefix=prefix, max_tokens=24, background=False))
        assert got.text == plain.text
        assert got.draft_proposed > 0
        if drafter == "same":
            assert got.draft_accepted > 0 and spec_engine.forward_calls < plain_engine.forward_calls


def test_draft_model_with_another_tokenizer_is_refused(tiny_engine, tiny_model_dir):
    from codestral_ls.engine.errors import ModelLoadError
    from codestral_ls.engine.loading import load_draft

    class Other:
        def get_vocab(self):
            return {"a": 0}

    loaded = type("L", (), {"tokenizer": Other(), "model": tiny_engine.model, "source": "x"})()
    with pytest.raises(ModelLoadError, match="same tokenizer"):
        load_draft(ModelSpec(model=str(tiny_model_dir), device="cpu"), loaded,
                   EngineOptions(draft_model=str(tiny_model_dir)))
