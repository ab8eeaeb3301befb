"""One NVMe/TCP queue pair, target side: sans-I/O.

``receive(data, now)`` consumes bytes from the host and appends every PDU to send to
``writer.out``; the I/O loop moves the bytes. All state is plain data (ints, bytes, small
dicts): :meth:`QueuePair.dump` turns it into a dict and :meth:`QueuePair.load` back, which
is what lets a later process resume a queue pair from shared memory (embedded/transparent.py).
A protocol violation produces a C2HTermReq and ``closing`` is set: only this connection
ends, never the target.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from nvmf_phoenix.embedded.admin import execute_admin
from nvmf_phoenix.embedded.controller import Controller
from nvmf_phoenix.embedded.controllers import Engine
from nvmf_phoenix.embedded.nvm import execute_io
from nvmf_phoenix.embedded.sgl import check_sgl
from nvmf_phoenix.wire import nvme, pdu

from nvmf_phoenix.model import ListenAddress

log = logging.getLogger(__name__)
# Connect's "invalid parameter offset" (IPO): where in the SQE or the data the fault lies
IPO_QID = nvme.CONNECT_SQE.offset("qid")
IPO_SQSIZE = nvme.CONNECT_SQE.offset("sqsize")
IPO_CNTLID = nvme.CONNECT_DATA.offset("cntlid")
IPO_SUBNQN = nvme.CONNECT_DATA.offset("subnqn")
IPO_HOSTNQN = nvme.CONNECT_DATA.offset("hostnqn")
_CQE = nvme.CQE.plain         # one per command: a plain Struct (see Layout.plain)


class Phase(StrEnum):
    """Where a queue pair is in its life. A str: the value is what :meth:`QueuePair.dump`
    writes, so the state stays plain data."""

    IC = "ic"              # waiting for the host's ICReq
    CONNECT = "connect"    # initialized; only a Fabrics Connect may come
    READY = "ready"        # connected to a controller: commands run
    CLOSED = "closed"      # the connection is gone


# Every move a queue pair makes, h11-style: the phase it is in -> the phases it may go to.
# Any phase may close; closing again is harmless.
NEXT_PHASES: dict[Phase, frozenset[Phase]] = {
    Phase.IC: frozenset({Phase.CONNECT, Phase.CLOSED}),
    Phase.CONNECT: frozenset({Phase.READY, Phase.CLOSED}),
    Phase.READY: frozenset({Phase.CLOSED}),
    Phase.CLOSED: frozenset({Phase.CLOSED}),
}
# The phases every command is checked against, bound once: in Python 3.11 looking up an
# Enum member as a class attribute costs some 90 ns, about what the check is worth.
_IC, _READY = Phase.IC, Phase.READY


class Staging(Protocol):
    """Where writes gather their H2CData: fixed slots, allocated lowest-first so that a
    process replaying the same PDUs from the same committed state picks the same slot."""

    def alloc(self) -> int | None: ...
    def view(self, slot: int, length: int) -> memoryview: ...
    def free(self, slot: int) -> None: ...


@dataclass(slots=True)
class PendingWrite:
    """A write waiting for H2CData after our R2T: the SQE and the data gathered so far.
    ``slot`` is its staging slot, or -1 when ``buf`` is private memory."""

    sqe: bytes
    buf: bytearray | memoryview
    received: int
    r2t_end: int
    ttag: int
    slot: int = -1


class QueuePair:
    def __init__(self, engine: Engine, conn_id: int, listen: ListenAddress,
                 peer: ListenAddress | None) -> None:
        self.engine = engine
        self.conn_id = conn_id
        self.listen = listen
        self.peer = peer
        self.reader = pdu.PduReader(max_plen=engine.opts.in_capsule_data_size + 8192 +
                                    engine.opts.max_io_size)
        self.writer = pdu.PduWriter()
        self.phase = Phase.IC
        self.ctrl: Controller | None = None
        self.qid = -1
        self.sqsize = 0
        self.sqhd = 0
        self.closing: str | None = None
        self.pending: dict[int, PendingWrite] = {}
        self.r2t_wait: list[bytes] = []     # writes waiting for a free staging slot
        self.next_ttag = 1
        self.staging: Staging | None = None
        self.interrupt_io = False           # complete I/O with a retryable status instead

    def move(self, to: Phase) -> None:
        """The one way the phase changes; a move :data:`NEXT_PHASES` does not list is a
        bug of ours, never the host's (its mistakes are refused before they get here)."""
        if to not in NEXT_PHASES[self.phase]:
            raise RuntimeError(f"connection {self.conn_id}: no move from phase "
                               f"{self.phase} to {to}")
        self.phase = to

    # -- bytes in ----------------------------------------------------------------------
    def receive(self, data: bytes | memoryview, now: float) -> None:
        if self.closing:
            return
        self.reader.feed(data)
        self.process(now)

    def process(self, now: float, room: int | None = None) -> None:
        """Execute every whole PDU the reader holds; with ``room``, stop before the output
        waiting to be sent exceeds it (a transmit ring must never overflow)."""
        out = self.writer.out
        # A host has at most a queue's worth of commands outstanding, so no more can
        # arrive between two reads of ours; more is a host ignoring the queue depth, and
        # each read it asks for costs up to max_io_size of output. SPDK drops such a
        # queue too.
        budget = max(self.sqsize, 31) + 1
        try:
            while not self.closing and (room is None or len(out) < room):
                p = self.reader.next()
                if p is None:
                    break
                budget -= p.type == pdu.CAPSULE_CMD
                if budget < 0:
                    self.close(f"host exceeded the queue depth ({self.sqsize + 1})")
                    break
                self._dispatch(p, now)
                out = self.writer.out
        except pdu.ProtocolError as err:
            self.terminate(str(err), err.fes, err.fei, err.header)
        except Exception as exc:   # a bug must cost this connection, never the target
            log.exception("connection %d: internal error", self.conn_id)
            self.engine.stats.internal_errors += 1
            self.close(f"internal error: {exc!r}")

    def terminate(self, reason: str, fes: int, fei: int = 0, header: bytes = b"") -> None:
        """Fatal transport error: send a C2HTermReq and close this connection."""
        self.writer.term_req(pdu.C2H_TERM_REQ, fes, fei, header)
        self.close(reason)

    def close(self, reason: str) -> None:
        if not self.closing:
            self.closing = reason

    def _dispatch(self, p: pdu.Pdu, now: float) -> None:
        if self.phase is _IC:
            if p.type != pdu.ICREQ:
                raise pdu.ProtocolError("expected ICReq", pdu.FES_PDU_SEQUENCE_ERROR, 0,
                                        bytes(p.header[:8]))
            self._ic_req(p)
            return
        if p.type == pdu.CAPSULE_CMD:
            if self.ctrl is not None:
                self.ctrl.last_seen = now
            self._capsule(p, now)
        elif p.type == pdu.H2C_DATA:
            self._h2c_data(p, now)
        elif p.type == pdu.H2C_TERM_REQ:
            self.close("host sent H2CTermReq")
        else:
            raise pdu.ProtocolError(f"unexpected {pdu.PDU_NAMES.get(p.type)} from host",
                                    pdu.FES_INVALID_HEADER_FIELD, 0, bytes(p.header[:24]))

    def _ic_req(self, p: pdu.Pdu) -> None:
        pfv, hpda, dgst, _ = pdu.parse_ic(p)
        if pfv != 0 or hpda > 31:
            raise pdu.ProtocolError(f"ICReq pfv={pfv} hpda={hpda}",
                                    pdu.FES_UNSUPPORTED_PARAMETER,
                                    pdu.IC_REQ.offset("pfv" if pfv else "hpda"),
                                    bytes(p.header))
        hd, dd = bool(dgst & pdu.DGST_HDGST_ENABLE), bool(dgst & pdu.DGST_DDGST_ENABLE)
        maxh2c = max(self.engine.opts.max_io_size, 4096)
        self.writer.out += pdu.ic_resp(0, hd, dd, maxh2c)
        self.reader.hdgst = self.writer.hdgst = hd
        self.reader.ddgst = self.writer.ddgst = dd
        self.move(Phase.CONNECT)

    # -- completions -------------------------------------------------------------------
    def complete(self, cid: int, status: int, dw0: int = 0, dw1: int = 0) -> None:
        self.sqhd = (self.sqhd + 1) % (self.sqsize + 1) if self.sqsize else 0
        self.writer.capsule_resp(_CQE.pack(dw0, dw1, self.sqhd, max(self.qid, 0), cid,
                                           nvme.status_word(status)))

    def send_data(self, cid: int, data: bytes | memoryview, status_follows: bool) -> None:
        """Return read data; with C2H success the data PDU doubles as the completion."""
        success = self.engine.opts.c2h_success and not status_follows
        self.writer.c2h_data(cid, 0, data, True, success)
        if success:
            self.sqhd = (self.sqhd + 1) % (self.sqsize + 1) if self.sqsize else 0

    # -- capsules ----------------------------------------------------------------------
    def _capsule(self, p: pdu.Pdu, now: float) -> None:
        sqe = bytes(p.header[pdu.CH_SIZE:pdu.HLEN_CAPSULE_CMD])   # outlives the buffer
        opcode, cid, nsid = nvme.SQE_HEAD.unpack_from(sqe)
        check_sgl(sqe, len(p.data), self.engine.opts.max_io_size,
                  self.engine.opts.in_capsule_data_size, bytes(p.header[:24]))
        if opcode == nvme.FABRICS:
            self._fabrics(sqe, cid, p.data, now)
            return
        if self.phase is not _READY or self.ctrl is None:
            self.complete(cid, nvme.SC_CMD_SEQUENCE_ERROR)
            self.close("command before Connect")
            return
        _, length, sgl_id = nvme.SQE_SGL.unpack_from(sqe)
        if self.qid:
            if self.interrupt_io:
                self.complete(cid, nvme.SC_COMMAND_INTERRUPTED)
                return
            if opcode == nvme.NVM_WRITE and sgl_id == nvme.SGL_TRANSPORT_DATA_BLOCK:
                self._start_r2t(sqe, cid, length)
                return
        data = p.data if len(p.data) else None
        if data is not None and (sgl_id != nvme.SGL_DATA_BLOCK_OFFSET or len(data) != length
                                 or length > self.engine.opts.in_capsule_data_size):
            raise pdu.ProtocolError("in-capsule data does not match the SGL",
                                    pdu.FES_DATA_LIMIT_EXCEEDED, 0, bytes(p.header[:24]))
        if self.qid == 0:
            self._admin(sqe, opcode, cid, nsid, data, now)
        else:
            execute_io(self, sqe, opcode, cid, nsid, data)

    def _start_r2t(self, sqe: bytes, cid: int, length: int) -> None:
        if len(self.pending) + len(self.r2t_wait) > self.sqsize:
            # SPDK, too, drops a queue that overflows
            self.close(f"host exceeded the queue depth ({self.sqsize + 1} commands)")
            return
        if cid in self.pending or length > self.engine.opts.max_io_size or length == 0:
            self.complete(cid, nvme.SC_INVALID_FIELD)
            return
        slot = -1
        if self.staging is not None:
            got = self.staging.alloc()
            if got is None:
                # Every slot busy: ask for this write's data once one frees (R2T timing
                # is the target's to choose).
                self.r2t_wait.append(sqe)
                return
            slot = got
        # Private memory grows as data arrives: it follows what the host really sent.
        buf = self.staging.view(slot, length) if self.staging is not None else bytearray()
        ttag = self.next_ttag
        self.next_ttag = self.next_ttag % 0xFFFE + 1
        chunk = min(length, self.engine.opts.max_io_size)
        self.pending[cid] = PendingWrite(sqe, buf, 0, chunk, ttag, slot)
        self.writer.r2t(cid, ttag, 0, chunk)

    def _finish_write(self, w: PendingWrite) -> None:
        """All data is in: execute the write, free its slot, start a waiting one."""
        opcode, cid, nsid = nvme.SQE_HEAD.unpack_from(w.sqe)
        execute_io(self, w.sqe, opcode, cid, nsid, memoryview(w.buf))
        if self.staging is not None and w.slot >= 0:
            self.staging.free(w.slot)
            if self.r2t_wait:
                sqe = self.r2t_wait.pop(0)
                _, length, _ = nvme.SQE_SGL.unpack_from(sqe)
                self._start_r2t(sqe, nvme.SQE.field(sqe, "cid"), length)

    def _h2c_data(self, p: pdu.Pdu, now: float) -> None:
        cccid, ttag, datao, datal = pdu.parse_data_hdr(p)
        w = self.pending.get(cccid)
        if w is None or w.ttag != ttag:
            raise pdu.ProtocolError(f"H2CData for unknown command {cccid}/ttag {ttag}",
                                    pdu.FES_INVALID_HEADER_FIELD, pdu.DATA_HDR.offset("cccid"),
                                    bytes(p.header))
        if datao != w.received or datal != len(p.data) or datao + datal > w.r2t_end:
            raise pdu.ProtocolError("H2CData outside the requested range",
                                    pdu.FES_DATA_OUT_OF_RANGE, pdu.DATA_HDR.offset("datao"),
                                    bytes(p.header))
        w.buf[datao:datao + datal] = p.data   # datao == received: the data comes in order
        w.received += datal
        if w.received < w.r2t_end:
            return
        total = nvme.SQE.field(w.sqe, "sgl_length")
        if w.received < total:
            w.r2t_end = min(total, w.received + self.engine.opts.max_io_size)
            self.writer.r2t(cccid, ttag, w.received, w.r2t_end - w.received)
            return
        del self.pending[cccid]
        if self.ctrl is not None:
            self.ctrl.last_seen = now
        self._finish_write(w)

    # -- fabrics -----------------------------------------------------------------------
    def _fabrics(self, sqe: bytes, cid: int, data: memoryview, now: float) -> None:
        (fctype,) = nvme.FABRICS_FCTYPE.unpack_from(sqe)
        if fctype == nvme.FCTYPE_CONNECT:
            if self.phase != Phase.CONNECT:
                self.complete(cid, nvme.SC_CMD_SEQUENCE_ERROR)
                return
            self._connect(sqe, cid, data, now)
            return
        if self.phase != Phase.READY or self.ctrl is None or self.qid != 0:
            self.complete(cid, nvme.SC_CMD_SEQUENCE_ERROR)
            if self.phase != Phase.READY:
                self.close("fabrics command before Connect")
            return
        _attrib, ofst, value = nvme.PROPERTY_SQE.unpack_from(sqe)
        if fctype == nvme.FCTYPE_PROPERTY_GET:
            val = self.ctrl.property_get(ofst, self.engine.opts.max_queue_depth - 1)
            if val is None:
                self.complete(cid, nvme.SC_INVALID_FIELD)
            else:
                self.complete(cid, nvme.SC_SUCCESS, val & 0xFFFFFFFF, val >> 32)
        elif fctype == nvme.FCTYPE_PROPERTY_SET:
            ok = self.ctrl.property_set(ofst, value)
            self.complete(cid, nvme.SC_SUCCESS if ok else nvme.SC_INVALID_FIELD)
        else:
            self.complete(cid, nvme.SC_INVALID_OPCODE)

    def _connect_fail(self, cid: int, status: int, ipo: int = 0, in_data: bool = True) -> None:
        dw0 = (ipo << 16) | (1 if in_data else 0) if status == \
            nvme.SC_CONNECT_INVALID_PARAMETERS else 0
        self.complete(cid, status, dw0)
        self.close(f"connect refused: {nvme.status_name(status)}")

    def _connect(self, sqe: bytes, cid: int, data: memoryview, now: float) -> None:
        recfmt, qid, sqsize, _cattr, kato = nvme.CONNECT_SQE.unpack_from(sqe)
        if recfmt != 0:
            self._connect_fail(cid, nvme.SC_CONNECT_INCOMPATIBLE_FORMAT)
            return
        if len(data) != nvme.CONNECT_DATA_SIZE:
            self._connect_fail(cid, nvme.SC_CONNECT_INVALID_PARAMETERS, 0)
            return
        hostid, cntlid, subnqn_b, hostnqn_b = nvme.CONNECT_DATA.unpack_from(data)
        subnqn = subnqn_b.split(b"\0", 1)[0].decode(errors="replace")
        hostnqn = hostnqn_b.split(b"\0", 1)[0].decode(errors="replace")
        opts = self.engine.opts
        sub = self.engine.core.state.subsystems.get(subnqn)
        limit = (opts.max_aq_depth if qid == 0 else opts.max_queue_depth) - 1
        if sub is None or self.listen not in sub.listeners:
            self._connect_fail(cid, nvme.SC_CONNECT_INVALID_PARAMETERS, IPO_SUBNQN)
        elif not self.engine.host_allowed(sub, hostnqn):
            self._connect_fail(cid, nvme.SC_CONNECT_INVALID_HOST)
        elif sqsize < 1 or sqsize > limit or (qid == 0 and sqsize < 31):
            self._connect_fail(cid, nvme.SC_CONNECT_INVALID_PARAMETERS, IPO_SQSIZE, False)
        elif qid == 0:
            ctrl = self.engine.create_controller(sub, hostnqn, _uuid_text(hostid), kato, now)
            if ctrl is None:
                self._connect_fail(cid, nvme.SC_CONNECT_CONTROLLER_BUSY)
                return
            self._attach(ctrl, 0, sqsize)
            self.engine.stats.admin_qpairs += 1
            self.complete(cid, nvme.SC_SUCCESS, ctrl.cntlid)
        else:
            ctrl = self.engine.controllers.get((subnqn, cntlid))
            if ctrl is None or ctrl.hostnqn != hostnqn or not ctrl.enabled:
                self._connect_fail(cid, nvme.SC_CONNECT_INVALID_PARAMETERS, IPO_CNTLID)
            elif qid > max(ctrl.num_io_queues, 0) or qid in ctrl.io_queues:
                self._connect_fail(cid, nvme.SC_CONNECT_INVALID_PARAMETERS, IPO_QID, False)
            else:
                self._attach(ctrl, qid, sqsize)
                ctrl.io_queues.add(qid)
                self.engine.stats.io_qpairs += 1
                self.complete(cid, nvme.SC_SUCCESS, ctrl.cntlid)

    def _attach(self, ctrl: Controller, qid: int, sqsize: int) -> None:
        self.ctrl, self.qid, self.sqsize = ctrl, qid, sqsize
        self.move(Phase.READY)

    def detach(self) -> None:
        """The connection is gone: an admin queue takes its controller with it."""
        ctrl, self.ctrl = self.ctrl, None
        self.move(Phase.CLOSED)
        if ctrl is None:
            return
        if self.qid == 0:
            self.engine.destroy_controller(ctrl, "admin queue closed")
        else:
            ctrl.io_queues.discard(self.qid)

    # -- plain-data state, for resuming in another process --------------------------------
    def dump(self) -> dict[str, Any]:
        """Everything a successor needs besides the byte streams; the admin queue also
        carries its controller."""
        d: dict[str, Any] = {"phase": self.phase.value, "qid": self.qid, "sqsize": self.sqsize,
                             "sqhd": self.sqhd, "ttag": self.next_ttag,
                             "hd": self.reader.hdgst, "dd": self.reader.ddgst}
        if self.closing:
            d["closing"] = self.closing
        if self.ctrl is not None:
            d["ctrl"] = [self.ctrl.nqn, self.ctrl.cntlid]
            if self.qid == 0:
                d["controller"] = self.ctrl.to_dict()
        if self.pending:
            d["pending"] = [[cid, w.sqe.hex(), w.received, w.r2t_end, w.ttag, w.slot,
                             nvme.SQE.field(w.sqe, "sgl_length")]
                            for cid, w in self.pending.items()]
        if self.r2t_wait:
            d["wait"] = [sqe.hex() for sqe in self.r2t_wait]
        return d

    def load(self, d: dict[str, Any]) -> None:
        """Take the state :meth:`dump` produced (the controller is linked by the caller)."""
        self.phase, self.qid, self.sqsize = Phase(d["phase"]), int(d["qid"]), int(d["sqsize"])
        self.sqhd, self.next_ttag = int(d["sqhd"]), int(d["ttag"])
        self.reader.hdgst = self.writer.hdgst = bool(d["hd"])
        self.reader.ddgst = self.writer.ddgst = bool(d["dd"])
        self.closing = d.get("closing")
        for cid, sqe, received, r2t_end, ttag, slot, length in d.get("pending", []):
            buf = self.staging.view(slot, length) if self.staging is not None and slot >= 0 \
                else bytearray(received)
            self.pending[int(cid)] = PendingWrite(bytes.fromhex(sqe), buf, received, r2t_end,
                                                  ttag, slot)
        self.r2t_wait = [bytes.fromhex(x) for x in d.get("wait", [])]

    # -- admin -------------------------------------------------------------------------
    def _admin(self, sqe: bytes, opcode: int, cid: int, nsid: int, data: memoryview | None,
               now: float) -> None:
        execute_admin(self, sqe, opcode, cid, nsid, now)


def _uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
