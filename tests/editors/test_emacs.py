"""The Emacs client end to end: editors/emacs/test.sh byte-compiles codestral.el (warnings are
errors) and runs its ERT tests in `emacs --batch` with Eglot 1.9 against the real server and the
embedded model: completion-at-point through Eglot inserts `a + b`; codestral-mode's debounced
textDocument/inlineCompletion shows the ghost text, TAB accepts it, the acceptance reaches the
server. Then test-tty.py does the same with real keystrokes in `emacs -nw` on a pseudo-terminal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "editors" / "emacs" / "test.sh"
SKIPPED = 77  # test.sh: no Emacs with Eglot, and it cannot be installed here
TIMEOUT_S = 600


def _server() -> str:
    if "CODESTRAL_LS" in os.environ:
        return os.environ["CODESTRAL_LS"]
    beside = Path(sys.executable).parent / "codestral-ls"  # the venv running the tests
    return str(beside if beside.exists() else REPO / ".venv" / "bin" / "codestral-ls")


@pytest.mark.editor
@pytest.mark.model
def test_emacs() -> None:
    proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=os.environ | {"CODESTRAL_LS": _server()})
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # Emacs and its server too
        output, _ = proc.communicate()
        pytest.fail(f"editors/emacs/test.sh ran past {TIMEOUT_S} s:\n{output}")
    if proc.returncode == SKIPPED:
        reason = [line for line in output.splitlines() if "SKIP" in line]
        pytest.skip(reason[-1] if reason else "Emacs with Eglot cannot be installed here")
    assert proc.returncode == 0, f"editors/emacs/test.sh exited {proc.returncode}:\n{output}"
    assert "unexpected" in output and " 0 unexpected" in output, output  # ERT's summary line
