"""The Neovim client end to end: editors/neovim/test.sh drives headless Neovim 0.12 (PyPI wheel, native
vim.lsp.inline_completion and the extmark fallback) and Neovim 0.7 (Debian's, extmark fallback) against
the real server and the embedded model: type, see the ghost text, accept it, check the line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "editors" / "neovim" / "test.sh"
SKIPPED = 77  # test.sh: this Neovim cannot be installed here
TIMEOUT_S = 900


def _server() -> str:
    if "CODESTRAL_LS" in os.environ:
        return os.environ["CODESTRAL_LS"]
    beside = Path(sys.executable).parent / "codestral-ls"  # the venv running the tests
    return str(beside if beside.exists() else REPO / ".venv" / "bin" / "codestral-ls")


@pytest.mark.editor
@pytest.mark.parametrize("version", ["0.12", "0.7"])
def test_neovim(version: str) -> None:
    proc = subprocess.Popen(["bash", str(SCRIPT), version], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=os.environ | {"CODESTRAL_LS": _server()})
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # Neovim and its server too
        output, _ = proc.communicate()
        pytest.fail(f"test.sh {version} ran past {TIMEOUT_S} s:\n{output}")
    if proc.returncode == SKIPPED:
        reason = [line for line in output.splitlines() if line.startswith("SKIP")]
        pytest.skip(reason[-1] if reason else f"Neovim {version} cannot be installed here")
    assert proc.returncode == 0, f"test.sh {version} exited {proc.returncode}:\n{output}"
