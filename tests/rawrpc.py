"""A bare JSON-RPC connection for the parity tests: bytes in, JSON out, and the answers a
server leaves out (notifications, input it cannot parse) seen as None."""
from __future__ import annotations

import json
import socket
from typing import Any


class Raw:
    """One connection, bytes in and JSON out, so answers SPDK leaves out can be seen."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buf = b""

    def send(self, data: bytes, wait: float = 10) -> Any:
        """The next answer, or None if none comes within ``wait`` seconds."""
        self.sock.sendall(data)
        self.sock.settimeout(wait)
        dec = json.JSONDecoder()
        while True:
            text = self.buf.decode().lstrip()
            if text:
                try:
                    obj, end = dec.raw_decode(text)
                    self.buf = text[end:].encode()
                    return obj
                except ValueError:
                    pass
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def call(self, method: str, params: Any = None, rid: int = 1) -> Any:
        req: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            req["params"] = params
        return self.send(json.dumps(req).encode())


def _outcome(resp: Any) -> Any:
    if resp is None:
        return "no answer"
    if "error" in resp:
        return (resp["error"]["code"], resp["error"]["message"])
    return resp["result"]


def outcome(resp: Any) -> Any:
    """An answer as the parity tables write it: the result, or (code, message)."""
    if resp is None:
        return "no answer"
    if "error" in resp:
        return (resp["error"]["code"], resp["error"]["message"])
    return resp["result"]
