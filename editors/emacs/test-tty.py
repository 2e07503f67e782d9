"""Interactive check of codestral-mode: `emacs -nw` in a pseudo-terminal, driven by real keystrokes.

What batch Emacs cannot show: the idle timer firing after a typed key, the ghost text going
through redisplay, TAB arriving from a terminal and reaching `codestral-accept`. Emacs reports
its state to a file twice a second; this script types and reads it.

    python3 test-tty.py            # CODESTRAL_LS names the server; EMACS the binary
"""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 240

SETUP = r"""
(setq inhibit-startup-screen t)
(require 'codestral)
(setq codestral-server-command (list (getenv "CODESTRAL_LS"))
      codestral-initialization-options '(:budgetMs 0)
      jsonrpc-default-request-timeout 240
      eglot-connect-timeout 240)
(add-hook 'python-mode-hook #'eglot-ensure)
(add-hook 'eglot-managed-mode-hook #'codestral-maybe-enable)
(defvar tty-dir (getenv "CODESTRAL_TTY_DIR"))
(defun tty-report ()
  (if (file-exists-p (expand-file-name "finish" tty-dir))
      (progn (eglot-shutdown-all) (kill-emacs 0))
    (let ((buffer (get-file-buffer (expand-file-name "a.py" tty-dir))))
      (when buffer
        (with-current-buffer buffer
          (let* ((server (eglot-current-server))
                 (state (list :mode codestral-mode
                              :model (and server (plist-get (codestral--stats server) :model) t)
                              :ghost (codestral-suggestion-text)
                              :line (buffer-substring-no-properties (line-beginning-position)
                                                                    (line-end-position))
                              :shown (eq buffer (window-buffer (selected-window))))))
            (with-temp-file (expand-file-name "state" tty-dir)
              (prin1 state (current-buffer)))))))))
(run-with-timer 1 0.5 (lambda () (condition-case err (tty-report) (error (message "tty-report: %S" err)))))
(add-hook 'emacs-startup-hook
          (lambda () (find-file (expand-file-name "a.py" tty-dir)) (goto-char (point-max))))
"""


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="codestral-tty-"))
    (tmp / "a.py").write_text("def add(a, b):\n    return")
    (tmp / "setup.el").write_text(SETUP)
    env = dict(os.environ, TERM="xterm-256color", CODESTRAL_TTY_DIR=str(tmp))
    emacs = os.environ.get("EMACS", "emacs")
    pid, fd = pty.fork()
    if pid == 0:  # the child: Emacs on the terminal side of the pty
        os.execvpe(emacs, [emacs, "-nw", "-q", "-L", os.environ.get("CODESTRAL_EL_DIR", str(HERE)),
                           "-l", str(tmp / "setup.el")], env)

    screen = bytearray()  # what Emacs drew since the last keystroke

    def pump(seconds: float) -> None:  # read the screen output so Emacs never blocks on it
        end = time.time() + seconds
        while time.time() < end:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    screen.extend(os.read(fd, 65536))
                except OSError:
                    return

    def state() -> str:
        try:
            return (tmp / "state").read_text()
        except FileNotFoundError:
            return ""

    def wait(what: str, *needles: str, timeout: float = TIMEOUT_S) -> float:
        t0 = time.time()
        while time.time() - t0 < timeout:
            pump(0.3)
            if all(n in state() for n in needles):
                elapsed = time.time() - t0
                print(f"tty: {what} after {elapsed:.1f}s: {state()}", flush=True)
                return elapsed
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last state: {state() or 'none'}")

    try:
        wait("server and model ready", ":mode t", ":model t", ":shown t", ':line "    return"')
        screen.clear()
        os.write(fd, b" ")  # a real keystroke; codestral's idle timer asks after it
        wait("ghost text", ':ghost "a + b"', ':line "    return "')
        pump(1)
        assert b"a + b" in screen, f"the ghost text never reached the terminal: {bytes(screen)!r}"
        print("tty: the terminal shows the ghost text", flush=True)
        os.write(fd, b"\t")  # TAB from the terminal
        wait("accepted", ":ghost nil", ':line "    return a + b"', timeout=30)
        (tmp / "finish").touch()  # Emacs shuts the server down and exits
        end = time.time() + 30
        while time.time() < end:
            pump(0.2)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print(f"tty: emacs exited with status {status}", flush=True)
                return 0 if status == 0 else 1
        raise AssertionError("emacs did not exit")
    except AssertionError as exc:
        print(f"tty: FAILED: {exc}", flush=True)
        return 1
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    sys.exit(main())
