"""The socket keeper: owns every listening socket and connection, serves none of them.

A TCP connection survives the death of the process serving it only if another process
holds it. The keeper is that process. It accepts connections itself (a worker killed
between accept() and a hand-off would otherwise lose one), records the kernel's byte
counters at accept as the connection's baselines, and passes the descriptors to the
active worker with SCM_RIGHTS; when the active worker dies it passes all of them again to
a standby worker that is already started, and starts a new standby. It never reads or
writes a byte of NVMe/TCP, so there is little here that can crash.

Only processes of the keeper's own user may talk to it (SO_PEERCRED), and its control
socket is 0600. Messages are JSON on a SOCK_SEQPACKET socket, one message per packet, a
descriptor attached where one travels (embedded/keeper_proto.py declares them). Besides the
standard library this module imports only small declarations, so little here can break.
"""
from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nvmf_phoenix.embedded.keeper_proto import SEND_TIMEOUT, Op, recv_msg, send_msg
from nvmf_phoenix.embedded.tcpcount import kernel_progress
from nvmf_phoenix.wire.peercred import peer_cred

log = logging.getLogger(__name__)
# Workers that die before they report having resumed, in a row: after RESET_AFTER the
# next one drops the connections' shared state (hosts reconnect; the state may be what
# kills them), after GIVE_UP_AFTER the keeper stops and leaves it to a supervisor.
RESET_AFTER = 3
GIVE_UP_AFTER = 6


def baselines(sock: socket.socket) -> tuple[int, int]:
    """(bytes read, bytes written) so far, from the kernel: the zero of both streams."""
    consumed, written, _state = kernel_progress(sock)
    return consumed, written


@dataclass
class Kept:
    """A connection the keeper holds on behalf of whichever worker is active."""

    sock: socket.socket
    listen: list[str]            # traddr, trsvcid, adrfam
    peer: list[Any]
    base_rx: int
    base_tx: int

    def meta(self, cid: int) -> dict[str, Any]:
        """The facts an :data:`Op.CONN` message hands over with the socket."""
        return {"id": cid, "listen": self.listen, "peer": self.peer,
                "base_rx": self.base_rx, "base_tx": self.base_tx}


@dataclass
class Worker:
    sock: socket.socket
    pid: int
    since: float = 0.0           # when it took over
    ready: bool = False          # said it has resumed everything


