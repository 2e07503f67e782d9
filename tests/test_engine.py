"""Engine behaviour on the tiny random Codestral-architecture model, run on both runners (torch from
its transformers folder, llama.cpp from its GGUF): reuse, replay, speculation, healing, avoid,
cancellation, budget, the KV store's bounds."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from codestral_ls.engine import EngineOptions, ModelSpec, load_engine
from codestral_ls.engine.decoding.engine import Engine
from codestral_ls.engine.decoding.kvcache import Sequence, common_prefix
from codestral_ls.engine.errors import Cancelled, EngineError
from codestral_ls.engine.request import FimRequest, StopRule
from codestral_ls.engine.serving.worker import EngineWorker

PREFIX = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\ndef add(a, b):\n    ret"
SUFFIX = "\n\n\nfor i in range(10):\n    print(add(i, i))\n"


@pytest.fixture(params=["torch", "llamacpp"])
def tiny_engine(request):
    """Every test here runs on both runners, with the same assertions."""
    return request.getfixturevalue(f"tiny_{request.param}_engine")


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
    cached = Sequence()
    e._prefill(cached, a, req())
    cached.truncate(shared)
    reused = e._prefill(cached, b[shared:], req())
    recomputed = e._prefill(Sequence(), b, req())
    assert np.allclose(reused, recomputed, rtol=1e-4, atol=1e-3)
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
    vocab = spec.runner.vocab_size

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


def early_stop(engine: Engine, doc: str) -> StopRule:
    """A stop rule that ends the model's greedy answer after a few tokens, whatever it says: a random
    model may never write a line break (which a latency budget needs), but it writes some character
    for the first time after its first few tokens, and greedy decoding writes it again."""
    seen = fresh(engine, speculation=False).complete(req(doc=doc, max_tokens=30, background=False)).text
    for i in range(1, len(seen)):
        if seen[i] not in seen[:i] and seen[:i].strip():
            return StopRule(max_lines=1000, stop_strings=(seen[i],))
    raise AssertionError(f"the tiny model's answer has too few distinct characters: {seen!r}")


def test_an_answer_is_decoded_on_in_the_background_and_replayed(tiny_engine):
    e = fresh(tiny_engine, speculation=False)
    stop = early_stop(tiny_engine, "a")
    quick = e.complete(req(max_tokens=30, stop=stop))
    assert quick.finish == "stop" and e.has_background_work()
    steps = 0
    while e.has_background_work() and steps < 100:
        e.background_step()
        steps += 1
    assert steps > 0
    calls = e.forward_calls
    later = e.complete(req(max_tokens=30, stop=StopRule(max_lines=1000), background=False))
    assert later.text.startswith(quick.text) and len(later.text) > len(quick.text)
    assert later.replayed_tokens > 0
    assert e.forward_calls - calls <= 2


def test_a_passed_line_deadline_ends_a_block_after_its_last_whole_line():
    rule = StopRule(max_lines=1000, line_deadline=time.monotonic() - 1)
    assert rule.cut("a = 1\nb = 2\nc =") == ("a = 1\nb = 2", "budget")
    assert rule.cut("a = 1") == ("a = 1", None)  # no whole line yet: never half a line
    assert rule.unbudgeted().cut("a = 1\nb =") == ("a = 1\nb =", None)


def test_kv_store_stays_under_its_byte_budget(tiny_engine):
    e = fresh(tiny_engine, kv_budget_mb=64 / 1024)
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
def test_draft_model_greedy_equals_plain_greedy(tiny_engine, tiny_model_dir, tiny_gguf, tmp_path_factory, drafter,
                                                monkeypatch):
    """--draft-model: a model with the same tokenizer proposes, the target verifies. With the
    target itself as drafter every draft is accepted (fewer target forwards); with another random
    model most are rejected. The text is plain greedy's either way."""
    from codestral_ls.engine.decoding.draft import DraftModel
    from codestral_ls.engine.models.loading import load_draft

    from benchmarks.tiny_model import build_tiny_model, write_tiny_gguf

    monkeypatch.setenv("CODESTRAL_LS_CACHE", str(tmp_path_factory.mktemp("cache")))
    folder = tiny_model_dir if drafter == "same" else build_tiny_model(tmp_path_factory.mktemp("draft"), seed=1,
                                                                        layers=1)
    spec = ModelSpec(model=str(tiny_model_dir), device="cpu")
    if tiny_engine.runner.name == "llamacpp":  # the draft runs on the target's runner
        spec = ModelSpec(model=str(tiny_gguf), runner="llamacpp")
        folder = tiny_gguf if drafter == "same" else write_tiny_gguf(folder, folder / "draft.gguf")
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
    from codestral_ls.engine.models.loading import load_draft

    class Other:
        def get_vocab(self):
            return {"a": 0}

    loaded = type("L", (), {"tokenizer": Other(), "runner": tiny_engine.runner, "source": "x"})()
    with pytest.raises(ModelLoadError, match="same tokenizer"):
        load_draft(ModelSpec(model=str(tiny_model_dir), device="cpu"), loaded,
                   EngineOptions(draft_model=str(tiny_model_dir)))


