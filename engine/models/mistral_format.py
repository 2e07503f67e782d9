"""Mistral's own checkpoint layout: `consolidated.safetensors` + `params.json` + `tokenizer.model.v3`.

This is how Codestral-22B-v0.1 is published. It loads into transformers' `MistralForCausalLM`
without `trust_remote_code` and without a converted copy on disk: `params.json` becomes a
`MistralConfig`, the consolidated weight names become transformers' names, and the query/key
projections are permuted from Mistral's interleaved rotary pairs (x0, x1), (x2, x3)... to the
half-split layout transformers' `rotate_half` expects (the same permutation as transformers'
`convert_mistral_weights_to_hf`). Tokenization goes through mistral-common (`tokenizer.py`) for
this layout and for a Hugging Face folder that carries a `tokenizer.model.v*` next to config.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from codestral_ls.engine.errors import ModelLoadError
from codestral_ls.engine.models.tokenizer import MistralCommonTokenizer, find_mistral_tokenizer

PARAMS = "params.json"
WEIGHTS = "consolidated.safetensors"

# consolidated name -> transformers MistralForCausalLM name ({i} is the layer index)
_TOP = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_LAYER = {"attention.wq.weight": "self_attn.q_proj.weight", "attention.wk.weight": "self_attn.k_proj.weight",
          "attention.wv.weight": "self_attn.v_proj.weight", "attention.wo.weight": "self_attn.o_proj.weight",
          "feed_forward.w1.weight": "mlp.gate_proj.weight", "feed_forward.w2.weight": "mlp.down_proj.weight",
          "feed_forward.w3.weight": "mlp.up_proj.weight", "attention_norm.weight": "input_layernorm.weight",
          "ffn_norm.weight": "post_attention_layernorm.weight"}
_LAYER_NAME = re.compile(r"layers\.(\d+)\.(.+)")


def is_mistral_layout(folder: Path | str) -> bool:
    """Mistral's layout only: a folder that also has config.json loads as a Hugging Face folder."""
    folder = Path(folder)
    return (folder.is_dir() and (folder / PARAMS).is_file() and not (folder / "config.json").is_file()
            and any(folder.glob("consolidated*.safetensors")))


def load_tokenizer(folder: Path | str) -> MistralCommonTokenizer | None:
    """mistral-common's tokenizer when `folder` ships one (`tokenizer.model.v3` ...), else None."""
    path = find_mistral_tokenizer(Path(folder))
    return MistralCommonTokenizer.from_file(path) if path else None


def config_from_params(params: dict[str, Any], tokenizer: MistralCommonTokenizer | None = None) -> Any:
    """`params.json` as a transformers MistralConfig."""
    from transformers import MistralConfig

    try:
        dim, n_heads = int(params["dim"]), int(params["n_heads"])
        return MistralConfig(
            vocab_size=int(params["vocab_size"]), hidden_size=dim, intermediate_size=int(params["hidden_dim"]),
            num_hidden_layers=int(params["n_layers"]), num_attention_heads=n_heads,
            num_key_value_heads=int(params.get("n_kv_heads", n_heads)),
            head_dim=int(params.get("head_dim") or dim // n_heads), rms_norm_eps=float(params["norm_eps"]),
            rope_parameters={"rope_type": "default", "rope_theta": float(params.get("rope_theta", 10000.0))},
            # Codestral-22B's params.json has no sliding window: full attention.
            sliding_window=params.get("sliding_window"),
            max_position_embeddings=int(params.get("max_seq_len", params.get("max_position_embeddings", 32768))),
            bos_token_id=tokenizer.bos_token_id if tokenizer else 1,
            eos_token_id=tokenizer.eos_token_id if tokenizer else 2,
            tie_word_embeddings=bool(params.get("tied_embeddings", False)),
            architectures=["MistralForCausalLM"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{PARAMS} is not a Mistral model's parameters ({type(exc).__name__}: {exc})") from None


def permute_for_rotate_half(w: Any, n_heads: int) -> Any:
    """Rows of a q/k projection from interleaved rotary pairs to transformers' half-split order."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_state_dict(consolidated: dict[str, Any], config: Any) -> dict[str, Any]:
    """Consolidated tensors renamed (and q/k permuted) for MistralForCausalLM."""
    out: dict[str, Any] = {}
    for name, tensor in consolidated.items():
        if name in _TOP:
            out[_TOP[name]] = tensor
            continue
        m = _LAYER_NAME.fullmatch(name)
        if not m or m.group(2) not in _LAYER:
            raise ModelLoadError(f"{WEIGHTS}: unexpected tensor {name!r} for a Mistral model")
        i, part = m.group(1), m.group(2)
        if part == "attention.wq.weight":
            tensor = permute_for_rotate_half(tensor, config.num_attention_heads)
        elif part == "attention.wk.weight":
            tensor = permute_for_rotate_half(tensor, config.num_key_value_heads)
        out[f"model.layers.{i}.{_LAYER[part]}"] = tensor
    if "lm_head.weight" not in out and config.tie_word_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def load_model(folder: Path | str, **kwargs: Any) -> Any:
    """MistralForCausalLM from a Mistral-layout folder; `kwargs` go to `from_pretrained` (dtype, quantization)."""
    from safetensors.torch import load_file
    from transformers import MistralForCausalLM

    folder = Path(folder)
    try:
        params = json.loads((folder / PARAMS).read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {folder / PARAMS}: {exc}") from None
    config = config_from_params(params, load_tokenizer(folder))
    consolidated: dict[str, Any] = {}
    for part in sorted(folder.glob("consolidated*.safetensors")):
        consolidated.update(load_file(part))  # safetensors only: never unpickle
    state = hf_state_dict(consolidated, config)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("trust_remote_code", "use_safetensors")}
    return MistralForCausalLM.from_pretrained(None, config=config, state_dict=state, **kwargs)

