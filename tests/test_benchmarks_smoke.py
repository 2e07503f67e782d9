"""The benchmarks run end to end at tiny sizes, so they cannot rot; their helpers behave.

Tests marked `model` load the embedded 0.5B model (in the benchmark's own processes). No timing is
asserted anywhere: the numbers belong in benchmarks/README.md, not in a test.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks import quality, typing_replay  # noqa: E402
from benchmarks.common import device_problem, stride_indices  # noqa: E402

HAS_DATA = (quality.data_dir() / quality.SETS[False]).is_file()
needs_data = pytest.mark.skipif(not HAS_DATA, reason="HumanEval infilling data not found (shared/data)")

SHORT_FILE = '''import os


def join_all(parts):
    total = []
    for part in parts:
        total.append(os.path.join("root", part))
    return total
'''


def bench(module: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# -- helpers, no model ---------------------------------------------------------------------------------


def test_stride_sampling_is_deterministic_and_spread():
    assert stride_indices(1033, 4) == [0, 258, 516, 774]
    assert stride_indices(1033, 4) == stride_indices(1033, 4)
    assert stride_indices(5, 10) == [0, 1, 2, 3, 4]
    assert stride_indices(5, 0) == [0, 1, 2, 3, 4]


def test_hole_puts_the_cursor_after_the_auto_indent():
    task = {"prompt": "def f(x):\n", "suffix": "    return y\n", "canonical_solution": "    y = x + 1\n",
            "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "f"}
    hole = quality.make_hole(task)
    assert hole.text[:hole.offset] == "def f(x):\n    "
    assert hole.text[hole.offset:] == "\n    return y\n"
    middle = quality.canonical_middle(task, hole)
    assert middle == "y = x + 1"
    runner = quality.TestRunner(timeout=10)
    try:
        assert runner.passes(hole.program(middle, task))
        assert not runner.passes(hole.program("", task))
    finally:
        runner.close()


@needs_data
def test_canonical_solutions_pass_the_harness():
    tasks = quality.load_tasks(quality.data_dir() / quality.SETS[False])
    runner = quality.TestRunner(timeout=10)
    try:
        for i in stride_indices(len(tasks), 3):
            hole = quality.make_hole(tasks[i])
            assert runner.passes(hole.program(quality.canonical_middle(tasks[i], hole), tasks[i])), tasks[i]["task_id"]
    finally:
        runner.close()


def test_sites_blank_a_code_line_to_its_indentation(tmp_path):
    path = tmp_path / "short.py"
    path.write_text(SHORT_FILE)
    sites = typing_replay.pick_sites(path, 1)
    assert sites == typing_replay.pick_sites(path, 1)  # deterministic
    (site,) = sites
    lines = SHORT_FILE.split("\n")
    assert lines[site.line] == site.indent + site.target
    assert site.text.split("\n")[site.line] == site.indent
    assert site.text.split("\n")[: site.line] == lines[: site.line]


def test_typist_requests_only_at_pauses_when_debounced():
    t = typing_replay.Typist(every_key=False, debounce_ms=150)
    gaps = [t.gap_after(c) for c in "ab c"]
    assert gaps == [80, 80, 400, 80]
    assert [t.requests_at(g) for g in gaps] == [False, False, True, False]
    assert all(typing_replay.Typist(every_key=True, debounce_ms=0).requests_at(g) for g in gaps)


@pytest.mark.skipif(device_problem("cuda", "none") is None, reason="CUDA is available here")
@pytest.mark.parametrize("module", ["quality", "typing_replay"])
def test_gpu_mode_refuses_cleanly_without_cuda(module):
    proc = bench(module, "--device", "cuda", "--dtype", "bfloat16", timeout=120)
    assert proc.returncode == 2
    assert "CUDA" in proc.stderr and "Traceback" not in proc.stderr


# -- end to end, with the embedded model -------------------------------------------------------------------


@pytest.mark.model
@needs_data
def test_quality_runs_on_two_tasks(tmp_path):
    out = tmp_path / "q.json"
    proc = bench("quality", "--limit", "2", "--max-tokens", "24", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert {"pipeline", "raw", "canonical", "empty", "no_trim_to_line"} <= set(summary)
    assert summary["canonical"]["pass@1"] == 100.0
    assert all(s["n"] == 2 for s in summary.values())
    assert len(result["tasks"]) == 2 and result["indices"] == [0, 516]
    assert "pass@1" in proc.stdout and "target" in proc.stdout
    if importlib.util.find_spec("matplotlib"):
        assert out.with_suffix(".png").is_file()


@pytest.mark.model
@needs_data
def test_quantization_compares_recipes_with_fp32(tmp_path):
    out = tmp_path / "quant.json"
    proc = bench("quantization", "--holes", "1", "--steps", "2", "--recipes", "fp32,int8-keep-down_proj",
                 "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {r["recipe"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"fp32", "int8-keep-down_proj"}
    assert results["fp32"]["same_as_fp32"] == 1 and results["int8-keep-down_proj"]["decode_ms_per_token"] > 0
    assert "first line = fp32's" in proc.stdout


@pytest.mark.model
def test_typing_replay_runs_one_site_on_a_short_file(tmp_path):
    src = tmp_path / "short.py"
    src.write_text(SHORT_FILE)
    out = tmp_path / "r.json"
    systems = "default,hf" + (",llama" if typing_replay.llama_available() else "")
    # A fast typist and a short max_tokens: this checks the plumbing, not the numbers.
    proc = bench("typing_replay", "--files", str(src), "--sites", "1", "--systems", systems, "--max-tokens", "16",
                 "--char-ms", "10", "--pause-ms", "60", "--debounce-ms", "30", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["systems"]) == set(systems.split(","))
    for run in result["systems"].values():
        s = run["summary"]
        assert s["requests"] >= 1 and s["sites"] == 1
        assert s["latency_ms"]["p50"] is not None
    default = result["systems"]["default"]["summary"]
    assert default["peak_rss_mib"] is None or default["peak_rss_mib"] > 100
    assert default["kv_reuse_ratio"] is not None
    assert "peak RSS" in proc.stdout
    if importlib.util.find_spec("matplotlib"):
        assert out.with_name("r_cdf.png").is_file() and out.with_name("r_timeline.png").is_file()
