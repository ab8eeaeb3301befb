"""JSON-RPC 2.0 server on a Unix socket, as nvmf_tgt serves it.

Like SPDK: an flock on ``<path>.lock`` marks the socket as owned (a second target refuses
to start; a stale socket file whose lock is free is removed), requests arrive back to back
without framing and may be pipelined, and a request that is not JSON gets -32700 and the
connection is closed. Each client has its own thread, so a client that connects and never
sends, or sends half a request, holds up nobody else.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from nvmf_phoenix.rpc.client import JsonStream
from nvmf_phoenix.rpc.errors import RpcProtocolError
from nvmf_phoenix.target.core import TargetError
from nvmf_phoenix.target.rpc_methods import RpcContext, dispatch
from nvmf_phoenix.target.sockpath import SocketInUse, take_lock  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)
MAX_CLIENTS = 128
MAX_REQUEST = 16 << 20


def error(rid: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}


class RpcServer:
    """``dispatch`` runs one method; the nvmf-phoenix front passes its own."""

    def __init__(self, ctx: RpcContext | Any, path: str,
                 dispatch: Callable[[Any, str, Any], Any] = dispatch,
                 sock: socket.socket | None = None,
                 after_batch: Callable[[], None] | None = None) -> None:
        """``sock``: serve a listening socket someone else bound and owns (the socket
        keeper), instead of binding ``path``. ``after_batch`` runs after each batch of
        requests from one client and before any of their answers is sent (the
        crash-transparent target saves its configuration there)."""
        self.ctx = ctx
        self.dispatch = dispatch
        self.path = path
        self.after_batch = after_batch
        self._lock_fd: int | None = None
        if sock is not None:
            self.sock = sock
        else:
            self._lock_fd = take_lock(path)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o077)   # the socket is 0600: only our user may drive the target
            try:
                self.sock.bind(path)
                os.chmod(path, 0o600)
            finally:
                os.umask(old)
            self.sock.listen(64)
        self._stop = threading.Event()
        self._clients: set[socket.socket] = set()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._accept_loop, name="rpc-accept",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._guard:
            for c in list(self._clients):
                with contextlib.suppress(OSError):
                    c.close()
        if self._lock_fd is not None:   # only the owner of the path removes it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            os.close(self._lock_fd)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._guard:
                if len(self._clients) >= MAX_CLIENTS:
                    conn.close()
                    continue
                self._clients.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="rpc-client",
                             daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        stream = JsonStream(max_buffer=MAX_REQUEST)
        try:
            while not self._stop.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                try:
                    requests = stream.feed(data)
                except (RpcProtocolError, RecursionError):
                    _send(conn, error(None, -32700, "Parse error"))
                    return
                answers = [r for r in (self.handle(req) for req in requests) if r is not None]
                if requests and self.after_batch is not None:
                    self.after_batch()
                for resp in answers:
                    _send(conn, resp)
        except OSError:
            return
        finally:
            with self._guard:
                self._clients.discard(conn)
            conn.close()

    def handle(self, req: Any) -> Any:
        """Answer one request object or batch; None for notifications."""
        if isinstance(req, list):
            if not req:
                return error(None, -32600, "Invalid request")
            out = [r for r in (self.handle(x) for x in req) if r is not None]
            return out or None
        if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or \
                not isinstance(req.get("method"), str):
            rid = req.get("id") if isinstance(req, dict) else None
            return error(rid, -32600, "Invalid request")
        rid = req.get("id")
        try:
            result = self.dispatch(self.ctx, req["method"], req.get("params"))
        except TargetError as err:
            log.info("%s failed: %s", req["method"], err.detail)
            return None if "id" not in req else error(rid, err.code, err.message)
        except Exception:   # a bug in one method must not take the server down
            log.exception("%s raised", req["method"])
            return None if "id" not in req else error(rid, -32603, "Internal error")
        return None if "id" not in req else {"jsonrpc": "2.0", "id": rid, "result": result}


def _send(conn: socket.socket, obj: Any) -> None:
    conn.sendall(json.dumps(obj, indent=2).encode() + b"\n")
