"""The VS Code client end to end: editors/vscode/test.sh installs it (npm ci), type-checks and bundles
it, packages the .vsix with vsce, then drives the real server over stdio with
vscode-languageserver-protocol (the library under vscode-languageclient) and the extension's own
initializationOptions: inline completion, acceptance, typed-through, settings change, stats; and the
extension's own middleware and notification handlers against the real server (status bar, re-trigger
on codestral/suggestionUpdated), workspace trust."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.editors.harness import REPO, run_script

SCRIPT = REPO / "editors" / "vscode" / "test.sh"
TIMEOUT_S = 900
NODE_MAJOR = 20  # @vscode/vsce 3 and vscode-languageclient 11


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
    returncode, output = run_script(SCRIPT, timeout=TIMEOUT_S)
    assert returncode == 0, f"editors/vscode/test.sh exited {returncode}:\n{output}"
