"""Codestral for real: Mistral's v3 SentencePiece tokenizer (shipped in mistral-common), prompts
token-exact against mistral-common's `encode_fim`, a tiny random MistralForCausalLM of Codestral's
vocabulary (32 768) loaded both as a Hugging Face folder and in Mistral's own layout, and the
engine's mechanics (healing, replay, avoid, stops, typed-through, the LSP path) on that tokenizer.

A random model says nothing meaningful, so the model tests check mechanics: forced tokens come
out as their exact text, constraints hold against the model's preference, replay equals recompute.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import mistral_common
import pytest
import torch
from codestral_ls.engine import EngineOptions, ModelSpec, load_engine
from codestral_ls.engine.decoding.engine import Engine
from codestral_ls.engine.decoding.heal import HealIndex
from codestral_ls.engine.models.fim import CODESTRAL, FimEncoder, detect_profile
from codestral_ls.engine.models.mistral_format import is_mistral_layout, permute_for_rotate_half
from codestral_ls.engine.models.tokenizer import MistralCommonTokenizer
from codestral_ls.engine.request import FimRequest, StopRule

V3 = Path(mistral_common.__file__).parent / "data" / "mistral_instruct_tokenizer_240323.model.v3"
DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "human-eval-infilling"
PREFIX_ID, MIDDLE_ID, SUFFIX_ID = 11, 12, 13


@pytest.fixture(scope="module")
def v3() -> MistralCommonTokenizer:
    return MistralCommonTokenizer.from_file(V3)


@pytest.fixture(scope="module")
def enc(v3) -> FimEncoder:
    return FimEncoder(v3, detect_profile(v3))


def piece(v3: MistralCommonTokenizer, p: str) -> int:
    i = v3.convert_tokens_to_ids(p)
    assert i is not None, p
    return i


# -- the tokenizer and the prompt ------------------------------------------------------------------


def test_it_is_codestral_s_tokenizer(v3, enc):
    assert len(v3) == 32768 and v3.bos_token_id == 1 and v3.eos_token_id == 2
    assert (piece(v3, "[PREFIX]"), piece(v3, "[MIDDLE]"), piece(v3, "[SUFFIX]")) == (PREFIX_ID, MIDDLE_ID, SUFFIX_ID)
    assert enc.profile is CODESTRAL
    assert "mistral-common v3 SentencePiece" in v3.name


def _cases() -> list[tuple[str, str]]:
    """A few hundred real prefix/suffix pairs plus the awkward ones."""
    cases: list[tuple[str, str]] = []
    for name, step in (("HumanEval-SingleLineInfilling.jsonl.gz", 5), ("HumanEval-MultiLineInfilling.jsonl.gz", 60)):
        path = DATA / name
        if path.is_file():
            with gzip.open(path, "rt") as f:
                rows = [json.loads(line) for line in f]
            cases += [(r["prompt"], r["suffix"]) for r in rows[::step]]
    base = cases[:40] or [("def add(a, b):\n    return a", " + b\n\nprint(add(1, 2))\n")] * 10
    for i, (p, s) in enumerate(base):
        variant = i % 8
        if variant == 0:
            cases.append((p.replace("\n", "\r\n"), s.replace("\n", "\r\n")))  # CRLF
        elif variant == 1:
            cases.append((p.replace("    ", "\t"), s.replace("    ", "\t")))  # tabs
        elif variant == 2:
            cases.append((p + "# 😀 漢字 ✓ ", "  # naïve café 🚀\n" + s))  # emoji/CJK, both sides
        elif variant == 3:
            cases.append((p + 's = "[PREFIX]</s>[SUFFIX]', '[MIDDLE]<s>"\n' + s))  # spells control tokens
        elif variant == 4:
            cases.append((p, ""))  # empty suffix
        elif variant == 5:
            cases.append((p.rstrip() + "\n        ", s))  # prefix ending in an auto-indent
        elif variant == 6:
            cases.append((p + "x =   ", s))  # prefix ending in spaces
        else:
            cases.append(("", p + s))  # empty prefix
    cases += [("ret", "\n"), (" ", " "), ("\n", "\n"), ("a", "b"), ("s = '漢", "'\n"), ("x = '😀", "'\n")]
    return cases


CASES = _cases()


def test_prompt_ids_equal_encode_fim_exactly(v3, enc):
    assert len(CASES) >= 250, f"HumanEval infilling data not found in {DATA}"
    for prefix, suffix in CASES:
        got = enc.build(prefix, suffix, heal=False).ids
        assert got == v3.encode_fim(prefix, suffix), (prefix[-40:], suffix[:40])


def test_healed_prompt_is_encode_fim_minus_the_healed_piece(v3, enc):
    healed = 0
    for prefix, suffix in CASES:
        ref = v3.encode_fim(prefix, suffix)
        p = enc.build(prefix, suffix)
        n = len(p.ids)
        assert p.ids == ref[:n] and len(ref) - n in (0, 1), (prefix[-40:], suffix[:40])
        assert p.heal == v3.decode(ref[n:])  # the owed text is exactly the piece's text
        if n == len(ref):  # nothing healed: only when the last piece is part of a character
            assert not prefix or "\ufffd" in v3.decode(ref[-1:]), prefix[-40:]
        else:
            healed += 1
            # The prompt's prefix part and the owed text spell the prefix (SentencePiece's dummy
            # space in front): nothing lost, nothing doubled.
            start = ref.index(PREFIX_ID) + 1
            assert v3.decode(ref[start:n]) + p.heal == " " + prefix
    assert healed >= len(CASES) - 10


def test_single_pieces_and_sequence_starts_decode_exactly(v3):
    """SentencePiece's own decoder drops a sequence's leading space; healing needs it kept."""
    ret, four, nl = piece(v3, "▁return"), piece(v3, "▁▁▁▁"), piece(v3, "<0x0A>")
    assert v3.sp.decode([ret]) == "return" and v3.sp.decode([four]) == "   "  # the trap
    assert v3.decode([ret]) == " return" and v3.decode([four]) == "    " and v3.decode([nl]) == "\n"
    heal = HealIndex.build(v3, 32768)
    assert heal.strings[ret] == " return" and heal.strings[four] == "    " and heal.strings[nl] == "\n"
    assert heal.strings[0] == "" and heal.strings[PREFIX_ID] == ""  # <unk>, controls: never text
    for text in ("    return x\n", "\r\n\tb = '漢字😀'\n", "  a  ", "[PREFIX]"):
        assert v3.decode(v3.encode_infilling(text)) == text
        assert v3.decode(v3.encode(text)) == " " + text


def test_owed_indent_is_paid_the_way_sentencepiece_splits_it(v3, enc):
    heal = HealIndex.build(v3, 32768)
    p = enc.build("def f(x):\n    if x:\n            ", "\n")
    assert p.heal == " " * 12  # the 12-space piece itself, not three spaces
    spaces = {n: piece(v3, "▁" * n) for n in (4, 7, 11, 12, 13)}
    assert heal.consistent(spaces[11], p.heal) and heal.consistent(spaces[12], p.heal)
    assert not heal.consistent(spaces[7], p.heal) and not heal.consistent(spaces[13], p.heal)
    assert heal.consistent(piece(v3, "▁if"), " ")
    mid = enc.build("def add(a, b):\n    ret", "\n")
    assert mid.heal == " ret" and heal.consistent(piece(v3, "▁return"), mid.heal)
    assert not heal.consistent(piece(v3, "return"), mid.heal)  # the space is owed too


def test_typed_text_never_moves_the_prompt_and_an_empty_prefix_starts_the_text(v3, enc):
    prefix, suffix = "def f(values):\n    total = 0\n    for v in values:\n        ", "\n    return total\n"
    base = enc.build(prefix, suffix).ids
    for typed in ("t", "to", "tot", "total", "total +", "total += v"):
        p = enc.build(prefix, suffix, forced_middle=typed)
        assert p.ids[: len(base)] == base, typed
        start = p.ids.index(PREFIX_ID) + 1
        assert v3.decode(p.ids[start:]) + p.heal == " " + prefix + typed
    p = enc.build("", "\n", forced_middle="de")
    assert p.ids == v3.encode_fim("", "\n") and p.heal == " de"  # "▁de", as encode_fim("de") has it


def test_text_that_spells_control_tokens_stays_text(enc):
    p = enc.build('s = "[PREFIX][SUFFIX][MIDDLE]</s>"\n', '"[SUFFIX]"\n', heal=False)
    assert p.ids.count(PREFIX_ID) == 1 and p.ids.count(SUFFIX_ID) == 1 and MIDDLE_ID not in p.ids
    assert p.ids.count(2) == 0 and p.ids.count(1) == 1


def test_hugging_face_sentencepiece_tokenizers_decode_pieces_exactly(v3):
    """A Hugging Face tokenizer.json of this vocabulary, with the Llama/Mistral decoder (its `Strip`
    drops a first piece's space): the FIM encoder and the heal index decode pieces themselves."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = v3.get_vocab()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(v3.decode([i]), special=True, normalized=False) for i in range(1, 20)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    ret, four = vocab["▁return"], vocab["▁▁▁▁"]
    assert fast.decode([ret]) == "return" and fast.decode([four]) == "   "  # the trap, on this path too
    enc = FimEncoder(fast, detect_profile(fast))
    assert enc.profile is CODESTRAL
    assert enc.decode([ret]) == " return" and enc.decode([four, vocab["<0x0A>"]]) == "    \n"
    heal = HealIndex.build(fast, len(fast))
    assert heal.strings[ret] == " return" and heal.strings[four] == "    "


# -- a tiny random Codestral: both layouts -------------------------------------------------------


def _to_mistral_layout(model: Any, folder: Path) -> Path:
    """Write `model` the way Mistral publishes Codestral: the inverse of the loader's renaming."""
    from safetensors.torch import save_file

    cfg = model.config
    unpermute = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    names = {"mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2", "mlp.up_proj": "feed_forward.w3",
             "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
             "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
             "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm"}
    out = {}
    for name, t in model.state_dict().items():
        if name == "model.embed_tokens.weight":
            out["tok_embeddings.weight"] = t
        elif name == "model.norm.weight":
            out["norm.weight"] = t
        elif name == "lm_head.weight":
            out["output.weight"] = t
        else:
            i, rest = name.removeprefix("model.layers.").split(".", 1)
            module = rest.removesuffix(".weight")
            heads = unpermute.get(module.split(".")[-1])
            if heads:  # half-split rows back to Mistral's interleaved rotary pairs
                rows, cols = t.shape
                t = t.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)
            out[f"layers.{i}.{names[module]}.weight"] = t.contiguous()
    folder.mkdir(parents=True)
    save_file(out, folder / "consolidated.safetensors")
    (folder / "params.json").write_text(json.dumps({
        "dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "head_dim": cfg.head_dim,
        "hidden_dim": cfg.intermediate_size, "n_heads": cfg.num_attention_heads, "n_kv_heads": cfg.num_key_value_heads,
        "norm_eps": cfg.rms_norm_eps, "vocab_size": cfg.vocab_size, "rope_theta": cfg.rope_parameters["rope_theta"]}))
    shutil.copy(V3, folder / "tokenizer.model.v3")
    return folder


