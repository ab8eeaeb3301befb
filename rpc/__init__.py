"""nvmf_phoenix.rpc: JSON-RPC client for SPDK-compatible NVMe-oF targets.

``RpcClient.connect(address)`` opens a Unix socket (default ``/var/tmp/spdk.sock``), a TCP
address (``HOST:PORT``) or SPDK's HTTP proxy (``http://user:pw@HOST:PORT``). The typed
wrappers in :mod:`.framework`, :mod:`.bdev` and :mod:`.nvmf` take any client with
``call(method, params)``. Every failure is an :class:`RpcError` with ``code`` and
``message``.
"""
from nvmf_phoenix.rpc.client import DEFAULT_TIMEOUT, JsonStream, RpcClient, call_all
from nvmf_phoenix.rpc.errors import (
    RpcConnectionError,
    RpcError,
    RpcProtocolError,
    RpcTimeout,
)
from nvmf_phoenix.rpc.spdk_adapter import SpdkClientAdapter

__all__ = ["DEFAULT_TIMEOUT", "JsonStream", "RpcClient", "RpcConnectionError", "RpcError",
           "RpcProtocolError", "RpcTimeout", "SpdkClientAdapter", "call_all"]
