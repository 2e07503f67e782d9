"""Every request gets an answer, even a malformed one.

pygls drops a request whose params fail validation (a negative position, a wrong type) and a frame
that is not JSON or not an object: the client waits forever. Here those become JSON-RPC errors:
InvalidParams with the request's id, or ParseError / InvalidRequest with a null id.
"""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace
from typing import Any

from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest, JsonRpcParseError
from pygls.protocol import LanguageServerProtocol

log = logging.getLogger(__name__)

# handle_message() ignores a message whose jsonrpc version is wrong: the answer was already sent.
_ANSWERED = SimpleNamespace(jsonrpc="answered")


class AnsweringProtocol(LanguageServerProtocol):
    def structure_message(self, data: dict[str, Any]) -> Any:
        if isinstance(data, dict) and "jsonrpc" in data and "method" in data and "params" not in data:
            data["params"] = None  # "params" may be omitted (codestral/stats); pygls insists on it
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if isinstance(data, dict) and "id" in data and "method" in data:
                cause = exc.__cause__ or exc
                detail = " ".join(str(cause).split())[:300]
                log.warning("invalid params for %s: %s", data.get("method"), detail)
                self._send_response(data["id"], error=JsonRpcInvalidParams(
                    f"invalid params for {data.get('method')}: {detail}").to_response_error())
                return _ANSWERED
            raise

    def handle_message(self, message: Any) -> None:
        if not hasattr(message, "jsonrpc"):
            # Valid JSON but not a JSON-RPC object (an array, a string, a number).
            error = JsonRpcInvalidRequest("message is not a JSON-RPC object")
            self._send_response(None, error=error.to_response_error())
            return
        super().handle_message(message)


def answer_unreadable_frame(protocol: LanguageServerProtocol, error: Exception) -> bool:
    """Reply to a frame that is not JSON at all; True if it was that kind of error."""
    if isinstance(error, json.JSONDecodeError) or isinstance(error.__cause__, json.JSONDecodeError):
        protocol._send_response(None, error=JsonRpcParseError(f"invalid JSON: {error}").to_response_error())
        return True
    return False
