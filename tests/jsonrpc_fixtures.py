"""A small, real JSON-RPC 2.0 server for testing clients: Unix socket, TCP and HTTP.

Behaviour is chosen by method name, so one server covers every case the client must
handle: ``echo`` answers its params, ``fail`` answers an error with the code asked for,
``slow`` waits before answering, ``half`` sends half a response and closes, ``garbage``
sends bytes that are not JSON, and ``hold`` keeps requests until ``release`` arrives, then
answers all of them in reverse order (out-of-order pipelining).
"""
from __future__ import annotations

import base64
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nvmf_phoenix.rpc.client import JsonStream


def answer(req: dict[str, Any]) -> dict[str, Any]:
    method, params, rid = req.get("method"), req.get("params") or {}, req.get("id")
    if method == "fail":
        return {"jsonrpc": "2.0", "id": rid,
                "error": {"code": params.get("code", -32602),
                          "message": params.get("message", "Invalid parameters")}}
    if method in ("echo", "slow", "hold"):
        return {"jsonrpc": "2.0", "id": rid, "result": params}
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601,
                                                   "message": "Method not found"}}


class StreamServer:
    """Serves connections on a Unix path or a TCP port, one thread per connection."""

    def __init__(self, path: str | None = None) -> None:
        if path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(path)
            self.address = path
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.sock.listen(16)
        self.stop = threading.Event()
        self.requests: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        stream = JsonStream()
        held: list[dict[str, Any]] = []
        with conn:
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    for req in stream.feed(data):
                        self.requests.append(req)
                        if not self._handle(conn, req, held):
                            return
            except OSError:   # the client gave up (timeout tests): nothing to answer
                return

    def _handle(self, conn: socket.socket, req: dict[str, Any], held: list) -> bool:
        method = req.get("method")
        if method == "slow":
            self.stop.wait((req.get("params") or {}).get("seconds", 1.0))
        if method == "half":
            text = json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": "x" * 100})
            conn.sendall(text[: len(text) // 2].encode())
            return False
        if method == "garbage":
            conn.sendall(b"this is not json at all\n")
            return True
        if method == "hold":
            held.append(req)
            return True
        if method == "release":
            for h in reversed(held):
                conn.sendall(json.dumps(answer(h), indent=2).encode())
            held.clear()
            conn.sendall(json.dumps({"jsonrpc": "2.0", "id": req["id"],
                                     "result": True}).encode())
            return True
        conn.sendall(json.dumps(answer(req), indent=2).encode())
        return True

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        if self.address.startswith("/") and os.path.exists(self.address):
            os.unlink(self.address)


class HttpProxyServer:
    """Like SPDK's rpc_http_proxy: POST one request, basic auth."""

    def __init__(self, user: str = "spdk", password: str = "secret") -> None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.headers.get("Authorization") != f"Basic {token}":
                    self.send_response(401)
                    self.end_headers()
                    return
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if req.get("method") == "garbage":
                    body = b"<html>not json</html>"
                elif req.get("method") == "half":     # promise a body, send half, close
                    body = json.dumps(answer({**req, "method": "echo"})).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body) + 64))
                    self.end_headers()
                    self.wfile.write(body[:len(body) // 2])
                    self.close_connection = True
                    return
                else:
                    if req.get("method") == "slow":
                        threading.Event().wait(req["params"]["seconds"])
                    body = json.dumps(answer(req)).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://{user}:{password}@127.0.0.1:{self.port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
