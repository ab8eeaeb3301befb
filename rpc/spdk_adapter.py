"""Run nvmf-phoenix on top of SPDK's own ``JSONRPCClient`` (what spdk-rpc plugins get).

The adapter gives an SPDK client the interface of :class:`RpcClient` that the typed
wrappers and recovery code use: ``call`` raising :class:`RpcError` with the code parsed out
of SPDK's text, and ``pipeline`` (sequential here, since SPDK's client reads one response
at a time).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nvmf_phoenix.rpc.client import one_by_one
from nvmf_phoenix.rpc.errors import RpcError, error_from_spdk_exception


class SpdkClientAdapter:
    def __init__(self, spdk_client: Any, address: str | None = None) -> None:
        self.spdk_client = spdk_client
        self.address = address or "spdk-client"

    def call(self, method: str, params: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        try:
            return self.spdk_client.call(method, params)
        except Exception as exc:   # SPDK raises JSONRPCException (and OSErrors) as text
            if type(exc).__name__ != "JSONRPCException" and not isinstance(exc, OSError):
                raise
            raise error_from_spdk_exception(exc, method, self.address) from None

    def pipeline(self, calls: Iterable[tuple[str, dict[str, Any] | None]],
                 window: int = 1, timeout: float | None = None) -> list[Any]:
        return one_by_one(self.call, calls, catch=RpcError)

    def close(self) -> None:
        self.spdk_client.close()
