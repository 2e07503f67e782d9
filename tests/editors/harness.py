"""Shared by the editor tests: find the server, run an editor's test.sh with a hard time limit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SKIPPED = 77  # a test.sh exit code: the editor cannot be installed here


def server_path() -> str:
    if "CODESTRAL_LS" in os.environ:
        return os.environ["CODESTRAL_LS"]
    beside = Path(sys.executable).parent / "codestral-ls"  # the venv running the tests
    return str(beside if beside.exists() else REPO / ".venv" / "bin" / "codestral-ls")


def run_script(script: Path, *args: str, timeout: float) -> tuple[int, str]:
    """Run `script` with the server path in CODESTRAL_LS; on timeout kill its whole process group
    (the editor and the server it started) and fail with the output so far."""
    proc = subprocess.Popen(["bash", str(script), *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=os.environ | {"CODESTRAL_LS": server_path()})
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{script.relative_to(REPO)} {' '.join(args)} ran past {timeout} s:\n{output}")
    return proc.returncode, output
