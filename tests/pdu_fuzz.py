"""PDU fuzzing harness: valid host sessions, mutations of them, and checks of the answers.

Shared by tests/test_fuzz_pdu.py (hypothesis, bounded for CI), tests/pdu_fuzz_sansio.py
(the protocol core without sockets), tests/pdu_fuzz_live.py (a live target over TCP) and
benchmarks/fuzz_pdu.py (random, long runs). A session is what the project's initiator
sends (built with target/pdu.PduWriter, split back into frames with PduReader): ICReq, a
Connect, then commands. A :class:`Mutation` edits it at the level of
frames (set an SQE/Connect/H2CData/header field, replace data, duplicate, drop, swap) or
of the byte stream (flip, insert, delete, truncate). Mutations are plain data, so
hypothesis can shrink them and a random driver can produce them just as well.

:class:`OutputChecker` is the host's view of what came back: only well-formed PDUs of the
kinds a target may send, digests right, a C2HTermReq last.
"""
from __future__ import annotations

import itertools
import random
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from nvmf_phoenix.initiator.connection import connect_data, connect_sqe, property_sqe
from nvmf_phoenix.wire import nvme, pdu

from nvmf_phoenix.model import DISCOVERY_NQN
from tests.target_fixture import HOSTNQN, NQN

BS = 512
BLOCKS = 1 << 17          # 64 MiB: room for reads and writes larger than MDTS
HOSTID = "6e767068-6f65-6e69-7800-000000000001"
OTHER_NQN = "nqn.2016-06.io.spdk:good"
OTHER_HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:600d600d-0000-4000-8000-000000000001"
KINDS = ("admin", "io", "discovery", "raw")


# -- sessions ----------------------------------------------------------------------------
@dataclass
class Frame:
    """One PDU of a session: ``header`` is hlen bytes (common header included)."""

    header: bytearray
    data: bytes = b""
    fixed: bool = False   # a mutation set hlen/pdo/plen by hand: encode keeps them

    def encode(self, hdgst: bool, ddgst: bool) -> bytes:
        """Bytes on the wire; pdo/plen follow the contents unless ``fixed``."""
        head = bytes(self.header)
        ptype = head[0] if head else -1
        hd = 4 if hdgst and ptype != pdu.ICREQ and len(head) >= 8 else 0
        dd = 4 if ddgst and self.data and ptype != pdu.ICREQ else 0
        if not self.fixed and len(head) >= 8:
            t, flags, hlen, _, _ = pdu.CH.unpack_from(head)
            pdo = len(head) + hd if self.data else 0
            plen = len(head) + hd + len(self.data) + dd
            head = pdu.CH.pack(t, flags, hlen, pdo & 0xFF, plen & 0xFFFFFFFF) + head[8:]
        out = head + (pdu.DIGEST.pack(pdu.crc32c(head)) if hd else b"") + self.data
        return out + (pdu.DIGEST.pack(pdu.crc32c(self.data)) if dd else b"")


@dataclass
class Session:
    kind: str
    hdgst: bool
    ddgst: bool
    frames: list[Frame]

    def encode(self) -> bytes:
        return b"".join(f.encode(self.hdgst, self.ddgst) for f in self.frames)

    def copy(self) -> Session:
        return replace(self, frames=[Frame(bytearray(f.header), f.data, f.fixed)
                                     for f in self.frames])


