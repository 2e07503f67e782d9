"""The VS Code client end to end: editors/vscode/test.sh installs it (npm ci), type-checks and bundles
it, packages the .vsix with vsce, then drives the real server over stdio with
vscode-languageserver-protocol (the library under vscode-languageclient) and the extension's own
initializationOptions: inline completion, acceptance, typed-through, settings change, stats."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "editors" / "vscode" / "test.sh"
TIMEOUT_S = 900
NODE_MAJOR = 20  # @vscode/vsce 3 and vscode-languageclient 11


def _server() -> str:
    if "CODESTRAL_LS" in os.environ:
        return os.environ["CODESTRAL_LS"]
    beside = Path(sys.executable).parent / "codestral-ls"  # the venv running the tests
    return str(beside if beside.exists() else REPO / ".venv" / "bin" / "codestral-ls")


def _node_major(node: str) -> int:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.match(r"v(\d+)", out.strip())
    return int(match.group(1)) if match else 0


@pytest.mark.editor
def test_vscode() -> None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the VS Code extension test needs node and npm on PATH (Node 20+)")
    if (major := _node_major(node)) < NODE_MAJOR:
        pytest.skip(f"the VS Code extension test needs Node {NODE_MAJOR}+, found Node {major}")
    proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=os.environ | {"CODESTRAL_LS": _server()})
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # node and the server too
        output, _ = proc.communicate()
        pytest.fail(f"editors/vscode/test.sh ran past {TIMEOUT_S} s:\n{output}")
    assert proc.returncode == 0, f"editors/vscode/test.sh exited {proc.returncode}:\n{output}"
