"""Every request gets an answer, even a malformed one.

pygls drops a request whose params fail validation (a negative position, a wrong type) and a frame
that is not JSON or not an object: the client waits forever. Here those become JSON-RPC errors:
InvalidParams with the request's id, or ParseError / InvalidRequest with a null id. A request
before `initialize` gets ServerNotInitialized, one after `shutdown` (or a second `initialize`)
InvalidRequest; a notification with bad params is dropped with a warning. What is logged names the
method and the paths of the bad fields, never their values (pygls' own traceback would quote them:
document text). Wrong JSON types are errors, not coerced ("1" is no line number).

pygls has no public hook for any of this: the private members used here are listed and checked in
server/pygls_seam.py, and read through its accessors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Generator
from types import SimpleNamespace
from typing import Any

from cattrs import transform_error
from cattrs.errors import BaseValidationError
from codestral_ls.server import pygls_seam as seam
from codestral_ls.server.documents import adopt
from lsprotocol.types import EXIT, INITIALIZE, ResponseErrorMessage
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcParseError,
    JsonRpcServerNotInitialized,
)
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import JsonRPCNotification, JsonRPCRequestMessage, JsonRPCResponseMessage
from pygls.protocol.language_server import lsp_method
from pygls.workspace import Workspace

log = logging.getLogger(__name__)

# What our own clients may opt in to (client capability experimental.codestral), see server/lsp.py.
EXPERIMENTAL_CAPABILITIES = {"suggestionUpdates": True, "status": True, "didFocus": True}

# What structure_message returns for a message it already answered (or dropped): handled no further.
_ANSWERED = SimpleNamespace(jsonrpc="answered")


class AnsweringProtocol(LanguageServerProtocol):
    def __init__(self, server: Any, converter: Any) -> None:
        super().__init__(server, converter)
        strict_primitives(seam.converter(self))
        # method -> hook(msg_id, params), called as a request arrives, before its handler is
        # scheduled: what the request is about is read while the document is at its version.
        self.on_arrival: dict[str, Callable[[Any, Any], None]] = {}

    @property
    def workspace(self) -> Workspace:
        return adopt(super().workspace)  # documents with LSP line rules (server/documents.py)

    @lsp_method(INITIALIZE)
    def lsp_initialize(self, params: Any) -> Generator[Any, Any, Any]:
        # pygls builds the capabilities after our initialize handler ran, with no place for
        # `experimental`: add ours (server/lsp.py's notifications) to the result it returns.
        result = yield from super().lsp_initialize(params)
        result.capabilities.experimental = {"codestral": EXPERIMENTAL_CAPABILITIES}
        return result

    def structure_message(self, data: Any) -> Any:
        # json.loads calls this for every object, innermost first: only a message has "jsonrpc".
        if not isinstance(data, dict) or "jsonrpc" not in data:
            return data
        if "method" in data and "params" not in data:
            data["params"] = None  # "params" may be omitted (codestral/stats); pygls insists on it
        method = data.get("method")
        if "method" in data and not isinstance(method, str):
            return self._reject(data, JsonRpcInvalidRequest("method must be a string"))
        if data.get("jsonrpc") != "2.0":
            return self._reject(data, JsonRpcInvalidRequest('jsonrpc must be "2.0"'))
        if "method" in data and "id" in data and not _valid_id(data["id"]):
            return self._reject(data, JsonRpcInvalidRequest("id must be a number or a string"))
        # As pygls' own structure_message, without its traceback log (it quotes the bad values).
        try:
            if "id" in data:
                if "error" in data:
                    return seam.converter(self).structure(data, ResponseErrorMessage)
                if "method" in data:
                    return seam.converter(self).structure(data, self.get_message_type(method) or JsonRPCRequestMessage)
                return seam.converter(self).structure(
                    data, seam.result_type(self, data["id"]) or JsonRPCResponseMessage)
            return seam.converter(self).structure(data, self.get_message_type(method or "") or JsonRPCNotification)
        except Exception as exc:
            detail = describe_invalid(exc)
            return self._reject(data, JsonRpcInvalidParams(f"invalid params for {method}: {detail}"), detail)

    def _reject(self, data: dict[str, Any], error: JsonRpcException, detail: str | None = None) -> Any:
        """Answer a request that cannot be structured; drop anything else, with a warning."""
        method = data.get("method")
        name = method if isinstance(method, str) else "?"
        msg_id = data.get("id")
        if "method" in data and "id" in data:
            if not _valid_id(msg_id):
                msg_id, error = None, JsonRpcInvalidRequest("id must be a number or a string")
            log.warning("answered %s with an error: %s", name, detail or error.message)
            send_error(self, msg_id, error)
        elif "method" in data:
            log.warning("ignored a %s notification: %s", name, detail or error.message)
        elif "id" in data and ("result" in data or "error" in data):
            log.warning("ignored a malformed response from the client: %s", detail or error.message)
        else:  # neither a request, a notification nor a response
            log.warning("answered a message with neither method nor result: %s", detail or error.message)
            send_error(self, data.get("id") if isinstance(data.get("id"), int | str) else None,
                       JsonRpcInvalidRequest("a message needs a method (request, notification) or a result"))
        return _ANSWERED

    def handle_message(self, message: Any) -> None:
        if message is _ANSWERED:
            return
        if not hasattr(message, "jsonrpc"):
            # Valid JSON but not a JSON-RPC object (an array, a string, a number).
            send_error(self, None, JsonRpcInvalidRequest("message is not a JSON-RPC object"))
            return
        method = getattr(message, "method", None)
        is_request = method is not None and hasattr(message, "id")
        if method is not None and method != EXIT:
            if not seam.initialized(self) and method != INITIALIZE:
                if is_request:
                    send_error(self, message.id, JsonRpcServerNotInitialized(f"{method} before initialize"))
                else:
                    log.warning("ignored %s before initialize", method)
                return
            if seam.shut_down(self):
                if is_request:
                    send_error(self, message.id, JsonRpcInvalidRequest(f"{method} after shutdown"))
                return
            if method == INITIALIZE and seam.initialized(self):  # would drop every open document
                if is_request:
                    send_error(self, message.id, JsonRpcInvalidRequest("the server is already initialized"))
                return
            if is_request and (hook := self.on_arrival.get(method)) is not None:
                hook(message.id, message.params)
        super().handle_message(message)

    def _send_handler_result(self, future: Any, *, msg_id: Any) -> None:
        # A handler's JsonRpcException (a document that is not open, a line past the end) is an
        # answer like any other: pygls would log a traceback for each one.
        if not future.cancelled() and isinstance(error := future.exception(), JsonRpcException):
            seam.pending(self).pop(msg_id, None)
            log.info("answered a request with an error: %s", error.message)
            seam.send_response(self, msg_id, error.to_response_error())
            return
        super()._send_handler_result(future, msg_id=msg_id)

    def _check_handler_result(self, future: Any) -> None:
        # pygls files the future of a generator notification handler (didOpen, didChange, didClose)
        # under a fresh id and never removes it: one future per keystroke, forever. Only in-flight
        # requests are in there otherwise, so the scan is short.
        futures = seam.pending(self)
        for key in [k for k, f in futures.items() if f is future]:
            del futures[key]
        super()._check_handler_result(future)


def strict_primitives(converter: Any) -> None:
    """cattrs turns "1" into 1, 2.5 into 2, true into 1 and 7 into "7": a position or a URI of the
    wrong type would be served as some other one. Here they are InvalidParams."""

    def strict_int(value: Any, _: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer")
        return value

    def strict_str(value: Any, _: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value

    def strict_bool(value: Any, _: Any) -> bool:
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value

    converter.register_structure_hook(int, strict_int)
    converter.register_structure_hook(str, strict_str)
    converter.register_structure_hook(bool, strict_bool)


def _valid_id(msg_id: Any) -> bool:
    return isinstance(msg_id, int | str) and not isinstance(msg_id, bool)


def send_error(protocol: LanguageServerProtocol, msg_id: int | str | None, error: JsonRpcException) -> None:
    """An error response; with a null id when the request's id is unknown (lsprotocol's converter
    would leave out a None id, and a response without "id" is no response)."""
    if msg_id is not None:
        seam.send_response(protocol, msg_id, error.to_response_error())
        return
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    seam.send_data(protocol, {"jsonrpc": "2.0", "id": None, "error": body})


def describe_invalid(exc: BaseException) -> str:
    """Where a message failed validation (JSON paths), never the values there."""
    if isinstance(exc, BaseValidationError):
        paths = transform_error(exc)
        more = f" (and {len(paths) - 3} more)" if len(paths) > 3 else ""
        return "; ".join(paths[:3]) + more
    return f"malformed message ({type(exc).__name__})"


def answer_unreadable_frame(protocol: LanguageServerProtocol, error: Exception) -> bool:
    """Reply to a frame that is not JSON at all; True if it was that kind of error."""
    for exc in (error, error.__cause__):
        if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
            # Both messages name a position, never the text there.
            send_error(protocol, None, JsonRpcParseError(f"invalid JSON: {exc}"))
            return True
    return False