# -- the KV store's bounds and failures (issue: lost or corrupted state) -------------------------


def test_a_multi_line_replay_keeps_max_tokens(tiny_engine):
    """A cached continuation longer than max_tokens (background decoding runs past it) is cut at
    max_tokens on replay, as a cold engine would cut it."""
    e = fresh(tiny_engine, speculation=False)
    stop = StopRule(max_lines=1000)
    long = e.complete(req(max_tokens=30, stop=stop, background=False))
    short = e.complete(req(max_tokens=6, stop=stop, background=False))
    cold = fresh(tiny_engine, kv_reuse=False).complete(req(max_tokens=6, stop=stop, background=False))
    assert len(long.text) > len(cold.text)
    assert short.text == cold.text and short.finish == cold.finish == "length"


def test_the_most_recent_entry_is_kept_even_over_the_budget(tiny_engine, caplog):
    """One entry alone over the byte budget is kept (the next keystroke needs it), logged, counted."""
    e = fresh(tiny_engine, speculation=False, kv_budget_mb=1 / 2**20)
    first = e.complete(req(background=False))
    assert len(e.store.entries) == 1 and e.store.oversized == 1
    assert "over the whole budget" in caplog.text
    calls = e.forward_calls
    again = e.complete(req(background=False))
    assert again.text == first.text and e.forward_calls == calls  # replayed, not re-prefilled
    e.complete(req(doc="other", prefix="# other\n" + PREFIX, background=False))
    assert [x.doc for x in e.store.entries] == ["other"]  # the older one went, the newest stayed


def _with_background_work(e: Engine, doc: str):
    quick = e.complete(req(doc=doc, max_tokens=30, stop=early_stop(e, doc)))
    assert quick.finish == "stop" and e.has_background_work()
    return quick


def test_background_growth_counts_against_the_budget(tiny_engine):
    e = fresh(tiny_engine, speculation=False)
    e.complete(req(doc="old", prefix="# old\n" + PREFIX, background=False))
    _with_background_work(e, "new")
    e.store.budget_bytes = e.store.total_bytes() + 1  # both fit now; background growth will not
    while e.has_background_work():
        e.background_step()
    assert e.store.total_bytes() <= e.store.budget_bytes
    assert [x.doc for x in e.store.entries] == ["new"]  # the grown entry is the one kept


def test_a_failed_background_step_drops_its_sequence(tiny_engine):
    e = fresh(tiny_engine, speculation=False)
    _with_background_work(e, "a")
    entry = e.store.entries[-1]
    real = e._forward

    def exploding(seq, ids, n_logits=1):
        raise RuntimeError("CUDA out of memory (simulated)")

    e._forward = exploding
    with pytest.raises(RuntimeError):
        e.background_step()
    e._forward = real
    assert entry not in e.store.entries and not e.has_background_work()
    stop = StopRule(max_lines=1000)
    after = e.complete(req(doc="a", max_tokens=12, stop=stop, background=False))
    cold = fresh(tiny_engine, kv_reuse=False).complete(req(doc="a", max_tokens=12, stop=stop, background=False))
    assert after.text == cold.text and after.reused_tokens == 0


# -- the runners ------------------------------------------------------------------------------


