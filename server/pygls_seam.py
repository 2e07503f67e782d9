"""Every place codestral-ls reaches into pygls below its public API, listed and checked in one module.

pygls gives no public hook for what server/protocol.py and server/documents.py need: answering a
request pygls would drop, and documents with LSP's line rules. So they override or read private
members; each one is named in `REACHED` with the reason, and `missing()` says which of them the
installed pygls no longer has (or has with another signature). tests/test_reliability.py asserts it
is empty, so an upgrade that breaks one fails there, by name, instead of silently (pygls is pinned
in pyproject.toml; `PYGLS_CHECKED` is the version this list was last read against).

Rules: code outside protocol.py/documents.py uses pygls' public API only; a new private access is
added to `REACHED` in the same change; protocol.py goes through the accessors below for private
state it only reads or calls (the overrides stay methods of its subclass, listed here).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from pygls.protocol import LanguageServerProtocol
from pygls.workspace import TextDocument, Workspace

PYGLS_CHECKED = "2.1.1"


@dataclass(frozen=True)
class Reach:
    owner: str  # "protocol", "workspace" or "document"
    member: str
    why: str
    params: tuple[str, ...] | None = None  # an overridden method's parameter names, checked too


REACHED = (
    Reach("protocol", "_converter", "strict int/str/bool structure hooks (protocol.strict_primitives)"),
    Reach("protocol", "_result_types", "structure a client's response as pygls would"),
    Reach("protocol", "_workspace", "tell a request before `initialize` (None until then)"),
    Reach("protocol", "_shutdown", "tell a request after `shutdown`"),
    Reach("protocol", "_request_futures", "forget notification futures pygls never removes"),
    Reach("protocol", "_send_response", "answer with an error for a request pygls would drop",
          ("self", "msg_id", "result", "error")),
    Reach("protocol", "_send_data", "an error response with a null id", ("self", "data")),
    Reach("protocol", "_send_handler_result", "a handler's JsonRpcException is an answer, not a traceback",
          ("self", "future", "msg_id")),
    Reach("protocol", "_check_handler_result", "drop a finished notification's future", ("self", "future")),
    Reach("workspace", "_text_documents", "the open documents, by unquoted URI"),
    Reach("workspace", "_sync_kind", "build our documents as pygls builds its own"),
    Reach("workspace", "_position_codec", "build our documents as pygls builds its own"),
    Reach("workspace", "_create_text_document", "documents with LSP line rules (LspTextDocument)",
          ("self", "doc_uri", "source", "version", "language_id")),
    Reach("document", "_source", "replace the text in an incremental edit"),
    Reach("document", "_position_codec", "the negotiated position encoding"),
    Reach("document", "_apply_incremental_change", "edits at LSP line breaks only", ("self", "change")),
)


def _instances() -> dict[str, Any]:
    from pygls.lsp.server import LanguageServer

    return {"protocol": LanguageServer("codestral-ls-seam-check", "0").protocol, "workspace": Workspace(None),
            "document": TextDocument("file:///seam-check", "")}


def missing() -> list[str]:
    """The reached members the installed pygls lacks or has with other parameters ([] when all fit)."""
    out = []
    instances = _instances()
    for r in REACHED:
        obj = instances[r.owner]
        if not hasattr(obj, r.member):
            out.append(f"{type(obj).__name__}.{r.member} is gone ({r.why})")
            continue
        if r.params is not None:
            params = tuple(inspect.signature(getattr(type(obj), r.member)).parameters)
            if params != r.params:
                out.append(f"{type(obj).__name__}.{r.member}{params} is not {r.params} ({r.why})")
    return out


# -- accessors: protocol.py reads or calls private state through these ----------------------------------


def converter(protocol: LanguageServerProtocol) -> Any:
    return protocol._converter


def result_type(protocol: LanguageServerProtocol, msg_id: Any) -> Any:
    """The type pygls expects for the response to its request `msg_id` (taken: asked once)."""
    return protocol._result_types.pop(msg_id, None)


def initialized(protocol: LanguageServerProtocol) -> bool:
    return protocol._workspace is not None


def shut_down(protocol: LanguageServerProtocol) -> bool:
    return bool(protocol._shutdown)


def pending(protocol: LanguageServerProtocol) -> dict[Any, Any]:
    """pygls' futures of requests in flight, by id."""
    return protocol._request_futures


def send_response(protocol: LanguageServerProtocol, msg_id: Any, error: Any) -> None:
    protocol._send_response(msg_id, error=error)


def send_data(protocol: LanguageServerProtocol, data: Any) -> None:
    protocol._send_data(data)


def adopt_class(obj: Any, cls: type) -> Any:
    """Turn pygls' plain `Workspace` (built on `initialize`, no factory to ask for ours) into `cls`,
    a subclass that adds no state pygls does not set: the one run-time class swap."""
    if not isinstance(obj, cls):
        assert cls.__mro__[1] is type(obj) or issubclass(cls, type(obj)), (cls, type(obj))
        obj.__class__ = cls
    return obj
