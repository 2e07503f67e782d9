"""A tiny random Codestral-architecture model, built in seconds: for the tests (tests/conftest.py)
and for benchmarks about the server rather than suggestion quality (benchmarks/stress.py).

    build_tiny_model  a 2-layer random MistralForCausalLM with a byte-level BPE tokenizer that has
                      Codestral's [SUFFIX]/[PREFIX]/[MIDDLE] control tokens (safetensors folder)
    write_tiny_gguf   the same model as an fp32 GGUF for the llama.cpp runner
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for i in range(10):\n    print(i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "function add(a, b) {\n  return a + b;\n}\n",
    "import os\nimport sys\n\nprint(os.path.join('a', 'b'))\n",
    "x = [1, 2, 3]\ny = {'a': 1}\nz = (x, y)\n",
] * 4


def build_tiny_model(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    """A 2-layer random MistralForCausalLM and a byte-level BPE tokenizer with Codestral's
    [SUFFIX]/[PREFIX]/[MIDDLE] control tokens, saved as safetensors."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # ASCII only: a random model then never emits half a UTF-8 character.
    ascii_text = "".join(chr(c) for c in range(32, 127)) + "\n\t"
    mapped = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(ascii_text)
    alphabet = sorted(set("".join(piece for piece, _ in mapped)))
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>", "[PREFIX]", "[SUFFIX]", "[MIDDLE]"],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    config = MistralConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                           max_position_embeddings=4096, bos_token_id=fast.bos_token_id,
                           eos_token_id=fast.eos_token_id, tie_word_embeddings=False)
    model = MistralForCausalLM(config)
    with torch.no_grad():  # larger weights: sharper, more varied greedy choices than the init
        for p in model.parameters():
            p.mul_(8.0)
    model.save_pretrained(folder, safe_serialization=True)
    fast.save_pretrained(folder)
    return folder


def write_tiny_gguf(folder: Path, out: Path) -> Path:
    """The tiny model of `folder` as an fp32 GGUF llama.cpp reads (architecture "llama"), its
    tokenizer in the metadata. Q and K rows are permuted as llama.cpp's converter does (its RoPE
    pairs dimensions differently from transformers'), so both runners compute the same function."""
    import json

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    w = load_file(str(folder / "model.safetensors"))
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def permute(x: np.ndarray, heads: int) -> np.ndarray:
        return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(cfg["head_dim"])
    writer.add_rope_freq_base(cfg["rope_theta"] if "rope_theta" in cfg else cfg["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = tok["model"]["vocab"] | {t["content"]: t["id"] for t in tok["added_tokens"]}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["id"] for t in tok["added_tokens"] if t["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                            for i in range(len(tokens))])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_bos_token_id(cfg["bos_token_id"])
    writer.add_eos_token_id(cfg["eos_token_id"])
    writer.add_add_bos_token(False)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for hf, gg in names.items():
        x = w[hf].astype(np.float32)
        if gg.endswith("attn_q.weight"):
            x = permute(x, n_head)
        elif gg.endswith("attn_k.weight"):
            x = permute(x, n_kv)
        writer.add_tensor(gg, x)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out
