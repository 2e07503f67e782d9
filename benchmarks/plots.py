"""Redraw the PNGs (and reprint the tables) of saved benchmark results, e.g. ones made on a machine
without matplotlib:

    python -m benchmarks.plots benchmarks/results/*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import quality, typing_replay


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="results JSON files")
    p.add_argument("--quiet", action="store_true", help="do not print the tables")
    args = p.parse_args(argv)
    for path in args.results:
        result = json.loads(path.read_text())
        kind = result.get("benchmark")
        if kind == "quality":
            pngs = [quality.plot(result, path.with_suffix(".png"))]
            text = quality.report(result)
        elif kind == "typing_replay":
            pngs = list(typing_replay.plot(result, path.with_suffix("")))
            text = typing_replay.report(result)
        else:
            print(f"{path}: not a benchmark result, skipped")
            continue
        if not args.quiet:
            print(f"== {path}\n{text}\n")
        for png in pngs:
            if png:
                print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
