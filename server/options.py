"""Every option the server accepts: one typed table from which everything else is derived.

`Options` is the table (as jedi-language-server's one options model). Each field carries an `Opt`
in its metadata: help text, group, choices, whether it takes effect only when the engine is
(re)started, and whether it is *trusted*: it runs code, reads files or sends data elsewhere.
Derived from it: the command-line flags (`add_cli_arguments`), the camelCase init-option aliases
(`ALIASES`), the engine's `ModelSpec`/`EngineOptions` (`engine_config`, by field name) and the
README's options table (`markdown_table`, checked by a test).

Where options come from, weakest first: defaults, the user's config file (`user_config_file`),
the editor's `initializationOptions` / `workspace/didChangeConfiguration` (section "codestral"),
command-line flags. Trusted options never come from the editor: a client that forwards workspace
settings would let a cloned repository run code, load files or send the user's code and keys to
its own endpoint. `parse_client_options` refuses them with a problem to show; the rest applies.
Editor settings may be a workspace's (eglot's .dir-locals.el, LSP4IJ project settings), so they only
make the server more private than the user's own options (`Opt.narrow`: fewer retrieval sources, more
disabled languages and secret patterns, logs without text) and sizes stay within `Opt.limits`; the
timeouts are the user's alone (trusted). Relative paths (model, draftModel, caBundle) resolve against
the config file's folder or the folder the command ran in, never where an editor started the server;
an `org/name` is a hub id, never a path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from codestral_ls.engine.config import CHOICES, DEFAULTS, EngineOptions, ModelSpec, user_fields
from codestral_ls.engine.models import catalog
from codestral_ls.engine.models.fim import PROFILES
from codestral_ls.engine.serving.remote import APIS
from codestral_ls.server.config_file import resolve_paths, user_config_file

# Why an option is trusted: said in the refusal and the docs.
RUNS_CODE = "runs code"
READS_FILES = "loads files"
SENDS_DATA = "sends data elsewhere"
LIFTS_LIMITS = "bounds remote requests"

# How an editor or workspace setting may move an option that decides what leaves this machine: only
# towards more private, measured against the user's own value (config file and command line).
FEWER = "fewer"  # a subset of the user's list (retrieval: fewer sources)
MORE = "more"  # added to the user's list, never replacing it (disabledLanguages, secretFiles)
OFF = "off"  # may turn it off, never on (logDocumentText)

BACKENDS = ("local", "daemon", *APIS)  # the model in this process, an engine daemon, or a remote API
# Never sent to any backend as extra context: names of files that commonly hold credentials.
# A project's own `secrets.py` matches too, on purpose: such a file is made to hold keys (README, "Security").
SECRET_FILES = (".env", ".env.*", "*.env", ".envrc", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
                "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", ".netrc", ".npmrc", ".pypirc", ".pgpass",
                ".my.cnf", ".htpasswd", ".vault-token", ".git-credentials", "credentials*", "secrets.*",
                "client_secret*.json", "service-account*.json", "kubeconfig*", "*.tfvars", "*.tfstate",
                "*.tfstate.*", "*.kdbx")


@dataclass(frozen=True)
class Opt:
    help: str
    group: str  # model | engine | context | backend | privacy
    choices: tuple[str, ...] = ()
    reload: bool = False  # takes effect when the engine/backend is (re)started
    trusted: str = ""  # RUNS_CODE / READS_FILES / SENDS_DATA / LIFTS_LIMITS: command line or user config only
    metavar: str | None = None
    narrow: str = ""  # FEWER / MORE / OFF: editor settings only make it more private
    # The range editor settings are clamped to (sizes: memory, work per keystroke, context sent
    # elsewhere); the command line and the config file are the user's own and are not clamped.
    limits: tuple[int, int] | None = None


def opt(default: Any, help: str, group: str, **kw: Any) -> Any:  # noqa: A002 - argparse's word
    return field(default=default, metadata={"opt": Opt(help, group, **kw)})


def engine_opt(name: str, help: str, group: str, **kw: Any) -> Any:  # noqa: A002
    """An option the engine reads: its default and choices are the engine's own (engine/config.py)."""
    kw.setdefault("choices", CHOICES.get(name, ()))
    return opt(DEFAULTS[name], help, group, **kw)


