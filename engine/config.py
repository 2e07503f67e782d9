"""Engine switches, also the A/B flags: --no-kv-reuse, --no-speculation, --draft-model. No torch here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineOptions:
    kv_reuse: bool = True
    speculation: bool = True  # prompt-lookup drafts, adaptive
    kv_budget_bytes: int = 512 * 2**20
    prefill_chunk: int = 0  # tokens per prefill forward; 0: the runner's own (`Runner.prefill_chunk`)
    draft_max: int = 4  # prompt-lookup draft length
    draft_model: str | None = None  # a small model with the same tokenizer drafting for this one
    draft_model_tokens: int = 5
    background_tokens: int = 48  # decoded past a stop/budget, for the next keystroke (prefetch)
