"""Model loading: a packaged model by name (engine/models/catalog.py; the embedded 0.5B by default), a local
Hugging Face folder, a GGUF file, or a hub id, onto a runner (engine/decoding/runner.py): llama.cpp for a GGUF
on the CPU (or offloaded with --n-gpu-layers), transformers/torch otherwise.

Weights load from safetensors or GGUF only (never pickle), `trust_remote_code` stays off unless
asked for, and nothing is downloaded unless the user allowed it. Every failure becomes one
`ModelLoadError` sentence. The llama.cpp path never imports torch nor transformers: the GGUF is read
as it is; its tokenizer is built once from the GGUF's metadata (engine/models/gguf_tokenizer.py), or, for
a SentencePiece GGUF with a Mistral vocabulary (Codestral), is mistral-common's own
(`tokenizer.mistral_tokenizer_for`), so its prompts are `encode_fim`'s token for token. The torch
path imports torch where it starts (`extras.require_torch`): without the `torch` extra that is one
sentence naming `pip install 'codestral-ls[torch]'`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codestral_ls.engine.config import ModelSpec
from codestral_ls.engine.decoding.runner import choose_runner
from codestral_ls.engine.errors import ModelLoadError
from codestral_ls.engine.models import catalog, embedded, mistral_format
from codestral_ls.engine.models.extras import require, require_torch
from codestral_ls.engine.models.fim import FimEncoder, detect_profile
from codestral_ls.engine.models.gguf_tokenizer import GgufTokenizer, cached_folder, tokenizer_folder

log = logging.getLogger(__name__)

@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    encoder: FimEncoder
    device: str
    dtype: str
    quantize: str
    source: str  # what was loaded, for `doctor` and logs
    weight_bytes: int
    runner: Any = None  # engine.runner.Runner
    runner_why: str = ""  # why this runner, for `doctor`
    packaged: str = ""  # the catalog name of a packaged model, else ""
    # Context from other files when the user leaves extraContextTokens at 0; None: the device rule
    # (server/speed.py). Packaged models carry a measured value (engine/models/catalog.py).
    extra_context_tokens: int | None = None


def resolve_device(device: str) -> str:
    torch = require_torch("the torch runner")

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but torch sees no CUDA device")
    return device


def resolve_source(spec: ModelSpec, progress: embedded.Progress | None = None) -> tuple[Path | str, str]:
    """Turn `--model` into a loadable folder (or hub id) and a human description."""
    packaged = spec.packaged
    if packaged is not None:
        return embedded.ensure_embedded_model(progress, packaged), packaged.title
    if catalog.is_hub_id(spec.model):  # before any look at the disk: a folder of that name where the
        # server runs (a cloned repository, for editors that start it in the project) is never loaded for it
        if not spec.allow_download:
            raise ModelLoadError(f"{spec.model} is a Hugging Face hub id; pass --allow-download to fetch it "
                                 f"(a local folder of that name is written ./{spec.model} or as a full path)")
        return hub_snapshot(spec.model), f"{spec.model} (hub)"
    path = Path(spec.model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist")
        return convert_gguf(path, progress), f"{path.name} (GGUF)"
    if path.exists():
        if mistral_format.is_mistral_layout(path):  # consolidated.safetensors + params.json
            return path, f"{path} (Mistral layout)"
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json) nor a .gguf file")
        return path, str(path)
    raise ModelLoadError(f"model path {spec.model} does not exist")



# Never fetched from the hub: pickled weights (never loaded) and other runtimes' files.
NOT_FETCHED = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.h5", "*.msgpack", "*.onnx", "*.gguf", "*.tflite"]


def hub_snapshot(repo_id: str) -> Path:
    """The hub model's files in the Hugging Face cache, as an absolute folder: transformers handed the
    id itself would first look for a folder of that name where the server runs."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, ignore_patterns=NOT_FETCHED)).absolute()
    except ImportError:
        raise ModelLoadError("fetching a hub model needs huggingface_hub (pip install 'codestral-ls[torch]')"
                             ) from None
    except Exception as exc:
        raise ModelLoadError(f"cannot fetch {repo_id} from the Hugging Face hub: {type(exc).__name__}: {exc}"
                             ) from None


