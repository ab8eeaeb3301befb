"""The data path's I/O loop: sockets in, bytes through the sans-I/O engine, bytes out.

One thread owns every socket and all protocol state. Configuration changes made from other
threads (the JSON-RPC server) are run on this thread with :meth:`DataPath.run_in_loop`, so
the engine never sees a half-made change and needs no locks. Per wake-up the loop reads
everything available on a connection, lets the queue pair parse all complete PDUs, and
writes all resulting PDUs with one send: that batching is most of the speed.

How bytes get from a socket into a queue pair and back, where listeners live and what
ending a connection means is a :class:`Transport`'s business: :class:`PlainTransport` here
(connections die with the process, as nvmf_tgt's do), the crash-transparent one in
embedded/transparent.py. The loop itself (selector, threads, configuration events, ticks,
closing and lingering) is the same for both.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from nvmf_phoenix.embedded.config_store import INTERNAL_ERROR, Change, Event, TargetCore
from nvmf_phoenix.embedded.controllers import Engine
from nvmf_phoenix.embedded.qpair import QueuePair
from nvmf_phoenix.rpc.errors import TargetError

from nvmf_phoenix.model import Kind, ListenAddress

log = logging.getLogger(__name__)
T = TypeVar("T")
RECV_SIZE = 1 << 18
TICK = 0.1


OUT_LIMIT = 4 << 20   # unsent bytes above which we stop reading from a connection
LINGER = 1.0          # seconds a closing connection may take to hand over its last PDUs


class Hangup(Exception):
    """Raised by :meth:`Transport.receive` or :meth:`Transport.transmit`: the connection
    is over (the message says why) and the loop ends it."""


class Conn(Protocol):
    """What the loop needs of a served connection; each transport has its own kind."""

    sock: socket.socket
    qp: QueuePair
    closing_at: float   # when it started closing with output still unsent, else 0


class Transport(Protocol):
    """How connections come and go and how their bytes move: what differs between the
    plain target and the crash-transparent one (embedded/transparent.py).

    The loop owns the selector, the engine, configuration events, ticks, and ending a
    connection (:meth:`DataPath.close`). The transport owns listeners and sockets: it
    brings a connection in with :meth:`DataPath.register`, and registers any socket of
    its own in ``loop.sel`` with a callable as data (called when readable). Every call
    comes from the loop's thread (before the loop runs, the one building it): no locks.
    ``receive`` and ``transmit`` are the hot path; they end a connection only by raising
    :class:`Hangup`. ``transmit`` hands on everything the queue pair has produced (the
    crash-transparent transport commits it before the first byte of it is sent), keeps
    the socket's selector interest right, and says whether output is still unsent: a
    closing connection ends when none is, or after LINGER.
    """

    def attach(self, loop: DataPath) -> None:
        """Called once, before any other method, by the loop being built."""

    def listen(self, addr: ListenAddress) -> None:
        """Accept connections on ``addr`` (no-op if already); TargetError if it cannot."""

    def listening(self) -> Iterable[ListenAddress]:
        """The addresses listened on now."""

    def unlisten(self, addr: ListenAddress) -> None:
        """Stop accepting on ``addr``; its connections stay."""

    def receive(self, conn: Any) -> None:
        """The socket is readable: move what it has into the queue pair."""

    def transmit(self, conn: Any) -> bool:
        """Send what the queue pair produced; whether output is still unsent."""

    def release(self, conn: Any) -> None:
        """The loop has ended ``conn`` (unregistered it): let go of its socket."""

    def tick(self, now: float) -> None:
        """Called every TICK seconds."""

    def shutdown(self) -> None:
        """The loop stops: settle what happens to listeners and connections."""


class Connection:
    """A connection of the plain transport: its output waits in ``out`` until sent."""

    __slots__ = ("closing_at", "out", "qp", "sock")

    def __init__(self, sock: socket.socket, qp: QueuePair) -> None:
        self.sock = sock
        self.qp = qp
        self.out = bytearray()
        self.closing_at = 0.0


def recv_some(sock: socket.socket, buf: Any, nbytes: int = 0) -> int:
    """``recv_into`` for the I/O loops: bytes read, -1 when there is nothing yet, 0 when
    the host closed or reset the connection (both end it the same way)."""
    try:
        return sock.recv_into(buf, nbytes)
    except (BlockingIOError, InterruptedError):
        return -1
    except OSError:
        return 0


class DataPath:
    """Serves NVMe/TCP for a TargetCore's listeners through a transport (plain unless
    told otherwise)."""

    def __init__(self, core: TargetCore, clock: Callable[[], float] = time.monotonic,
                 transport: Transport | None = None) -> None:
        self.core = core
        self.engine = Engine(core)
        self.clock = clock
        self.sel = selectors.DefaultSelector()
        # Selector data: a connection, or what to call when that socket is readable.
        self.conns: dict[int, Any] = {}      # socket fd -> the transport's Conn
        self.by_qp: dict[int, Any] = {}      # queue pair's conn_id -> Conn
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop_ident: int | None = None
        self._lingering: set[Any] = set()   # closing, with output not yet taken
        self.transport: Transport = transport or PlainTransport()
        self.transport.attach(self)
        self._receive = self.transport.receive     # bound once: called per wake-up
        self._transmit = self.transport.transmit
        core.subscribe(self._on_event)
        for sub in core.state.subsystems.values():
            for addr in sub.listeners:
                self.transport.listen(addr)

    # -- threads -----------------------------------------------------------------------
    def start_in_thread(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="nvmf-datapath", daemon=True)
        self._thread.start()
        return self._thread

    @property
    def alive(self) -> bool:
        """Whether the loop thread is running (an exception escaping it ends it)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread at its next wake-up (which this causes)."""
        self._calls.put(fn)
        self._wake()

    def run_in_loop(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run ``fn`` on the loop thread and return its result (or raise its exception)."""
        if self._loop_ident is None or threading.get_ident() == self._loop_ident:
            return fn()
        done = threading.Event()
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:
                box["error"] = exc
            done.set()

        self.call_soon(call)
        if not done.wait(timeout):
            raise TargetError(INTERNAL_ERROR, "Internal error", "data path did not answer")
        if "error" in box:
            raise box["error"]
        return box["value"]

    # -- the loop ----------------------------------------------------------------------
    def run(self, stop_event: threading.Event | None = None) -> None:
        self._loop_ident = threading.get_ident()
        next_tick = self.clock() + TICK
        try:
            while not self._stop.is_set() and not (stop_event and stop_event.is_set()):
                for key, mask in self.sel.select(TICK):
                    data = key.data
                    if callable(data):   # wake-up, listener or control socket
                        data()
                    else:
                        self._service(data, mask)
                self._flush_dirty()
                now = self.clock()
                if now >= next_tick:
                    self.engine.tick(now)
                    self._flush_dirty()
                    next_tick = now + TICK
                    self.transport.tick(now)
                    self._close_lingering(now)
        finally:
            self.transport.shutdown()
            self._loop_ident = None

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            call()

    def register(self, conn: Conn) -> None:
        """Start serving a connection the transport has set up."""
        qp = conn.qp
        self.engine.qpairs[qp.conn_id] = qp
        self.conns[conn.sock.fileno()] = conn
        self.by_qp[qp.conn_id] = conn
        self.sel.register(conn.sock, selectors.EVENT_READ, conn)

    def _service(self, conn: Conn, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            try:
                self._receive(conn)
            except Hangup as exc:
                self.close(conn, str(exc))
                return
        self.send(conn)

    def send(self, conn: Conn) -> None:
        """Hand on what the queue pair produced; end the connection once it is closing
        and all of its output has left."""
        try:
            unsent = self._transmit(conn)
        except Hangup as exc:
            self.close(conn, str(exc))
            return
        closing = conn.qp.closing
        if closing:
            if not unsent:
                self.close(conn, closing)
            elif not conn.closing_at:
                conn.closing_at = self.clock()
                self._lingering.add(conn)

    def _close_lingering(self, now: float) -> None:
        """Closing connections whose peer will not take the last PDUs (a TermReq behind
        megabytes it never read) are closed anyway, their buffers with them."""
        for conn in [c for c in self._lingering if now - c.closing_at > LINGER]:
            self.close(conn, f"{conn.qp.closing} (peer not reading)")

    def _flush_dirty(self) -> None:
        while self.engine.dirty:
            qp = self.engine.dirty.pop()
            conn = self.by_qp.get(qp.conn_id)
            if conn is not None:
                self.send(conn)

    def close(self, conn: Conn, reason: str) -> None:
        """End a connection (once; later calls do nothing)."""
        self._lingering.discard(conn)
        fd = conn.sock.fileno()
        if self.conns.pop(fd, None) is None:
            return
        log.info("closing connection %d: %s", conn.qp.conn_id, reason)
        self.sel.unregister(conn.sock)
        self.transport.release(conn)
        self.engine.qpairs.pop(conn.qp.conn_id, None)
        self.by_qp.pop(conn.qp.conn_id, None)
        conn.qp.close(reason)
        conn.qp.detach()

    # -- configuration events ----------------------------------------------------------
    def _on_event(self, ev: Event) -> None:
        if self._loop_ident is not None and threading.get_ident() != self._loop_ident:
            self.call_soon(lambda: self._apply(ev))
            return
        self._apply(ev)

    def _apply(self, ev: Event) -> None:
        if ev.obj == Kind.LISTENER and ev.change == Change.ADDED and ev.address is not None:
            self.transport.listen(ev.address)
        self.engine.apply(ev)
        if ev.change == Change.REMOVED and ev.obj in (Kind.LISTENER, Kind.SUBSYSTEM):
            used = {a for s in self.core.state.subsystems.values() for a in s.listeners}
            for addr in [a for a in self.transport.listening() if a not in used]:
                self.transport.unlisten(addr)
        self._flush_dirty()

    # -- runtime facts (thread-safe) ---------------------------------------------------
    def controllers(self, nqn: str) -> list[Any]:
        return self.run_in_loop(lambda: self.engine.controller_facts(nqn))

    def qpairs(self, nqn: str) -> list[Any]:
        return self.run_in_loop(lambda: self.engine.qpair_facts(nqn))

    def stats(self) -> dict[str, int]:
        def snap() -> dict[str, int]:
            s, qps = self.engine.stats, self.engine.qpairs.values()
            return {"admin_qpairs": s.admin_qpairs, "io_qpairs": s.io_qpairs,
                    "current_admin_qpairs": sum(1 for q in qps if q.ctrl and q.qid == 0),
                    "current_io_qpairs": sum(1 for q in qps if q.ctrl and q.qid > 0),
                    "current_unassociated_qpairs": sum(1 for q in qps if q.ctrl is None),
                    "pending_bdev_io": 0, "completed_nvme_io": s.completed_nvme_io}
        return self.run_in_loop(snap)


class PlainTransport(Transport):
    """Listening sockets and connections owned by this process, as nvmf_tgt's are: they
    end when it does. Received bytes go through one shared buffer; output waits in the
    connection's ``out`` until the socket takes it."""

    def __init__(self) -> None:
        self.listeners: dict[ListenAddress, socket.socket] = {}
        self._paused: set[ListenAddress] = set()   # listeners out of the selector a while
        self._next_conn = 1
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)

    def attach(self, loop: DataPath) -> None:
        self.loop = loop
        self.sel = loop.sel

    # -- listeners -----------------------------------------------------------------------
    def listen(self, addr: ListenAddress) -> None:
        if addr in self.listeners:
            return
        family = socket.AF_INET6 if addr.adrfam == "IPv6" else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr.traddr, int(addr.trsvcid)))
            sock.listen(512)
        except OSError as exc:
            sock.close()
            code = -(exc.errno or errno.EINVAL)
            raise TargetError(-32602, "Invalid parameters",
                              f"cannot listen on {addr.traddr}:{addr.trsvcid}: "
                              f"{exc.strerror} ({code})") from None
        sock.setblocking(False)
        self.listeners[addr] = sock
        self._watch(addr)

    def _watch(self, addr: ListenAddress) -> None:
        sock = self.listeners[addr]
        self.sel.register(sock, selectors.EVENT_READ, functools.partial(self._accept, addr))

    def listening(self) -> Iterable[ListenAddress]:
        return self.listeners.keys()

    def unlisten(self, addr: ListenAddress) -> None:
        sock = self.listeners.pop(addr)
        if addr in self._paused:
            self._paused.discard(addr)
        else:
            self.sel.unregister(sock)
        sock.close()

    def _accept(self, addr: ListenAddress) -> None:
        lsock = self.listeners.get(addr)
        if lsock is None:   # closed earlier in the same wake-up
            return
        for _ in range(64):
            try:
                sock, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors or memory: the listener stays readable, and retrying
                # at once spun the loop (and filled the log) until a slot freed. Pause
                # this listener until the next tick.
                log.warning("accept on %s:%s failed: %s; pausing it for %.1f s",
                            addr.traddr, addr.trsvcid, exc, TICK)
                self.sel.unregister(lsock)
                self._paused.add(addr)
                return
            self.adopt(sock, addr, peer)

    def tick(self, now: float) -> None:
        for addr in self._paused & self.listeners.keys():
            self._watch(addr)
        self._paused.clear()

    def adopt(self, sock: socket.socket, addr: ListenAddress, peer: Any) -> Connection:
        """Start serving an accepted connection."""
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer_addr = ListenAddress.make(str(peer[0]), peer[1]) if peer else None
        qp = QueuePair(self.loop.engine, self._next_conn, addr, peer_addr)
        self._next_conn += 1
        conn = Connection(sock, qp)
        self.loop.register(conn)
        return conn

    # -- the byte path -------------------------------------------------------------------
    def receive(self, conn: Connection) -> None:
        n = recv_some(conn.sock, self._buf)
        if n == 0:
            raise Hangup("host closed the connection")
        if n > 0:
            conn.qp.receive(self._view[:n], self.loop.clock())

    def transmit(self, conn: Connection) -> bool:
        qp = conn.qp
        if qp.writer.out:
            if conn.out:
                conn.out += qp.writer.take()
            else:
                conn.out = qp.writer.take()
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
                del conn.out[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                raise Hangup("send failed") from None
            # A host that does not read its answers stops being read (TCP pushes back
            # on it) rather than making us buffer without bound.
            want = (selectors.EVENT_READ if len(conn.out) < OUT_LIMIT else 0) | \
                (selectors.EVENT_WRITE if conn.out else 0)
            if self.sel.get_key(conn.sock).events != want:
                self.sel.modify(conn.sock, want, conn)
        return bool(conn.out)

    def release(self, conn: Connection) -> None:
        conn.sock.close()

    def shutdown(self) -> None:
        for conn in list(self.loop.conns.values()):
            self.loop.close(conn, "target stopping")
        for addr, sock in self.listeners.items():
            if addr not in self._paused:
                self.sel.unregister(sock)
            sock.close()
        self.listeners.clear()