class PduBuilder:
    """Writes a host's PDUs with PduWriter, then splits them back into frames."""

    def __init__(self, hdgst: bool, ddgst: bool) -> None:
        self.hdgst, self.ddgst = hdgst, ddgst
        self.w = pdu.PduWriter()
        self.w.hdgst, self.w.ddgst = hdgst, ddgst
        self.raw = bytearray(pdu.ic_req(hdgst=hdgst, ddgst=ddgst))
        self.cid = 0

    def cmd(self, sqe: bytes | bytearray, data: bytes | None = None, data_in: int = 0,
            r2t: int = 0) -> int:
        """Queue a command; in-capsule ``data``, ``data_in`` to read, or ``r2t`` bytes
        to be asked for by the target (transport SGL)."""
        sqe = bytearray(sqe)
        self.cid += 1
        nvme.SQE.put(sqe, cid=self.cid)
        if data is not None:
            nvme.SQE.put(sqe, sgl_length=len(data), sgl_id=nvme.SGL_DATA_BLOCK_OFFSET)
        elif data_in or r2t:
            nvme.SQE.put(sqe, sgl_length=data_in or r2t, sgl_id=nvme.SGL_TRANSPORT_DATA_BLOCK)
        self.w.capsule_cmd(sqe, data)
        self.raw += self.w.take()
        return self.cid

    def io(self, opcode: int, nsid: int, slba: int = 0, nlb: int = 1,
           data: bytes | None = None, data_in: int = 0, r2t: int = 0, cdw11: int = 0) -> int:
        sqe = nvme.SQE.pack(opcode, 0x40, 0, nsid, 0, 0, 0, 0, 0, 0, slba & 0xFFFFFFFF,
                            cdw11 or slba >> 32, nlb - 1, 0, 0, 0)
        return self.cmd(sqe, data, data_in, r2t)

    def admin(self, opcode: int, nsid: int = 0, cdw10: int = 0, cdw11: int = 0,
              data_in: int = 0) -> int:
        sqe = nvme.SQE.pack(opcode, 0x40, 0, nsid, 0, 0, 0, 0, 0, 0, cdw10, cdw11, 0, 0, 0, 0)
        return self.cmd(sqe, data_in=data_in)

    def h2c(self, cid: int, ttag: int, datao: int, data: bytes, last: bool) -> None:
        self.w.h2c_data(cid, ttag, datao, data, last)
        self.raw += self.w.take()

    def session(self, kind: str) -> Session:
        reader = pdu.PduReader(max_plen=1 << 24)
        reader.feed(self.raw)
        frames = []
        while (p := reader.next()) is not None:
            frames.append(Frame(bytearray(p.header), bytes(p.data)))
            reader.hdgst, reader.ddgst = self.hdgst, self.ddgst   # after the ICReq
        return Session(kind, self.hdgst, self.ddgst, frames)


def _connect(b: PduBuilder, qid: int, subnqn: str, hostnqn: str, cntlid: int,
             sqsize: int = 31, kato: int = 30000) -> None:
    b.cmd(connect_sqe(qid, sqsize, kato), connect_data(HOSTID, cntlid, subnqn, hostnqn))


def admin_session(hdgst: bool = False, ddgst: bool = False, subnqn: str = NQN,
                  hostnqn: str = HOSTNQN) -> Session:
    """What a host driver sends on a new admin queue, and the usual admin commands."""
    b = PduBuilder(hdgst, ddgst)
    _connect(b, 0, subnqn, hostnqn, 0xFFFF)
    b.cmd(property_sqe(nvme.FCTYPE_PROPERTY_GET, nvme.PROP_CAP, size8=True))
    b.cmd(property_sqe(nvme.FCTYPE_PROPERTY_SET, nvme.PROP_CC,
                       nvme.CC_EN | (6 << 16) | (4 << 20)))
    b.cmd(property_sqe(nvme.FCTYPE_PROPERTY_GET, nvme.PROP_CSTS))
    b.admin(nvme.ADM_IDENTIFY, 0, nvme.CNS_CONTROLLER, data_in=4096)
    b.admin(nvme.ADM_IDENTIFY, 1, nvme.CNS_NAMESPACE, data_in=4096)
    b.admin(nvme.ADM_IDENTIFY, 0, nvme.CNS_ACTIVE_NS_LIST, data_in=4096)
    b.admin(nvme.ADM_IDENTIFY, 1, nvme.CNS_NS_DESC_LIST, data_in=4096)
    b.admin(nvme.ADM_SET_FEATURES, 0, nvme.FEAT_NUM_QUEUES, 1 | (1 << 16))
    b.admin(nvme.ADM_SET_FEATURES, 0, nvme.FEAT_ASYNC_EVENT, nvme.AEC_NS_ATTR)
    b.admin(nvme.ADM_GET_FEATURES, 0, nvme.FEAT_KATO)
    b.admin(nvme.ADM_GET_LOG_PAGE, 0xFFFFFFFF, nvme.LOG_SMART | (127 << 16), data_in=512)
    b.admin(nvme.ADM_GET_LOG_PAGE, 0xFFFFFFFF, nvme.LOG_CHANGED_NS | (1023 << 16),
            data_in=4096)
    b.admin(nvme.ADM_KEEP_ALIVE)
    b.admin(nvme.ADM_AER)
    b.admin(nvme.ADM_ABORT, 0, 1)
    b.admin(0x55)   # an opcode nobody implements
    return b.session("admin")


