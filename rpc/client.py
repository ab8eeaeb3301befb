"""A JSON-RPC 2.0 client for SPDK-compatible targets, with pipelining.

Why not SPDK's ``JSONRPCClient`` for the core: its receive timeout is measured in CPU time
(``time.process_time``), so a target that goes silent can hold a caller for a very long
time, and its errors are text. Restore pipelines thousands of calls and must notice a dead
target within a bound, so this client owns its socket: every wait is bounded by a
wall-clock deadline, EOF in the middle of a response is an error, and errors keep their
JSON-RPC code. :mod:`nvmf_phoenix.rpc.spdk_adapter` runs the same typed helpers over an
SPDK client (``spdk-rpc`` plugins are handed one).

Addresses: a Unix socket path (what nvmf_tgt serves), ``HOST:PORT`` / ``tcp://HOST:PORT``
for TCP, and ``http://[user:password@]HOST:PORT`` for SPDK's rpc_http_proxy.
"""
from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from nvmf_phoenix.rpc.errors import (
    RpcConnectionError,
    RpcError,
    RpcProtocolError,
    RpcTimeout,
    error_from_response,
)
from nvmf_phoenix.rpc.transports import HttpTransport, StreamTransport, Transport, parse_address

DEFAULT_TIMEOUT = 60.0
Call = tuple[str, dict[str, Any] | None]


class JsonStream:
    """Sans-I/O decoder for back-to-back JSON values (SPDK adds no framing)."""

    def __init__(self, max_buffer: int = 64 << 20) -> None:
        self._buf = ""
        self._pending = b""
        self._decoder = json.JSONDecoder()
        self._max = max_buffer

    def feed(self, data: bytes) -> list[Any]:
        """Add bytes; return every complete JSON value now available."""
        raw = self._pending + data
        try:
            text = raw.decode("utf-8")
            self._pending = b""
        except UnicodeDecodeError as exc:
            if exc.start < len(raw) - 3:   # not just a multi-byte char split at the end
                raise RpcProtocolError(f"response is not UTF-8 at byte {exc.start}") from exc
            text, self._pending = raw[:exc.start].decode("utf-8"), raw[exc.start:]
        self._buf += text
        out: list[Any] = []
        while True:
            buf = self._buf.lstrip()
            if not buf:
                self._buf = ""
                break
            try:
                obj, end = self._decoder.raw_decode(buf)
            except json.JSONDecodeError as exc:
                if _incomplete(buf, exc):
                    self._buf = buf
                    break
                raise RpcProtocolError(f"malformed JSON in response: {exc.msg} "
                                       f"near {buf[max(0, exc.pos - 20):exc.pos + 20]!r}") \
                    from exc
            out.append(obj)
            self._buf = buf[end:]
        if len(self._buf) > self._max:
            raise RpcProtocolError(f"response larger than {self._max} bytes")
        return out

    @property
    def partial(self) -> str:
        return self._buf


def _incomplete(buf: str, exc: json.JSONDecodeError) -> bool:
    """True when the decode failed only because the value has not fully arrived."""
    if exc.msg.startswith("Unterminated string") or exc.pos >= len(buf):
        return True
    if exc.msg.startswith("Invalid \\uXXXX escape") and exc.pos >= len(buf) - 6:
        return True
    rest = buf[exc.pos:]
    if any(lit.startswith(rest) for lit in ("true", "false", "null")):
        return True
    return re.fullmatch(r"-?[0-9.eE+-]*", rest) is not None