def convert_gguf(path: Path, progress: embedded.Progress | None = None) -> Path:
    """Convert a user GGUF once into the cache (keyed by path, size and mtime), like the embedded one."""
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    out = embedded.cache_dir() / f"gguf-{path.stem}-{key}"
    if (out / embedded.CONVERTED_MARKER).is_file():
        return out
    try:
        with embedded.conversion_lock():
            if not (out / embedded.CONVERTED_MARKER).is_file():
                embedded.convert_gguf_folder(path, out, {"source": str(path)}, progress)
    except ModelLoadError:
        raise
    except Exception as exc:  # gguf/transformers raise many kinds for a corrupt file
        shutil.rmtree(out.with_name(out.name + ".tmp"), ignore_errors=True)
        raise ModelLoadError(f"cannot read GGUF {path}: {type(exc).__name__}: {exc}") from None
    return out


def _torch_dtype(name: str, device: str) -> Any:
    torch = require_torch("the torch runner")

    if name == "auto":
        # No bf16 hardware on common CPUs: fp32 is the fast path there.
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, name)


def gguf_of(spec: ModelSpec) -> Path | None:
    """The GGUF file `spec` names (a packaged model is one), else None; nothing is assembled."""
    packaged = spec.packaged
    if packaged is not None:
        return embedded.cache_dir() / packaged.gguf_name
    path = Path(spec.model).expanduser()
    return path if path.suffix == ".gguf" else None


def load_model(spec: ModelSpec, progress: embedded.Progress | None = None) -> LoadedModel:
    spec.validate()
    runner, why = choose_runner(spec.runner, gguf_of(spec), spec.device, spec.quantize, spec.dtype,
                                n_gpu_layers=spec.n_gpu_layers)
    if runner == "llamacpp":
        return load_llamacpp(spec, why, progress)
    loaded = load_torch(spec, progress)
    loaded.runner_why = why
    if spec.packaged is not None:
        loaded.packaged, loaded.extra_context_tokens = spec.packaged.name, spec.packaged.extra_context_tokens
    return loaded


def gguf_tokenizer(gguf: Path, progress: embedded.Progress | None = None) -> Any:
    """The Python-side tokenizer of a GGUF for the llama.cpp runner, never through transformers when
    avoidable: mistral-common's for a Mistral vocabulary, else built from the GGUF's metadata."""
    from codestral_ls.engine.models import gguf_meta
    from codestral_ls.engine.models.tokenizer import mistral_tokenizer_for

    cached = cached_folder(gguf)
    if cached is not None:
        return GgufTokenizer(cached)
    meta = gguf_meta.read_metadata(gguf)
    if meta.get("tokenizer.ggml.model") == "llama":  # SentencePiece: Codestral's is mistral-common's
        mistral = mistral_tokenizer_for(meta.get("tokenizer.ggml.tokens") or [], gguf.parent)
        if mistral is not None:
            return mistral
    return GgufTokenizer(tokenizer_folder(gguf, progress, meta))


def load_llamacpp(spec: ModelSpec, why: str, progress: embedded.Progress | None = None) -> LoadedModel:
    """The GGUF as it is on llama.cpp; tokenizer from its metadata (extracted once)."""
    from codestral_ls.engine.models.runner_llamacpp import LlamaCppRunner

    packaged = spec.packaged
    if packaged is not None:
        gguf, description = embedded.gguf_path(progress, packaged), packaged.title
    else:
        gguf = Path(spec.model).expanduser()  # type: ignore[arg-type]
        if not gguf.is_file():
            raise ModelLoadError(f"model file {gguf} does not exist")
        description = f"{gguf.name} (GGUF)"
    # llama.cpp maps the weights (a ctypes call: the GIL is released) while the tokenizer is built:
    # the two take about as long as each other on a first load.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="llama-load") as pool:
        loading = pool.submit(LlamaCppRunner, gguf, threads=spec.threads, n_gpu_layers=spec.n_gpu_layers)
        try:
            tokenizer = gguf_tokenizer(gguf, progress)
            if progress:
                progress(f"loading {description}", 95)
            runner = loading.result()
        except ModelLoadError:
            _close_when_loaded(loading)
            raise
        except Exception as exc:
            _close_when_loaded(loading)
            raise ModelLoadError(f"cannot load model {description}: {type(exc).__name__}: {exc}") from None
    try:
        encoder = FimEncoder(tokenizer, detect_profile(tokenizer, spec.fim_format))
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    log.info("loaded %s on llama.cpp (%s, FIM %s)", description, runner.describe(), encoder.profile.name)
    return LoadedModel(None, tokenizer, encoder, runner.device, "gguf", "gguf", description, runner.weight_bytes,
                       runner=runner, runner_why=why, packaged=packaged.name if packaged else "",
                       extra_context_tokens=packaged.extra_context_tokens if packaged else None)


