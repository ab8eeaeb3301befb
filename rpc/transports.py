"""Byte transports under the JSON-RPC client: stream sockets (Unix, TCP) and HTTP.

Stream transports give bytes with a wall-clock deadline on every wait; the HTTP transport
posts one request per call, as SPDK's rpc_http_proxy expects.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

from nvmf_phoenix.rpc.errors import RpcConnectionError, RpcProtocolError, RpcTimeout

RECV_SIZE = 1 << 16


class Transport(Protocol):
    address: str

    def send(self, data: bytes, method: str) -> None: ...
    def recv(self, deadline: float, method: str) -> bytes: ...
    def close(self) -> None: ...


def parse_address(address: str, port: int | None = None) -> tuple[str, Any]:
    """Classify an address: ('unix', path), ('tcp', (host, port)) or ('http', url)."""
    if address.startswith(("http://", "https://")):
        return "http", address
    if address.startswith("tcp://"):
        address = address[len("tcp://"):]
    if port is not None:
        return "tcp", (address, int(port))
    if address.startswith((".", "/")):
        return "unix", address
    host, sep, tail = address.rpartition(":")
    if sep and tail.isdigit() and host:
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                raise RpcConnectionError(f"{host!r} is not an IP address; give an IP "
                                         "literal, as SPDK's client does",
                                         address=address) from None
        return "tcp", (host, int(tail))
    return "unix", address


class StreamTransport:
    """A connected stream socket; every wait is bounded by a deadline."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address

    @classmethod
    def open(cls, kind: str, target: Any, address: str, timeout: float,
             retry_for: float) -> StreamTransport:
        """Connect, retrying with backoff for ``retry_for`` seconds (a target restarting)."""
        deadline = time.monotonic() + retry_for
        delay = 0.005   # a restarting target's socket appears within ~0.1 s: poll finely
        while True:
            try:
                return cls(_connect(kind, target, min(timeout, 10.0)), address)
            except OSError as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RpcConnectionError(_describe(kind, exc, address),
                                             address=address) from None
            time.sleep(min(delay, max(left, 0.0)))
            delay = min(delay * 2, 0.05)

    def send(self, data: bytes, method: str) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise RpcConnectionError(f"sending failed: {exc.strerror or exc}", method,
                                     self.address) from None

    def recv(self, deadline: float, method: str) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RpcTimeout("no response within the timeout", method, self.address)
        self.sock.settimeout(left)
        try:
            return self.sock.recv(RECV_SIZE)
        except TimeoutError:
            raise RpcTimeout("no response within the timeout", method,
                             self.address) from None
        except OSError as exc:
            raise RpcConnectionError(f"receiving failed: {exc.strerror or exc}", method,
                                     self.address) from None

    def close(self) -> None:
        # close() only: shutdown() would act on a socket another process may share.
        self.sock.close()


def _connect(kind: str, target: Any, timeout: float) -> socket.socket:
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    if kind == "tcp":
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _describe(kind: str, exc: OSError, address: str) -> str:
    """Say what is wrong in terms of what the user can check."""
    if kind == "unix" and exc.errno == errno.ENOENT:
        return f"no RPC socket at {address}: is the target running, and is -r/-s right?"
    if exc.errno == errno.ECONNREFUSED:
        stale = " (stale socket file: nothing is listening)" if kind == "unix" and \
            os.path.exists(address) else ""
        return f"connection to {address} refused{stale}"
    if exc.errno == errno.EACCES:
        return f"permission denied opening {address}"
    if isinstance(exc, TimeoutError):
        return f"connecting to {address} timed out"
    return f"cannot connect to {address}: {exc.strerror or exc}"


class HttpTransport:
    """SPDK's rpc_http_proxy: POST one JSON-RPC request, basic auth from the URL."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.auth = (parts.username or "", parts.password or "") if parts.username else None
        netloc = parts.hostname or ""
        if parts.port:
            netloc = f"{netloc}:{parts.port}"
        self.url = f"{parts.scheme}://{netloc}{parts.path or '/'}"
        self.address = self.url
        self.timeout = timeout
        # requests costs ~0.1 s to import: every target process and CLI call would pay it
        # for a transport only HTTP addresses use (the target's start is on the
        # kill-to-ready path).
        import requests

        self._requests = requests
        self.session = requests.Session()

    def post(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        method, requests = request["method"], self._requests
        try:
            resp = self.session.post(self.url, json=request, auth=self.auth, timeout=timeout)
        except requests.Timeout:
            raise RpcTimeout("no response within the timeout", method, self.url) from None
        except requests.ConnectionError as exc:
            raise RpcConnectionError(f"cannot reach {self.url}: {_root(exc)}", method,
                                     self.url) from None
        except requests.RequestException as exc:   # e.g. the proxy closed mid-response
            raise RpcConnectionError(f"connection to {self.url} broke: {_root(exc)}",
                                     method, self.url) from None
        if resp.status_code == 401:
            raise RpcConnectionError("HTTP 401: user or password refused", method, self.url)
        if resp.status_code != 200:
            raise RpcConnectionError(f"HTTP {resp.status_code} {resp.reason}", method,
                                     self.url)
        try:
            body = resp.json()
        except ValueError:
            raise RpcProtocolError(f"malformed JSON in response: {resp.text[:80]!r}", method,
                                   self.url) from None
        if not isinstance(body, dict):
            raise RpcProtocolError("response is not a JSON-RPC object", method, self.url)
        return body

    def send(self, data: bytes, method: str) -> None:   # pragma: no cover - not a stream
        raise NotImplementedError

    def recv(self, deadline: float, method: str) -> bytes:   # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        self.session.close()


def _root(exc: BaseException) -> str:
    while exc.__cause__ or exc.__context__:
        exc = exc.__cause__ or exc.__context__   # type: ignore[assignment]
    return str(exc)
