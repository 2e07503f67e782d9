"""How fast this machine prefills, and the context windows that keeps a cold request within its target.

A 2-core CPU prefills ~80 prompt tokens a second, an H100 thousands: one fixed token budget is
either seconds of waiting on the first or wasted context on the second. `DeviceSpeed` keeps a
running estimate from what requests really cost (`FimResult.prefilled_tokens` / `prefill_ms`) and
sizes the prefix/suffix windows so that prefilling a whole cold prompt takes about the target.

Context from other files (retrieval) is part of the cold prompt too: it gets what the device can
prefill beyond the window floor within the target, up to `EXTRA_MAX`. On this project's 2-core CPU
that is nothing (the floor alone exceeds the 2 s target at ~280 tok/s): 384 more tokens are ~1.4 s
more at every new site (~3 s in the typing replay of the slower, unified-cache runner) for no
measured gain with the embedded model (benchmarks/README.md, "Context from other files").

Rules: windows change in coarse steps and only when the estimate moved by two steps or more, so
the prompt's start (and with it the KV cache) does not wander with every measurement; a window
the user set explicitly (non-zero `prefixTokens`/`suffixTokens`) is never resized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STEP = 64  # tokens: windows are multiples of this
# Below this the model lacks the context to be right, however slow the machine: the old fixed windows
# (512 + 128). A 384-token floor cost 6 of 120 HumanEval single-line tasks (66.7 % vs 71.7 %, the
# same with both runners), 8 of the 10 tasks that differed came back with 512 + 128.
MIN_TOTAL = 640
MAX_TOTAL = 4096
EXTRA_MAX = 384  # tokens of context from other files on a device fast enough for them
PREFIX_SHARE = 0.8  # of the total, before the cursor (the old fixed default was 512 + 128)
MIN_MEASURED = 32  # prefills shorter than this are dominated by fixed costs: not a rate
# How long prefilling a whole cold prompt may take, per device, when the user sets no target.
DEFAULT_TARGET_MS = {"cpu": 2000, "cuda": 300, "gpu": 300}  # gpu: llama.cpp offload (--n-gpu-layers)
FALLBACK_TARGET_MS = 1000
# A cold place's first answer (`quickFirst`): prefill at most this long, from the lines around the
# cursor; the whole prompt's answer follows. Only where the whole cold window takes seconds.
QUICK_TARGET_MS = {"cpu": 800}
# ... but only where the whole prompt would not be ready while a person reads at the place (2 s): one
# that is gets the whole context (a quick window costs HumanEval's first answers 15 points of pass@1
# when every cold prompt takes it; benchmarks/README.md, "Quick first answers").
QUICK_ABOVE_MS = 2000
QUICK_MIN = 128  # tokens: below this the nearest lines are too few to be right
ASSUMED_CPU_TOK_S = 250.0  # before anything was measured (this project's 2-core CPU: ~280)


@dataclass
class DeviceSpeed:
    prefill_tok_s: float | None = None  # running estimate (exponential average)
    device: str = ""  # "cpu", "cuda", or "" when unknown (remote backends)
    total: int = MIN_TOTAL  # the current prefix + suffix window, tokens

    def observe(self, result: Any) -> None:
        """Fold a finished request's prefill into the estimate."""
        tokens, ms = getattr(result, "prefilled_tokens", 0), getattr(result, "prefill_ms", 0.0)
        if tokens < MIN_MEASURED or ms <= 0:
            return
        rate = tokens / (ms / 1000)
        self.prefill_tok_s = rate if self.prefill_tok_s is None else 0.7 * self.prefill_tok_s + 0.3 * rate

    def target_ms(self, configured: int) -> int:
        return configured or DEFAULT_TARGET_MS.get(self.device, FALLBACK_TARGET_MS)

    def windows(self, prefix_tokens: int, suffix_tokens: int, target_ms: int,
                limit: int | None = None) -> tuple[int, int]:
        """(prefix, suffix) token budgets: the user's when set, else sized to the measured speed, never
        more than `limit` tokens together (what one engine sequence holds of a prompt; None: no limit)."""
        if self.prefill_tok_s is not None:
            wanted = int(self.prefill_tok_s * self.target_ms(target_ms) / 1000) // STEP * STEP
            wanted = max(MIN_TOTAL, min(MAX_TOTAL, wanted))
            if abs(wanted - self.total) >= 2 * STEP:
                self.total = wanted
        total = self.total if limit is None else max(STEP, min(self.total, limit // STEP * STEP))
        prefix = round(total * PREFIX_SHARE / STEP) * STEP
        prefix, suffix = prefix_tokens or prefix, suffix_tokens or total - prefix
        if limit is not None and prefix + suffix > limit:  # the user's own sizes, over what the engine holds
            prefix = max(0, min(prefix, limit - suffix))
            suffix = max(0, min(suffix, limit - prefix))
        return prefix, suffix

    def extra_tokens(self, configured: int, model_default: int | None = None) -> int:
        """Tokens of context from other files: the user's when set, else the model's measured default
        where it has one (engine/models/catalog.py: none for the 0.5B, which does not use it), else what the
        current windows leave above the floor (so it moves with them, in the same coarse steps), up
        to EXTRA_MAX."""
        if configured:
            return configured
        if model_default is not None:
            return model_default
        if not self.device:  # a remote backend: its speed is not measured here, its server decides
            return EXTRA_MAX
        return max(0, min(EXTRA_MAX, self.total - MIN_TOTAL))

    def quick_tokens(self) -> int:
        """The size of a cold place's first window (0: none, the whole prompt is quick enough)."""
        ms = QUICK_TARGET_MS.get(self.device)
        if not ms:
            return 0
        tokens = max(QUICK_MIN, int((self.prefill_tok_s or ASSUMED_CPU_TOK_S) * ms / 1000) // 16 * 16)
        return tokens if tokens < self.total else 0

    def quick_above(self) -> int:
        """Tokens of whole-prompt prefill above which the quick window answers first."""
        return int((self.prefill_tok_s or ASSUMED_CPU_TOK_S) * QUICK_ABOVE_MS / 1000)

    def snapshot(self) -> dict[str, Any]:
        return {"prefill_tok_s": round(self.prefill_tok_s, 1) if self.prefill_tok_s else None,
                "device": self.device or None, "window_tokens": self.total}