@pytest.fixture(scope="module")
def codestral_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same random weights as a Hugging Face folder (+ tokenizer.model.v3) and in Mistral's layout."""
    from transformers import MistralConfig, MistralForCausalLM

    root = tmp_path_factory.mktemp("codestral-v3")
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=32768, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                           sliding_window=None, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                           bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = MistralForCausalLM(config)
    with torch.no_grad():  # sharper, more varied greedy choices than the init
        for p in model.parameters():
            p.mul_(8.0)
    hf = root / "hf"
    model.save_pretrained(hf, safe_serialization=True)
    shutil.copy(V3, hf / "tokenizer.model.v3")
    return {"hf": hf, "mistral": _to_mistral_layout(model, root / "mistral")}


@pytest.fixture(scope="module")
def engine(codestral_dirs) -> Engine:
    return load_engine(ModelSpec(model=str(codestral_dirs["mistral"]), device="cpu"), EngineOptions())


def fresh(engine: Engine, **opts: Any) -> Engine:
    return Engine(engine.loaded, EngineOptions(**opts))


def test_both_layouts_load_with_mistral_common_and_agree(codestral_dirs, engine):
    assert is_mistral_layout(codestral_dirs["mistral"]) and not is_mistral_layout(codestral_dirs["hf"])
    hf = load_engine(ModelSpec(model=str(codestral_dirs["hf"]), device="cpu"), EngineOptions())
    for e in (hf, engine):
        assert isinstance(e.loaded.tokenizer, MistralCommonTokenizer)
        assert e.encoder.profile is CODESTRAL and e.loaded.model.config.vocab_size == 32768
    assert "Mistral layout" in engine.loaded.source
    ids = torch.tensor([engine.encoder.build("def add(a, b):\n    return a", " + b\n").ids])
    with torch.no_grad():
        a, b = hf.loaded.model(ids).logits, engine.loaded.model(ids).logits
    assert torch.allclose(a, b, atol=1e-4)


