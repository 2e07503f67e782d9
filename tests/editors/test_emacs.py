"""The Emacs client end to end: editors/emacs/test.sh byte-compiles codestral.el (warnings are
errors) and runs its ERT tests in `emacs --batch` with Eglot 1.9 against the real server and the
embedded model: completion-at-point through Eglot inserts `a + b`; codestral-mode's debounced
textDocument/inlineCompletion shows the ghost text, TAB accepts it, the acceptance reaches the
server; stale requests are cancelled; TAB asks again; the server's notifications reach the lighter
and the ghost text. Then test-tty.py does the same with real keystrokes in `emacs -nw` on a
pseudo-terminal, and test-screen.py runs `emacs -Q -nw` in tmux with the README's snippet (the server
behind a wrapper not named codestral) and three buffers open, asserting on the captured screen: the
load on the lighter, the ghost, a request when point comes to rest inside `max()`, no `Codestral[…]`
left after a cancel, no `[eglot:…/error]`, no didSave, every lighter quoted in the README."""

from __future__ import annotations

import pytest

from tests.editors.harness import REPO, SKIPPED, run_script

SCRIPT = REPO / "editors" / "emacs" / "test.sh"
TIMEOUT_S = 600


@pytest.mark.editor
@pytest.mark.model
def test_emacs() -> None:
    returncode, output = run_script(SCRIPT, timeout=TIMEOUT_S)
    if returncode == SKIPPED:
        reason = [line for line in output.splitlines() if "SKIP" in line]
        pytest.skip(reason[-1] if reason else "Emacs with Eglot cannot be installed here")
    assert returncode == 0, f"editors/emacs/test.sh exited {returncode}:\n{output}"
    assert "unexpected" in output and " 0 unexpected" in output, output  # ERT's summary line
