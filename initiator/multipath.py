"""A multipath host: one controller per path to a subsystem, I/O on the best live path,
and the failover a Linux host does with native NVMe multipath and ANA.

The choice of path and the state of each path live in :class:`~.paths.PathTable` (pure,
tested without sockets). This module moves commands: it submits each on the path the
table chooses; when a path breaks (connection closed or reset, a command timed out) it
marks the path down and sends everything that was outstanding there on another live path
at once (a write sent twice carries the same data to the same blocks, which is what NVMe
multipath relies on); when a command comes back with an ANA status it re-reads that
path's ANA log and sends the command elsewhere meanwhile. Commands with no usable path
wait for one, up to ``command_timeout``, then fail with "host path error".

A monitor thread owns every admin queue: it follows Asynchronous Events (an ANA change
makes it re-read the ANA log and re-choose), keeps each controller alive, and reconnects
a path that went down every ``reconnect_delay`` seconds (the kernel's reconnect_delay),
re-reading the path's identities and ANA state before it carries I/O again.

Thread use: any number of threads may call the I/O methods (they are serialised); the
monitor thread runs beside them.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nvmf_phoenix.initiator.connection import (
    DEFAULT_HOSTNQN,
    Completion,
    NvmeError,
    NvmeStatusError,
    make_sqe,
)
from nvmf_phoenix.initiator.discovery import discover_all
from nvmf_phoenix.initiator.host import DEFAULT_HOSTID
from nvmf_phoenix.initiator.pathconn import PathConn
from nvmf_phoenix.initiator.paths import ANA_ERRORS, PathIdentityError, PathTable
from nvmf_phoenix.wire import nvme

log = logging.getLogger(__name__)


@dataclass
class _Command:
    """A command as the multipath layer keeps it until it completes somewhere."""

    tag: int
    opcode: int
    nsid: int
    cdw10: int
    cdw11: int
    cdw12: int
    data_out: bytes | None
    data_in: int
    deadline: float
    sent_at: float = 0.0


class MultipathHost:
    """All paths to one subsystem, used as one device (see the module docstring)."""

    def __init__(self, subnqn: str, addresses: Iterable[tuple[str, str | int]], *,
                 hostnqn: str = DEFAULT_HOSTNQN, hostid: str = DEFAULT_HOSTID,
                 reconnect_delay: float = 1.0, kato_ms: int = 30000,
                 io_timeout: float = 10.0, command_timeout: float = 30.0,
                 connect_timeout: float = 5.0, queue_size: int = 128) -> None:
        self.subnqn, self.hostnqn, self.hostid = subnqn, hostnqn, hostid
        self.reconnect_delay, self.kato_ms = reconnect_delay, kato_ms
        self.io_timeout, self.command_timeout = io_timeout, command_timeout
        self.connect_timeout, self.queue_size = connect_timeout, queue_size
        self.table = PathTable(subnqn)
        self.retried = 0            # commands sent again after a path failure or ANA error
        self.ana_events = 0         # ANA change notices received
        self._lock = threading.RLock()          # the table and the path -> conn map
        self._io_lock = threading.RLock()       # serialises the I/O methods
        self._conns: dict[str, PathConn] = {}
        self._retry_at: dict[str, float] = {}   # down path -> next reconnect attempt
        self._attempts: dict[str, threading.Thread] = {}    # reconnects under way
        self._refresh: set[str] = set()         # paths whose ANA log must be re-read
        # I/O side: what is outstanding where, waiting for a path, completed
        self._tags = itertools.count(1)
        self._inflight: dict[PathConn, dict[int, _Command]] = {}
        self._waiting: list[_Command] = []
        self._done: list[Completion] = []
        self._io_wake = _wake_pair()
        self._mon_wake = _wake_pair()
        self._to_close: list[PathConn] = []     # dead paths' admin queues, for the monitor
        self._stop = threading.Event()
        for traddr, trsvcid in addresses:
            self.table.add(traddr, trsvcid)
        if not self.table.paths:
            raise ValueError("a multipath host needs at least one address")
        for name in self.table.paths:
            if not self._connect(name):
                self._retry_at[name] = time.monotonic() + self.reconnect_delay
        if not self._conns:
            errors = "; ".join(p.error for p in self.table.paths.values())
            self.close()
            raise NvmeError(f"no path to {subnqn} could be connected: {errors}")
        self._monitor = threading.Thread(target=self._monitor_loop, daemon=True,
                                         name=f"multipath {subnqn}")
        self._monitor.start()

    @classmethod
    def from_discovery(cls, traddr: str, trsvcid: str | int, subnqn: str | None = None, *,
                       hostnqn: str = DEFAULT_HOSTNQN, hostid: str = DEFAULT_HOSTID,
                       **options: Any) -> MultipathHost:
        """Discover (following referrals) and connect every path to ``subnqn`` (or to
        the one NVM subsystem discovery finds, if not named); ``options`` are the
        constructor's (reconnect_delay, io_timeout, ...)."""
        found = discover_all(traddr, trsvcid, hostnqn=hostnqn, hostid=hostid).subsystems()
        if subnqn is None:
            if len(found) != 1:
                raise NvmeError(f"discovery found {sorted(found)}: name the subsystem")
            subnqn = next(iter(found))
        if subnqn not in found:
            raise NvmeError(f"discovery at {traddr}:{trsvcid} found no path to {subnqn}")
        return cls(subnqn, [(e.traddr, e.trsvcid) for e in found[subnqn]],
                   hostnqn=hostnqn, hostid=hostid, **options)

    # -- reports -----------------------------------------------------------------------
    def paths(self) -> list[dict[str, object]]:
        """Per path: address, cntlid, live, ANA state per nsid, commands sent, failures."""
        with self._lock:
            return self.table.report()

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {"failovers": self.table.failovers,
                    "path_changes": self.table.path_changes, "retried": self.retried,
                    "path_failures": sum(p.failures for p in self.table.paths.values()),
                    "ana_events": self.ana_events}

    @property
    def failovers(self) -> int:
        return self.table.failovers

    # -- asynchronous I/O (the workload's interface) -----------------------------------
    def submit(self, opcode: int, nsid: int, slba: int = 0, nlb: int = 0,
               data: bytes | None = None, block_size: int = 0) -> int:
        """Queue a command; returns its tag (the ``cid`` of its :class:`Completion`)."""
        cdw12 = (nlb - 1) & 0xFFFF if nlb else 0
        cmd = _Command(next(self._tags), opcode, nsid, slba & 0xFFFFFFFF, slba >> 32, cdw12,
                       data, 0 if data is not None else nlb * block_size,
                       time.monotonic() + self.command_timeout)
        with self._io_lock:
            self._send(cmd)
        return cmd.tag

    def poll(self, timeout: float) -> list[Completion]:
        """Completions (``cid`` = tag) that arrive within ``timeout``, path trouble
        handled on the way."""
        with self._io_lock:
            self._settle()
            if not self._done:
                self._receive(timeout)
                self._settle()
            out, self._done = self._done, []
            return out

    def outstanding(self) -> int:
        with self._io_lock:
            return len(self._waiting) + sum(len(c) for c in self._inflight.values())

    # -- synchronous I/O ---------------------------------------------------------------
    def read(self, nsid: int, slba: int, nlb: int, block_size: int) -> bytes:
        comp = self._execute("Read", nvme.NVM_READ, nsid, slba, nlb, None, block_size)
        return bytes(comp.data or b"")

    def write(self, nsid: int, slba: int, data: bytes, block_size: int) -> None:
        self._execute("Write", nvme.NVM_WRITE, nsid, slba, len(data) // block_size, data,
                      block_size)

    def flush(self, nsid: int) -> None:
        self._execute("Flush", nvme.NVM_FLUSH, nsid, 0, 0, None, 0)

    def _execute(self, what: str, opcode: int, nsid: int, slba: int, nlb: int,
                 data: bytes | None, block_size: int) -> Completion:
        with self._io_lock:
            tag = self.submit(opcode, nsid, slba, nlb, data, block_size)
            deadline = time.monotonic() + self.command_timeout + 1.0
            kept: list[Completion] = []
            try:
                while time.monotonic() < deadline:
                    for comp in self.poll(0.2):
                        if comp.cid != tag:
                            kept.append(comp)      # another caller's: hand back later
                            continue
                        if comp.status:
                            raise NvmeStatusError(what, comp.status, comp.dw0)
                        return comp
            finally:
                self._done[:0] = kept
        raise NvmeError(f"{what}: no completion within {self.command_timeout} s")

    # -- the I/O side: sending, receiving, moving commands -----------------------------
    def _send(self, cmd: _Command, exclude: Iterable[str] = ()) -> None:
        with self._lock:
            path = self.table.choose(cmd.nsid, exclude)
            conn = self._conns.get(path.name) if path is not None else None
            if path is None or conn is None or conn.dead:
                self._waiting.append(cmd)
                return
            conn.claimed = True
            path.sent += 1
        sqe = make_sqe(cmd.opcode, cmd.nsid, cmd.cdw10, cmd.cdw11, cmd.cdw12)
        try:
            cid = conn.io.submit(sqe, data_out=cmd.data_out, data_in=cmd.data_in)
        except (NvmeError, OSError) as exc:
            self._waiting.append(cmd)
            self._fail(conn, f"send failed: {exc}")
            return
        cmd.sent_at = time.monotonic()
        self._inflight.setdefault(conn, {})[cid] = cmd

    def _receive(self, timeout: float) -> None:
        socks = {conn.io.sock: conn for conn, cmds in self._inflight.items()
                 if cmds and not conn.dead}
        try:
            ready, _, _ = select.select([self._io_wake[0], *socks], [], [], timeout)
        except (OSError, ValueError):       # a socket closed under us: settle sorts it
            return
        for sock in ready:
            if sock is self._io_wake[0]:
                self._io_wake[0].recv(4096)
                continue
            conn = socks[sock]
            try:
                comps = conn.io.pump(0.0)
            except (NvmeError, OSError) as exc:
                self._fail(conn, str(exc))
                continue
            for comp in comps:
                cmd = self._inflight[conn].pop(comp.cid, None)
                if cmd is not None:
                    self._completed(conn, cmd, comp)

    def _completed(self, conn: PathConn, cmd: _Command, comp: Completion) -> None:
        if comp.status in ANA_ERRORS and time.monotonic() < cmd.deadline:
            name = self._name_of(conn)
            with self._lock:
                if name is not None:
                    self.table.ana_error(name, cmd.nsid)
                    self._refresh.add(name)
                self.retried += 1
            _wake(self._mon_wake)
            self._send(cmd, exclude=[name] if name else [])
            return
        self._done.append(Completion(cmd.tag, comp.status, comp.dw0, comp.dw1, comp.data))

    def _settle(self) -> None:
        """Move commands off paths that broke, time out stuck ones, send waiting ones
        where a path is usable again, and fail those that waited too long."""
        now = time.monotonic()
        for conn, cmds in list(self._inflight.items()):
            if not conn.dead and any(now - c.sent_at > self.io_timeout for c in cmds.values()):
                self._fail(conn, f"I/O timeout ({self.io_timeout} s)")
            if conn.dead:
                self._retire(conn)
        waiting, self._waiting = self._waiting, []
        for cmd in waiting:
            if now > cmd.deadline:
                self._done.append(Completion(cmd.tag, nvme.SC_HOST_PATH_ERROR))
            else:
                self._send(cmd)

    def _fail(self, conn: PathConn, why: str) -> None:
        """The I/O side found the path broken: mark it down and let the monitor know."""
        self._mark_down(conn, why)
        self._retire(conn)

    def _retire(self, conn: PathConn) -> None:
        cmds = self._inflight.pop(conn, {})
        conn.close_io()
        for cmd in cmds.values():
            with self._lock:
                self.retried += 1
            self._send(cmd)

    def _mark_down(self, conn: PathConn, why: str) -> None:
        """Either thread: take the path out of use, wake both threads (the socket
        shutdown ends any wait on it), and leave each queue to its owner to close: the
        admin queue to the monitor, the I/O queue to the I/O side if it ever used it."""
        with self._lock:
            if conn.dead:
                return
            conn.dead = True
            unclaimed = not conn.claimed
            self._to_close.append(conn)
            name = self._name_of(conn)
            if name is not None:
                del self._conns[name]
                if self.table.down(name, why):
                    log.warning("path %s down: %s", name, why)
                self._retry_at[name] = time.monotonic() + self.reconnect_delay
        conn.shutdown()
        if unclaimed:
            conn.close_io()
        _wake(self._mon_wake)
        _wake(self._io_wake)

    def _name_of(self, conn: PathConn) -> str | None:
        with self._lock:
            return next((n for n, c in self._conns.items() if c is conn), None)

    # -- the monitor thread: connecting, events, keep-alive ----------------------------
    def _connect(self, name: str) -> bool:
        """Connect one path, check it may join, read its state, and hand it to I/O."""
        path = self.table.paths[name]
        with self._lock:
            path.attempts += 1
        try:
            conn = PathConn(path.traddr, path.trsvcid, self.subnqn, self.hostnqn,
                            self.hostid, self.kato_ms, self.connect_timeout, self.queue_size)
        except (NvmeError, OSError) as exc:
            with self._lock:
                self.table.refused(name, f"connect: {exc}")
            return False
        try:
            namespaces = conn.read_namespaces()
            ana = conn.read_ana()
            conn.arm_aer()
            with self._lock:
                if self._stop.is_set():
                    raise NvmeError("the multipath host is closing")
                self.table.check(name, conn.subnqn, conn.cntlid, namespaces)
                self.table.up(name, conn.cntlid, namespaces, ana)
                self._conns[name] = conn
                self._retry_at.pop(name, None)
        except (NvmeError, OSError, PathIdentityError) as exc:
            with self._lock:
                self.table.refused(name, str(exc))
            if isinstance(exc, PathIdentityError):
                log.error("path %s refused: %s", name, exc)
            conn.close_io()
            conn.close_admin()
            return False
        _wake(self._io_wake)
        return True

    def _attempt(self, name: str) -> None:
        """One reconnect attempt, in a thread of its own (a connect to an address that
        does not answer must not hold up events and keep-alives of the other paths);
        after a failure the next comes ``reconnect_delay`` later."""
        try:
            if not self._connect(name):
                with self._lock:
                    self._retry_at[name] = time.monotonic() + self.reconnect_delay
        finally:
            with self._lock:
                self._attempts.pop(name, None)
            _wake(self._mon_wake)

    def _monitor_loop(self) -> None:
        last_ka: dict[PathConn, float] = {}
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                for conn in self._to_close:
                    conn.close_admin()
                self._to_close.clear()
                conns = dict(self._conns)
                waiting = {n: at for n, at in self._retry_at.items()
                           if n not in self._attempts}
                for name in [n for n, at in waiting.items() if at <= now]:
                    self._attempts[name] = threading.Thread(
                        target=self._attempt, args=(name,), daemon=True,
                        name=f"reconnect {name}")
                    self._attempts[name].start()
                    del waiting[name]
                refresh, self._refresh = self._refresh, set()
                next_retry = min(waiting.values(), default=now + 1.0)
            for name in refresh:
                if name in conns:
                    self._admin(conns[name], self._reread, "ANA log")
            for conn in conns.values():
                if now - last_ka.setdefault(conn, now) > self.kato_ms / 2000:
                    last_ka[conn] = now
                    self._admin(conn, PathConn.keep_alive, "keep alive")
                if conn.pending_events():
                    self._admin(conn, self._handle_events, "events")
            last_ka = {c: t for c, t in last_ka.items() if not c.dead}
            wait = max(0.0, min(next_retry - time.monotonic(), 1.0))
            socks = {c.admin_socket(): c for c in conns.values() if not c.dead}
            try:
                ready, _, _ = select.select([self._mon_wake[0], *socks], [], [], wait)
            except (OSError, ValueError):
                continue
            for sock in ready:
                if sock is self._mon_wake[0]:
                    self._mon_wake[0].recv(4096)
                else:
                    self._admin(socks[sock], self._handle_events, "events")
        with self._lock:
            for conn in [*self._conns.values(), *self._to_close]:
                conn.close_admin()
            self._to_close.clear()

    def _admin(self, conn: PathConn, work: Callable[[PathConn], None], what: str) -> None:
        """Run admin-queue work for a path; a broken admin queue takes the path down."""
        if conn.dead:
            return
        try:
            work(conn)
        except (NvmeError, OSError, PathIdentityError) as exc:
            self._mark_down(conn, f"{what}: {exc}")

    def _handle_events(self, conn: PathConn) -> None:
        for dw0 in conn.events():
            info = (dw0 >> 8) & 0xFF
            if dw0 & 0x7 != nvme.AER_TYPE_NOTICE:
                continue
            if info == nvme.AER_NOTICE_ANA_CHANGE:
                with self._lock:
                    self.ana_events += 1
                self._reread(conn)
            elif info == nvme.AER_NOTICE_NS_ATTR_CHANGED:
                self._reread(conn, namespaces=True)

    def _reread(self, conn: PathConn, namespaces: bool = False) -> None:
        """Read a path's ANA log again (and its namespaces' identities if they changed)
        and let waiting commands go where they can now."""
        if namespaces:
            conn.read_changed_namespaces()
            idents = conn.read_namespaces()
            with self._lock:
                name = self._name_of(conn)
                if name is not None:
                    self.table.check(name, self.subnqn, conn.cntlid, idents)
                    self.table.identities.update(idents)
        ana = conn.read_ana()
        with self._lock:
            name = self._name_of(conn)
            if name is not None:
                self.table.set_ana(name, ana)
        _wake(self._io_wake)

    # -- teardown ----------------------------------------------------------------------
    def close(self) -> None:
        self._stop.set()
        _wake(self._mon_wake)
        monitor = getattr(self, "_monitor", None)
        if monitor is not None:
            monitor.join(timeout=self.connect_timeout + 5)
        with self._lock:
            attempts = list(self._attempts.values())
        for attempt in attempts:
            attempt.join(timeout=self.connect_timeout + 5)
        else:
            for conn in self._conns.values():
                conn.close_admin()
        with self._io_lock, self._lock:
            for conn in {*self._conns.values(), *self._inflight}:
                conn.close_io()
            self._conns.clear()
            self._inflight.clear()
        for pair in (self._io_wake, self._mon_wake):
            for s in pair:
                s.close()

    def __enter__(self) -> MultipathHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wake_pair() -> tuple[socket.socket, socket.socket]:
    """A socket pair whose write end never blocks: one byte wakes a select()."""
    pair = socket.socketpair()
    pair[1].setblocking(False)
    return pair


def _wake(pair: tuple[socket.socket, socket.socket]) -> None:
    with contextlib.suppress(OSError):     # already full of wake-ups, or closed at shutdown
        pair[1].send(b"w")
