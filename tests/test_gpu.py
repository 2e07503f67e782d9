"""CUDA paths (bf16, nf4 via bitsandbytes) on the tiny model, on the torch runner (`--runner auto`
takes torch where CUDA is in use); skipped cleanly without a GPU."""

from __future__ import annotations

import importlib.util

import pytest
from codestral_ls.engine import EngineOptions, ModelSpec, load_engine
from codestral_ls.engine.request import FimRequest, StopRule

pytestmark = pytest.mark.gpu


def complete(engine, **kw):
    return engine.complete(FimRequest(doc="g", prefix="def add(a, b):\n    ret", suffix="\n", max_tokens=12,
                                      stop=StopRule(max_lines=50), background=False, **kw))


def test_bf16_on_cuda_reuses_the_cache(tiny_model_dir):
    e = load_engine(ModelSpec(model=str(tiny_model_dir), device="cuda", dtype="bfloat16"), EngineOptions())
    assert e.loaded.device == "cuda" and e.loaded.dtype == "bfloat16" and e.runner.name == "torch"
    first = complete(e)
    calls = e.forward_calls
    again = complete(e)
    assert again.text == first.text and e.forward_calls == calls  # replayed from the cache


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_nf4_on_cuda_loads_and_completes(tiny_model_dir):
    e = load_engine(ModelSpec(model=str(tiny_model_dir), device="cuda", quantize="nf4"), EngineOptions())
    assert e.loaded.quantize == "nf4" and e.runner.name == "torch"
    first = complete(e)
    assert first.decoded_tokens + first.replayed_tokens > 0
    calls = e.forward_calls
    again = complete(e)
    assert again.text == first.text and e.forward_calls == calls  # the nf4 cache replays like bf16's
