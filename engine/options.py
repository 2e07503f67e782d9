"""Engine switches, also the A/B flags: --no-kv-reuse, --no-speculation. No torch here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineOptions:
    kv_reuse: bool = True
    speculation: bool = True  # prompt-lookup drafts, adaptive
    kv_budget_bytes: int = 512 * 2**20
    prefill_chunk: int = 256
    draft_max: int = 4
    background_tokens: int = 48  # decoded past a stop/budget, for the next keystroke (prefetch)
