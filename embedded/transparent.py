"""The crash-transparent transport: connections and queue pairs outlive the process.

The socket keeper (embedded/keeper.py) holds every connection; the I/O loop
(embedded/io_loop.py, the same loop as the plain target's) serves them through
:class:`KeptTransport`, which keeps per-connection state in shared memory
(embedded/connstate.py), so a successor process can take over at any instant with no byte
lost or repeated:

- bytes are read with ``recv_into`` straight into the connection's receive ring and parsed
  there, so what a killed process had read still exists;
- every PDU produced is copied into the transmit ring and *committed* (ring positions plus
  the queue pair's plain state) before the first byte of it is sent, so a successor never
  re-executes a command whose completion may have left;
- after a death the kernel's counters say exactly how much every past process read and
  wrote (embedded/tcpcount.py: kernel_progress); the successor sends the rest of the
  transmit ring from there and re-parses the receive ring from the last commit. Commands
  read but not committed are executed again (``replay``: reads and writes are idempotent
  on the block device) or completed with a retryable status (``abort``).

A connection whose state cannot be trusted (damaged file, counters that contradict the
commit, a peer already gone) is closed cleanly: the host reconnects, which is the
ordinary, non-transparent recovery.
"""
from __future__ import annotations

import bisect
import contextlib
import json
import logging
import selectors
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from nvmf_phoenix.embedded import failpoints
from nvmf_phoenix.embedded.connstate import (
    Commit,
    ConnState,
    ConnStateError,
    Geometry,
)
from nvmf_phoenix.embedded.controller import Controller
from nvmf_phoenix.embedded.counters import SharedCounters
from nvmf_phoenix.embedded.io_loop import DataPath, Hangup, Transport, recv_some
from nvmf_phoenix.embedded.keeper_client import Handed, KeeperClient
from nvmf_phoenix.embedded.keeper_proto import Op
from nvmf_phoenix.embedded.qpair import QueuePair
from nvmf_phoenix.embedded.tcpcount import TCP_ESTABLISHED, kernel_progress
from nvmf_phoenix.persist import shm
from nvmf_phoenix.rpc.errors import TargetError
from nvmf_phoenix.wire import nvme, pdu

from nvmf_phoenix.model import ListenAddress

log = logging.getLogger(__name__)
REPLAY, ABORT = "replay", "abort"


class SlotStaging:
    """Staging slots of one connection, handed out lowest-first (deterministic)."""

    def __init__(self, mem: memoryview, slot_size: int, slots: int, used: set[int]) -> None:
        self.mem = mem
        self.slot_size = slot_size
        self.free_slots = [s for s in range(slots) if s not in used]

    def alloc(self) -> int | None:
        return self.free_slots.pop(0) if self.free_slots else None

    def view(self, slot: int, length: int) -> memoryview:
        start = slot * self.slot_size
        return self.mem[start:start + min(length, self.slot_size)]

    def free(self, slot: int) -> None:
        bisect.insort(self.free_slots, slot)


@dataclass(eq=False)
class TConn:
    """A served connection: socket, queue pair, shared state and stream positions."""

    sock: socket.socket
    qp: QueuePair
    st: ConnState
    c: Commit                  # the last commit
    rx_w: int                  # stream position: bytes read from the socket so far
    tx_sent: int               # stream position: bytes written to the socket so far
    closing: str | None = None   # qp.closing as last committed
    blob: bytes = b""          # the last encoded queue-pair state, and what it encoded
    blob_key: tuple[object, ...] | None = None
    closing_at: float = 0.0    # when it started closing with output still unsent


