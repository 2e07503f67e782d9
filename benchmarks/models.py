"""What each packaged model costs and gets on this machine: the table `codestral-ls models` shows.

```
python -m benchmarks.models [--limit 60] [--models qwen2.5-coder-0.5b,qwen2.5-coder-1.5b] [--out FILE]
```

Per installed packaged model (engine/models/catalog.py), one after another so that one model is in memory:
- cost: `engine/models/costs.py` in a child process (the model loaded as the server loads it; a 512-token
  prefill of real code in the runner's chunks, 32 greedy decoded tokens, peak RSS);
- quality: HumanEval single-line infilling pass@1 of the server's first answer with default options
  through the LSP (benchmarks/quality.py's headline, `--model NAME`, at the auto-indented cursor),
  `--limit` tasks by a fixed stride.

Writes `engine/models/data/models.json` (shipped with the package; `codestral-ls models` reads it, marked
with †, under what `codestral-ls models --measure` measured on the user's own machine) unless `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import quality
from benchmarks.measure import load_average

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    from codestral_ls.engine.models import catalog
    from codestral_ls.engine.models.costs import measure
    from codestral_ls.server.models_cli import _machine, available

    p = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=60, help="HumanEval single-line tasks (stride; default 60)")
    p.add_argument("--models", default=",".join(catalog.MODELS), help="comma-separated names (default: all)")
    p.add_argument("--out", type=Path, default=catalog.SHIPPED, help=f"JSON to write (default {catalog.SHIPPED})")
    p.add_argument("--no-quality", action="store_true", help="cost only (no pass@1)")
    args = p.parse_args(argv)

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    try:
        old = json.loads(args.out.read_text())
    except (OSError, ValueError):
        old = {}
    given = sys.argv[1:] if argv is None else argv
    result: dict[str, Any] = {"machine": {**_machine(), "load1_start": load_average()},
                              "command": " ".join(["python -m benchmarks.models", *given]),
                              "limit": args.limit, "models": dict(old.get("models", {}))}
    for name in names:
        model = catalog.lookup(name)
        if model is None:
            raise SystemExit(f"benchmark: error: {name} is not a packaged model ({', '.join(catalog.MODELS)})")
        if not available(model):
            print(f"{model.name}: not installed ({model.requirement()}): skipped", flush=True)
            continue
        flag = None if model.name == catalog.DEFAULT else model.name
        t0 = time.perf_counter()
        cost = measure(flag)
        print(f"{model.name}: {cost['prefill_tok_s']} tok/s prefill, {cost['ms_per_token']} ms/token, "
              f"{cost['rss_mib']} MiB RSS, load {cost['load_s']} s ({time.perf_counter() - t0:.0f} s)", flush=True)
        row: dict[str, Any] = {k: cost[k] for k in ("prefill_tok_s", "ms_per_token", "rss_mib", "load_s",
                                                    "weights_mib", "threads")}
        if not args.no_quality:
            with tempfile.TemporaryDirectory() as d:
                out = Path(d) / "quality.json"
                qargs = ["--limit", str(args.limit), "--cursor", "indent", "--no-llama", "--no-inprocess",
                         "--no-ablations", "--no-plot", "--out", str(out)]
                if flag:
                    qargs += ["--model", flag]
                rc = quality.main(qargs)
                if rc:
                    raise SystemExit(f"benchmark: error: quality run for {model.name} failed ({rc})")
                q = json.loads(out.read_text())
            lsp = q["summary"]["lsp@indent"]
            row |= {"pass1_single": lsp["pass@1"], "pass1_tasks": lsp["n"], "exact_single": lsp["exact"],
                    "latency_p50_ms": (lsp.get("latency_ms") or {}).get("p50")}
            print(f"{model.name}: pass@1 {lsp['pass@1']} % on {lsp['n']} single-line tasks", flush=True)
        result["models"][model.name] = row
    result["machine"]["load1_end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