def test_layout_permutation_turns_mistral_rotary_into_rotate_half():
    """Attention scores with Mistral's interleaved-pair rotary on the consolidated wq/wk equal
    transformers' rotate_half rotary on the permuted q_proj/k_proj (a wrong permutation breaks it)."""
    from transformers.models.mistral.modeling_mistral import apply_rotary_pos_emb

    torch.manual_seed(1)
    heads, head_dim, dim, seq, theta = 2, 8, 16, 5, 1e4
    wq, wk, x = torch.randn(heads * head_dim, dim), torch.randn(heads * head_dim, dim), torch.randn(seq, dim)
    # Mistral's reference: pairs (2i, 2i+1) are complex numbers rotated by position * theta^(-2i/d).
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    cis = torch.polar(torch.ones(seq, head_dim // 2), torch.outer(torch.arange(seq).float(), freqs))

    def mistral_rope(w: torch.Tensor) -> torch.Tensor:
        h = (x @ w.T).view(seq, heads, head_dim // 2, 2)
        return torch.view_as_real(torch.view_as_complex(h.contiguous()) * cis[:, None]).flatten(2)

    ref = torch.einsum("qhd,khd->hqk", mistral_rope(wq), mistral_rope(wk))
    angles = torch.outer(torch.arange(seq).float(), freqs)
    emb = torch.cat([angles, angles], dim=-1)
    q = (x @ permute_for_rotate_half(wq, heads).T).view(seq, heads, head_dim).transpose(0, 1)[None]
    k = (x @ permute_for_rotate_half(wk, heads).T).view(seq, heads, head_dim).transpose(0, 1)[None]
    q, k = apply_rotary_pos_emb(q, k, emb.cos()[None], emb.sin()[None])
    assert torch.allclose(torch.einsum("hqd,hkd->hqk", q[0], k[0]), ref, atol=1e-4)


def test_doctor_names_the_tokenizer(codestral_dirs, capsys):
    from codestral_ls.server.cli import main

    assert main(["doctor", "--model", str(codestral_dirs["mistral"]), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("tokenizer "))
    assert "mistral-common v3 SentencePiece (tokenizer.model.v3" in row
    assert "Mistral layout" in out and "codestral" in out


# -- engine mechanics on the real tokenizer -----------------------------------------------------


def force(e: Engine, prompt_len: int, script: list[int]) -> None:
    """Make the model prefer `script` token by token after the prompt (then </s>)."""
    real = e._forward

    def forward(seq: Any, ids: list[int], n_logits: int = 1) -> Any:
        out = real(seq, ids, n_logits)
        logits = out.clone() if torch.is_tensor(out) else out.copy()
        for j in range(logits.shape[0]):
            k = len(seq.ids) - logits.shape[0] + j + 1 - prompt_len
            if k >= 0:
                logits[j, script[k] if k < len(script) else 2] += 1e4
        return logits

    e._forward = forward


def record(e: Engine) -> list[int]:
    """The tokens the engine takes into the suggestion, in order (filled as it decodes)."""
    taken: list[int] = []
    real = e._accept

    def accept(st: Any, token: int) -> bool:
        taken.append(token)
        return real(st, token)

    e._accept = accept
    return taken


def test_forced_tokens_come_out_as_their_exact_text_and_stop_rules_cut_them(engine):
    prefix, suffix = "def f():\n    x =", "\n"
    script = engine.loaded.tokenizer.encode_infilling(" 1\n    y = 2\n    return x + y\n")
    assert engine.loaded.tokenizer.sp.decode(script[:1]) != " "  # SentencePiece would lose the space
    for stop, want in ((StopRule(single_line=True), " 1"), (StopRule(max_lines=2), " 1\n    y = 2"),
                       (StopRule(max_lines=50), " 1\n    y = 2\n    return x + y\n"),
                       (StopRule(max_lines=50, stop_strings=("return",)), " 1\n    y = 2\n    ")):
        e = fresh(engine, speculation=False, kv_reuse=False)
        n = len(e.encoder.build(prefix, suffix, heal=False).ids)
        force(e, n, script)
        r = e.complete(FimRequest(doc="s", prefix=prefix, suffix=suffix, stop=stop, max_tokens=40, heal=False,
                                  background=False))
        assert r.text == want, stop
    # A control token the model emits ends the middle: never "[INST]" in a suggestion.
    e = fresh(engine, speculation=False, kv_reuse=False)
    force(e, n, [*engine.loaded.tokenizer.encode_infilling(" 1"), 3])
    r = e.complete(FimRequest(doc="s", prefix=prefix, suffix=suffix, max_tokens=40, heal=False, background=False))
    assert r.text == " 1" and r.finish == "stop"


@pytest.mark.parametrize("prefix, owed", [
    ("def f(x):\n    if x:\n        return 1\n        ", "        "),  # cursor after an auto-indent
    ("def add(a, b):\n    ret", " ret"),  # mid-word
])
def test_healing_pays_the_owed_text_even_against_the_model(engine, prefix, owed):
    tok = engine.loaded.tokenizer
    e = fresh(engine, speculation=False, kv_reuse=False)
    prompt = e.encoder.build(prefix, "\n\nprint(1)\n")
    assert prompt.heal == owed
    # The model is pushed to a token that does not pay the owed text: a longer indent, a new word.
    wrong = tok.get_vocab()["▁" * 16 if owed.isspace() else "▁print"]
    assert not e.heal.consistent(wrong, owed)
    force(e, len(prompt.ids), [wrong] * 3)
    taken = record(e)
    r = e.complete(FimRequest(doc="h", prefix=prefix, suffix="\n\nprint(1)\n", max_tokens=6,
                              stop=StopRule(max_lines=50), background=False))
    text = tok.decode(taken)
    assert text.startswith(owed) and taken[0] != wrong
    # What was answered is what was taken, less the owed text: all of it, or up to where a stop rule cut it.
    rest = text[len(owed):]
    assert rest.startswith(r.text), (r.text, rest, r.finish)
    if r.finish != "stop":
        assert r.text == rest
    # Unsteered, the random model's first pick still pays it.
    plain = fresh(engine, speculation=False, kv_reuse=False)
    taken = record(plain)
    plain.complete(FimRequest(doc="h", prefix=prefix, suffix="\n", max_tokens=4, background=False))
    assert tok.decode(taken).startswith(owed)


PREFIX = "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\ndef add(a, b):\n    ret"
SUFFIX = "\n\n\nfor i in range(10):\n    print(add(i, i))\n"


def req(**kw: Any) -> FimRequest:
    kw.setdefault("max_tokens", 12)
    kw.setdefault("stop", StopRule(max_lines=50))
    kw.setdefault("background", False)
    return FimRequest(doc=kw.pop("doc", "a"), prefix=kw.pop("prefix", PREFIX), suffix=kw.pop("suffix", SUFFIX), **kw)


def test_replay_and_typed_through_equal_recompute(engine):
    e = fresh(engine, speculation=False)
    first = e.complete(req())
    calls = e.forward_calls
    again = e.complete(req())
    assert again.text == first.text and e.forward_calls == calls and again.replayed_tokens >= 1
    # Typing at the anchor: the answer is what a cold engine gives for the same text.
    for typed in ("u", "ur", "urn", "urn a"):
        warm = e.complete(req(forced_middle=typed))
        cold = fresh(engine, kv_reuse=False, speculation=False).complete(req(forced_middle=typed, doc="c"))
        assert warm.text == cold.text, typed
        assert warm.reused_tokens > 0


def test_speculation_gives_plain_greedy(engine):
    plain = fresh(engine, speculation=False, kv_reuse=False).complete(req(max_tokens=24))
    spec = fresh(engine, speculation=True, kv_reuse=False).complete(req(max_tokens=24))
    assert spec.text == plain.text


def test_avoid_steers_the_first_words_on_this_tokenizer(engine):
    e = fresh(engine, speculation=False)
    stop = StopRule(single_line=True)
    kw = {"prefix": "def f():\n    ", "stop": stop, "max_tokens": 8}
    plain = e.complete(req(**kw))
    assert plain.text.strip()
    steered = e.complete(req(**kw, avoid=(plain.text.strip(),)))
    assert steered.text.strip() and not plain.text.strip().startswith(steered.text.strip())
    assert e.complete(req(**kw)).text == plain.text  # the steered continuation is not replayed as greedy
    cold = fresh(engine, kv_reuse=False).complete(req(**kw, avoid=(plain.text.strip(),)))
    assert cold.text == steered.text


async def test_the_whole_lsp_path_on_a_mistral_layout_model(codestral_dirs):
    from codestral_ls.server.options import Options

    from tests.inprocess import InProcess

    ip = InProcess(Options(model=str(codestral_dirs["mistral"]), device="cpu", budget_ms=0, max_tokens=6))
    try:
        await ip.initialize()
        assert await asyncio.to_thread(ip.server.backend.loaded.wait, 60)
        assert ip.server.backend.load_error is None
        uri = "file:///w/codestral.py"
        ip.open(uri, "def add(a, b):\n    ret\n\n\ndef sub(a, b):\n    \n")
        for line, col in ((1, 7), (5, 4)):  # mid-word, after an auto-indent
            answer = await ip.inline(uri, line, col)
            assert "result" in answer, answer
            items = answer["result"]["items"]
            assert isinstance(items, list)
            for item in items:
                assert "[PREFIX]" not in item["insertText"] and "</s>" not in item["insertText"]
    finally:
        ip.stop()


async def test_ghost_text_and_typed_through_over_lsp_on_this_tokenizer(codestral_dirs, monkeypatch):
    """The model is steered to answer "return a + b" at `ret|`: the ghost text is "urn a + b" (the
    owed " ret" paid by "▁return", its space not doubled), and typing its first letters is answered
    from what was suggested."""
    from codestral_ls.server.options import Options

    from tests.inprocess import InProcess

    tok = MistralCommonTokenizer.from_file(V3)
    script = tok.encode_infilling(" return a + b\n")
    follows = dict(zip(script, [*script[1:], 2], strict=True))
    real = Engine._forward

    def forward(self: Engine, seq: Any, ids: list[int], n_logits: int = 1) -> Any:
        out = real(self, seq, ids, n_logits)
        logits = out.clone() if torch.is_tensor(out) else out.copy()
        fed = seq.ids[-logits.shape[0]:]
        for j, last in enumerate(fed):
            logits[j, follows.get(last, script[0])] += 1e4
        return logits

    monkeypatch.setattr(Engine, "_forward", forward)
    ip = InProcess(Options(model=str(codestral_dirs["hf"]), device="cpu", budget_ms=0, max_tokens=12))
    try:
        await ip.initialize()
        assert await asyncio.to_thread(ip.server.backend.loaded.wait, 60)
        uri = "file:///w/add.py"
        ip.open(uri, "def add(a, b):\n    ret\n")
        first = await ip.inline(uri, 1, 7)
        assert [i["insertText"] for i in first["result"]["items"]][:1] == ["urn a + b"], first
        ip.change(uri, 2, (1, 7), (1, 7), "u")
        rest = await ip.inline(uri, 1, 8)
        assert [i["insertText"] for i in rest["result"]["items"]][:1] == ["rn a + b"], rest
    finally:
        ip.stop()


# -- the Mistral FIM API backend -------------------------------------------------------------------


def test_mistral_backend_sends_the_reference_fim_request(monkeypatch):
    """The body is what Mistral's client sends to POST /v1/fim/completions (model, prompt, suffix,
    max_tokens, temperature, stop), valid as mistral-common's FIMRequest, and its answer is read."""
    from codestral_ls.engine.serving.remote import APIS, RemoteBackend
    from codestral_ls.server.options import Options
    from mistral_common.protocol.fim.request import FIMRequest

    seen: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, dict(self.headers), body))
            answer = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"], "created": 0,
                                 "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
                                 "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                     "role": "assistant", "content": "a + b", "tool_calls": None}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("TEST_CODESTRAL_KEY", "k123")
    backend = RemoteBackend(APIS["mistral"], Options(backend="mistral", api_key_env="TEST_CODESTRAL_KEY",
                                                     endpoint=f"http://127.0.0.1:{server.server_port}"))
    try:
        r = backend.submit(FimRequest(doc="m", prefix="def add(a, b):\n    return ", forced_middle="a",
                                      suffix="\n", max_tokens=16, stop=StopRule(single_line=True))).result(10)
    finally:
        backend.stop()
        server.shutdown()
    assert r.text == "a + b" and r.prompt_tokens == 9 and r.decoded_tokens == 3
    path, headers, body = seen[0]
    assert path == "/v1/fim/completions"
    assert headers["Authorization"] == "Bearer k123" and headers["Content-Type"] == "application/json"
    assert body == {"model": "codestral-latest", "prompt": "def add(a, b):\n    return a", "suffix": "\n",
                    "max_tokens": 16, "temperature": 0, "stop": ["\n"]}
    # The same request, as mistral-common's protocol reads it.
    fim = FIMRequest(**{k: body[k] for k in ("prompt", "suffix", "max_tokens", "temperature")})
    assert (fim.prompt, fim.suffix, fim.max_tokens, fim.temperature) == (body["prompt"], "\n", 16, 0)
