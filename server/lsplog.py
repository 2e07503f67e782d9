"""Log records to the client's `window/logMessage` as well as stderr, from any thread; and no
document text in any log unless `--log-document-text`."""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from lsprotocol import types

OWN_LOGGERS = ("codestral_ls",)  # the package's module loggers (logging.getLogger(__name__))
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


# An argument that looks like this is a method name, an id, a number or a URI: kept.
_PLAIN = re.compile(r"[\w$/.:@#+-]{0,120}")
WITHHELD = "<withheld: --log-document-text shows it>"


class WithholdDocumentText(logging.Filter):
    """pygls logs whole messages: params and bodies it received or sends ("Sending data: ..." at
    INFO, failed notifications with their params, tracebacks quoting a bad value). Its records keep
    their format string; arguments other than plain names and numbers, and exception messages, are
    withheld unless `allow()` (the `--log-document-text` debug flag)."""

    def __init__(self, allow: Callable[[], bool]) -> None:
        super().__init__()
        self.allow = allow

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("pygls") or getattr(record, "withheld", False) or self.allow():
            return True
        if not isinstance(record.msg, str):
            record.msg = WITHHELD
        if isinstance(record.args, Mapping):
            record.args = {k: _plain(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(_plain(a) for a in record.args)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = _traceback_without_messages(record.exc_info[1])
            record.exc_info = None
        record.withheld = True
        return True


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    return WITHHELD


def _traceback_without_messages(exc: BaseException) -> str:
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < 4:
        seen.add(id(current))
        kind = type(current)
        parts.append("Traceback (most recent call last):\n" + "".join(traceback.format_tb(current.__traceback__))
                     + f"{kind.__module__}.{kind.__qualname__}: {WITHHELD}")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "\n\nwhich was raised while handling:\n".join(parts)


def install_lsp_log_handler(server: Any) -> None:
    def allow() -> bool:
        return bool(getattr(getattr(server, "options", None), "log_document_text", False))

    withhold = WithholdDocumentText(allow)
    lsp_handler = LspLogHandler(server)
    root = logging.getLogger()
    root.addHandler(lsp_handler)
    for handler in root.handlers:  # stderr and the client
        handler.addFilter(withhold)
    if not allow():
        logging.getLogger("pygls").setLevel(logging.WARNING)  # its INFO is one line per message