@dataclass(frozen=True)
class Options:
    # -- model ----------------------------------------------------------------------------------
    model: str | None = engine_opt(
        "model", "a packaged model by name (qwen2.5-coder-0.5b, the embedded default; qwen2.5-coder-1.5b: "
        "`codestral-ls models`), a local Hugging Face folder, a .gguf file or a hub id (downloaded only with "
        "allowDownload)", "model", reload=True, trusted=READS_FILES, metavar="NAME|PATH|FILE.gguf|org/name")
    device: str = engine_opt("device", "where the model runs", "model", reload=True)
    dtype: str = engine_opt("dtype", "auto: bf16 on CUDA, fp32 on CPU", "model", reload=True)
    quantize: str = engine_opt("quantize", "int8: bitsandbytes on CUDA, dynamic int8 on CPU; nf4: CUDA only",
                               "model", reload=True)
    fim_format: str = engine_opt("fim_format", "FIM control tokens; auto: detected from the tokenizer", "model",
                                 choices=("auto", *PROFILES), reload=True)
    trust_remote_code: bool = engine_opt("trust_remote_code", "let transformers run the model folder's own Python "
                                         "code", "model", reload=True, trusted=RUNS_CODE)
    allow_download: bool = engine_opt("allow_download", "allow fetching --model from the Hugging Face hub", "model",
                                      reload=True, trusted=SENDS_DATA)
    threads: int | None = engine_opt("threads", "CPU threads for the model (default: all cores)", "model",
                                     reload=True, limits=(1, 64))
    runner: str = engine_opt("runner", "what computes the model: llama.cpp (GGUF files, CPU) or transformers/torch; "
                             "auto: llama.cpp for a GGUF on the CPU", "model", reload=True)
    n_gpu_layers: int = engine_opt("n_gpu_layers", "llama.cpp: layers of a GGUF offloaded to the GPU (-1: all; needs "
                                   "a GPU build of llama-cpp-python, README \"GPU\")", "model", reload=True)
    # -- engine ---------------------------------------------------------------------------------
    kv_reuse: bool = engine_opt("kv_reuse", "reuse cached prompt prefixes (A/B switch)", "engine", reload=True)
    speculation: bool = engine_opt("speculation", "prompt-lookup speculative decoding (A/B switch)", "engine",
                                   reload=True)
    draft_model: str = engine_opt("draft_model", "a smaller model with the same tokenizer drafting for --model "
                                  "(GPU); embedded: the 0.5B", "engine", reload=True, trusted=READS_FILES,
                                  metavar="PATH|embedded")
    kv_budget_mb: int = engine_opt("kv_budget_mb", "byte budget of the KV cache store", "engine", reload=True,
                                limits=(64, 2048))
    # Latency budget of a multi-line suggestion: by then it ends after its last complete line and
    # the rest of the block follows (codestral/suggestionUpdated). A single line is always whole.
    budget_ms: int = opt(100, "latency budget of a multi-line suggestion: by then it ends after its last "
                         "complete line, the rest follows (0: wait for all of it)", "engine", limits=(0, 5000))
    max_tokens: int = opt(64, "most tokens in one suggestion", "engine", limits=(1, 512))
    max_lines: int = opt(12, "most lines in one suggestion", "engine", limits=(1, 200))
    # A suggestion that cannot fit the code after it (postprocess.misfit) is replaced by the model's
    # next-best start, at most this many times (each costs a decode); 0: just drop it.
    second_opinions: int = opt(3, "replace a suggestion that cannot fit the code after it by the next-best, "
                               "up to N times (0: drop it)", "engine", limits=(0, 5))
    multiline: str = opt("auto", "multi-line suggestions", "engine", choices=("auto", "never", "always"))
    # Each candidate past the first costs a decode (the model's next-best start): 1 on a CPU.
    candidates: int = opt(1, "inline suggestions offered at once, distinct, best first (clients cycle "
                          "through them)", "engine", limits=(1, 5))
    # -- context --------------------------------------------------------------------------------
    # Context windows in tokens; 0: sized to the measured prefill speed so that a cold prompt takes
    # about coldTargetMs (server/speed.py). 0 there: the device's default (CPU 2000, CUDA 300).
    prefix_tokens: int = opt(0, "tokens of text before the cursor (0: sized to the prefill speed)", "context",
                             limits=(0, 8192))
    suffix_tokens: int = opt(0, "tokens of text after the cursor (0: sized to the prefill speed)", "context",
                             limits=(0, 8192))
    cold_target_ms: int = opt(0, "time a cold prompt may take, sizing the windows (0: the device's default)",
                              "context", limits=(0, 5000))
    # Where the whole cold prompt takes seconds (a CPU), a place nobody prefilled is answered first
    # from its nearest lines (~0.8 s of prefill); the whole prompt's answer replaces it when it differs.
    quick_first: bool = opt(True, "a cold place's first answer from the lines around the cursor, then the "
                            "whole prompt's (CPU)", "context")
    # Extra context from the rest of the project (server/retrieval/), placed where the model
    # family reads it and recomputed only when the cursor enters another block (the KV cache).
    extra_context_tokens: int = opt(0, "tokens of context from other files (retrieval; 0: sized to the prefill "
                                    "speed, none where the windows already fill coldTargetMs, up to 384)", "context",
                                    limits=(0, 2048))
    retrieval: tuple[str, ...] = opt(("chunks", "definitions", "edits"), "sources of context from other files: "
                                     "similar chunks of open files, definitions of imported names, recent edits "
                                     "elsewhere, stubs of what the cursor's block uses (none: no other file)",
                                     "context", choices=("chunks", "definitions", "edits", "symbols", "none"),
                                     narrow=FEWER)
    typed_cache_entries: int = opt(256, "suggestions kept for typing through them", "context",
                                   limits=(1, 4096))
    disabled_languages: tuple[str, ...] = opt((), "language ids never completed nor sent as context", "context",
                                              metavar="LANGUAGE", narrow=MORE)
    # -- privacy --------------------------------------------------------------------------------
    secret_files: tuple[str, ...] = opt(SECRET_FILES, "file name patterns never sent to any backend: no completion "
                                        "in them, never context (replaces the default list)", "privacy",
                                        metavar="GLOB", narrow=MORE)
    log_document_text: bool = opt(False, "debug: allow document text in logs", "privacy", narrow=OFF)
    # -- backend: where requests go (engine/serving/backend.py) -------------------------------------------
    backend: str = opt("local", "where requests go: the model in this process, an engine daemon or a remote API",
                       "backend", choices=BACKENDS, reload=True, trusted=SENDS_DATA)
    endpoint: str = opt("", "daemon: URL or auto; remote: base URL (default: the backend's usual one)", "backend",
                        reload=True, trusted=SENDS_DATA, metavar="URL")
    api_key_env: str = opt("", "environment variable holding the API key (default: the backend's)", "backend",
                           reload=True, trusted=SENDS_DATA, metavar="VAR")
    remote_model: str = opt("", "model name sent to a remote API (default: the backend's)", "backend",
                            reload=True, trusted=SENDS_DATA, metavar="NAME")
    allow_plain_http_key: bool = opt(False, "send the API key over plain http to a host other than this machine",
                                     "backend", reload=True, trusted=SENDS_DATA)
    ca_bundle: str = opt("", "PEM file of certificate authorities for https (default: the system's, or "
                         "$SSL_CERT_FILE)", "backend", reload=True, trusted=READS_FILES, metavar="FILE")
    connect_timeout_ms: int = opt(3000, "connecting to a backend (0: no limit)", "backend", reload=True,
                                  trusted=LIFTS_LIMITS)
    read_timeout_ms: int = opt(15000, "longest silence while waiting for an answer (0: no limit)", "backend",
                               reload=True, trusted=LIFTS_LIMITS)
    request_timeout_ms: int = opt(30000, "longest a whole remote request may take (0: no limit)", "backend",
                                  reload=True, trusted=LIFTS_LIMITS)

    def replace(self, **changes: Any) -> Options:
        return dataclasses.replace(self, **changes)