def io_session(hdgst: bool = False, ddgst: bool = False, cntlid: int = 1, subnqn: str = NQN,
               hostnqn: str = HOSTNQN, qid: int = 1) -> Session:
    """An I/O queue joining controller ``cntlid``: writes (in-capsule and by R2T), reads,
    flush, write zeroes, deallocate, and two commands the target must refuse."""
    b = PduBuilder(hdgst, ddgst)
    _connect(b, qid, subnqn, hostnqn, cntlid)
    b.io(nvme.NVM_WRITE, 1, 0, 2, data=bytes(range(256)) * 4)
    b.io(nvme.NVM_READ, 1, 0, 2, data_in=2 * BS)
    cid = b.io(nvme.NVM_WRITE, 1, 8, 4, r2t=4 * BS)
    block = b"\xa5" * (2 * BS)
    b.h2c(cid, 1, 0, block, False)       # the target's first R2T on a queue has ttag 1
    b.h2c(cid, 1, 2 * BS, block, True)
    b.io(nvme.NVM_READ, 1, 8, 4, data_in=4 * BS)
    b.io(nvme.NVM_FLUSH, 1)
    b.io(nvme.NVM_WRITE_ZEROES, 1, 2, 2)
    b.io(nvme.NVM_DSM, 1, 0, 1, data=nvme.DSM_RANGE.pack(0, 1, 4), cdw11=0x4)
    b.io(nvme.NVM_READ, 1, BLOCKS - 1, 2, data_in=2 * BS)   # past the end
    b.io(nvme.NVM_READ, 2, 0, 1, data_in=BS)                # no such namespace
    return b.session("io")


def discovery_session(hdgst: bool = False, ddgst: bool = False,
                      hostnqn: str = HOSTNQN) -> Session:
    b = PduBuilder(hdgst, ddgst)
    _connect(b, 0, DISCOVERY_NQN, hostnqn, 0xFFFF)
    b.cmd(property_sqe(nvme.FCTYPE_PROPERTY_SET, nvme.PROP_CC, nvme.CC_EN))
    b.admin(nvme.ADM_IDENTIFY, 0, nvme.CNS_CONTROLLER, data_in=4096)
    b.admin(nvme.ADM_GET_LOG_PAGE, 0, nvme.LOG_DISCOVERY | (255 << 16), data_in=1024)
    b.admin(nvme.ADM_GET_LOG_PAGE, 0, nvme.LOG_DISCOVERY | (1023 << 16), data_in=4096)
    return b.session("discovery")


def session(kind: str, hdgst: bool = False, ddgst: bool = False, cntlid: int = 1,
            subnqn: str = NQN, hostnqn: str = HOSTNQN) -> Session:
    """A valid session of ``kind``; "raw" is an ICReq and Connect with nothing after."""
    if kind == "io":
        return io_session(hdgst, ddgst, cntlid, subnqn, hostnqn)
    if kind == "discovery":
        return discovery_session(hdgst, ddgst, hostnqn)
    s = admin_session(hdgst, ddgst, subnqn, hostnqn)
    if kind == "raw":
        s.frames = s.frames[:2]
        s.kind = "raw"
    return s


# -- mutations ---------------------------------------------------------------------------
FRAME_OPS = ("field", "data", "dup", "drop", "swap")
STREAM_OPS = ("flip", "insert", "delete", "truncate")


@dataclass(frozen=True)
class Mutation:
    """One edit. ``index`` picks a frame or a stream offset (modulo the size, so any
    integer is valid); ``which`` picks a field; ``value``/``blob`` say what to write."""

    op: str
    index: int = 0
    which: int = 0
    value: int = 0
    blob: bytes = b""


_TOKEN = re.compile(r"(\d*)([xcbB?hHiIlLqQsp])")


