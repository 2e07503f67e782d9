"""Every option the server accepts, typed and defaulted, with the camelCase names editors send.

The same options come from command-line flags and from LSP `initializationOptions` /
`workspace/didChangeConfiguration` (section "codestral"); they are validated once here and the
rest of the server only sees an `Options`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "quantize": ("auto", "none", "int8", "nf4"),
    "fim_format": ("auto", "codestral", "qwen", "qwen-spm", "starcoder2", "deepseek", "codellama"),
    "multiline": ("auto", "never", "always"),
    "backend": ("local", "daemon", "mistral", "openai", "llamacpp", "ollama"),
}
# Options that only take effect when the model is (re)loaded.
MODEL_KEYS = ("model", "device", "dtype", "quantize", "fim_format", "trust_remote_code", "allow_download",
              "threads", "kv_reuse", "speculation", "draft_model", "kv_budget_mb",
              "backend", "endpoint", "api_key_env", "remote_model", "connect_timeout_ms", "read_timeout_ms")

@dataclass(frozen=True)
class Options:
    model: str | None = None  # None: the embedded Qwen2.5-Coder-0.5B
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "none"
    fim_format: str = "auto"
    trust_remote_code: bool = False
    allow_download: bool = False
    threads: int | None = None
    kv_reuse: bool = True
    speculation: bool = True
    draft_model: str = ""  # "": none; "embedded" (the 0.5B, for a bigger Qwen2.5-Coder) or a folder
    kv_budget_mb: int = 512
    budget_ms: int = 100  # answer by then with what is decoded; the rest continues in background
    max_tokens: int = 64
    max_lines: int = 12
    # A suggestion that cannot fit the code after it (server/fit.py) is replaced by the model's
    # next-best start, at most this many times (each costs a decode); 0: just drop it.
    second_opinions: int = 3
    multiline: str = "auto"
    prefix_tokens: int = 512
    suffix_tokens: int = 128
    extra_context_tokens: int = 256  # from other open documents
    typed_cache_entries: int = 256
    disabled_languages: tuple[str, ...] = ()
    log_document_text: bool = False  # debug only: logs never hold code otherwise
    # Where requests go (server/backends.py): the in-process model, an engine daemon, or a remote API.
    backend: str = "local"
    endpoint: str = ""  # daemon: URL or "auto"; remote: base URL ("" = the backend's default)
    api_key_env: str = ""  # name of the environment variable holding the API key ("" = backend default)
    remote_model: str = ""  # model name sent to the remote API ("" = backend default)
    connect_timeout_ms: int = 3000  # 0: none
    read_timeout_ms: int = 15000  # longest silence while waiting for an answer; 0: none

    def replace(self, **changes: Any) -> Options:
        return dataclasses.replace(self, **changes)

def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)

ALIASES = {_camel(f.name): f.name for f in fields(Options)} | {f.name: f.name for f in fields(Options)}

def _coerce(name: str, value: Any, default: Any) -> Any:
    typ = type(default)
    if name == "model":
        if value in (None, "", "embedded"):
            return None
        if not isinstance(value, str):
            raise ValueError(f"option model must be a string path or hub id, got {value!r}")
        return value
    if name == "threads":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"option threads must be a positive integer, got {value!r}")
        return value
    if name == "disabled_languages":
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"option disabledLanguages must be a list of language ids, got {value!r}")
        return tuple(value)
    if typ is bool:
        if not isinstance(value, bool):
            raise ValueError(f"option {_camel(name)} must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"option {_camel(name)} must be a non-negative integer, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"option {_camel(name)} must be a string, got {value!r}")
    if name in CHOICES and value not in CHOICES[name]:
        raise ValueError(f"option {_camel(name)} must be one of {', '.join(CHOICES[name])}, got {value!r}")
    return value

def parse_options(raw: Any, base: Options | None = None) -> tuple[Options, list[str]]:
    """Merge a client's options object into `base`; returns (options, problems).

    A bad value is reported and ignored rather than refusing the whole configuration, so one typo
    never leaves the user without completions. Unknown keys are reported too.
    """
    base = base or Options()
    if raw is None:
        return base, []
    if isinstance(raw, dict) and isinstance(raw.get("codestral"), dict):
        raw = raw["codestral"]
    if not isinstance(raw, dict):
        return base, [f"options must be a JSON object, got {type(raw).__name__}"]
    changes: dict[str, Any] = {}
    problems: list[str] = []
    defaults = {f.name: getattr(base, f.name) for f in fields(Options)}
    reference = Options()
    for key, value in raw.items():
        name = ALIASES.get(key)
        if name is None:
            problems.append(f"unknown option {key!r}")
            continue
        try:
            changes[name] = _coerce(name, value, getattr(reference, name) if name != "model" else defaults[name])
        except ValueError as exc:
            problems.append(str(exc))
    return base.replace(**changes), problems

def cli_overrides(args: Any) -> dict[str, Any]:
    """Options given on the command line (argparse namespace), those not left at None."""
    out = {}
    for f in fields(Options):
        value = getattr(args, f.name, None)
        if value is not None:
            out[_camel(f.name)] = list(value) if isinstance(value, tuple) else value
    return out

def model_changed(a: Options, b: Options) -> bool:
    return any(getattr(a, k) != getattr(b, k) for k in MODEL_KEYS)



def engine_config(o: Options):  # -> tuple[engine.ModelSpec, engine.EngineOptions]
    """The engine's view of the options."""
    from codestral_ls.engine import EngineOptions, ModelSpec

    spec = ModelSpec(model=o.model, device=o.device, dtype=o.dtype, quantize=o.quantize, fim_format=o.fim_format,
                     trust_remote_code=o.trust_remote_code, allow_download=o.allow_download, threads=o.threads)
    return spec, EngineOptions(kv_reuse=o.kv_reuse, speculation=o.speculation, kv_budget_bytes=o.kv_budget_mb * 2**20,
                               draft_model=o.draft_model or None)
