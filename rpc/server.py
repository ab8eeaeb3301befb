"""JSON-RPC 2.0 server on a Unix socket, as nvmf_tgt serves it.

Like SPDK: an flock on ``<path>.lock`` marks the socket as owned (a second target refuses
to start; a stale socket file whose lock is free is removed), requests arrive back to back
without framing and may be pipelined, and a request that is not JSON closes the connection
without an answer (the reason goes to the log). Each client has its own thread, so a
client that connects and never sends, or sends half a request, holds up nobody else.

Limits against hostile clients (SPDK has the first two; the others are ours): a request is
at most 256 KiB and found in linear time (rpc/framing.py); at most ``max_clients``
connections, and when all are taken a new client evicts the one idle longest (never one
whose call is running, and only once those whose client has hung up are dropped); a
request must arrive whole within ``request_timeout`` of its first byte, and an answer must
be taken within as long, or the connection is closed.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nvmf_phoenix.rpc.errors import TargetError
from nvmf_phoenix.rpc.framing import MAX_REQUEST, RequestFramer
from nvmf_phoenix.rpc.sockpath import SocketInUse, take_lock  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)
MAX_CLIENTS = 128
REQUEST_TIMEOUT = 30.0


def error(rid: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}


@dataclass
class _Client:
    sock: socket.socket
    last_active: float
    partial_since: float | None = None   # first byte of a request not yet complete
    busy: bool = False                   # a call is running or its answer being sent
    evicted: bool = False


class RpcServer:
    """``dispatch(ctx, method, params)`` runs one method: the embedded target passes its
    method table's, the nvmf-phoenix front its own."""

    def __init__(self, ctx: Any, path: str, dispatch: Callable[[Any, str, Any], Any],
                 max_clients: int = MAX_CLIENTS, request_timeout: float = REQUEST_TIMEOUT,
                 max_request: int = MAX_REQUEST, sock: socket.socket | None = None,
                 after_batch: Callable[[], None] | None = None) -> None:
        """``sock``: serve a listening socket someone else bound and owns (the socket
        keeper), instead of binding ``path``. ``after_batch`` runs after each batch of
        requests from one client and before any of their answers is sent (the
        crash-transparent target saves its configuration there)."""
        self.ctx = ctx
        self.dispatch = dispatch
        self.path = path
        self.max_clients = max_clients
        self.request_timeout = request_timeout
        self.max_request = max_request
        self.after_batch = after_batch
        self.evictions = 0
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
            self.sock.listen(512)   # as SPDK: a burst of clients waits, not refused
        self._stop = threading.Event()
        self._clients: dict[socket.socket, _Client] = {}
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def client_count(self) -> int:
        with self._guard:
            return len(self._clients)

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
                if len(self._clients) >= self.max_clients and not self._evict():
                    conn.close()   # every slot is running a call: try again later
                    continue
                client = _Client(conn, time.monotonic())
                self._clients[conn] = client
            threading.Thread(target=self._serve, args=(client,), name="rpc-client",
                             daemon=True).start()

    def _evict(self) -> bool:
        """Make room (the caller holds the guard). First drop every connection whose
        client has hung up: under load their threads may not have run since (some still
        marked busy, their answer sent), and the table would fill with clients that are
        gone while live ones were evicted. Failing that, close the client idle longest, or
        the one whose request has been trickling in longest."""
        gone = [c for c in self._clients.values() if _hung_up(c.sock)]
        for client in gone:
            self._drop(client)
        if gone:
            return True
        idle = [c for c in self._clients.values() if not c.busy]
        if not idle:
            return False
        self._drop(min(idle, key=lambda c: (c.partial_since is not None,
                                            c.partial_since or c.last_active)))
        self.evictions += 1
        log.warning("RPC server full (%d clients): closing the one idle longest",
                    self.max_clients)
        return True

    def _drop(self, client: _Client) -> None:
        """Take a client out of the table and end its connection; its thread sees the
        end and leaves (a call it is running still completes)."""
        client.evicted = True
        del self._clients[client.sock]
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_RDWR)

    def _serve(self, client: _Client) -> None:
        conn, framer = client.sock, RequestFramer(self.max_request)
        try:
            _timeout(conn, socket.SO_SNDTIMEO, self.request_timeout)
            while not self._stop.is_set():
                _timeout(conn, socket.SO_RCVTIMEO, 0.0 if client.partial_since is None else
                         max(0.01, client.partial_since + self.request_timeout -
                             time.monotonic()))
                try:
                    data = conn.recv(65536)
                except BlockingIOError:   # SO_RCVTIMEO passed
                    log.warning("RPC client sent half a request and stopped for %.0f s",
                                self.request_timeout)
                    self._answer(conn, error(None, -32700, "Parse error"))
                    return
                with self._guard:
                    if not data or client.evicted:
                        return
                    client.busy = True
                now = client.last_active = time.monotonic()
                requests = framer.feed(data)
                answers = [r for r in (self.handle(req) for req in requests) if r is not None]
                if requests and self.after_batch is not None:
                    self.after_batch()
                for resp in answers:
                    self._answer(conn, resp)
                if framer.error:   # SPDK closes without a word (jsonrpc_server_tcp.c)
                    log.info("RPC request refused, connection closed: %s", framer.error)
                    return
                if not framer.partial:
                    client.partial_since = None
                elif requests or client.partial_since is None:
                    client.partial_since = now
                client.busy = False
        except OSError:
            return
        finally:
            with self._guard:
                if self._clients.get(conn) is client:
                    del self._clients[conn]
            conn.close()

    def _answer(self, conn: socket.socket, obj: Any) -> None:
        """Send one answer; a client that will not take it within the timeout is cut
        (SO_SNDTIMEO makes sendall raise)."""
        conn.sendall(json.dumps(obj, indent=2).encode() + b"\n")

    def handle(self, req: Any) -> Any:
        """Answer one request object or batch; None when nothing is to be sent.

        As lib/jsonrpc/jsonrpc_server.c: "jsonrpc" may be left out (if given it must be
        "2.0"); an id is a string, a number or null; params an object, an array or null
        (null: none); any other member makes the request invalid. A request that is not
        valid is answered -32600 with id null. A result is sent only for a request with
        a non-null id, an error always (with the id, or null)."""
        if isinstance(req, list):
            if not req:
                return error(None, -32600, "Invalid request")
            out = [r for r in (self._one(x) for x in req) if r is not None]
            return out or None
        return self._one(req)

    def _one(self, req: Any) -> Any:
        """Answer one request object (a batch's element that is not one is invalid)."""
        if not _valid_request(req):
            return error(None, -32600, "Invalid request")
        rid = req.get("id")
        params = req.get("params")
        if params is not None and not isinstance(params, (dict, list)):
            return error(rid, -32600, "Invalid request")
        try:
            result = self.dispatch(self.ctx, req["method"], params)
        except TargetError as err:
            # Every refusal says why in the log, as nvmf_tgt's SPDK_ERRLOG lines do: the
            # answer carries only SPDK's code and message, which is often a bare
            # "Invalid parameters".
            log.error("%s refused (%d %s): %s", req["method"], err.code, err.message,
                      err.detail)
            return error(rid, err.code, err.message)
        except Exception:   # a bug in one method must not take the server down
            log.exception("%s raised", req["method"])
            return error(rid, -32603, "Internal error")
        return None if rid is None else {"jsonrpc": "2.0", "id": rid, "result": result}