def meta(name: str) -> Opt:
    return Options.__dataclass_fields__[name].metadata["opt"]


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


FIELDS = {f.name: f for f in fields(Options)}
ALIASES = {camel(n): n for n in FIELDS} | {n: n for n in FIELDS}
TRUSTED = {n: meta(n).trusted for n in FIELDS if meta(n).trusted}
MODEL_KEYS = tuple(n for n in FIELDS if meta(n).reload)  # only take effect when the engine (re)starts


def _coerce(name: str, value: Any) -> Any:
    f = FIELDS[name]
    typ = f.type if isinstance(f.type, str) else str(f.type)
    label = camel(name)
    if name == "model":
        if value in (None, "", "embedded"):
            return None
        if not isinstance(value, str):
            raise ValueError(f"option model must be a model name, a path or a hub id, got {value!r}")
        packaged = catalog.lookup(value)
        if packaged is not None:  # a packaged model by name: the default one is the default (None)
            return None if packaged.name == catalog.DEFAULT else packaged.name
        return value
    if name == "n_gpu_layers":
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise ValueError(f"option {label} must be a layer count or -1 (all), got {value!r}")
        return value
    if typ == "int | None":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"option {label} must be a positive integer, got {value!r}")
        return value
    if typ.startswith("tuple"):
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"option {label} must be a list of strings, got {value!r}")
        choices = meta(name).choices
        if choices and any(v not in choices for v in value):
            raise ValueError(f"option {label} takes {', '.join(choices)}, got {value!r}")
        return tuple(value)
    if typ == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"option {label} must be true or false, got {value!r}")
        return value
    if typ == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"option {label} must be a non-negative integer, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"option {label} must be a string, got {value!r}")
    choices = meta(name).choices
    if choices and value not in choices:
        raise ValueError(f"option {label} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _parse(raw: Any, base: Options | None, trusted: bool, user: Options | None = None
           ) -> tuple[Options, list[str]]:
    base = base or Options()
    user = user or base
    if raw is None:
        return base, []
    if isinstance(raw, dict) and isinstance(raw.get("codestral"), dict):
        raw = raw["codestral"]
    if not isinstance(raw, dict):
        return base, [f"options must be a JSON object, got {type(raw).__name__}"]
    changes: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        name = ALIASES.get(key)
        if name is None:
            problems.append(f"unknown option {key!r}")
            continue
        try:
            value = _coerce(name, value)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if not trusted:
            if name in TRUSTED:
                if value != getattr(user, name):  # an editor sending the user's value changes nothing
                    problems.append(refusal(name))
                continue
            value, problem = workspace_value(name, value, getattr(user, name))
            if problem:
                problems.append(problem)
        changes[name] = value
    return base.replace(**changes), problems


