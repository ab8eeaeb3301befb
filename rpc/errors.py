"""Errors of the JSON-RPC layer: one type, with the JSON-RPC code and message as attributes.

SPDK's own client raises ``JSONRPCException`` whose only content is a text blob; callers
that must tell "already exists" (-17) from "invalid parameters" (-32602) need the code, so
every failure here is an :class:`RpcError` carrying ``code``, ``message``, ``method`` and
``address``. Transport failures (no socket, refused, timed out, closed mid-response,
garbage on the wire) are :class:`RpcConnectionError`, a subclass with ``code`` None, so a
caller can catch everything with one ``except RpcError``.
"""
from __future__ import annotations

import json
import re
from typing import Any


class RpcError(Exception):
    """A JSON-RPC call failed: the target answered with an error object."""

    def __init__(self, code: int | None, message: str, method: str | None = None,
                 address: str | None = None, data: Any = None) -> None:
        self.code = code
        self.message = message
        self.method = method
        self.address = address
        self.data = data
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" from {self.address}" if self.address else ""
        what = f"{self.method}: " if self.method else ""
        code = f" (code {self.code})" if self.code is not None else ""
        return f"{what}{self.message}{code}{where}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.code, self.message, self.method, self.address,
                                 self.data))


class RpcConnectionError(RpcError):
    """The call could not be completed: transport trouble, not an answer from the target."""

    def __init__(self, message: str, method: str | None = None,
                 address: str | None = None) -> None:
        super().__init__(None, message, method, address)

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.message, self.method, self.address))


class RpcTimeout(RpcConnectionError):
    """No complete answer arrived within the call's timeout."""


class RpcProtocolError(RpcConnectionError):
    """The peer sent something that is not a JSON-RPC 2.0 response."""


def error_from_response(err: Any, method: str | None, address: str | None) -> RpcError:
    """Build an RpcError from a response's ``error`` member, tolerating odd shapes."""
    if isinstance(err, dict):
        code = err.get("code")
        return RpcError(code if isinstance(code, int) else None,
                        str(err.get("message", "unknown error")), method, address,
                        err.get("data"))
    return RpcError(None, str(err), method, address)


_SPDK_BLOB = re.compile(r"(\{.*\})", re.S)


def error_from_spdk_exception(exc: Exception, method: str | None,
                              address: str | None) -> RpcError:
    """Turn SPDK's ``JSONRPCException`` text into an RpcError with the code parsed out.

    SPDK formats it as "request:\\n{...}\\nGot JSON-RPC error response\\nresponse:\\n{...}",
    the response being the pretty-printed error object; connection failures are plain text.
    """
    text = getattr(exc, "message", None) or str(exc)
    marker = text.rfind("response:")
    tail = text[marker + len("response:"):] if marker >= 0 else text
    match = _SPDK_BLOB.search(tail)
    if match:
        try:
            obj = json.loads(match.group(1))
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "code" in obj:
            return error_from_response(obj, method, address)
    first = text.strip().splitlines()[0] if text.strip() else "no response"
    if text.startswith("Timeout"):
        return RpcTimeout(first, method, address)
    if "Error while connecting" in text or text.startswith("Connection closed"):
        return RpcConnectionError(first, method, address)
    return RpcError(None, text.strip(), method, address)


class TargetError(Exception):
    """A call a JSON-RPC server refuses: ``code``/``message`` as SPDK answers them,
    ``detail`` (the reason) for the log. Raised by method handlers, turned into the error
    answer by :class:`~nvmf_phoenix.rpc.server.RpcServer`."""

    def __init__(self, code: int, message: str, detail: str = "") -> None:
        super().__init__(detail or message)
        self.code = code
        self.message = message
        self.detail = detail or message