class KeptTransport(Transport):
    """The crash-transparent transport: the keeper owns listeners and connections, and
    every connection's bytes go through its rings in shared memory."""

    def __init__(self, keeper: KeeperClient, scratch: str, inflight: str = REPLAY,
                 geometry: Geometry | None = None, shm_dir: str | None = None,
                 on_keeper_lost: Callable[[], None] | None = None) -> None:
        self.keeper = keeper
        self.scratch = scratch
        self.inflight = inflight
        self.geo = geometry or Geometry()
        self.shm_dir = shm_dir
        self.kept_listeners: set[ListenAddress] = set()
        self.on_keeper_lost = on_keeper_lost or (lambda: None)

    def attach(self, loop: DataPath) -> None:
        self.loop = loop
        self.sel = loop.sel
        self.engine = loop.engine
        self.sel.register(self.keeper.sock, selectors.EVENT_READ, self._keeper_readable)
        # The statistics go on from where the commits that exist left them, before
        # anything is served (embedded/counters.py).
        self.counters = SharedCounters.open(self.scratch)
        self.engine.stats = self.counters.reconcile(self._newest_commit)

    @property
    def worst_pdu(self) -> int:
        """The most one command can add to the transmit ring."""
        return max(self.engine.opts.max_io_size, nvme.MAX_TRANSFER) + 512

    # -- listeners live in the keeper ------------------------------------------------------
    def listen(self, addr: ListenAddress) -> None:
        if addr in self.kept_listeners:
            return
        reply = self.keeper.request(Op.LISTEN, addr=_key(addr))
        if self.keeper.backlog:
            # Connections handed over while the reply was awaited wait in the client's
            # backlog, and the keeper's socket does not turn readable for them again: a
            # host that connected then would wait for the next hand-over to be served.
            self.loop.call_soon(self._keeper_readable)
        if reply.get("error"):
            raise TargetError(-32602, "Invalid parameters", f"cannot listen on "
                              f"{addr.traddr}:{addr.trsvcid}: {reply['error']}")
        self.kept_listeners.add(addr)

    def listening(self) -> Iterable[ListenAddress]:
        return self.kept_listeners

    def unlisten(self, addr: ListenAddress) -> None:
        self.keeper.send(Op.UNLISTEN, addr=_key(addr))
        self.kept_listeners.discard(addr)

    def tick(self, now: float) -> None:
        pass

    def _keeper_readable(self) -> None:
        msgs = self.keeper.incoming()
        if msgs is None:
            self._keeper_lost()
            return
        for op, msg, fds in msgs:
            if op is Op.CONN and len(fds) == 1:
                h = Handed.from_msg(msg, fds[0])
                try:
                    self.adopt_handed(h)
                except Exception:   # one bad connection never costs the data path
                    log.exception("connection %d could not be adopted: closing it",
                                  h.conn_id)
                    self._abandon(h)
            else:
                for fd in fds:
                    socket.socket(fileno=fd).close()

    def _keeper_lost(self) -> None:
        """Without the keeper no successor can take over: end every connection cleanly so
        hosts reconnect to whatever replaces this target."""
        log.error("the socket keeper is gone: closing every connection")
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.keeper.sock)
        for conn in list(self.loop.conns.values()):
            self.loop.close(conn, "socket keeper gone")
        self.on_keeper_lost()
        self.loop.stop()

    # -- connections -----------------------------------------------------------------------
    def adopt_handed(self, h: Handed) -> TConn | None:
        """A connection the keeper just accepted: new state file, empty first commit."""
        try:
            st = ConnState.create(self.scratch, h.conn_id, h.base_rx, h.base_tx, self.geo,
                                  self.shm_dir)
        except (OSError, ConnStateError) as exc:
            log.error("connection %d: no shared state (%s): closing it", h.conn_id, exc)
            self._abandon(h)
            return None
        conn = self._build(h, st, Commit(seq=1), 0, 0)
        self._register(conn)
        return conn

    def _build(self, h: Handed, st: ConnState, c: Commit, rx_w: int, tx_sent: int) -> TConn:
        h.sock.setblocking(False)
        h.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        listen = ListenAddress.make(h.listen[0], h.listen[1], adrfam=h.listen[2])
        peer = ListenAddress.make(str(h.peer[0]), h.peer[1]) if h.peer else None
        qp = QueuePair(self.engine, h.conn_id, listen, peer)
        qp.reader = pdu.PduReader.over(st.rx, c.rx_done - c.rx_base, rx_w - c.rx_base,
                                       qp.reader.max_plen)
        return TConn(h.sock, qp, st, c, rx_w, tx_sent)

    def _register(self, conn: TConn) -> None:
        if conn.qp.staging is None:
            conn.qp.staging = SlotStaging(conn.st.staging, self.geo.slot_size,
                                          self.geo.slots, set())
        self.loop.register(conn)

    def _abandon(self, h: Handed) -> None:
        with contextlib.suppress(OSError):
            h.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.keeper.send(Op.DROP, conn=h.conn_id)
        h.sock.close()

    def release(self, conn: TConn) -> None:
        """End a connection for real: the keeper holds a copy, so close() alone would not;
        shutdown() does, then the keeper lets go of its copy."""
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.keeper.send(Op.DROP, conn=conn.qp.conn_id)
        conn.sock.close()
        conn.st.unlink()
        conn.st.close()

    def shutdown(self) -> None:
        """This process stops; the connections do not (the keeper holds them)."""
        for conn in list(self.loop.conns.values()):
            with contextlib.suppress(OSError):
                conn.sock.close()
        self.loop.conns.clear()

    # -- the byte path -----------------------------------------------------------------------
    def receive(self, conn: TConn) -> None:
        offset = conn.rx_w - conn.c.rx_base
        room = self.geo.rx_size - offset
        if room > 0:
            n = recv_some(conn.sock, conn.st.rx[offset:], room)
            if n == 0:
                raise Hangup("host closed the connection")
            if n > 0:
                conn.rx_w += n
                conn.qp.reader.extend(n)
                if failpoints.ARMED and conn.qp.qid > 0 and \
                        conn.qp.reader.pending() > 4200:
                    failpoints.hit("io-read")   # whole commands read, none executed

    def transmit(self, conn: TConn) -> bool:
        """Execute what the receive ring holds as far as the transmit ring has room,
        commit, then send; repeat while sending made room for more."""
        qp = conn.qp
        for _ in range(8):
            room = self.geo.tx_size - self._tx_used(conn) - self.worst_pdu
            if room > 0 and qp.reader.pending() >= 8 and not qp.closing:
                qp.process(self.loop.clock(), room)
            try:
                self._commit(conn)
            except ConnStateError as exc:
                log.error("connection %d: %s", qp.conn_id, exc)
                raise Hangup("shared state failed") from None
            unsent = conn.c.tx_done - conn.tx_sent
            if unsent:
                start = conn.tx_sent - conn.c.tx_base
                if failpoints.ARMED and qp.qid > 0:
                    self._failpoint_send(conn, start, unsent)
                try:
                    conn.tx_sent += conn.sock.send(conn.st.tx[start:start + unsent])
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    raise Hangup("send failed") from None
            if conn.tx_sent < conn.c.tx_done or qp.reader.pending() < 8 or qp.closing:
                break
        pending = conn.tx_sent < conn.c.tx_done
        if qp.closing and not pending:
            return False   # the loop closes it: no interest to update
        want = (selectors.EVENT_READ if conn.rx_w - conn.c.rx_base < self.geo.rx_size else 0) | \
            (selectors.EVENT_WRITE if pending else 0)
        if self.sel.get_key(conn.sock).events != want:
            if want:
                self.sel.modify(conn.sock, want, conn)
            else:   # both rings full: wait for the next wake-up of the loop (tick)
                self.sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        return pending

    def _failpoint_send(self, conn: TConn, start: int, unsent: int) -> None:
        failpoints.hit("io-committed")              # committed, nothing of it sent
        failpoints.hit("io-bug", _bug)              # an exception escapes the loop

        def half() -> None:
            conn.sock.setblocking(True)             # make the half really leave
            conn.sock.sendall(conn.st.tx[start:start + unsent // 2])
        if unsent > 8:
            failpoints.hit("io-half-sent", half)

    def _tx_used(self, conn: TConn) -> int:
        return 0 if conn.tx_sent == conn.c.tx_done else conn.c.tx_done - conn.c.tx_base

    def _commit(self, conn: TConn) -> None:
        """Persist ring positions and queue-pair state, compacting both rings when that
        can be done without touching anything the previous commit still refers to."""
        qp, c, geo = conn.qp, conn.c, self.geo
        reader = qp.reader
        out = qp.writer.take() if qp.writer.out else b""
        rx_done = c.rx_base + reader.pos
        # Moving the unparsed tail to the front must not overwrite what the previous
        # commit still refers to (everything from its rx_done on), or a successor that
        # falls back to it (this commit torn) would replay overwritten bytes.
        compact_rx = reader.pos > 0 and (reader.pos == reader.end or (
            reader.end > geo.rx_size // 2 and
            reader.end - reader.pos <= c.rx_done - c.rx_base))
        if not out and rx_done == c.rx_done and qp.closing == conn.closing and not compact_rx:
            return
        new = Commit(c.seq + 1, rx_done, c.rx_base, c.tx_done, c.tx_base, qp.sqhd,
                     qp.next_ttag)
        if conn.tx_sent == c.tx_done:
            new.tx_base = c.tx_done          # all sent: start the ring over
        offset = new.tx_done - new.tx_base
        if offset + len(out) > geo.tx_size:
            unsent = c.tx_done - conn.tx_sent
            start = conn.tx_sent - c.tx_base
            if unsent > start:
                raise ConnStateError(f"transmit ring overflow ({unsent} bytes unsent)")
            conn.st.tx[0:unsent] = conn.st.tx[start:start + unsent]
            new.tx_base, offset = conn.tx_sent, unsent
            if offset + len(out) > geo.tx_size:
                raise ConnStateError(f"transmit ring overflow ({len(out)} bytes to add)")
        conn.st.tx[offset:offset + len(out)] = out
        new.tx_done += len(out)
        if compact_rx:
            left = reader.end - reader.pos
            if left:
                conn.st.rx[0:left] = conn.st.rx[reader.pos:reader.end]
            new.rx_base = rx_done
        blob = self._blob(conn)
        self.counters.record(self.engine.stats, qp.conn_id, new.seq)
        if failpoints.ARMED and qp.qid > 0:
            failpoints.hit("io-torn-commit", lambda: conn.st.commit_torn(new, blob))
            failpoints.hit("io-unsealed-commit", lambda: conn.st.commit_unsealed(new, blob))
        conn.st.commit(new, blob)
        if compact_rx:
            reader.end -= reader.pos
            reader.pos = 0
        conn.c = new
        conn.closing = qp.closing

    @staticmethod
    def _blob(conn: TConn) -> bytes:
        """The queue pair's state as JSON. An I/O queue with no write in progress changes
        nothing but its SQ head and transfer tag between commands, and those travel in the
        commit record: its blob is reused while what it encodes stays the same."""
        qp = conn.qp
        key = None
        if qp.qid > 0 and not qp.pending and not qp.r2t_wait:
            key = (qp.phase, qp.closing, id(qp.ctrl), qp.reader.hdgst, qp.reader.ddgst)
            if key == conn.blob_key:
                return conn.blob
        conn.blob = json.dumps(qp.dump(), separators=(",", ":")).encode()
        conn.blob_key = key
        return conn.blob

    # -- taking over -------------------------------------------------------------------------
    def resume(self, handed: list[Handed], reset: bool = False,
               listeners: list[list[str]] | None = None) -> dict[str, int]:
        """Serve the connections a dead predecessor served, from where it stopped; the
        keeper's listeners the configuration no longer has are closed."""
        for key in listeners or []:
            addr = ListenAddress.make(key[0], key[1], adrfam=key[2])
            if addr not in self.kept_listeners:
                self.keeper.send(Op.UNLISTEN, addr=key)
        now = self.loop.clock()
        report = {"resumed": 0, "fresh": 0, "closed": 0}
        conns: list[tuple[TConn, dict[str, Any]]] = []
        for h in handed:
            if reset:
                self._abandon(h)
                report["closed"] += 1
                continue
            try:
                got = self._reattach(h)
            except Exception as exc:
                if self._untouched(h):
                    # Its state never got written, but nothing was read or written
                    # either (killed while the connection was being adopted): start it
                    # afresh rather than make the host reconnect.
                    log.info("connection %d has no usable state but no traffic yet: "
                             "adopting it afresh (%s)", h.conn_id, exc)
                    self.adopt_handed(h)
                    report["fresh"] += 1
                    continue
                log.warning("connection %d cannot be resumed (%s): closing it", h.conn_id,
                            exc)
                self._abandon(h)
                report["closed"] += 1
                continue
            conns.append(got)
        for _conn, d in conns:
            if "controller" in d:
                ctrl = Controller.from_dict(d["controller"], now)
                self.engine.controllers[(ctrl.nqn, ctrl.cntlid)] = ctrl
        for conn, d in conns:
            if "ctrl" in d:
                ctrl2 = self.engine.controllers.get((d["ctrl"][0], int(d["ctrl"][1])))
                if ctrl2 is None:
                    conn.qp.close("its controller is gone")
                else:
                    conn.qp.ctrl = ctrl2
                    if conn.qp.qid:
                        ctrl2.io_queues.add(conn.qp.qid)
            self._register(conn)
            report["resumed" if d else "fresh"] += 1
        for conn, _ in conns:
            conn.qp.interrupt_io = self.inflight == ABORT
            self.loop.send(conn)
            conn.qp.interrupt_io = False
        return report

    def _newest_commit(self, conn_id: int) -> int | None:
        """The seq of the newest complete commit of a connection, None if unknown."""
        path = shm.find(f"conn-{conn_id}", self.shm_dir, self.scratch)
        if path is None:
            return None
        try:
            st = ConnState.open(path)
        except ConnStateError:
            return None
        try:
            return st.latest()[0].seq
        except ConnStateError:
            return None
        finally:
            st.close()

    @staticmethod
    def _untouched(h: Handed) -> bool:
        try:
            consumed, written, tcp_state = kernel_progress(h.sock)
        except OSError:
            return False
        return (tcp_state == TCP_ESTABLISHED and consumed == h.base_rx and
                written == h.base_tx)

    def _reattach(self, h: Handed) -> tuple[TConn, dict[str, Any]]:
        path = shm.find(f"conn-{h.conn_id}", self.shm_dir, self.scratch)
        if path is None:
            raise ConnStateError(f"no state file for connection {h.conn_id}")
        st = ConnState.open(path)
        try:
            c, blob = st.latest()
            consumed, written, tcp_state = kernel_progress(h.sock)
            consumed -= st.base_rx
            written -= st.base_tx
            if tcp_state != TCP_ESTABLISHED:
                raise ConnStateError(f"peer no longer connected (tcp state {tcp_state})")
            if not (c.rx_done <= consumed <= c.rx_base + self.geo.rx_size and
                    c.tx_base <= written <= c.tx_done):
                raise ConnStateError(f"kernel counters (read {consumed}, written {written}) "
                                     f"contradict commit {c.seq} (rx {c.rx_done}, tx "
                                     f"{c.tx_base}..{c.tx_done})")
            d = json.loads(blob)
            log.info("connection %d (peer %s): replaying %d bytes from %d, resending %d "
                     "bytes from %d, state %s", h.conn_id, h.peer, consumed - c.rx_done,
                     c.rx_done, c.tx_done - written, written, d.get("phase", "new"))
            conn = self._build(h, st, c, consumed, written)
            if d:
                used = {int(p[5]) for p in d.get("pending", []) if int(p[5]) >= 0}
                conn.qp.staging = SlotStaging(st.staging, self.geo.slot_size, self.geo.slots,
                                              used)
                conn.qp.load(d)
                conn.qp.sqhd, conn.qp.next_ttag = c.sqhd, c.ttag
                conn.closing = conn.qp.closing
        except BaseException:
            st.close()
            raise
        return conn, d


def _bug() -> None:
    raise RuntimeError("injected bug (failpoint io-bug)")


def _key(addr: ListenAddress) -> list[str]:
    return [addr.traddr, addr.trsvcid, addr.adrfam]
