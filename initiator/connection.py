"""A Python NVMe/TCP initiator: connect, identify, logs, features, I/O at a queue depth.

Used by tests, benchmarks and the demo to talk to any NVMe/TCP target (the embedded one,
SPDK, or the Linux kernel's nvmet). :class:`QueueConn` is one queue pair on one TCP
connection; :class:`Host` puts an admin queue and I/O queues together into a controller
the way a host driver does. Every wait is bounded; NVMe errors raise
:class:`NvmeStatusError` with the status decoded.
"""
from __future__ import annotations

import socket
import time
import uuid as uuidlib
from dataclasses import dataclass, field

from nvmf_phoenix.wire import nvme, pdu

DEFAULT_HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:6e767068-6f65-6e69-7800-000000000001"
# Filled in on every submit, in place: the command id and the SGL (address, length, id)
_CID_AT, _CID = nvme.SQE.span("cid")
_SGL_AT, _SGL = nvme.SQE.span("sgl_addr", "sgl_length", "sgl_id")
_SQE, _CQE = nvme.SQE.plain, nvme.CQE.plain    # one of each per I/O (see Layout.plain)


class NvmeError(Exception):
    """Transport-level failure talking to the target."""


class NvmeStatusError(NvmeError):
    def __init__(self, what: str, status: int, dw0: int = 0) -> None:
        self.status = status
        self.dw0 = dw0
        super().__init__(f"{what}: {nvme.status_name(status)} ({status:#05x})")


@dataclass
class Completion:
    cid: int
    status: int
    dw0: int = 0
    dw1: int = 0
    data: bytearray | None = None


@dataclass
class _Cmd:
    want: int                       # bytes of data expected back
    out: bytes | memoryview | None  # data to send (R2T path)
    data: bytearray = field(default_factory=bytearray)


