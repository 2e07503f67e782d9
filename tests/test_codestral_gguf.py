"""Codestral as a GGUF on the llama.cpp runner (issue 25): a tiny random-weight llama-architecture GGUF
with Codestral-22B-v0.1's v3 vocabulary (written here with the `gguf` package, ~4 MB) loads on
llama.cpp with mistral-common's own tokenizer; its prompts are `encode_fim`'s token for token; healing
and stop tokens are right for SentencePiece pieces; and an LSP completion arrives through it.

The reference is mistral-common itself (`MistralTokenizer.from_file(...).instruct_tokenizer.encode_fim`),
built here independently of the engine's wrapper. torch is not needed for any of it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from codestral_ls.engine.models.tokenizer import CODESTRAL_V3, MistralCommonTokenizer, bundled_mistral_tokenizers

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data" / "human-eval-infilling"
V3 = next(p for p in bundled_mistral_tokenizers() if p.name == CODESTRAL_V3)


def write_codestral_gguf(out: Path, seed: int = 0) -> Path:
    """A 2-layer llama GGUF (n_embd 64) over Codestral's 32 768-piece v3 vocabulary, f16 embeddings tied
    to the output. Control and byte pieces get zero embedding rows (logit 0 while text pieces spread
    both ways), so the random model writes text rather than ending at once."""
    import gguf

    sp = MistralCommonTokenizer.from_file(V3).sp._model  # SentencePieceProcessor
    n_vocab, n_embd, n_ff, n_head, n_kv, n_layer = sp.get_piece_size(), 64, 128, 4, 2, 2
    pieces = [sp.id_to_piece(i) for i in range(n_vocab)]
    types = [gguf.TokenType.UNKNOWN if sp.is_unknown(i) else gguf.TokenType.CONTROL if sp.is_control(i)
             else gguf.TokenType.BYTE if sp.is_byte(i) else gguf.TokenType.NORMAL for i in range(n_vocab)]
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    w.add_token_scores([sp.get_score(i) for i in range(n_vocab)])
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n_vocab, n_embd)).astype(np.float32)
    emb[[i for i, t in enumerate(types) if t != gguf.TokenType.NORMAL]] = 0.0
    w.add_tensor("token_embd.weight", emb.astype(np.float16))
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    shapes = {"attn_q": (n_embd, n_embd), "attn_k": (n_embd // n_head * n_kv, n_embd),
              "attn_v": (n_embd // n_head * n_kv, n_embd), "attn_output": (n_embd, n_embd),
              "ffn_gate": (n_ff, n_embd), "ffn_up": (n_ff, n_embd), "ffn_down": (n_embd, n_ff)}
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
        for name, shape in shapes.items():
            w.add_tensor(f"blk.{i}.{name}.weight", (0.2 * rng.standard_normal(shape)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def codestral_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("llama_cpp")
    return write_codestral_gguf(tmp_path_factory.mktemp("codestral-gguf") / "codestral-v3-tiny.gguf")


@pytest.fixture(scope="module")
def loaded(codestral_gguf, tmp_path_factory):
    from codestral_ls.engine.models.loading import ModelSpec, load_model

    with pytest.MonkeyPatch.context() as mp:  # the tokenizer it extracts goes to a test cache
        mp.setenv("CODESTRAL_LS_CACHE", str(tmp_path_factory.mktemp("cache")))
        return load_model(ModelSpec(model=str(codestral_gguf)))


@pytest.fixture(scope="module")
def reference():
    """mistral-common's own encoder, independent of the engine's wrapper."""
    from mistral_common.protocol.fim.request import FIMRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    instruct = MistralTokenizer.from_file(str(V3)).instruct_tokenizer
    return lambda prefix, suffix: list(instruct.encode_fim(FIMRequest(prompt=prefix, suffix=suffix)).tokens)


def cases() -> list[tuple[str, str]]:
    """Real prefix/suffix pairs (HumanEval infilling, vendored) and the awkward ones: CRLF, tabs,
    emoji/CJK, text spelling control pieces, empty sides, trailing spaces, auto-indent."""
    out: list[tuple[str, str]] = []
    for name, step in (("HumanEval-SingleLineInfilling.jsonl.gz", 4), ("HumanEval-MultiLineInfilling.jsonl.gz", 50)):
        with gzip.open(DATA / name, "rt") as f:
            rows = [json.loads(line) for line in f]
        out += [(r["prompt"], r["suffix"]) for r in rows[::step]]
    base = out[:48]
    for i, (p, s) in enumerate(base):
        variants = [(p.replace("\n", "\r\n"), s.replace("\n", "\r\n")), (p.replace("    ", "\t"), s),
                    (p + "# 😀 漢字 ✓ ", "  # naïve café 🚀\n" + s),
                    (p + 's = "[PREFIX]</s>[SUFFIX]', '[MIDDLE]<s>"\n' + s),
                    (p, ""), (p.rstrip() + "\n        ", s), (p + "x =   ", s), ("", p + s)]
        out.append(variants[i % 8])
    out += [("ret", "\n"), (" ", " "), ("\n", "\n"), ("a", "b"), ("s = '漢", "'\n"), ("x = '😀", "'\n"), ("", "")]
    return out


CASES = cases()


def test_it_loads_on_llamacpp_with_mistral_common_s_tokenizer(loaded, codestral_gguf):
    from codestral_ls.engine.models.fim import CODESTRAL

    assert loaded.runner.name == "llamacpp" and loaded.runner.vocab_size == 32768
    assert isinstance(loaded.tokenizer, MistralCommonTokenizer) and loaded.tokenizer.path.name == CODESTRAL_V3
    assert loaded.encoder.profile is CODESTRAL
    assert codestral_gguf.stat().st_size < 8 * 2**20


def test_zero_prompt_mismatches_against_encode_fim(loaded, reference):
    assert len(CASES) >= 300
    mismatches = [(p[-30:], s[:30]) for p, s in CASES if loaded.encoder.build(p, s, heal=False).ids != reference(p, s)]
    assert mismatches == [], f"{len(mismatches)} of {len(CASES)} prompts differ from encode_fim"


def test_healed_prompt_is_encode_fim_minus_the_healed_piece(loaded, reference):
    """Healing takes the prefix's last SentencePiece piece back out and owes its exact text ("▁return"
    owes " return", with its space)."""
    enc, healed = loaded.encoder, 0
    for prefix, suffix in CASES:
        ref = reference(prefix, suffix)
        p = enc.build(prefix, suffix)
        n = len(p.ids)
        assert p.ids == ref[:n] and len(ref) - n in (0, 1), (prefix[-40:], suffix[:40])
        assert p.heal == enc.decode(ref[n:])  # the owed text is exactly the piece's text
        if n < len(ref):
            healed += 1
            # The prompt's prefix part and the owed text spell the prefix (SentencePiece's dummy
            # space in front): nothing lost, nothing doubled.
            start = ref.index(loaded.tokenizer.convert_tokens_to_ids("[PREFIX]")) + 1
            assert enc.decode(ref[start:n]) + p.heal == " " + prefix
    assert healed > 250


def test_stop_tokens_and_piece_strings_are_sentencepiece_s(loaded):
    from codestral_ls.engine.decoding.heal import HealIndex

    tok, enc = loaded.tokenizer, loaded.encoder
    assert tok.eos_token_id == 2 and 2 in enc.stop_ids
    for control in ("[PREFIX]", "[SUFFIX]", "[MIDDLE]", "[INST]", "<unk>"):
        assert tok.convert_tokens_to_ids(control) in enc.stop_ids
    heal = HealIndex.build(tok, loaded.runner.vocab_size)
    assert heal.strings[tok.convert_tokens_to_ids("▁return")] == " return"
    assert heal.strings[tok.convert_tokens_to_ids("<0x0A>")] == "\n"
    assert heal.strings[tok.convert_tokens_to_ids("[SUFFIX]")] == ""  # never text


def test_the_engine_decodes_on_llamacpp(loaded):
    from codestral_ls.engine.decoding.engine import Engine
    from codestral_ls.engine.request import FimRequest, StopRule

    engine = Engine(loaded)
    r = engine.complete(FimRequest(doc="t", prefix="def add(a, b):\n    return ", suffix="\n",
                                   stop=StopRule(single_line=True), max_tokens=8))
    assert r.prompt_tokens > 5 and r.decoded_tokens >= 1
    again = engine.complete(FimRequest(doc="t", prefix="def add(a, b):\n    return ", suffix="\n",
                                       stop=StopRule(single_line=True), max_tokens=8))
    assert again.text == r.text  # greedy: the same answer, from the cache this time


@pytest.mark.asyncio(loop_scope="session")
async def test_an_lsp_completion_arrives_through_the_llamacpp_runner(codestral_gguf, tmp_path):
    from benchmarks.lsp_client import inline, open_doc, start, stop

    c, init = await start(["--model", str(codestral_gguf)], init_options={"budgetMs": 0},
                          env={"CODESTRAL_LS_CACHE": str(tmp_path)})
    try:
        async def ended() -> None:
            while not any((v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)) == "end"
                          for v in c.progress):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(ended(), 120)
        uri = "file:///work/notes.txt"
        open_doc(c, uri, "The quick brown fox jumps over the lazy dog.\nThe quick ", language="plaintext")
        result = await inline(c, uri, 1, 10)
        assert result is not None and result.items, c.stderr.decode(errors="replace")[-2000:]
        assert result.items[0].insert_text.strip()
        status = await c.protocol.send_request_async("codestral/stats", {})
        assert status is not None
    finally:
        await stop(c)


# -- llama.cpp GPU offload: --n-gpu-layers ---------------------------------------------------------------


def test_n_gpu_layers_picks_llamacpp_and_is_refused_where_it_cannot_apply():
    from codestral_ls.engine.decoding.runner import choose_runner
    from codestral_ls.engine.errors import ModelLoadError

    assert choose_runner("auto", Path("m.gguf"), "auto", n_gpu_layers=-1)[0] == "llamacpp"
    with pytest.raises(ModelLoadError, match="needs a GGUF model"):
        choose_runner("auto", None, "auto", n_gpu_layers=10)
    with pytest.raises(ModelLoadError, match="needs a GGUF model"):
        choose_runner("torch", Path("m.gguf"), "auto", n_gpu_layers=10)
    with pytest.raises(ModelLoadError, match="torch option"):
        choose_runner("auto", Path("m.gguf"), "auto", quantize="int8", n_gpu_layers=10)


def test_a_cpu_only_llama_cpp_refuses_offload_with_the_rebuild_command(codestral_gguf):
    import llama_cpp
    from codestral_ls.engine.errors import ModelLoadError
    from codestral_ls.engine.models.runner_llamacpp import LlamaCppRunner

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python offloads to a GPU")
    with pytest.raises(ModelLoadError, match="built for the CPU only.*GGML_CUDA=on"):
        LlamaCppRunner(codestral_gguf, n_gpu_layers=-1)


@pytest.mark.gpu
def test_offloaded_layers_give_the_cpu_s_greedy_tokens(codestral_gguf, loaded):
    """On a GPU build of llama-cpp-python: all layers offloaded, the same greedy continuation."""
    import llama_cpp
    from codestral_ls.engine.decoding.kvcache import Sequence
    from codestral_ls.engine.models.runner_llamacpp import LlamaCppRunner

    if not llama_cpp.llama_supports_gpu_offload():
        pytest.skip("llama-cpp-python was built for the CPU only")
    ids = loaded.encoder.build("def add(a, b):\n    return ", "\n", heal=False).ids

    def greedy(runner: LlamaCppRunner) -> list[int]:
        seq, out = Sequence(), []
        logits = runner.forward(seq, ids)
        for _ in range(8):
            out.append(int(np.argmax(logits[-1])))
            logits = runner.forward(seq, out[-1:])
        return out

    gpu = LlamaCppRunner(codestral_gguf, n_gpu_layers=-1)
    assert gpu.device == "gpu"
    assert greedy(gpu) == greedy(loaded.runner)