class RpcClient:
    """One connection to a target; ``call`` for single requests, ``pipeline`` for many."""

    def __init__(self, transport: Transport, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.transport = transport
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._stream = JsonStream()
        self._early: dict[Any, dict[str, Any]] = {}

    @classmethod
    def connect(cls, address: str = "/var/tmp/spdk.sock", timeout: float = DEFAULT_TIMEOUT,
                retry_for: float = 0.0, port: int | None = None) -> RpcClient:
        """Open a client; keep retrying for ``retry_for`` seconds while the target restarts."""
        kind, target = parse_address(address, port)
        transport: Transport
        if kind == "http":
            transport = HttpTransport(target, timeout)
        else:
            transport = StreamTransport.open(kind, target, address, timeout, retry_for)
        return cls(transport, timeout)

    @property
    def address(self) -> str:
        return self.transport.address

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- single calls --------------------------------------------------------------------
    def call(self, method: str, params: dict[str, Any] | None = None,
             timeout: float | None = None) -> Any:
        """Send one request and return its ``result``; raise RpcError on an error answer."""
        (outcome,) = self.pipeline([(method, params)], timeout=timeout)
        if isinstance(outcome, RpcError):
            raise outcome
        return outcome

    # -- many calls ----------------------------------------------------------------------
    def pipeline(self, calls: Iterable[Call], window: int = 128,
                 timeout: float | None = None) -> list[Any]:
        """Send many requests on one connection; return results (or RpcError) in call order.

        Up to ``window`` requests are in flight at once; answers are matched by id, so a
        target that answers out of order is fine. A failing call does not stop the others.
        ``timeout`` bounds the wait for each answer (not the whole batch).
        """
        limit = self.timeout if timeout is None else timeout
        requests = [self._request(m, p) for m, p in calls]
        if isinstance(self.transport, HttpTransport):
            return [self._outcome(req, self.transport.post(req, limit)) for req in requests]
        results: list[Any] = [None] * len(requests)
        index = {req["id"]: i for i, req in enumerate(requests)}
        waiting: set[int] = set()
        sent = 0
        while sent < len(requests) or waiting:
            batch = []
            while sent < len(requests) and len(waiting) < window:
                batch.append(requests[sent])
                waiting.add(requests[sent]["id"])
                sent += 1
            if batch:
                self.transport.send(b"".join(json.dumps(r).encode() for r in batch),
                                    requests[sent - 1]["method"])
            for resp in self._receive(limit, requests[index[min(waiting)]]["method"]):
                rid = resp.get("id")
                if rid not in waiting:
                    self._early[rid] = resp
                    continue
                waiting.discard(rid)
                results[index[rid]] = self._outcome(requests[index[rid]], resp)
        return results

    def _request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": next(self._ids)}
        if params is not None:
            req["params"] = params
        return req

    def _receive(self, timeout: float, method: str) -> list[dict[str, Any]]:
        """Block until at least one response object arrives or the deadline passes."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.transport.recv(deadline, method)
            if not data:
                partial = f" (after {len(self._stream.partial)} bytes of a response)" \
                    if self._stream.partial.strip() else ""
                raise RpcConnectionError(f"connection closed by the target{partial}", method,
                                         self.address)
            try:
                objs = self._stream.feed(data)
            except RpcProtocolError as exc:
                raise RpcProtocolError(exc.message, method, self.address) from exc
            out = []
            for obj in objs:
                if not isinstance(obj, dict) or "id" not in obj:
                    raise RpcProtocolError(f"not a JSON-RPC response: {str(obj)[:80]!r}",
                                           method, self.address)
                out.append(obj)
            if out:
                return out

    def _outcome(self, req: dict[str, Any], resp: dict[str, Any]) -> Any:
        if "error" in resp:
            return error_from_response(resp["error"], req["method"], self.address)
        if "result" not in resp:
            return RpcProtocolError("response has neither result nor error", req["method"],
                                    self.address)
        return resp["result"]


def outcomes(client: Any, calls: Sequence[Call]) -> list[Any]:
    """Each call's result, or the exception it raised, in call order: pipelined when the
    client can (RpcClient, SpdkClientAdapter), else one call at a time (any object with
    ``call(method, params)``, SPDK's own client included). A failure stops nothing."""
    if hasattr(client, "pipeline"):
        return list(client.pipeline(calls))
    return one_by_one(client.call, calls)


def one_by_one(call: Callable[[str, dict[str, Any] | None], Any], calls: Iterable[Call],
               catch: type[Exception] = Exception) -> list[Any]:
    """Each call's result or the ``catch`` exception it raised, one call at a time."""
    out: list[Any] = []
    for method, params in calls:
        try:
            out.append(call(method, params))
        except catch as exc:
            out.append(exc)
    return out


def call_all(client: Any, calls: Sequence[Call]) -> list[Any]:
    """Every call's result, or the first failure raised: for callers that want all or
    nothing (capture, read-back)."""
    got = outcomes(client, calls)
    for outcome in got:
        if isinstance(outcome, Exception):
            raise outcome
    return got


__all__ = ["DEFAULT_TIMEOUT", "JsonStream", "RpcClient", "RpcTimeout", "call_all",
           "one_by_one", "outcomes"]
