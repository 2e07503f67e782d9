"""FIM prompt layouts, built as token ids, per family. Codestral against mistral-common's own
encoder: tests/test_codestral.py; Qwen2.5-Coder here, against its model card's prompt string on the
embedded model's real tokenizer."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from codestral_ls.engine.decoding.heal import HealIndex
from codestral_ls.engine.models.fim import CODESTRAL, QWEN, FimEncoder, detect_profile
from codestral_ls.engine.models.gguf_tokenizer import tokenizer_dir
from transformers import AutoTokenizer


@pytest.fixture(scope="module")
def tiny_tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def qwen_tok():
    return AutoTokenizer.from_pretrained(tokenizer_dir())  # the GGUF's own, as the server uses


def test_codestral_layout_is_bos_suffix_prefix_no_middle(tiny_tok):
    enc = FimEncoder(tiny_tok, detect_profile(tiny_tok))
    assert enc.profile is CODESTRAL
    v = tiny_tok.get_vocab()
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    p = enc.build(prefix, suffix, heal=False)
    assert p.ids == [tiny_tok.bos_token_id, v["[SUFFIX]"], *enc.encode_text(suffix), v["[PREFIX]"],
                     *enc.encode_text(prefix)]
    assert v["[MIDDLE]"] not in p.ids
    assert tiny_tok.eos_token_id in p.stop_ids


def test_qwen_layout_is_prefix_suffix_middle(qwen_tok):
    enc = FimEncoder(qwen_tok, detect_profile(qwen_tok))
    assert enc.profile is QWEN
    v = qwen_tok.get_vocab()
    prefix, suffix = "def add(a, b):\n    return ", "\n"
    p = enc.build(prefix, suffix, heal=False)
    assert p.ids == [v["<|fim_prefix|>"], *enc.encode_text(prefix), v["<|fim_suffix|>"], *enc.encode_text(suffix),
                     v["<|fim_middle|>"]]
    for stop in ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>"):
        assert v[stop] in p.stop_ids


def test_qwen_prompt_equals_the_model_card_string_on_the_real_tokenizer(qwen_tok):
    """Qwen2.5-Coder's card: `<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>` tokenized
    whole. Ours is built from pieces: the ids must be the same for real code (HumanEval), CRLF, tabs,
    emoji/CJK, empty sides; with healing, the same minus the healed last prefix token."""
    enc = FimEncoder(qwen_tok, detect_profile(qwen_tok))
    data = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "human-eval-infilling"
    with gzip.open(data / "HumanEval-SingleLineInfilling.jsonl.gz", "rt") as f:
        cases = [(r["prompt"], r["suffix"]) for r in map(json.loads, f)][::10]
    cases += [(p.replace("\n", "\r\n"), s.replace("    ", "\t")) for p, s in cases[:20]]
    cases += [("x = '漢字😀", "'\n"), ("", "\n"), ("def f():\n    ", ""), ("a  ", "b")]
    v = qwen_tok.get_vocab()
    for prefix, suffix in cases:
        ref = qwen_tok.encode(f"<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>", add_special_tokens=False)
        assert enc.build(prefix, suffix, heal=False).ids == ref, (prefix[-30:], suffix[:30])
        healed = enc.build(prefix, suffix)
        cut = ref.index(v["<|fim_suffix|>"]) - 1  # the last prefix token
        if prefix and "\ufffd" not in enc.decode(ref[cut:cut + 1]):
            assert healed.ids == ref[:cut] + ref[cut + 1:], prefix[-30:]
            assert healed.heal == enc.decode(ref[cut:cut + 1])
        else:
            assert healed.ids == ref and healed.heal == ""


def test_text_that_spells_a_control_token_stays_text(qwen_tok):
    enc = FimEncoder(qwen_tok, detect_profile(qwen_tok))
    p = enc.build('s = "<|fim_suffix|>"\n', "", heal=False)
    assert p.ids.count(qwen_tok.get_vocab()["<|fim_suffix|>"]) == 1  # only the real one


def test_healing_moves_last_prefix_token_into_owed_text(qwen_tok):
    enc = FimEncoder(qwen_tok, detect_profile(qwen_tok))
    prefix = "import os\nprint(os.pa"
    p = enc.build(prefix, "\n")
    assert p.heal and prefix.endswith(p.heal)
    text = enc.decode(p.ids)
    assert text.endswith("<|fim_middle|>")
    # The prompt holds the prefix without the healed token; the model must spell it first.
    assert text.removeprefix("<|fim_prefix|>").split("<|fim_suffix|>")[0] + p.heal == prefix


def test_owed_indent_is_paid_the_way_the_tokenizer_splits_it(qwen_tok):
    """After an auto-indent of 12 spaces the model may spell 12, or 11 then " word"; never a split
    that strands it mid-indent (7 spaces, then " if" no longer fits) nor a longer indent."""
    heal = HealIndex.build(qwen_tok, len(qwen_tok))
    v = qwen_tok.get_vocab()
    space = {n: v["Ġ" * n] for n in (1, 7, 11, 12, 15) if "Ġ" * n in v}
    assert 11 in space and 7 in space
    rest = " " * 12
    assert heal.consistent(space[11], rest)
    assert not heal.consistent(space[7], rest)
    if 15 in space:
        assert not heal.consistent(space[15], rest)
    assert heal.consistent(v["Ġif"], " ")
    # Mid-word healing keeps both directions: a shorter piece or a longer word.
    assert heal.consistent(v["pa"], "path") and heal.consistent(v["path"], "pa")


def test_prompt_is_stable_while_typing_at_an_anchor(qwen_tok):
    """Typed text goes to the middle: the prompt before it never changes (the KV cache survives)."""
    enc = FimEncoder(qwen_tok, detect_profile(qwen_tok))
    prefix, suffix = "def f(values):\n    total = 0\n    for v in values:\n        ", "\n    return total\n"
    base = enc.build(prefix, suffix).ids
    for typed in ("t", "to", "tot", "total", "total +", "total += v"):
        ids = enc.build(prefix, suffix, forced_middle=typed).ids
        assert ids[: len(base)] == base, typed


def test_unknown_format_is_a_clear_error(qwen_tok):
    with pytest.raises(ValueError, match="unknown FIM format"):
        detect_profile(qwen_tok, "nope")
