"""The engine's typed settings: what model to load (`ModelSpec`) and how to decode (`EngineOptions`).

Field names are the option names of server/options.py, which takes each default and each list of
choices from here: an engine setting's name, default and range are written once (a rename fails
tests/test_options.py). Fields marked `tuning` are the engine's own knobs, not user options.
No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from codestral_ls.engine.errors import ModelLoadError

CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "quantize": ("auto", "none", "int8", "nf4"),
    "runner": ("auto", "torch", "llamacpp"),
}


def tuning(default: Any) -> Any:
    return field(default=default, metadata={"tuning": True})


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for; `model=None` means the embedded default."""

    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"
    fim_format: str = "auto"
    trust_remote_code: bool = False
    allow_download: bool = False
    threads: int | None = None
    runner: str = "auto"  # auto | torch | llamacpp (engine/decoding/runner.py)

    def validate(self) -> None:
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ModelLoadError(f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")


@dataclass
class EngineOptions:
    """Decoding switches (also the A/B flags: no KV reuse, no speculation, a draft model)."""

    kv_reuse: bool = True
    speculation: bool = True  # prompt-lookup drafts, adaptive
    kv_budget_mb: float = 512  # the prefix store's byte budget
    draft_model: str = ""  # a smaller model with the same tokenizer drafting for this one ("embedded": the 0.5B)
    prefill_chunk: int = tuning(0)  # tokens per prefill forward; 0: the runner's own (`Runner.prefill_chunk`)
    draft_max: int = tuning(4)  # prompt-lookup draft length
    draft_model_tokens: int = tuning(5)
    background_tokens: int = tuning(48)  # decoded past a stop/budget, for the next keystroke (prefetch)

    @property
    def kv_budget_bytes(self) -> int:
        return int(self.kv_budget_mb * 2**20)


def user_fields(cls: type) -> tuple[str, ...]:
    """The fields of `cls` that are user options (named alike in server/options.py)."""
    return tuple(f.name for f in fields(cls) if not f.metadata.get("tuning"))


DEFAULTS: dict[str, Any] = {f.name: f.default for cls in (ModelSpec, EngineOptions) for f in fields(cls)}