class QueueConn:
    """One NVMe/TCP connection (one queue pair), blocking with bounded waits."""

    def __init__(self, traddr: str, trsvcid: int | str, hdgst: bool = False,
                 ddgst: bool = False, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((traddr, int(trsvcid)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = pdu.PduReader(max_plen=(1 << 21))
        self.writer = pdu.PduWriter()
        self.cmds: dict[int, _Cmd] = {}
        self.done: dict[int, Completion] = {}
        self.next_cid = 0
        self.icd_size = 8192
        self.sock.sendall(pdu.ic_req(hdgst=hdgst, ddgst=ddgst))
        resp = self._next_pdu(time.monotonic() + timeout)
        if resp.type != pdu.ICRESP:
            raise NvmeError(f"expected ICResp, got {pdu.PDU_NAMES.get(resp.type, resp.type)}")
        _pfv, _cpda, dgst, self.maxh2cdata = pdu.parse_ic(resp)
        self.reader.hdgst = self.writer.hdgst = bool(dgst & pdu.DGST_HDGST_ENABLE)
        self.reader.ddgst = self.writer.ddgst = bool(dgst & pdu.DGST_DDGST_ENABLE)

    def close(self) -> None:
        self.sock.close()

    # -- PDUs --------------------------------------------------------------------------
    def _next_pdu(self, deadline: float) -> pdu.Pdu:
        while True:
            p = self.reader.next()
            if p is not None:
                return p
            left = deadline - time.monotonic()
            if left <= 0:
                raise NvmeError("timed out waiting for the target")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 18)
            except TimeoutError:
                raise NvmeError("timed out waiting for the target") from None
            except OSError as exc:
                raise NvmeError(f"connection failed: {exc}") from None
            if not data:
                raise NvmeError("target closed the connection")
            self.reader.feed(data)

    def _handle(self, p: pdu.Pdu) -> None:
        if p.type == pdu.CAPSULE_RESP:
            dw0, dw1, _sqhd, _sqid, cid, status = _CQE.unpack_from(p.header, pdu.CH_SIZE)
            cmd = self.cmds.pop(cid, None)
            if cmd is None:
                # As for the Linux host: a second completion, or one for a command never
                # sent, is a fatal error of the target.
                raise NvmeError(f"completion for command {cid}, which is not outstanding")
            self.done[cid] = Completion(cid, nvme.status_code(status), dw0, dw1, cmd.data)
        elif p.type == pdu.C2H_DATA:
            cccid, _ttag, datao, datal = pdu.parse_data_hdr(p)
            cmd = self.cmds.get(cccid)
            if cmd is None or datao + datal > cmd.want:
                raise NvmeError(f"C2HData for unknown command {cccid} or out of range")
            if len(cmd.data) < datao + datal:
                cmd.data.extend(bytes(datao + datal - len(cmd.data)))
            cmd.data[datao:datao + datal] = p.data
            if p.flags & pdu.FLAG_SUCCESS:
                del self.cmds[cccid]
                self.done[cccid] = Completion(cccid, 0, data=cmd.data)
        elif p.type == pdu.R2T:
            cccid, ttag, r2to, r2tl = pdu.parse_data_hdr(p)
            cmd = self.cmds.get(cccid)
            if cmd is None or cmd.out is None:
                raise NvmeError(f"R2T for unknown command {cccid}")
            view = memoryview(cmd.out)
            pos = r2to
            while pos < r2to + r2tl:
                n = min(self.maxh2cdata, r2to + r2tl - pos)
                self.writer.h2c_data(cccid, ttag, pos, view[pos:pos + n],
                                     pos + n == r2to + r2tl)
                pos += n
            self.sock.sendall(self.writer.take())
        elif p.type == pdu.C2H_TERM_REQ:
            fes, fei = pdu.parse_term(p)
            raise NvmeError(f"target sent C2HTermReq fes={fes:#x} fei={fei}")
        else:
            raise NvmeError(f"unexpected PDU {pdu.PDU_NAMES.get(p.type, p.type)}")

    # -- commands ----------------------------------------------------------------------
    def alloc_cid(self) -> int:
        for _ in range(0x10000):
            cid = self.next_cid
            self.next_cid = (self.next_cid + 1) & 0xFFFF
            if cid not in self.cmds and cid not in self.done:
                return cid
        raise NvmeError("no free command id")

    def submit(self, sqe: bytearray, data_out: bytes | memoryview | None = None,
               data_in: int = 0, flush: bool = True) -> int:
        """Send a command; ``sqe`` gets its cid and SGL filled in here."""
        cid = self.alloc_cid()
        _CID.pack_into(sqe, _CID_AT, cid)
        n = len(data_out) if data_out is not None else data_in
        in_capsule = data_out is not None and len(data_out) <= self.icd_size
        sgl = nvme.SGL_DATA_BLOCK_OFFSET if in_capsule else nvme.SGL_TRANSPORT_DATA_BLOCK
        _SGL.pack_into(sqe, _SGL_AT, 0, n, sgl if n else 0)
        self.cmds[cid] = _Cmd(data_in, None if in_capsule else data_out)
        self.writer.capsule_cmd(sqe, data_out if in_capsule else None)
        if flush:
            self.sock.sendall(self.writer.take())
        return cid

    def wait(self, cid: int, timeout: float | None = None) -> Completion:
        deadline = time.monotonic() + (timeout or self.timeout)
        while cid not in self.done:
            self._handle(self._next_pdu(deadline))
        return self.done.pop(cid)

    def poll(self, timeout: float) -> list[Completion]:
        """Process whatever arrives within ``timeout``; return completions collected."""
        deadline = time.monotonic() + timeout
        if not self.done:
            try:
                self._handle(self._next_pdu(deadline))
            except NvmeError as exc:
                if "timed out" not in str(exc):
                    raise
        while (p := self.reader.next()) is not None:
            self._handle(p)
        out = list(self.done.values())
        self.done.clear()
        return out

    def pump(self, timeout: float) -> list[Completion]:
        """Read what arrives within ``timeout`` (once), handle every whole PDU, and return
        the completions collected; for callers that multiplex many queues."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 18)
        except (TimeoutError, BlockingIOError):
            data = None
        except OSError as exc:
            raise NvmeError(f"connection failed: {exc}") from None
        finally:
            self.sock.settimeout(self.timeout)
        if data == b"":
            raise NvmeError("target closed the connection")
        if data:
            self.reader.feed(data)
        while (p := self.reader.next()) is not None:
            self._handle(p)
        out = list(self.done.values())
        self.done.clear()
        return out

    def execute(self, what: str, sqe: bytearray, data_out: bytes | memoryview | None = None,
                data_in: int = 0, timeout: float | None = None) -> Completion:
        comp = self.wait(self.submit(sqe, data_out, data_in), timeout)
        if comp.status:
            raise NvmeStatusError(what, comp.status, comp.dw0)
        return comp


def make_sqe(opcode: int, nsid: int = 0, cdw10: int = 0, cdw11: int = 0, cdw12: int = 0,
             cdw13: int = 0, cdw14: int = 0, cdw15: int = 0) -> bytearray:
    """A command; :meth:`QueueConn.submit` fills in its cid and SGL. Packed positionally
    (the SQE's field order), as the I/O workload calls this once per command."""
    return bytearray(_SQE.pack(opcode, nvme.PSDT_SGL, 0, nsid, 0, 0, 0, 0, 0, 0, cdw10, cdw11,
                               cdw12, cdw13, cdw14, cdw15))


def connect_sqe(qid: int, sqsize: int, kato_ms: int) -> bytearray:
    sqe = nvme.FABRICS_SQE.build(opc=nvme.FABRICS, fuse_psdt=nvme.PSDT_SGL,
                                 fctype=nvme.FCTYPE_CONNECT)
    nvme.CONNECT_SQE.put(sqe, recfmt=0, qid=qid, sqsize=sqsize, cattr=0, kato=kato_ms)
    return sqe


def property_sqe(fctype: int, offset: int, value: int = 0, size8: bool = False) -> bytearray:
    sqe = nvme.FABRICS_SQE.build(opc=nvme.FABRICS, fuse_psdt=nvme.PSDT_SGL, fctype=fctype)
    nvme.PROPERTY_SQE.put(sqe, attrib=1 if size8 else 0, ofst=offset, value=value)
    return sqe


def connect_data(hostid: str, cntlid: int, subnqn: str, hostnqn: str) -> bytes:
    return bytes(nvme.CONNECT_DATA.build(hostid=uuidlib.UUID(hostid).bytes, cntlid=cntlid,
                                         subnqn=subnqn.encode(), hostnqn=hostnqn.encode()))