def test_both_runners_compute_the_same_function(tiny_torch_engine, tiny_llamacpp_engine):
    """The GGUF on llama.cpp and the folder on torch: the same next-token logits (f16 KV cache aside)."""
    ids = tiny_torch_engine.encoder.build(PREFIX, SUFFIX).ids
    a = tiny_torch_engine.runner.forward(Sequence(), ids, n_logits=4)
    b = tiny_llamacpp_engine.runner.forward(Sequence(), ids, n_logits=4)
    assert (a.argmax(-1) == b.argmax(-1)).all()
    assert np.abs(a - b).max() < 0.02 * np.abs(a).max()


def test_llamacpp_frees_slots_for_more_documents_than_it_has(tiny_llamacpp_engine):
    from codestral_ls.engine.models.runner_llamacpp import SLOTS

    e = fresh(tiny_llamacpp_engine)
    for i in range(SLOTS + 4):
        assert e.complete(req(doc=f"d{i}", prefix=f"# file {i}\n" + PREFIX, background=False)).finish
    assert len(e.store.entries) <= SLOTS  # the oldest gave their slots to the newest


def test_llamacpp_sequences_have_cache_streams_of_their_own(tiny_gguf):
    """Each slot has its own cells (a forward attends over its own sequence only: with other prompts
    resident, one shared cache made prefill 2.2x slower on the embedded model, benchmarks.runners).
    A prompt longer than a stream is refused with an error that says what to lower, and the runner
    goes on serving the other sequences."""
    from codestral_ls.engine.errors import EngineError
    from codestral_ls.engine.models.runner_llamacpp import LlamaCppRunner

    r = LlamaCppRunner(tiny_gguf, threads=1, seq_ctx=256, slots=3)

    def ids(n: int) -> list[int]:
        return [3 + i % (r.vocab_size - 3) for i in range(n)]

    try:
        assert r.seq_ctx == 256
        held = [Sequence() for _ in range(2)]
        for seq in held:
            r.forward(seq, ids(200))  # 2 x 200 tokens resident
        alone = r.forward(Sequence(), ids(40))
        with pytest.raises(EngineError, match="a llama.cpp sequence holds 256.*prefixTokens"):
            r.forward(Sequence(), ids(300))
        again = r.forward(held[0], [7])  # the others are intact and usable
        assert again.shape == alone.shape and np.isfinite(again).all()
    finally:
        r.close()


def test_warm_ups_prefill_in_small_chunks_and_real_requests_in_large_ones(tiny_llamacpp_engine):
    """A real request waits behind a warm-up at most one small chunk; its own prefill goes in the
    large chunks that run at llama.cpp's batch speed (64-token forwards: 0.8x, benchmarks.runners)."""
    e = fresh(tiny_llamacpp_engine)
    runner = e.runner
    assert runner.warm_chunk < runner.prefill_chunk
    sizes: list[int] = []
    forward = runner.forward

    def spy(seq, ids, n_logits=1):
        sizes.append(len(ids))
        return forward(seq, ids, n_logits)

    long_prefix = "".join(f"# note {i}: the fib and add functions below\n" for i in range(60)) + PREFIX
    runner.forward = spy
    try:
        e.complete(req(doc="w", prefix=long_prefix, background=False, warm=True))
        warm = sizes[:]
        sizes.clear()
        e.complete(req(doc="r", prefix="# another file\n" + long_prefix, background=False))
        real = sizes[:]
    finally:
        del runner.forward
    assert sum(warm) > runner.prefill_chunk  # long enough for the difference to show
    assert max(warm) == runner.warm_chunk and max(real) == runner.prefill_chunk


def test_runner_auto_takes_llamacpp_for_a_gguf_on_the_cpu(tmp_path):
    from codestral_ls.engine.decoding.runner import choose_runner, llamacpp_available
    from codestral_ls.engine.errors import ModelLoadError
    from codestral_ls.engine.models.loading import gguf_of

    gguf = tmp_path / "m.gguf"
    if llamacpp_available():
        assert choose_runner("auto", gguf, "cpu")[0] == "llamacpp"
        assert choose_runner("auto", gguf_of(ModelSpec()), "cpu")[0] == "llamacpp"  # the embedded model
    assert choose_runner("auto", gguf, "cuda")[0] == "torch"
    assert choose_runner("auto", None, "cpu") == ("torch", "auto: the model is a Hugging Face folder, not a GGUF")
    assert choose_runner("torch", gguf, "cpu")[0] == "torch"
    assert choose_runner("auto", gguf, "cpu", quantize="int8") == ("torch", "auto: --quantize int8 is a torch option")
    with pytest.raises(ModelLoadError, match="needs a GGUF"):
        choose_runner("llamacpp", None, "cpu")


