"""One model call on a cached sequence, and a chunked prefill: shared by the engine and the draft model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from codestral_ls.engine.errors import Cancelled
from codestral_ls.engine.kvcache import Sequence
from codestral_ls.engine.request import CancelToken


def forward(model: Any, seq: Sequence, ids: list[int], device: torch.device, n_logits: int = 1) -> torch.Tensor:
    """Feed `ids` after `seq`'s cached tokens; the logits of the last `n_logits` positions."""
    if seq.cache is None:
        from transformers import DynamicCache

        seq.cache = DynamicCache(config=model.config)
    inp = torch.tensor([ids], device=device)
    with torch.inference_mode():
        out = model(input_ids=inp, past_key_values=seq.cache, use_cache=True, logits_to_keep=n_logits)
    seq.ids.extend(ids)
    return out.logits[0].float()


def prefill(step: Callable[[Sequence, list[int]], torch.Tensor], seq: Sequence, ids: list[int], chunk: int,
            cancel: CancelToken) -> torch.Tensor:
    """Feed non-empty `ids` in chunks through `step`, checking `cancel` between them; last position's logits."""
    logits = None
    for i in range(0, len(ids), chunk):
        if cancel.cancelled:
            raise Cancelled("request cancelled during prefill")
        logits = step(seq, ids[i:i + chunk])
    assert logits is not None
    return logits[-1]
