"""Per-keystroke latency of the engine on CUDA, for model architectures too big to ship here.

No GPU machine can download weights, so this builds the architecture (Qwen2.5-Coder-0.5B/1.5B,
Codestral-22B) with random weights: latency depends on shapes and bytes, not on values. Quality is
not measured here. Each keystroke of a retyped line is one `Engine.complete` with a fixed number of
decoded tokens (greedy on random weights stops at random places otherwise), side by side:
  engine   — KV reuse + anchored prompt (what the server does)
  plain    — no KV reuse: the whole prompt prefilled at every keystroke
  generate — transformers' `generate` on the same prompt ids
and prints p50/p95 next to the bandwidth floor (weight bytes / HBM bandwidth per decoded token).

    python benchmarks/gpu_keystrokes.py --arch qwen0.5b --dtype bfloat16 --quantize none
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARCHS = {
    # name: (model_type, config kwargs)
    "qwen0.5b": ("qwen2", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                               num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen1.5b": ("qwen2", dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                               num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True)),
    "codestral22b": ("mistral", dict(vocab_size=32768, hidden_size=6144, intermediate_size=16384,
                                     num_hidden_layers=56, num_attention_heads=48, num_key_value_heads=8,
                                     head_dim=128, rope_theta=1e6, tie_word_embeddings=False)),
}
HBM_GBPS = {"H100": 3350, "H200": 4800}


def build(arch: str, dtype: str, quantize: str, tokenizer_dir: Path, workdir: Path):
    import torch
    from codestral_ls.engine.models.fim import FimEncoder, detect_profile
    from codestral_ls.engine.models.loading import LoadedModel, ModelSpec, load_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    model_type, kw = ARCHS[arch]
    config = AutoConfig.for_model(model_type, max_position_embeddings=32768, **kw)
    tdtype = getattr(torch, dtype)
    if quantize == "none":
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=tdtype)
        model.eval()
        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        enc = FimEncoder(tok, detect_profile(tok))
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        return LoadedModel(model, tok, enc, "cuda", dtype, "none", f"{arch} random", nbytes)
    # bitsandbytes quantizes at load: save the random model once, then load it the product's way.
    folder = workdir / f"{arch}-random"
    if not (folder / "config.json").exists():
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=tdtype)
        model.save_pretrained(folder, safe_serialization=True)
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
    return load_model(ModelSpec(model=str(folder), device="cuda", dtype=dtype, quantize=quantize))


def sites(text: str, n: int) -> list[tuple[int, str]]:
    """(offset of a line's first non-blank char, the rest of that line) at evenly spaced lines."""
    lines = text.split("\n")
    picked, offset = [], 0
    starts = []
    for line in lines:
        stripped = line.lstrip()
        if len(stripped) >= 20:
            starts.append((offset + len(line) - len(stripped), stripped[:40]))
        offset += len(line) + 1
    step = max(1, len(starts) // (n + 1))
    for i in range(1, n + 1):
        picked.append(starts[min(i * step, len(starts) - 1)])
    return picked


def run(args: argparse.Namespace) -> dict:
    import torch
    from codestral_ls.engine.config import EngineOptions
    from codestral_ls.engine.decoding.engine import Engine
    from codestral_ls.engine.request import FimRequest, StopRule

    loaded = build(args.arch, args.dtype, args.quantize, Path(args.tokenizer), Path(args.workdir))
    text = (ROOT / "engine" / "engine.py").read_text()
    stop = StopRule(max_lines=10_000)  # fixed decode length: random weights stop anywhere
    results: dict[str, list[float]] = {"engine": [], "plain": [], "generate": []}
    decode_ms: list[float] = []
    for mode in ("engine", "plain", "generate"):
        eng = Engine(loaded, EngineOptions(kv_reuse=mode == "engine", speculation=False))
        # Untimed warm-up (CUDA kernels, allocator): without it the first mode measured pays for it.
        eng.complete(FimRequest(doc="warm", prefix=text[:2000], suffix="", max_tokens=args.tokens, stop=stop,
                                background=False))
        for site_no, (start, line) in enumerate(sites(text, args.sites)):
            prefix, suffix = text[max(0, start - args.prefix_chars):start], text[start + len(line):][:args.suffix_chars]
            for k in range(len(line) + 1):
                typed = line[:k]
                req = FimRequest(doc=f"s{site_no}", prefix=prefix, suffix=suffix, forced_middle=typed,
                                 max_tokens=args.tokens, stop=stop, background=False)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                if mode == "generate":
                    ids = eng.encoder.build(prefix + typed, suffix, heal=False).ids
                    inp = torch.tensor([ids], device="cuda")
                    loaded.model.generate(inp, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                          do_sample=False, attention_mask=torch.ones_like(inp))
                else:
                    r = eng.complete(req)
                    if mode == "engine" and r.decoded_tokens > 1:
                        decode_ms.append((r.elapsed_ms - r.prefill_ms) / r.decoded_tokens)
                torch.cuda.synchronize()
                results[mode].append((time.perf_counter() - t0) * 1000)
    gpu = torch.cuda.get_device_name(0)
    floor_bw = next((v for k, v in HBM_GBPS.items() if k in gpu), 3350)
    out = {"arch": args.arch, "dtype": args.dtype, "quantize": args.quantize, "gpu": gpu,
           "weight_gb": round(loaded.weight_bytes / 1e9, 2), "keystrokes": len(results["engine"]),
           "decode_ms_per_token_p50": round(statistics.median(decode_ms), 2) if decode_ms else None,
           "bandwidth_floor_ms_per_token": round(loaded.weight_bytes / (floor_bw * 1e9) * 1000, 3)}
    for mode, lat in results.items():
        lat.sort()
        out[mode] = {"p50_ms": round(statistics.median(lat), 1), "p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 1),
                     "mean_ms": round(statistics.fmean(lat), 1)}
    out["engine_vs_plain_p50"] = round(out["engine"]["p50_ms"] / out["plain"]["p50_ms"], 3)
    out["engine_vs_generate_p50"] = round(out["engine"]["p50_ms"] / out["generate"]["p50_ms"], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=ARCHS, default="qwen0.5b")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--quantize", choices=["none", "nf4", "int8"], default="none")
    p.add_argument("--tokenizer", required=True, help="folder with the tokenizer (FIM tokens decide the format)")
    p.add_argument("--workdir", default="/tmp/codestral-gpu")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--tokens", type=int, default=16, help="tokens decoded per keystroke")
    p.add_argument("--prefix-chars", type=int, default=3000)
    p.add_argument("--suffix-chars", type=int, default=600)
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("gpu_keystrokes: no CUDA device (this benchmark is for GPU machines)")
    sys.stdout.write(json.dumps(run(args)) + "\n")


if __name__ == "__main__":
    main()