def test_the_llamacpp_path_never_imports_torch(tiny_gguf, tmp_path):
    """torch costs ~300 MB resident: a server on llama.cpp must not load it."""
    import subprocess
    import sys

    code = ("import sys\nfrom codestral_ls.engine import ModelSpec, load_engine\n"
            "from codestral_ls.engine.request import FimRequest\n"
            f"e = load_engine(ModelSpec(model={str(tiny_gguf)!r}, runner='llamacpp'))\n"
            "r = e.complete(FimRequest(doc='a', prefix='def f():\\n    ret', suffix='\\n', max_tokens=4, "
            "background=False))\n"
            "print(e.runner.name, 'torch' in sys.modules)\n")
    pytest.importorskip("llama_cpp")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "CODESTRAL_LS_CACHE": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["llamacpp", "False"]


def test_the_gguf_tokenizer_reads_like_transformers(tiny_llamacpp_engine):
    """The llama.cpp path tokenizes with `tokenizers` alone (no transformers import); every call the
    engine makes answers as transformers' fast tokenizer of the same files does."""
    from transformers import PreTrainedTokenizerFast

    tok = tiny_llamacpp_engine.loaded.tokenizer
    ref = PreTrainedTokenizerFast.from_pretrained(tok.name_or_path)
    text = PREFIX + SUFFIX + " [PREFIX] <s> tab\there\r\n"
    for split in (True, False):
        assert tok.encode(text, add_special_tokens=False, split_special_tokens=split) == ref.encode(
            text, add_special_tokens=False, split_special_tokens=split)
    ids = ref.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    singles = [[i] for i in range(len(ref))]
    assert tok.batch_decode(singles) == ref.batch_decode(singles, skip_special_tokens=False,
                                                         clean_up_tokenization_spaces=False)
    assert tok.get_vocab() == ref.get_vocab() and len(tok) == len(ref)
    assert (tok.bos_token_id, tok.eos_token_id, tok.all_special_ids) == (ref.bos_token_id, ref.eos_token_id,
                                                                          ref.all_special_ids)
    assert set(tok.added_tokens_decoder) == set(ref.added_tokens_decoder)


def test_a_slot_given_to_another_sequence_stays_with_it(tiny_llamacpp_engine):
    """A released sequence's slot goes to the next one; the old handle dying later must not free it."""
    import gc

    r = tiny_llamacpp_engine.runner
    ids = tiny_llamacpp_engine.encoder.build(PREFIX, SUFFIX).ids[:40]
    a = Sequence()
    r.forward(a, ids[:20])
    old = a.kv
    a.release()
    b = Sequence()
    r.forward(b, ids[:20])
    assert b.kv.seq_id == old.seq_id  # the same slot, reused
    del old
    gc.collect()
    reused = r.forward(b, ids[20:])
    recomputed = r.forward(Sequence(), ids)
    assert np.allclose(reused, recomputed, rtol=1e-4, atol=1e-3)


def test_a_prompt_longer_than_the_sliding_window_can_still_be_cropped(tiny_torch_engine):
    # Mistral configs carry a sliding window (4096 here): a cache built from the config keeps only the
    # window, and cropping it for the next keystroke raised "crop was called, but the current layer
    # does not track past states" (the stress benchmark's 2 MB document, once windows grew with speed).
    e = fresh(tiny_torch_engine)
    long_prefix = "value = compute(1, 2)\n" * 700 + "def add(a, b):\n    ret"
    assert len(e.encoder.build(long_prefix, SUFFIX).ids) > 4096
    e.complete(req(prefix=long_prefix, background=False))
    edited = long_prefix[:-3] + "x = 1\n    ret"
    got = e.complete(req(prefix=edited, background=False))
    cold = fresh(tiny_torch_engine, kv_reuse=False).complete(req(prefix=edited, background=False))
    assert got.reused_tokens > 4000 and got.text == cold.text
