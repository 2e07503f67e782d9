"""CPU int8 recipes side by side: decode speed and how often the suggestion stays fp32's.

For each recipe the embedded model is loaded, optionally quantized with `engine.quantize` (fbgemm
dynamic int8, per-channel weights) leaving the named layers in fp32, and measured in one run:

  decode ms/token   1-token forwards after a 200-token cached prompt (the keystroke's inner loop)
  same as fp32      HumanEval single-line holes (stride subset) whose greedy first line equals the
                    fp32 model's (plain engine request, healing on, no post-processing)

The pass@1 of a recipe through the whole pipeline is `python -m benchmarks.quality --quantize int8`.
`--kernels` times torch's weight-only int8/int4 CPU kernels on one MLP-sized layer against fp32 (why
the engine does not use them).

    python -m benchmarks.quantization --holes 24
    python -m benchmarks.quantization --kernels
"""

from __future__ import annotations

import argparse
import gc
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.measure import RESULTS_DIR, machine, stride_indices, table, write_json
from benchmarks.quality import SETS, data_dir, load_tasks, make_hole

# recipe name -> layers kept in fp32 (None: no quantization at all)
RECIPES: dict[str, tuple[str, ...] | None] = {
    "fp32": None,
    "int8-all": (),
    "int8-keep-down_proj": ("down_proj",),  # the engine's int8 (engine.quantize.KEEP_FP32)
    "int8-keep-lm_head": ("lm_head",),
    "int8-keep-down_proj-lm_head": ("down_proj", "lm_head"),
}


def measure(name: str, keep: tuple[str, ...] | None, holes: list[tuple[str, str]], steps: int) -> dict[str, Any]:
    from codestral_ls.engine import EngineOptions, ModelSpec
    from codestral_ls.engine.decoding.engine import Engine
    from codestral_ls.engine.decoding.kvcache import Sequence
    from codestral_ls.engine.models.loading import load_model
    from codestral_ls.engine.models.quantize import quantize_int8_cpu
    from codestral_ls.engine.request import FimRequest, StopRule

    loaded = load_model(ModelSpec(device="cpu", runner="torch"))  # torch's own int8 kernels are measured
    if keep is not None:
        quantize_int8_cpu(loaded.model, skip=keep)
    engine = Engine(loaded, EngineOptions(kv_reuse=False, speculation=False))
    seq = Sequence()
    engine._prefill(seq, list(range(1000, 1200)), FimRequest(doc="warm-up", prefix="", suffix=""))
    engine._forward(seq, [1200])  # warm-up
    t0 = time.perf_counter()
    for i in range(steps):
        engine._forward(seq, [1300 + i])
    ms = (time.perf_counter() - t0) / steps * 1000
    texts = []
    for n, (head, tail) in enumerate(holes):
        r = engine.complete(FimRequest(doc=f"h{n}", prefix=head, suffix=tail, stop=StopRule(single_line=True),
                                       max_tokens=32, background=False))
        texts.append(r.text)
    return {"recipe": name, "keep_fp32": list(keep) if keep is not None else None,
            "decode_ms_per_token": round(ms, 1), "texts": texts}


def kernel_timings(rows_n: int = 4864, cols: int = 896, reps: int = 200) -> list[list[str]]:
    """One decode-step matmul (batch 1) of a rows_n x cols layer: fp32 vs torch's weight-only kernels."""
    import torch

    torch.manual_seed(0)
    x, w = torch.randn(1, cols), torch.randn(rows_n, cols)

    def timed(f: Any) -> float:
        for _ in range(10):
            f()
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        return (time.perf_counter() - t0) / reps * 1e6

    out = [["fp32 linear", f"{timed(lambda: torch.nn.functional.linear(x, w)):.0f}"]]
    scale = w.abs().amax(1) / 127
    w8 = torch.round(w / scale[:, None]).to(torch.int8)
    out.append(["_weight_int8pack_mm", f"{timed(lambda: torch.ops.aten._weight_int8pack_mm(x, w8, scale)):.0f}"])
    group = 32
    wg = w.reshape(rows_n, cols // group, group)
    lo, hi = wg.amin(-1, keepdim=True), wg.amax(-1, keepdim=True)
    step = (hi - lo).clamp(min=1e-6) / 15
    q = torch.clamp(torch.round((wg - lo) / step), 0, 15).to(torch.int32).reshape(rows_n, cols)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    zeros = torch.cat([step, lo + step * 8], -1).transpose(0, 1).contiguous()
    out.append([f"_weight_int4pack_mm_for_cpu (group {group})",
                f"{timed(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, zeros)):.0f}"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quantization", description=__doc__.split("\n\n")[0])
    p.add_argument("--holes", type=int, default=24, help="HumanEval single-line holes (stride subset, default 24)")
    p.add_argument("--steps", type=int, default=15, help="timed decode steps per recipe (default 15)")
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from {', '.join(RECIPES)}")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "quantization_cpu.json")
    p.add_argument("--kernels", action="store_true", help="only time the weight-only kernels on one layer")
    args = p.parse_args(argv)
    if args.kernels:
        print(table(kernel_timings(), ["4864x896 layer, batch 1", "us per call"]))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = [n for n in args.recipes.split(",") if n]
    unknown = [n for n in names if n not in RECIPES]
    if unknown or "fp32" not in names:
        raise SystemExit(f"benchmark: error: recipes must include fp32 and be among {', '.join(RECIPES)}")
    tasks = load_tasks(data_dir() / SETS[False])
    holes = [(h.head, h.tail) for h in (make_hole(tasks[i]) for i in stride_indices(len(tasks), args.holes))]
    results = []
    for name in ["fp32"] + [n for n in names if n != "fp32"]:
        results.append(measure(name, RECIPES[name], holes, args.steps))
        print(f"{name}: {results[-1]['decode_ms_per_token']} ms/token", flush=True)
        gc.collect()
    ref = results[0]["texts"]
    rows = []
    for r in results:
        r["same_as_fp32"] = sum(a == b for a, b in zip(r["texts"], ref, strict=True))
        rows.append([r["recipe"], f"{r['decode_ms_per_token']:.1f}",
                     f"{results[0]['decode_ms_per_token'] / r['decode_ms_per_token']:.2f}x",
                     f"{r['same_as_fp32']}/{len(holes)}"])
    print()
    print(table(rows, ["recipe", "decode ms/token", "speed vs fp32", "first line = fp32's"]))
    write_json(args.out, {"benchmark": "quantization", "holes": len(holes), "machine": machine(), "results": results})
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
