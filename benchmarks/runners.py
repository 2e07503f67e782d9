"""Runners side by side on this CPU: decode ms/token and prefill tokens/s for our llama.cpp runner,
llama-cpp-python's own high-level `Llama` generate (same GGUF, same threads, same batch sizes) and
our torch fp32 runner, next to the bandwidth floor (weight bytes / memory bandwidth) and a compute
floor (2 x parameters FLOPs at the fp32 GEMM rate measured here), plus the LSP server's resident
memory with the default (llama.cpp) runner.

    python -m benchmarks.runners                       # embedded model, all cores, 512-token prompt
    python -m benchmarks.runners --threads 2 --json benchmarks/results/runners.json

Each runner is measured in its own child process (torch and llama.cpp each bring an OpenMP
runtime), `--rounds` times, median reported. One run on a shared machine is noisy: compare the
ratios of one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.lsp_driver import LspServer, peak_rss_mib
from benchmarks.measure import load_average, machine, table, write_json

ROOT = Path(__file__).resolve().parent.parent
BANDWIDTH_GBS = 16.0  # this machine's measured memory bandwidth (benchmarks/README.md)


def prompt_ids(tokenizer: Any, n: int) -> list[int]:
    text = "".join(p.read_text() for p in sorted((ROOT / "engine").glob("*.py")))
    return tokenizer.encode(text, add_special_tokens=False)[:n]


def time_runner(runner: Any, ids: list[int], decode: int, rounds: int, chunk: int) -> dict[str, Any]:
    """Prefill `ids` in engine-sized chunks, then `decode` greedy tokens one forward each."""
    import numpy as np
    from codestral_ls.engine.decoding.kvcache import Sequence
    from codestral_ls.engine.decoding.runner import prefill
    from codestral_ls.engine.request import CancelToken

    pre, dec = [], []
    for _ in range(rounds):
        seq = Sequence()
        t0 = time.perf_counter()
        logits = prefill(runner.forward, seq, ids, chunk, CancelToken())
        t1 = time.perf_counter()
        for _ in range(decode):
            logits = runner.forward(seq, [int(np.argmax(logits))])[-1]
        t2 = time.perf_counter()
        seq.release()
        pre.append(len(ids) / (t1 - t0))
        dec.append((t2 - t1) / decode * 1000)
    return {"prefill_tok_s": statistics.median(pre), "decode_ms": statistics.median(dec),
            "prefill_all": [round(x, 1) for x in pre], "decode_all": [round(x, 1) for x in dec]}


def part_llamacpp(args: argparse.Namespace) -> dict[str, Any]:
    """Our runner and llama-cpp-python's `Llama.generate` on the same GGUF, alternating round by
    round in one process, so both see the same machine load."""
    import llama_cpp
    import numpy as np
    from codestral_ls.engine.config import EngineOptions
    from codestral_ls.engine.models import embedded
    from codestral_ls.engine.models.gguf_tokenizer import tokenizer_folder
    from codestral_ls.engine.models.runner_llamacpp import LlamaCppRunner
    from llama_cpp import Llama
    from transformers import PreTrainedTokenizerFast

    gguf = embedded.gguf_path()
    tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_folder(gguf))
    ids = prompt_ids(tok, args.prompt)
    runner = LlamaCppRunner(gguf, threads=args.threads)
    chunk = EngineOptions().prefill_chunk or runner.prefill_chunk
    threads = runner.threads
    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=threads, n_threads_batch=threads, n_batch=512,
                n_ubatch=512, verbose=False)
    ours: dict[str, list[float]] = {"prefill": [], "decode": []}
    theirs: dict[str, list[float]] = {"prefill": [], "decode": []}
    from codestral_ls.engine.decoding.kvcache import Sequence
    from codestral_ls.engine.decoding.runner import prefill
    from codestral_ls.engine.request import CancelToken

    same = True
    for _ in range(args.rounds):
        seq = Sequence()
        t0 = time.perf_counter()
        logits = prefill(runner.forward, seq, ids, chunk, CancelToken())
        t1 = time.perf_counter()
        llm.reset()
        it = llm.generate(ids, top_k=1, temp=0.0, reset=True)
        theirs_token = next(it)  # the whole prompt evaluated, first token sampled
        t2 = time.perf_counter()
        ours["prefill"].append(len(ids) / (t1 - t0))
        theirs["prefill"].append(len(ids) / (t2 - t1))
        # Decode token by token, alternating: both see the same moments of a noisy machine.
        mine_s = theirs_s = 0.0
        for _ in range(args.decode):
            token = int(np.argmax(logits))
            same = same and token == theirs_token
            t0 = time.perf_counter()
            logits = runner.forward(seq, [token])[-1]
            t1 = time.perf_counter()
            theirs_token = next(it)
            t2 = time.perf_counter()
            mine_s, theirs_s = mine_s + t1 - t0, theirs_s + t2 - t1
        seq.release()
        ours["decode"].append(mine_s / args.decode * 1000)
        theirs["decode"].append(theirs_s / args.decode * 1000)

    def summary(x: dict[str, list[float]]) -> dict[str, Any]:
        return {"prefill_tok_s": statistics.median(x["prefill"]), "decode_ms": statistics.median(x["decode"]),
                "prefill_best": max(x["prefill"]), "decode_best": min(x["decode"]),
                "prefill_all": [round(v, 1) for v in x["prefill"]], "decode_all": [round(v, 1) for v in x["decode"]]}

    ratios = {"decode": statistics.median(a / b for a, b in zip(ours["decode"], theirs["decode"], strict=True)),
              "prefill": statistics.median(a / b for a, b in zip(ours["prefill"], theirs["prefill"], strict=True))}
    # The same runner with other prompts resident, as the prefix store keeps them after a dozen sites:
    # our layout (a cache stream per sequence) and, as an ablation, one unified cache (the old layout).
    resident = {}
    config, n_params = runner.describe(), int(llama_cpp.llama_model_n_params(runner.model))
    if args.resident:
        runner.close()
        all_ids = prompt_ids(tok, args.prompt * (args.resident + 1))
        others = [all_ids[(k + 1) * args.prompt:(k + 2) * args.prompt] for k in range(args.resident)]
        for layout, unified in (("streams", False), ("unified", True)):
            r = LlamaCppRunner(gguf, threads=args.threads, kv_unified=unified)
            held = []
            for other in others:
                seq = Sequence()
                prefill(r.forward, seq, other, 256, CancelToken())
                held.append(seq)
            resident[layout] = time_runner(r, ids, args.decode, args.rounds, chunk) | {"config": r.describe()}
            for seq in held:
                seq.release()
            r.close()
    return {"ours": summary(ours) | {"weight_bytes": runner.weight_bytes, "config": config,
                                     "resident": resident, "resident_n": args.resident,
                                     "n_params": n_params, "chunk": chunk,
                                     "system_info": llama_cpp.llama_print_system_info().decode().strip()},
            "llama": summary(theirs) | {"config": f"Llama(n_threads={threads}, n_batch={llm.n_batch}, n_ubatch=512, "
                                                  f"n_ctx=2048), generate top_k=1"},
            "paired_ratio": ratios, "same_tokens": same}


def part_torch(args: argparse.Namespace) -> dict[str, Any]:
    from codestral_ls.engine.config import EngineOptions
    from codestral_ls.engine.models.loading import ModelSpec, load_model

    loaded = load_model(ModelSpec(device="cpu", runner="torch", threads=args.threads))
    ids = prompt_ids(loaded.tokenizer, args.prompt)
    out = time_runner(loaded.runner, ids, args.decode, args.rounds,
                      EngineOptions().prefill_chunk or loaded.runner.prefill_chunk)
    import torch

    out |= {"prefill_best": max(out["prefill_all"]), "decode_best": min(out["decode_all"])}
    return out | {"weight_bytes": loaded.weight_bytes, "config": f"fp32, {torch.get_num_threads()} threads"}


def part_gemm(args: argparse.Namespace) -> dict[str, Any]:
    """fp32 GEMM rate here (numpy/OpenBLAS, same threads): the compute floor's denominator."""
    import numpy as np

    n = 1024
    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 3:
        a @ b
        reps += 1
    return {"gflops": 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9}