REQUEST_MEMBERS = frozenset({"jsonrpc", "method", "params", "id"})


def _valid_request(req: Any) -> bool:
    """The members SPDK's request decoder takes, of the types it takes."""
    if not isinstance(req, dict) or not set(req) <= REQUEST_MEMBERS:
        return False
    rid = req.get("id")
    return (req.get("jsonrpc", "2.0") == "2.0" and isinstance(req.get("method"), str) and
            (rid is None or isinstance(rid, str) or
             (isinstance(rid, (int, float)) and not isinstance(rid, bool))))


def _hung_up(conn: socket.socket) -> bool:
    """Whether nobody is left to serve: the client has closed its end entirely (POLLHUP;
    one that only shut down its sending side still waits for answers) and everything it
    sent has been read (a request still unread is run, as the client's thread would)."""
    poller = select.poll()
    poller.register(conn, select.POLLHUP)
    if not poller.poll(0):
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:   # a reset: nothing left to read either
        return True


def _timeout(conn: socket.socket, option: int, seconds: float) -> None:
    """A kernel-side send/receive timeout (0: none) on a socket left in blocking mode.
    Python's timeout mode would poll() before each send, and a Unix socket polls
    writable only once its queue is below a quarter of the send buffer: with a
    pipelining client blocked sending to us, both sides waited (a 3,000-namespace
    restore hung until the timeout)."""
    sec = int(seconds)
    conn.setsockopt(socket.SOL_SOCKET, option,
                    struct.pack("@ll", sec, int((seconds - sec) * 1e6)))