def _fields(st: struct.Struct) -> list[tuple[int, str, int]]:
    """(offset, code, size) of each non-pad field of a little-endian struct."""
    out, off = [], 0
    for count, code in _TOKEN.findall(st.format):
        n = int(count) if count else 1
        if code == "x":
            off += n
        elif code == "s":
            out.append((off, code, n))
            off += n
        else:
            size = struct.calcsize("<" + code)
            for _ in range(n):
                out.append((off, code, size))
                off += size
    return out


_LAYOUTS: dict[int, list[tuple[struct.Struct, str]]] = {
    pdu.ICREQ: [(pdu.IC_REQ, "header")],
    pdu.H2C_DATA: [(pdu.DATA_HDR, "header")],
    pdu.H2C_TERM_REQ: [(pdu.TERM_HDR, "header")],
}
_CAPSULE = [(pdu.CH, "header"), (nvme.SQE, "sqe")]
_FABRICS = [(nvme.CONNECT_SQE, "sqe"), (nvme.PROPERTY_SQE, "sqe"),
            (nvme.CONNECT_DATA, "data")]
INTERESTING = (0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1, (1 << 64) - 1)
NAMES = (NQN.encode(), OTHER_NQN.encode(), DISCOVERY_NQN.encode(), HOSTNQN.encode(),
         OTHER_HOSTNQN.encode(), b"", b"\xff" * 300, b"nqn.")


def _layouts(frame: Frame) -> list[tuple[struct.Struct, str]]:
    ptype = frame.header[0] if frame.header else -1
    if ptype != pdu.CAPSULE_CMD:
        return _LAYOUTS.get(ptype, [(pdu.CH, "header")])
    fabrics = len(frame.header) > 8 and frame.header[8] == nvme.FABRICS
    return _CAPSULE + (_FABRICS if fabrics else [])


