"""The `codestral-ls` command as a user runs it: help, clear one-line errors, a real completion."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from codestral_ls.engine.errors import ModelLoadError
from codestral_ls.engine.models import catalog, embedded

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "codestral_ls.server", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_the_commands():
    r = run("--help")
    assert r.returncode == 0
    for word in ("complete", "doctor", "--model", "--quantize", "--no-kv-reuse"):
        assert word in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model"], "does not exist"),
    (["--model", "someone/some-model"], "--allow-download"),
    (["--quantize", "nf4", "--device", "cpu"], "nf4 needs a CUDA device"),
    (["--draft-model", "/nonexistent/draft"], "--draft-model: "),
])
def test_bad_model_choice_is_one_clear_line(args, message):
    r = run("complete", *args, "server/samples/sample.py:8:11")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("codestral-ls: error:")]
    assert len(errors) == 1 and message in errors[0]


def test_corrupt_gguf_is_one_clear_line(tmp_path, monkeypatch):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 100)
    cmd = [sys.executable, "-m", "codestral_ls.server", "complete", "--model", str(bad),
           "server/samples/sample.py:8:11"]
    r = subprocess.run(cmd,
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "CODESTRAL_LS_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot read GGUF" in r.stderr


def test_bad_location_is_one_clear_line():
    r = run("complete", "server/samples/sample.py:999:1")
    assert r.returncode == 2 and "line 999 does not exist" in r.stderr and "Traceback" not in r.stderr


def test_missing_part_package_and_checksum_are_refused(tmp_path):
    default = catalog.MODELS[catalog.DEFAULT]
    missing = dataclasses.replace(default, dist="no-such-part-pkg")
    wanted = r"no-such-part-pkg1==0.9.0 is not installed; pip install 'codestral-ls\[model\]'"
    with pytest.raises(ModelLoadError, match=wanted):
        embedded.part_files(missing)
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        embedded.assemble_gguf(tmp_path / "x.gguf", model=dataclasses.replace(default, sha256="0" * 64))
    assert not (tmp_path / "x.gguf").exists()
    assert not list(tmp_path.iterdir())  # no temporary file left behind either


@pytest.mark.model
def test_complete_prints_a_suggestion_and_latency():
    r = run("complete", "server/samples/sample.py:8:11")
    assert r.returncode == 0, r.stderr
    assert "--- suggestion ---" in r.stdout and "latency:" in r.stdout
    line = r.stdout.split("--- suggestion ---\n")[1].splitlines()[0]
    assert line.startswith("    return ") and len(line.strip()) > len("return")


@pytest.mark.model
def test_doctor_reports_a_loading_model():
    r = run("doctor")
    assert r.returncode == 0, r.stderr
    assert "model loads" in r.stdout and "yes" in r.stdout and "FIM format" in r.stdout


# -- one options table: flags, config file and docs derived from server/options.py --------------------


def test_every_option_has_its_flag_and_the_readme_holds_the_table():
    from codestral_ls.server.cli import build_parser
    from codestral_ls.server.options import FIELDS, flag, markdown_table

    help_text = build_parser().format_help()
    for name in FIELDS:
        assert flag(name) in help_text, name
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "README's options table is stale: python -m codestral_ls.server.options"


def test_the_user_config_file_is_trusted_and_the_command_line_wins(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('model = "/nonexistent/from-config"\nmaxTokens = 9\n', encoding="utf-8")
    config.chmod(0o600)
    env = {**__import__("os").environ, "CODESTRAL_LS_CONFIG": str(config)}

    def complete(*flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "codestral_ls.server", "complete", *flags,
                               "server/samples/sample.py:8:11"], cwd=ROOT, capture_output=True, text=True,
                              timeout=300, env=env)

    r = complete()
    assert r.returncode == 2 and "/nonexistent/from-config does not exist" in r.stderr
    r = complete("--model", "/nonexistent/from-flag")
    assert r.returncode == 2 and "/nonexistent/from-flag does not exist" in r.stderr


def test_a_config_file_others_can_write_is_ignored(tmp_path):
    from codestral_ls.server.config_file import read_user_config

    config = tmp_path / "config.toml"
    config.write_text('backend = "openai"\n', encoding="utf-8")
    config.chmod(0o600)
    assert read_user_config(config) == ({"backend": "openai"}, [])
    config.chmod(0o666)
    raw, problems = read_user_config(config)
    assert raw == {} and "writable by others" in problems[0]
    config.write_text("backend = \n", encoding="utf-8")
    config.chmod(0o600)
    assert "not valid TOML" in read_user_config(config)[1][0]
