"""The worker's side of the socket keeper's control socket (embedded/keeper.py).

A worker connects, says hello, and blocks as a standby until the keeper makes it active:
then it receives the RPC listening socket and every connection with the facts the keeper
recorded at accept (listener, peer, the kernel's byte counters as baselines). While active
it asks the keeper to listen and unlisten, tells it which connections ended, and gets new
ones as the keeper accepts them.
"""
from __future__ import annotations

import os
import select
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from nvmf_phoenix.embedded.keeper_proto import SEND_TIMEOUT, Message, Op, recv_msg, send_msg


def keeper_status(ctl_path: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask a running keeper who is active and standing by (for tools and tests)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(timeout)
        s.connect(ctl_path)
        send_msg(s, Op.STATUS)
        got = recv_msg(s)
    if got is None:
        raise ConnectionError(f"keeper at {ctl_path} closed the connection")
    return got[1]


@dataclass
class Handed:
    """A connection as a worker receives it: descriptor plus the keeper's facts."""

    conn_id: int
    sock: socket.socket
    listen: list[str]
    peer: list[Any]
    base_rx: int
    base_tx: int

    @classmethod
    def from_msg(cls, msg: dict[str, Any], fd: int) -> Handed:
        sock = socket.socket(fileno=fd)
        return cls(int(msg["id"]), sock, list(msg["listen"]), list(msg["peer"]),
                   int(msg["base_rx"]), int(msg["base_tx"]))


@dataclass
class Takeover:
    reset: bool
    listeners: list[list[str]]
    rpc_sock: socket.socket
    conns: list[Handed]


class KeeperClient:
    """A worker's end of the control socket."""

    def __init__(self, path: str, timeout: float = SEND_TIMEOUT) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(path)
        self.timeout = timeout
        self.backlog: deque[Message] = deque()
        self.next_req = 1
        send_msg(self.sock, Op.HELLO, {"pid": os.getpid()})

    def wait_takeover(self) -> Takeover | None:
        """Block until this worker is made active; None if the keeper went away."""
        self.sock.settimeout(None)
        got = recv_msg(self.sock)
        if got is None or got[0] is not Op.TAKEOVER or len(got[2]) != 1:
            return None
        _, head, (rpc_fd,) = got
        conns = []
        while True:
            got = recv_msg(self.sock)
            if got is None:
                return None
            op, msg, fds = got
            if op is Op.TAKEOVER_DONE:
                break
            conns.append(Handed.from_msg(msg, fds[0]))
        self.sock.setblocking(False)
        return Takeover(bool(head.get("reset")), head.get("listeners", []),
                        socket.socket(fileno=rpc_fd), conns)

    # The I/O loop reads this socket, non-blocking, on its own thread while other threads
    # send on it: so nothing here ever changes its mode (a timeout set for one send made
    # a concurrent read block, and fail after 5 s, killing the data path). Waits are polls.
    def send(self, op: Op, **fields: Any) -> None:
        """Send one message, waiting at most ``timeout`` for room."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                send_msg(self.sock, op, fields)
                return
            except (BlockingIOError, InterruptedError):
                self._wait(select.POLLOUT, deadline)

    def request(self, op: Op, **fields: Any) -> dict[str, Any]:
        """Send and wait for the matching reply, keeping other messages for later."""
        req = self.next_req
        self.next_req += 1
        self.send(op, **fields, id=req)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                got = recv_msg(self.sock)
            except (BlockingIOError, InterruptedError):
                self._wait(select.POLLIN, deadline)
                continue
            if got is None:
                raise ConnectionError("the socket keeper is gone")
            if got[0] is Op.REPLY and got[1].get("id") == req:
                return got[1]
            self.backlog.append(got)

    def _wait(self, event: int, deadline: float) -> None:
        left = deadline - time.monotonic()
        poller = select.poll()
        poller.register(self.sock, event)
        if left <= 0 or not poller.poll(left * 1000):
            raise TimeoutError(f"the socket keeper did not respond within {self.timeout} s")

    def incoming(self) -> list[Message] | None:
        """Messages waiting now (non-blocking); None once the keeper is gone."""
        out = list(self.backlog)
        self.backlog.clear()
        while True:
            try:
                got = recv_msg(self.sock)
            except (BlockingIOError, InterruptedError):
                return out
            if got is None:
                return out or None   # deliver what came first; None next time
            out.append(got)