def workspace_value(name: str, value: Any, users: Any) -> tuple[Any, str]:
    """What an editor or workspace setting `value` of option `name` may make of it, given the user's
    own value: only more private (`Opt.narrow`), sizes within `Opt.limits`; and the problem to show
    when it asked for more."""
    m, label = meta(name), camel(name)
    if m.narrow == FEWER:
        mine = [v for v in users if v != "none"]
        kept = [v for v in mine if v in value]
        if any(v not in mine and v != "none" for v in value):
            return tuple(kept) or ("none",), (f"option {label} from editor or workspace settings may only "
                                              f"leave sources out of your own ({', '.join(users)}): "
                                              f"{', '.join(kept) or 'none'} used")
        return tuple(kept) or ("none",), ""
    if m.narrow == MORE:  # added to the user's list (a workspace listing only its own additions is fine)
        return tuple(users) + tuple(v for v in value if v not in users), ""
    if m.narrow == OFF:
        if value and not users:
            return False, (f"option {label} from editor or workspace settings may only turn it off: "
                           f"set it on the command line or in {user_config_file()}")
        return value, ""
    if m.limits is not None and value is not None:
        lo, hi = m.limits
        if not lo <= value <= hi:
            clamped = min(max(value, lo), hi)
            return clamped, (f"option {label} from editor or workspace settings is limited to {lo}-{hi}: "
                             f"{clamped} used (the command line and {user_config_file()} are not limited)")
    return value, ""


def refusal(name: str) -> str:
    return (f"option {camel(name)} {TRUSTED[name]}, so it is only taken from the command line or "
            f"{user_config_file()}, never from editor or workspace settings: ignored")


def parse_options(raw: Any, base: Options | None = None) -> tuple[Options, list[str]]:
    """Merge trusted options (command line, user config file) into `base`; returns (options, problems).

    A bad value is reported and ignored rather than refusing the whole configuration, so one typo
    never leaves the user without completions. Unknown keys are reported too.
    """
    return _parse(raw, base, trusted=True)


def parse_client_options(raw: Any, base: Options | None = None, user: Options | None = None
                         ) -> tuple[Options, list[str]]:
    """As `parse_options`, for settings from the editor (initializationOptions, didChangeConfiguration),
    which may be a workspace's (eglot's .dir-locals.el, LSP4IJ project settings): trusted options are
    refused (a problem each) unless they repeat the user's value; privacy options only move towards
    more private than `user` (the options from the command line and the config file; default `base`);
    sizes are clamped to their limits. A workspace may only make the server more private, never less."""
    return _parse(raw, base, trusted=False, user=user)


