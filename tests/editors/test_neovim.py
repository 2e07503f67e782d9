"""The Neovim client end to end: editors/neovim/test.sh drives headless Neovim 0.12 (PyPI wheel, native
vim.lsp.inline_completion and the extmark fallback) and Neovim 0.7 (Debian's, extmark fallback) against
the real server and the embedded model: type, see the ghost text, accept it, check the line; then
runs each in tmux (test/screen_test.py) with the README's snippet and three buffers open, asserting on
the captured screen: load progress and status, ghost text never over the code after the cursor, in a
colour of its own, accept word then rest, only the current buffer asked; then `x = max()` and <Left>:
the ghost between the brackets in its own colour (no MatchParen bold/underline), typed through
without a character shown twice (30 ms samples), no stale ghost after a key that does not match, no
`codestral: …` left after <Esc> cancels a request, didFocus once per resting place, the message
area following the load, every status text quoted in the README."""

from __future__ import annotations

import pytest

from tests.editors.harness import REPO, SKIPPED, run_script

SCRIPT = REPO / "editors" / "neovim" / "test.sh"
TIMEOUT_S = 900


@pytest.mark.editor
@pytest.mark.parametrize("version", ["0.12", "0.7"])
def test_neovim(version: str) -> None:
    returncode, output = run_script(SCRIPT, version, timeout=TIMEOUT_S)
    if returncode == SKIPPED:
        reason = [line for line in output.splitlines() if line.startswith("SKIP")]
        pytest.skip(reason[-1] if reason else f"Neovim {version} cannot be installed here")
    assert returncode == 0, f"test.sh {version} exited {returncode}:\n{output}"