def _close_when_loaded(loading: Any) -> None:
    """The runner of a load that failed elsewhere (its tokenizer): freed, whatever became of it."""
    try:
        loading.result().close()
    except Exception:
        pass


def load_torch(spec: ModelSpec, progress: embedded.Progress | None = None) -> LoadedModel:
    what = ("the torch runner (--runner torch)" if spec.runner == "torch" else
            "a Hugging Face or Mistral-format model folder (the torch runner)")
    torch = require_torch(what)
    source, description = resolve_source(spec, progress)
    device = resolve_device(spec.device)
    if spec.quantize == "nf4" and device != "cuda":
        raise ModelLoadError("--quantize nf4 needs a CUDA device (bitsandbytes); use int8 or none on CPU")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.threads:
        torch.set_num_threads(spec.threads)
    dtype = _torch_dtype(spec.dtype, device)
    # Never unpickle weights: a folder or a hub id without safetensors fails to load instead.
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": spec.trust_remote_code, "use_safetensors": True}
    quantize = spec.quantize if spec.quantize != "auto" else ("nf4" if device == "cuda" else "none")
    if device == "cuda" and quantize in ("int8", "nf4"):
        kwargs["quantization_config"] = _bnb_config(quantize, dtype)
        kwargs["device_map"] = {"": 0}
    if progress:
        progress(f"loading {description}", 95)
    try:
        # Mistral models tokenize with mistral-common when they ship its file (tokenizer.model.v3).
        # Offline per call, not through $HF_HUB_OFFLINE: an environment variable set once would
        # outlive this load, and allowDownload turned on later could never download.
        offline = not spec.allow_download
        tokenizer = mistral_format.load_tokenizer(source) or AutoTokenizer.from_pretrained(
            source, trust_remote_code=spec.trust_remote_code, local_files_only=offline)
        model = (mistral_format.load_model(source, **kwargs) if mistral_format.is_mistral_layout(source)
                 else AutoModelForCausalLM.from_pretrained(source, local_files_only=offline, **kwargs))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {description}: {type(exc).__name__}: {exc}") from None
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    if device == "cpu" and quantize == "int8":
        from codestral_ls.engine.models.quantize import quantize_int8_cpu

        quantize_int8_cpu(model)
    try:
        encoder = FimEncoder(tokenizer, detect_profile(tokenizer, spec.fim_format))
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values()
                       if hasattr(t, "element_size"))
    log.info("loaded %s on %s (%s, quantize=%s, FIM %s)", description, device, str(dtype), quantize,
             encoder.profile.name)
    from codestral_ls.engine.models.runner_torch import TorchRunner

    return LoadedModel(model, tokenizer, encoder, device, str(dtype).removeprefix("torch."), quantize,
                       description, weight_bytes, runner=TorchRunner(model, device))


def load_draft(spec: ModelSpec, target: LoadedModel, options: Any) -> Any:  # -> engine.draft.DraftModel
    """The `--draft-model` next to `target`: same device and dtype, same tokenizer (checked)."""
    from codestral_ls.engine.decoding.draft import DraftModel

    model = None if options.draft_model == "embedded" else options.draft_model
    # The draft runs where the target runs: a llama.cpp target drafts on llama.cpp when it can.
    draft_spec = dataclasses.replace(spec, model=model, quantize="none",
                                     runner="auto" if target.runner.name == "llamacpp" else "torch")
    try:
        loaded = load_model(draft_spec)
    except ModelLoadError as exc:
        raise ModelLoadError(f"--draft-model: {exc}") from None
    DraftModel.check_compatible(target.tokenizer, loaded.tokenizer, target.runner.vocab_size,
                                loaded.runner.vocab_size)
    log.info("draft model %s (%.0f MB) drafts for %s", loaded.source, loaded.weight_bytes / 2**20, target.source)
    return DraftModel(loaded.runner, budget_bytes=options.kv_budget_bytes // 4,
                      prefill_chunk=options.prefill_chunk or loaded.runner.prefill_chunk)


def _bnb_config(quantize: str, dtype: Any) -> Any:
    require("bitsandbytes", "cuda", "--quantize int8/nf4 on CUDA")
    require("accelerate", "cuda", "--quantize int8/nf4 on CUDA")  # transformers places the layers with it
    from transformers import BitsAndBytesConfig
    if quantize == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                  bnb_4bit_use_double_quant=True)
    return BitsAndBytesConfig(load_in_8bit=True)


def describe_folder(folder: Path) -> dict[str, Any]:
    """A few config facts for `doctor`, without loading weights."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: cfg.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")}
