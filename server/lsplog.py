"""Log records to the client's `window/logMessage` as well as stderr, from any thread."""

from __future__ import annotations

import logging
from typing import Any

from lsprotocol import types

OWN_LOGGERS = ("engine", "server", "codestral-ls")
LEVELS = {logging.ERROR: types.MessageType.Error, logging.WARNING: types.MessageType.Warning,
          logging.INFO: types.MessageType.Info}


class LspLogHandler(logging.Handler):
    """Forwards INFO and above; `server.event_loop` is set once the server handles `initialize`."""

    def __init__(self, server: Any) -> None:
        super().__init__(level=logging.INFO)
        self.server = server
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        # Only our own loggers: pygls logs every message it sends, which would loop forever.
        if not record.name.startswith(OWN_LOGGERS):
            return
        loop = getattr(self.server, "event_loop", None)
        if loop is None or loop.is_closed():
            return
        try:
            params = types.LogMessageParams(type=LEVELS.get(record.levelno, types.MessageType.Log),
                                            message=self.format(record))
            loop.call_soon_threadsafe(self._send, params)
        except Exception:  # logging must never take the server down
            pass

    def _send(self, params: types.LogMessageParams) -> None:
        try:
            self.server.window_log_message(params)
        except Exception:
            pass


def install_lsp_log_handler(server: Any) -> None:
    logging.getLogger().addHandler(LspLogHandler(server))
    logging.getLogger("pygls").setLevel(logging.WARNING)  # its INFO is one line per message
