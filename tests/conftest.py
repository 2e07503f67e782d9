"""Shared fixtures: a tiny random Codestral-architecture model built here, and the embedded 0.5B
model loaded once per session (tests marked `model`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a hub

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-codestral"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: Path):
    from codestral_ls.engine import EngineOptions, ModelSpec, load_engine

    return load_engine(ModelSpec(model=str(tiny_model_dir), device="cpu"), EngineOptions())


@pytest.fixture(scope="session")
def qwen_engine():
    """The embedded Qwen2.5-Coder-0.5B, loaded once per test session."""
    from codestral_ls.engine import EngineOptions, ModelSpec, load_engine

    return load_engine(ModelSpec(), EngineOptions())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    skip_gpu = pytest.mark.skip(reason="needs CUDA; none here")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