@dataclass
class Keeper:
    ctl_path: str
    rpc_sock: socket.socket
    worker_cmd: list[str]
    conns: dict[int, Kept] = field(default_factory=dict)
    listeners: dict[tuple[str, str, str], socket.socket] = field(default_factory=dict)
    standby: deque[Worker] = field(default_factory=deque)
    active: Worker | None = None
    takeovers: int = 0
    quick_deaths: int = 0
    failed_starts: int = 0
    exit_code: int | None = None
    # Printed when the first worker has loaded the configuration and serves: before
    # that the target is not ready (a configuration that fails never says it is).
    banner: str | None = None

    def __post_init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.children: dict[int, subprocess.Popen[bytes]] = {}
        self.greeted: set[int] = set()      # children that said hello
        self.paused: dict[tuple[str, str, str], float] = {}   # listener -> resume time
        self.next_id = 1
        old = os.umask(0o077)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.ctl_path)
            self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.ctl.bind(self.ctl_path)
            os.chmod(self.ctl_path, 0o600)
        finally:
            os.umask(old)
        self.ctl.listen(16)
        self.sel.register(self.ctl, selectors.EVENT_READ, "ctl")
        self._sig_r, self._sig_w = socket.socketpair()
        self._sig_r.setblocking(False)
        self._sig_w.setblocking(False)
        self.sel.register(self._sig_r, selectors.EVENT_READ, "signal")

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> int:
        signal.set_wakeup_fd(self._sig_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, lambda *_: None)
        self.spawn()
        while self.exit_code is None:
            self._resume_listeners()
            for key, _ in self.sel.select(0.1 if self.paused else 1.0):
                if key.data == "ctl":
                    self._accept_worker()
                elif key.data == "signal":
                    self._signals()
                elif isinstance(key.data, Worker):
                    self._from_worker(key.data)
                else:
                    self._accept_conn(key.fileobj, key.data)   # type: ignore[arg-type]
        self._stop_all()
        return self.exit_code

    def spawn(self) -> None:
        child = subprocess.Popen(self.worker_cmd)
        self.children[child.pid] = child

    def _starting(self) -> int:
        return sum(1 for pid in self.children if pid not in self.greeted)

    def _ensure_standby(self) -> None:
        """Keep one standby started (or starting), so a death costs no process start."""
        if not self.standby and not self._starting():
            self.spawn()

    def _signals(self) -> None:
        sigs = b""
        with contextlib.suppress(BlockingIOError):
            sigs = self._sig_r.recv(64)
        if any(s in (signal.SIGTERM, signal.SIGINT) for s in sigs):
            self.exit_code = 0
        for pid, child in list(self.children.items()):
            if child.poll() is None:
                continue
            del self.children[pid]
            if pid in self.greeted:
                self.greeted.discard(pid)
                continue
            # Died before saying hello: it cannot even start. Retry, but not forever.
            self.failed_starts += 1
            log.warning("worker %d exited with %s before starting", pid, child.returncode)
            if self.failed_starts >= GIVE_UP_AFTER:
                log.error("workers cannot start: giving up")
                self.exit_code = 1
            elif self.active is None or not self.standby:
                self.spawn()

    # -- workers -------------------------------------------------------------------------
    def _accept_worker(self) -> None:
        sock, _ = self.ctl.accept()
        uid = peer_cred(sock).uid
        if uid != os.getuid():
            log.warning("refusing a control connection from uid %d", uid)
            sock.close()
            return
        sock.settimeout(SEND_TIMEOUT)
        got = recv_msg(sock)
        if got is None or got[0] not in (Op.HELLO, Op.STATUS):
            sock.close()
            return
        op, msg, _fds = got
        if op is Op.STATUS:
            with contextlib.suppress(OSError):
                send_msg(sock, Op.REPLY, self.status())
            sock.close()
            return
        w = Worker(sock, int(msg.get("pid", 0)))
        self.greeted.add(w.pid)
        self.failed_starts = 0
        self.sel.register(sock, selectors.EVENT_READ, w)
        self.standby.append(w)
        if self.active is None:
            self._promote()

    def status(self) -> dict[str, Any]:
        return {"active": self.active.pid if self.active else None,
                "ready": bool(self.active and self.active.ready),
                "standby": [w.pid for w in self.standby], "takeovers": self.takeovers,
                "connections": len(self.conns),
                "listeners": [list(k) for k in self.listeners]}

    def _promote(self) -> None:
        """Hand everything to the first standby; a failed hand-off tries the next."""
        while self.standby and self.active is None:
            w = self.standby.popleft()
            reset = self.quick_deaths >= RESET_AFTER
            try:
                send_msg(w.sock, Op.TAKEOVER, {"reset": reset,
                                               "listeners": [list(k) for k in self.listeners]},
                         [self.rpc_sock.fileno()])
                for cid, kept in self.conns.items():
                    send_msg(w.sock, Op.CONN, kept.meta(cid), [kept.sock.fileno()])
                send_msg(w.sock, Op.TAKEOVER_DONE)
            except OSError as exc:
                log.warning("hand-off to worker %d failed: %s", w.pid, exc)
                self._forget(w)
                continue
            w.since = time.monotonic()
            self.active = w
            self.takeovers += 1

    def _from_worker(self, w: Worker) -> None:
        got = recv_msg(w.sock)
        if got is None:
            self._worker_gone(w)
            return
        op, msg, fds = got
        for fd in fds:
            os.close(fd)
        reply: dict[str, Any] = {"id": msg.get("id")}
        if op is Op.LISTEN:
            reply["error"] = self._listen(tuple(msg["addr"]))
        elif op is Op.UNLISTEN:
            self._unlisten(tuple(msg["addr"]))
        elif op is Op.DROP:
            kept = self.conns.pop(int(msg["conn"]), None)
            if kept is not None:
                kept.sock.close()
            return
        elif op is Op.READY:
            # The new standby starts only now, so it does not compete for the CPU with
            # the worker that is resuming.
            w.ready = True
            if self.banner is not None:
                print(self.banner, flush=True)
                self.banner = None
            self._ensure_standby()
            return
        elif op is Op.SHUTDOWN:
            # spdk_kill_instance stops cleanly; a worker that could not load the
            # configuration stops the target with the exit code it says.
            self.exit_code = int(msg.get("exit", 0))
            return
        elif op is Op.STATUS:
            reply.update(self.status())
        with contextlib.suppress(OSError):
            send_msg(w.sock, Op.REPLY, reply)

    def _worker_gone(self, w: Worker) -> None:
        self._forget(w)
        if w is not self.active:
            self._ensure_standby()
            return
        self.active = None
        lived = time.monotonic() - w.since
        self.quick_deaths = 0 if w.ready else self.quick_deaths + 1
        # A standby taking over is what this mode is for; a worker that dies while
        # resuming (the state may be what kills it) is for an operator to look into.
        (log.info if w.ready else log.warning)(
            "active worker %d died after %.3f s%s; %d standby", w.pid, lived,
            "" if w.ready else " while resuming", len(self.standby))
        if self.quick_deaths >= GIVE_UP_AFTER:
            log.error("workers keep dying right after taking over: giving up")
            self.exit_code = 1
            return
        self._promote()
        if self.active is None:
            self._ensure_standby()

    def _forget(self, w: Worker) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(w.sock)
        with contextlib.suppress(ValueError):
            self.standby.remove(w)
        w.sock.close()

    # -- listeners and connections ---------------------------------------------------------
    def _listen(self, key: tuple[str, str, str]) -> str | None:
        if key in self.listeners:
            return None
        traddr, trsvcid, adrfam = key
        family = socket.AF_INET6 if adrfam == "IPv6" else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((traddr, int(trsvcid)))
            sock.listen(512)
        except OSError as exc:
            sock.close()
            return f"{exc.strerror} ({-(exc.errno or 22)})"
        sock.setblocking(False)
        self.listeners[key] = sock
        self.sel.register(sock, selectors.EVENT_READ, key)
        return None

    def _unlisten(self, key: tuple[str, str, str]) -> None:
        sock = self.listeners.pop(key, None)
        if sock is not None:
            if self.paused.pop(key, None) is None:
                self.sel.unregister(sock)
            sock.close()

    def _resume_listeners(self) -> None:
        now = time.monotonic()
        for key in [k for k, t in self.paused.items() if t <= now]:
            del self.paused[key]
            if key in self.listeners:
                self.sel.register(self.listeners[key], selectors.EVENT_READ, key)

    def _accept_conn(self, lsock: socket.socket, key: tuple[str, str, str]) -> None:
        for _ in range(64):
            try:
                sock, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors: the listener stays readable, and retrying at once
                # would spin. The waiting connections stay in the backlog meanwhile.
                log.warning("accept on %s:%s failed: %s; pausing it for 0.1 s", key[0],
                            key[1], exc)
                self.sel.unregister(lsock)
                self.paused[key] = time.monotonic() + 0.1
                return
            try:
                base_rx, base_tx = baselines(sock)
            except OSError as exc:    # reset before we got to it: nothing to serve
                log.info("connection from %s gone before it was accepted: %s", peer, exc)
                sock.close()
                continue
            kept = Kept(sock, list(key), list(peer[:2]), base_rx, base_tx)
            cid = self.next_id
            self.next_id += 1
            self.conns[cid] = kept
            if self.active is not None:
                # If the active worker is dying, its successor gets this one at takeover.
                with contextlib.suppress(OSError):
                    send_msg(self.active.sock, Op.CONN, kept.meta(cid), [sock.fileno()])

    def _stop_all(self) -> None:
        for c in self.children.values():
            with contextlib.suppress(OSError):
                c.terminate()
        for c in self.children.values():
            try:
                c.wait(timeout=10)
            except subprocess.TimeoutExpired:
                c.kill()
        for kept in self.conns.values():
            kept.sock.close()
        for sock in self.listeners.values():
            sock.close()
        self.ctl.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.ctl_path)


def serve(rpc_path: str, worker_cmd: list[str]) -> int:
    """Own the RPC socket path (as nvmf_tgt would) and keep workers serving behind it."""
    import resource

    from nvmf_phoenix.rpc.sockpath import SocketInUse, take_lock

    # The keeper holds every connection, and each worker a copy of each: both need the
    # descriptor limit the hard limit allows (workers inherit it and budget from it).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    try:
        lock = take_lock(rpc_path)
    except SocketInUse as exc:
        print(f"nvmf-phoenix target: {exc}", flush=True)
        return 1
    rpc = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        rpc.bind(rpc_path)
        os.chmod(rpc_path, 0o600)
    finally:
        os.umask(old)
    rpc.listen(64)
    keeper = Keeper(rpc_path + ".keeper", rpc, worker_cmd,
                    banner=f"nvmf-phoenix target ready: rpc={rpc_path} crash-transparent "
                    f"(keeper pid {os.getpid()})")
    try:
        return keeper.run()
    finally:
        rpc.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(rpc_path)
        os.close(lock)
