"""A GGUF's tokenizer on the Python side, for the llama.cpp runner: built once from the GGUF's own
metadata into a tokenizer folder in the user cache, and read back by `GgufTokenizer` with the
`tokenizers` library alone (no transformers, no torch).

    tokenizer_folder  the folder for a GGUF, built once (keyed by its path, size and mtime), under a
                      file lock: several servers may start at once
    cached_folder     that folder if it was built before (no GGUF read)
    tokenizer_dir     a packaged model's folder (engine/models/embedded.py joins its GGUF)
    GgufTokenizer     the calls the engine makes of a transformers fast tokenizer, answered the same way
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from codestral_ls.engine.errors import ModelLoadError
from codestral_ls.engine.models import catalog
from codestral_ls.engine.models.embedded import Progress, cache_dir, gguf_path, model_lock


def tokenizer_dir(progress: Progress | None = None,
                  model: catalog.Packaged = catalog.MODELS[catalog.DEFAULT]) -> Path:
    """A packaged model's tokenizer folder, built once from its GGUF (no fp32 conversion)."""
    return tokenizer_folder(gguf_path(progress, model), progress)


TOKENIZER_MARKER = "codestral-ls-tokenizer.json"
# Only for GGUFs whose tokenizer engine/models/gguf_meta.py cannot build (other families' pre-tokenizers):
# read through a link in an empty folder, since next to the GGUF transformers would take any
# tokenizer.json it finds instead of the GGUF's own.
_EXTRACT = """
import sys, tempfile
from pathlib import Path
from transformers import AutoTokenizer
gguf, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
with tempfile.TemporaryDirectory() as d:
    (Path(d) / "model.gguf").symlink_to(gguf)
    AutoTokenizer.from_pretrained(d, gguf_file="model.gguf").save_pretrained(out)
"""


def tokenizer_folder(gguf: Path, progress: Progress | None = None, meta: dict | None = None) -> Path:
    """A tokenizer folder for `gguf`, built from its metadata once (keyed by path, size, mtime).

    Byte-level BPE GGUFs of a known pre-tokenizer (Qwen2.5-Coder: the packaged models) are built
    here with the `tokenizers` library (engine/models/gguf_meta.py), the same tokenizer.json transformers'
    converter writes. Others are extracted by transformers in a child process (it imports torch,
    which would cost the server ~300 MB for good), or refused with the extra that brings it.
    """
    from codestral_ls.engine.models import gguf_meta

    out = _folder_of(gguf)
    if (out / TOKENIZER_MARKER).is_file():
        return out
    with model_lock("tokenizer"):
        if (out / TOKENIZER_MARKER).is_file():
            return out
        if progress:
            progress("reading the tokenizer from the GGUF (one time)", 92)
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            meta = meta if meta is not None else gguf_meta.read_metadata(gguf)
            if not gguf_meta.write_bpe_tokenizer(meta, tmp):
                _extract_with_transformers(gguf, tmp, meta)
            (tmp / TOKENIZER_MARKER).write_text(json.dumps({"source": str(gguf)}))
            shutil.rmtree(out, ignore_errors=True)
            tmp.replace(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _folder_of(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / f"tokenizer-{gguf.stem}-{key}"


def cached_folder(gguf: Path) -> Path | None:
    """The tokenizer folder built earlier for this very file (path, size, mtime), else None."""
    out = _folder_of(gguf)
    return out if (out / TOKENIZER_MARKER).is_file() else None


def _extract_with_transformers(gguf: Path, out: Path, meta: dict) -> None:
    kind = f"{meta.get('tokenizer.ggml.model')}/{meta.get('tokenizer.ggml.pre', 'default')}"
    from codestral_ls.engine.models.extras import MissingExtra, install_line, installed

    if not installed("transformers"):
        raise MissingExtra(f"the tokenizer of {gguf.name} ({kind}) is read by transformers, which is not "
                           f"installed; install it with: {install_line('torch')}")
    done = subprocess.run([sys.executable, "-c", _EXTRACT, str(gguf), str(out)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelLoadError(f"cannot read GGUF {gguf} (its {kind} tokenizer): {last}")


class GgufTokenizer:
    """The extracted tokenizer on the `tokenizers` library alone: the calls the engine makes of a
    transformers fast tokenizer, answered the same way (transformers' fast tokenizers are this
    library underneath), without importing transformers (~120 MB resident).

    `split_special_tokens` flips the backend's `encode_special_tokens` flag for one call, under a
    lock: the event loop counts tokens while the engine thread encodes (a second backend instance
    would cost ~100 MB for a 150k vocabulary).
    """

    def __init__(self, folder: Path) -> None:
        import threading

        from tokenizers import Tokenizer

        self.name_or_path = str(folder)
        self.backend_tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.lock = threading.Lock()  # also taken by `counting.FastCounter`
        try:
            config = json.loads((folder / "tokenizer_config.json").read_text())
        except (OSError, ValueError):
            config = {}
        names = {k: config.get(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
        names = {k: (v.get("content") if isinstance(v, dict) else v) for k, v in names.items()}
        self.bos_token_id = self.convert_tokens_to_ids(names["bos_token"]) if names["bos_token"] else None
        self.eos_token_id = self.convert_tokens_to_ids(names["eos_token"]) if names["eos_token"] else None
        self.all_special_ids = sorted({i for v in names.values() if v
                                       and (i := self.convert_tokens_to_ids(v)) is not None})
        self.added_tokens_decoder = self.backend_tokenizer.get_added_tokens_decoder()

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True, split_special_tokens: bool = False) -> list[int]:
        tok = self.backend_tokenizer
        with self.lock:
            tok.encode_special_tokens = split_special_tokens
            try:
                return tok.encode(text, add_special_tokens=add_special_tokens).ids
            finally:
                tok.encode_special_tokens = False

    def decode(self, ids: list[int], skip_special_tokens: bool = False, **_: object) -> str:
        return self.backend_tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch: list[list[int]], skip_special_tokens: bool = False, **_: object) -> list[str]:
        return self.backend_tokenizer.decode_batch([list(b) for b in batch], skip_special_tokens=skip_special_tokens)

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.backend_tokenizer.token_to_id(token)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self.backend_tokenizer.id_to_token(i) for i in ids]