# -- derived: command-line flags, the engine's options, the docs -----------------------------------


def flag(name: str) -> str:
    f = FIELDS[name]
    if str(f.type) == "bool" and f.default is True:
        return "--no-" + name.replace("_", "-")
    return "--" + name.replace("_", "-")


GROUP_TITLES = {"model": "model", "engine": "engine", "context": "context",
                "privacy": "privacy", "backend": "backend (where requests go; default: the model in this process)"}


def add_cli_arguments(parser: Any) -> None:
    """One flag per option, in groups (argparse parser, `argument_default=SUPPRESS` expected)."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for name, f in FIELDS.items():
        m = meta(name)
        g = groups[m.group]
        typ = str(f.type)
        kw: dict[str, Any] = {"dest": name, "help": m.help + (f" [{m.trusted}]" if m.trusted else "")}
        if typ == "bool":
            kw["action"] = "store_false" if f.default else "store_true"
        elif typ.startswith("tuple"):
            kw |= {"action": "append", "metavar": m.metavar}
        else:
            kw["type"] = int if "int" in typ else str
            if m.choices:
                kw["choices"] = m.choices
            elif m.metavar:
                kw["metavar"] = m.metavar
        g.add_argument(flag(name), **kw)


def cli_overrides(args: Any) -> dict[str, Any]:
    """Options given on the command line (argparse namespace), those not left at None. Relative paths
    are made absolute against the folder the command ran in (a later reload reads the same file; one
    that is not there fails to load, saying its full path)."""
    out = {}
    for name in FIELDS:
        value = getattr(args, name, None)
        if value is not None:
            out[camel(name)] = list(value) if isinstance(value, tuple) else value
    return resolve_paths(out, Path.cwd())


def in_force(o: Options) -> dict[str, Any]:
    """The options in force, camelCase, for `codestral/stats`: which editor or workspace settings took
    effect (none of them holds a secret: apiKeyEnv names a variable, never its value)."""
    return {camel(n): list(v) if isinstance(v, tuple) else v for n in FIELDS if (v := getattr(o, n)) is not None}


def model_changed(a: Options, b: Options) -> bool:
    return any(getattr(a, k) != getattr(b, k) for k in MODEL_KEYS)


def engine_config(o: Options) -> tuple[ModelSpec, EngineOptions]:
    """The engine's view of the options: every user field of its dataclasses, taken by name (a field
    the options lack is an AttributeError here, never a silent default)."""
    spec = ModelSpec(**{name: getattr(o, name) for name in user_fields(ModelSpec)})
    return spec, EngineOptions(**{name: getattr(o, name) for name in user_fields(EngineOptions)})


WORKSPACE_RULES = {FEWER: "may only leave sources out of yours", MORE: "add to yours, never replace it",
                   OFF: "may only turn it off"}


def workspace_rule(m: Opt) -> str:
    """What editor and workspace settings may do with an option, for the README's table."""
    if m.trusted:
        return f" **Command line or config file only ({m.trusted}).**"
    if m.narrow:
        return f" *Editor/workspace settings {WORKSPACE_RULES[m.narrow]}.*"
    if m.limits:
        return f" *Editor/workspace settings: {m.limits[0]}–{m.limits[1]}.*"
    return ""


def markdown_table() -> str:
    """The README's options table (tests/test_cli.py checks the README holds exactly this)."""
    rows = ["| flag | init option / config key | default | meaning |", "|---|---|---|---|"]
    for name, f in FIELDS.items():
        m = meta(name)
        arg = ("|".join(m.choices) if m.choices else m.metavar or ("" if str(f.type) == "bool" else "N"))
        arg = arg.replace("|", "\\|")
        default = f.default
        shown = ("embedded" if default is None and name == "model" else "" if default in (None, "", ())
                 else "…" if name == "secret_files" else str(default).lower() if isinstance(default, bool)
                 else ", ".join(default) if isinstance(default, tuple) else str(default))
        rows.append(f"| `{flag(name)}{' ' + arg if arg else ''}` | `{camel(name)}` | {shown} | {m.help}."
                    f"{workspace_rule(m)} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m codestral_ls.server.options: the README table
    print(markdown_table())