async def server_rss(args: argparse.Namespace) -> dict[str, Any]:
    """The LSP server with default options (the embedded model, runner auto): RSS after 20 suggestions."""
    import psutil

    flags = ["--log-level", "warning"] + (["--threads", str(args.threads)] if args.threads else [])
    server = LspServer(flags)
    load_s = await server.start()
    try:
        uri = "file:///bench/rss.py"
        text = (ROOT / "server" / "samples" / "sample.py").read_text()
        server.open(uri, text)
        lines = text.splitlines()
        for i in range(20):
            line = i % len(lines)
            await server.inline(uri, line, len(lines[line]))
        stats = await server.stats()
        pid = server.pid()
        rss = psutil.Process(pid).memory_info().rss / 2**20 if pid else None
        return {"load_s": load_s, "rss_mib": rss, "peak_rss_mib": peak_rss_mib(pid), "model": stats.get("model"),
                "kv_cache": stats.get("kv_cache")}
    finally:
        await server.stop()


PARTS = {"llamacpp": part_llamacpp, "torch": part_torch, "gemm": part_gemm}


def child(part: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.runners", "--part", part, "--prompt", str(args.prompt),
           "--decode", str(args.decode), "--rounds", str(args.rounds), "--resident", str(args.resident)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ)
    # The same OpenMP waiting for every runner (ours sets PASSIVE by default; see runner_llamacpp).
    env["OMP_WAIT_POLICY"] = args.omp_wait.upper()
    if args.threads:
        env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(r: dict[str, Any]) -> None:
    ours, llama, torch_, gemm = r["ours"], r["llama"], r["torch"], r["gemm"]
    print(f"machine: {r['machine']}; load average at start {r['load_average']}; OMP_WAIT_POLICY {r['omp_wait']}")
    print(f"llama.cpp build: {ours.get('system_info', '?')}")
    print(f"our llama.cpp runner: {ours.get('config', '?')}; prompt {r['prompt']} tokens in chunks of "
          f"{ours.get('chunk', '?')}, {r['decode']} greedy tokens, median of {r['rounds']}")
    rows = []
    for name, x in (("codestral-ls llama.cpp runner", ours), ("llama-cpp-python Llama.generate", llama),
                    ("codestral-ls torch fp32 runner", torch_)):
        if "error" in x:
            rows.append([name, "error", x["error"][:60], ""])
            continue
        rows.append([name, f"{x['decode_ms']:.1f} (best {x['decode_best']:.1f})",
                     f"{x['prefill_tok_s']:.1f} (best {x['prefill_best']:.1f})", x.get("config", "")])
    gb = BANDWIDTH_GBS * 1e9
    if "weight_bytes" in ours:
        rows.append(["floor: GGUF bytes / 16 GB/s", f"{ours['weight_bytes'] / gb * 1000:.1f}", "", ""])
    if "weight_bytes" in torch_:
        rows.append(["floor: fp32 bytes / 16 GB/s", f"{torch_['weight_bytes'] / gb * 1000:.1f}", "", ""])
    if "n_params" in ours and "gflops" in gemm:
        flops = 2 * ours["n_params"]
        rows.append([f"floor: 2 x {ours['n_params'] / 1e6:.0f} M params at {gemm['gflops']:.0f} GFLOP/s (fp32 GEMM)",
                     f"{flops / (gemm['gflops'] * 1e9) * 1000:.1f}", f"{gemm['gflops'] * 1e9 / flops:.0f}", ""])
    for layout, label in (("streams", "our llama.cpp runner, {n} other prompts resident"),
                          ("unified", "ablation: same, one unified cache (the old layout)")):
        x = (ours.get("resident") or {}).get(layout)
        if x:
            rows.append([label.format(n=ours.get("resident_n")),
                         f"{x['decode_ms']:.1f} (best {min(x['decode_all']):.1f})",
                         f"{x['prefill_tok_s']:.1f} (best {max(x['prefill_all']):.1f})", x.get("config", "")])
    print(table(rows, ["", "decode ms/token", "prefill tok/s", "configuration"]))
    if r.get("paired_ratio"):
        pr = r["paired_ratio"]
        print(f"decode: ours / llama.cpp's own = {pr['decode']:.2f} (median of paired rounds; target <= 1.1); "
              f"same greedy tokens: {r['same_tokens']}")
        best = max(llama["prefill_tok_s"], torch_.get("prefill_tok_s", 0))
        print(f"prefill: ours / llama.cpp's own = {pr['prefill']:.2f} (paired); ours / best median of llama.cpp's "
              f"and torch's = {ours['prefill_tok_s'] / best:.2f} (target >= 1)")
    print("the compute floor uses the fp32 GEMM rate measured here; llama.cpp's int8 (VNNI) dot products "
          "can beat it")
    s = r.get("server")
    if s:
        print(f"server (default options: {s.get('model')}): RSS {s['rss_mib']:.0f} MiB after 20 suggestions, "
              f"peak {s['peak_rss_mib']} MiB (target <= 1024); ready in {s['load_s']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.runners", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, help="CPU threads for every runner (default: all cores)")
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens (default 512)")
    p.add_argument("--decode", type=int, default=32, help="greedy tokens decoded (default 32)")
    p.add_argument("--rounds", type=int, default=5, help="repetitions, median reported (default 5)")
    p.add_argument("--omp-wait", choices=["passive", "active"], default="passive",
                   help="OMP_WAIT_POLICY for every runner (default passive, as the server runs llama.cpp)")
    p.add_argument("--resident", type=int, default=7,
                   help="other prompts held in the cache for the 'resident' rows (default 7: a full prefix store)")
    p.add_argument("--no-server", action="store_true", help="skip the server RSS measurement")
    p.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.part:
        print(json.dumps(PARTS[args.part](args)))
        return 0
    r: dict[str, Any] = {"machine": machine(), "load_average": load_average(), "prompt": args.prompt,
                         "decode": args.decode, "rounds": args.rounds, "threads": args.threads,
                         "omp_wait": args.omp_wait}
    both = child("llamacpp", args)
    r["ours"], r["llama"] = both.get("ours", both), both.get("llama", both)
    r["paired_ratio"], r["same_tokens"] = both.get("paired_ratio"), both.get("same_tokens")
    for part in ("torch", "gemm"):
        r[part] = child(part, args)
    if not args.no_server:
        r["server"] = asyncio.run(server_rss(args))
    report(r)
    if args.json:
        write_json(args.json, r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