def _set_field(frame: Frame, m: Mutation) -> None:
    choices = [(st, where, f) for st, where in _layouts(frame) for f in _fields(st)]
    _st, where, (off, code, size) = choices[m.which % len(choices)]
    if code == "s":
        raw = m.blob or NAMES[m.value % len(NAMES)]
        value = raw[:size].ljust(size, b"\0")
    else:
        v = INTERESTING[m.value] if m.value < len(INTERESTING) else m.value
        value = (v & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    if where == "data":
        if len(frame.data) >= off + size:
            frame.data = frame.data[:off] + value + frame.data[off + size:]
        return
    off += 8 if where == "sqe" else 0
    if len(frame.header) >= off + size:
        frame.header[off:off + size] = value
        if where == "header" and off in (2, 3, 4):   # hlen, pdo, plen: keep as set
            frame.fixed = True


def _frame_op(frames: list[Frame], m: Mutation) -> None:
    if not frames:
        return
    i = m.index % len(frames)
    if m.op == "field":
        _set_field(frames[i], m)
    elif m.op == "data":
        frames[i].data = m.blob
    elif m.op == "dup":
        f = frames[i]
        frames.insert(i + 1, Frame(bytearray(f.header), f.data, f.fixed))
    elif m.op == "drop":
        del frames[i]
    elif m.op == "swap" and i + 1 < len(frames):
        frames[i], frames[i + 1] = frames[i + 1], frames[i]


def _stream_op(raw: bytearray, m: Mutation) -> bytearray:
    n = len(raw)
    if m.op == "flip" and n:
        raw[m.index % n] ^= (m.value % 255) + 1
    elif m.op == "insert":
        pos = m.index % (n + 1)
        raw[pos:pos] = m.blob
    elif m.op == "delete" and n:
        pos = m.index % n
        del raw[pos:pos + (m.value % 64) + 1]
    elif m.op == "truncate":
        del raw[m.index % (n + 1):]
    return raw


def mutate(s: Session, mutations: Iterable[Mutation]) -> bytes:
    """Frame edits first (in order), then byte-stream edits (in order)."""
    ms = list(mutations)
    s = s.copy()
    for m in ms:
        if m.op in FRAME_OPS:
            _frame_op(s.frames, m)
    raw = bytearray(s.encode())
    for m in ms:
        if m.op in STREAM_OPS:
            raw = _stream_op(raw, m)
    return bytes(raw)


def chunks(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (modulo its length), as TCP might."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# -- the host's view of the answers --------------------------------------------------------
TARGET_SENDS = {pdu.CAPSULE_RESP, pdu.C2H_DATA, pdu.R2T, pdu.C2H_TERM_REQ}


@dataclass
class OutputChecker:
    """Parses what the target sent on one connection and records anything wrong."""

    max_data: int          # largest C2HData/R2T allowed; 0: the ICResp's maxh2cdata
    reader: pdu.PduReader = field(default_factory=lambda: pdu.PduReader(max_plen=1 << 26))
    ic_done: bool = False
    term: bool = False
    pdus: int = 0
    problems: list[str] = field(default_factory=list)

    def feed(self, data: bytes | bytearray, whole: bool = True) -> None:
        """``whole``: the bytes end on a PDU boundary (true per receive() in sans-I/O)."""
        if not data:
            return
        if self.term:
            self.problems.append(f"{len(data)} bytes after C2HTermReq")
            return
        self.reader.feed(data)
        while not self.term:
            try:
                p = self.reader.next()
            except pdu.ProtocolError as exc:
                self.problems.append(f"target sent a malformed PDU: {exc}")
                return
            if p is None:
                break
            self._check(p)
        if whole and self.reader.pending() and not self.term:
            self.problems.append(f"target left {self.reader.pending()} bytes of a PDU")

    def _check(self, p: pdu.Pdu) -> None:
        self.pdus += 1
        name = pdu.PDU_NAMES.get(p.type, hex(p.type))
        if p.type == pdu.C2H_TERM_REQ:
            fes, _fei = pdu.parse_term(p)
            if not 1 <= fes <= 6:
                self.problems.append(f"C2HTermReq with fes {fes}")
            self.term = True
        elif not self.ic_done:
            if p.type != pdu.ICRESP:
                self.problems.append(f"{name} before ICResp")
            pfv, _cpda, dgst, maxh2c = pdu.parse_ic(p)
            if pfv != 0 or maxh2c < 4096:
                self.problems.append(f"ICResp pfv={pfv} maxh2cdata={maxh2c}")
            self.max_data = self.max_data or maxh2c   # 0: trust what the target says
            self.reader.hdgst = bool(dgst & pdu.DGST_HDGST_ENABLE)
            self.reader.ddgst = bool(dgst & pdu.DGST_DDGST_ENABLE)
            self.ic_done = True
        elif p.type not in TARGET_SENDS:
            self.problems.append(f"target sent {name}")
        elif p.type in (pdu.C2H_DATA, pdu.R2T):
            _cccid, _ttag, _off, length = pdu.parse_data_hdr(p)
            if p.type == pdu.C2H_DATA and length != len(p.data):
                self.problems.append(f"C2HData datal {length} with {len(p.data)} bytes")
            if length > self.max_data or (p.type == pdu.R2T and length == 0):
                self.problems.append(f"{name} of {length} bytes (limit {self.max_data})")



@dataclass
class Outcome:
    crash: str | None = None          # an exception that escaped the protocol core
    problems: list[str] = field(default_factory=list)
    closed: bool = False
    pdus_out: int = 0


def random_case(rng: random.Random) -> tuple[str, bool, list[Mutation], list[int]]:
    """A fuzz example drawn with ``rng`` (the long-run driver's equivalent of the
    hypothesis strategies in tests/test_fuzz_pdu.py)."""
    kind = rng.choice(KINDS)
    muts = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5))):
        op = rng.choice(("field",) * 6 + FRAME_OPS + STREAM_OPS)
        value = rng.randrange(len(INTERESTING)) if rng.random() < 0.5 else \
            rng.getrandbits(rng.choice((8, 16, 32, 64)))
        blob = rng.randbytes(rng.choice((0, 1, 4, 8, 24, 72, 200, 1100))) \
            if rng.random() < 0.3 else b""
        muts.append(Mutation(op, rng.getrandbits(16), rng.getrandbits(8), value, blob))
    cuts = [rng.getrandbits(16) for _ in range(rng.choice((0, 0, 1, 3, 10)))]
    return kind, rng.random() < 0.3, muts, cuts
