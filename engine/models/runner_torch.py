"""The transformers/torch runner: HF folders (and GGUFs dequantized to them), CPU or CUDA, bf16,
bitsandbytes int8/nf4, torch int8 on CPU.

Each sequence's keys/values are a transformers `DynamicCache`; logits leave the runner as numpy
float32 rows, so the decode logic above never touches a tensor.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from codestral_ls.engine.decoding.kvcache import PrefixStore, Sequence


@dataclass(eq=False)
class TorchKV:
    cache: Any  # transformers.DynamicCache

    def crop(self, n: int) -> None:
        drop = self.cache.get_seq_length() - n
        if drop > 0:
            self.cache.crop(-drop)  # transformers takes a count to remove, not a length to keep

    def nbytes(self, n_tokens: int) -> int:
        total = 0
        for layer in getattr(self.cache, "layers", []):
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if t is not None and hasattr(t, "numel"):
                    total += t.numel() * t.element_size()
        return total

    def release(self) -> None:
        self.cache = None


class TorchRunner:
    name = "torch"
    prefill_chunk = 256  # a GPU prefills 256 tokens in milliseconds; fewer, wider forwards pay there
    warm_chunk = 256  # the same for warm-ups: a GPU forward of 256 tokens is milliseconds

    def __init__(self, model: Any, device: str) -> None:
        self.model = model
        self.device = torch.device(device)
        self.vocab_size = int(model.config.vocab_size)
        # The model's trained context: prompts past it lose what it was trained to attend to.
        self.seq_ctx = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None

    def attach(self, store: PrefixStore) -> None:
        pass  # caches live in device memory and grow as needed: the store's byte budget bounds them

    def fork(self, seq: Sequence) -> Sequence:
        """A sequence of its own holding a copy of `seq`'s ids and keys/values."""
        kv = seq.kv
        if kv is None or not isinstance(kv, TorchKV) or kv.cache is None:
            return Sequence()
        return Sequence(ids=list(seq.ids), kv=TorchKV(copy.deepcopy(kv.cache)))

    def forward(self, seq: Sequence, ids: list[int], n_logits: int = 1) -> np.ndarray:
        if seq.kv is None:
            from transformers import DynamicCache

            # Full layers even for a sliding-window model: the attention mask still applies the
            # window (it comes from the config), and only a full layer can be cropped back for the
            # next keystroke once the window is reached. Prompts are bounded by the context windows.
            seq.kv = TorchKV(DynamicCache())
        kv = seq.kv
        assert isinstance(kv, TorchKV)
        inp = torch.tensor([ids], device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=inp, past_key_values=kv.cache, use_cache=True, logits_to_keep=n_logits)
        seq.ids.extend(ids)
        return out.logits[0].float().cpu().numpy()
