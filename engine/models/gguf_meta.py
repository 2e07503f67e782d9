"""A GGUF file's metadata, read without the `gguf` package, and its tokenizer built without transformers.

The llama.cpp runner needs a Python-side tokenizer next to the model (the engine builds prompts as
token ids, heals, decodes). Until now it was extracted by transformers in a child process, which
imported torch (~10 s, and torch + transformers in every install). Here the tokenizer is built
from the GGUF's own metadata with the `tokenizers` library alone, as the same `tokenizer.json`
transformers' GGUF converter writes (tests/test_lean.py compares the two on the embedded model):

- `tokenizer.ggml.model == "gpt2"` (byte-level BPE) with a pre-tokenizer listed in `PRE_SPLIT`
  (Qwen2 / Qwen2.5-Coder, the embedded models): vocabulary = the token list, merges = the merge
  list, CONTROL tokens special added tokens, USER_DEFINED ones plain added tokens.
- `tokenizer.ggml.model == "llama"` (SentencePiece) with Mistral's v3 vocabulary (Codestral-22B):
  `mistral_vocabulary` says so, and loading.py tokenizes with mistral-common's own file.

Anything else returns None and the caller falls back (transformers when installed, or a message
naming the extra that brings it). Reading is a single pass over the header (a few MB for a 150k
vocabulary); tensors are never touched.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Any

from codestral_ls.engine.errors import ModelLoadError

# GGUF value types (gguf-py's GGUFValueType)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
# tokenizer.ggml.token_type values (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Byte-level BPE pre-tokenizer splits by `tokenizer.ggml.pre`: what transformers' converter writes.
PRE_SPLIT = {
    "qwen2": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
             "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
}


class _Reader:
    def __init__(self, buf: Any) -> None:
        self.buf, self.pos = buf, 0

    def take(self, fmt: str) -> Any:
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v

    def string(self) -> str:
        n = self.take("<Q")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="surrogateescape")
        self.pos += n
        return s

    def value(self, kind: int, keep: bool = True) -> Any:
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item, count = self.take("<I"), self.take("<Q")
            if item == STRING:
                return [self.string() for _ in range(count)]
            if item in _SCALARS:
                fmt = _SCALARS[item]
                size = struct.calcsize(fmt)
                out = list(struct.unpack_from(f"<{count}{fmt[1]}", self.buf, self.pos)) if keep else []
                self.pos += size * count
                return out
            return [self.value(item) for _ in range(count)]
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        raise ValueError(f"unknown GGUF value type {kind}")


def read_metadata(path: Path) -> dict[str, Any]:
    """Every key/value of the GGUF header (arrays as lists); a clear error for a file that is no GGUF."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            r = _Reader(buf)
            if bytes(buf[:4]) != b"GGUF":
                raise ModelLoadError(f"cannot read GGUF {path}: not a GGUF file (no GGUF magic)")
            r.pos = 4
            version = r.take("<I")
            if version not in (2, 3):
                raise ModelLoadError(f"cannot read GGUF {path}: GGUF version {version} is not supported (2 or 3)")
            r.take("<Q")  # tensor count
            n_kv = r.take("<Q")
            out: dict[str, Any] = {}
            for _ in range(n_kv):
                key = r.string()
                out[key] = r.value(r.take("<I"))
            return out
    except (OSError, ValueError, struct.error) as exc:
        raise ModelLoadError(f"cannot read GGUF {path}: {type(exc).__name__}: {exc}") from None


def bpe_tokenizer_files(meta: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(tokenizer.json, tokenizer_config.json) contents for a byte-level BPE GGUF whose pre-tokenizer
    is known; None otherwise."""
    if meta.get("tokenizer.ggml.model") != "gpt2" or meta.get("tokenizer.ggml.pre") not in PRE_SPLIT:
        return None
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    merges = [m.split(" ", 1) for m in meta.get("tokenizer.ggml.merges", [])]
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": kind == CONTROL}
             for i, (t, kind) in enumerate(zip(tokens, types, strict=False)) if kind in (CONTROL, USER_DEFINED)]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PRE_SPLIT[meta["tokenizer.ggml.pre"]]}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {}},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }

    def name(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    config = {"bos_token": name("bos"), "eos_token": name("eos"), "pad_token": name("padding"), "unk_token": None,
              "tokenizer_class": "PreTrainedTokenizerFast"}
    return tokenizer, config


def write_bpe_tokenizer(meta: dict[str, Any], out: Path) -> bool:
    """Write tokenizer.json + tokenizer_config.json into `out` (made); False when the GGUF's kind is unsupported."""
    files = bpe_tokenizer_files(meta)
    if files is None:
        return False
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(files[0], ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps(files[1], ensure_ascii=False))
    return True


def mistral_vocabulary(meta: dict[str, Any], pieces: list[str]) -> bool:
    """Is this a SentencePiece GGUF whose token list is exactly `pieces` (a mistral-common vocabulary)?"""
    return meta.get("tokenizer.ggml.model") == "llama" and meta.get("tokenizer.ggml.tokens") == pieces
