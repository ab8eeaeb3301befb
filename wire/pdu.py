"""NVMe/TCP 1.0 PDUs: the one place their bytes are declared, packed and parsed.

Field names follow the NVMe/TCP Transport Specification (pdu-type, flags, hlen, pdo, plen;
ICReq pfv/hpda/dgst/maxr2t; ICResp pfv/cpda/dgst/maxh2cdata; data PDUs cccid/ttag/datao/
datal; R2T r2to/r2tl; TermReq fes/fei). Both the target and the initiator use this module.

:class:`PduReader` is sans-I/O: it is handed bytes, and hands back whole PDUs with digests
verified; it never touches a socket, so a connection's parse position is plain data.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import crc32c as _crc32c
from nvmf_phoenix.wire.layout import Layout

# pdu-type
ICREQ, ICRESP, H2C_TERM_REQ, C2H_TERM_REQ = 0x00, 0x01, 0x02, 0x03
CAPSULE_CMD, CAPSULE_RESP, H2C_DATA, C2H_DATA, R2T = 0x04, 0x05, 0x06, 0x07, 0x09
PDU_NAMES = {ICREQ: "ICReq", ICRESP: "ICResp", H2C_TERM_REQ: "H2CTermReq",
             C2H_TERM_REQ: "C2HTermReq", CAPSULE_CMD: "CapsuleCmd",
             CAPSULE_RESP: "CapsuleResp", H2C_DATA: "H2CData", C2H_DATA: "C2HData",
             R2T: "R2T"}

# flags
FLAG_HDGSTF = 0x01
FLAG_DDGSTF = 0x02
FLAG_LAST_PDU = 0x04   # H2CData / C2HData
FLAG_SUCCESS = 0x08    # C2HData: no CapsuleResp follows

# ICReq/ICResp dgst bits
DGST_HDGST_ENABLE = 0x01
DGST_DDGST_ENABLE = 0x02

# Fatal error status (FES) of a TermReq
FES_INVALID_HEADER_FIELD = 0x01
FES_PDU_SEQUENCE_ERROR = 0x02
FES_HEADER_DIGEST_ERROR = 0x03
FES_DATA_OUT_OF_RANGE = 0x04
FES_DATA_LIMIT_EXCEEDED = 0x05
FES_UNSUPPORTED_PARAMETER = 0x06

# Header lengths (hlen) fixed by the specification
HLEN_IC = 128
HLEN_CAPSULE_CMD = 8 + 64
HLEN_CAPSULE_RESP = 8 + 16
HLEN_DATA = 24
HLEN_R2T = 24
HLEN_TERM = 24
MAX_TERM_DATA = 128   # a TermReq carries at most this much of the offending header

_CH_FIELDS = [("pdu_type", 0, "B"), ("flags", 1, "B"), ("hlen", 2, "B"), ("pdo", 3, "B"),
              ("plen", 4, "I")]
CH = Layout(8, _CH_FIELDS)                       # the common header of every PDU
IC_REQ = Layout(HLEN_IC, [*_CH_FIELDS, ("pfv", 8, "H"), ("hpda", 10, "B"), ("dgst", 11, "B"),
                          ("maxr2t", 12, "I")])
IC_RESP = Layout(HLEN_IC, [*_CH_FIELDS, ("pfv", 8, "H"), ("cpda", 10, "B"), ("dgst", 11, "B"),
                           ("maxh2cdata", 12, "I")])
DATA_HDR = Layout(HLEN_DATA, [*_CH_FIELDS, ("cccid", 8, "H"), ("ttag", 10, "H"),
                              ("datao", 12, "I"), ("datal", 16, "I")])
R2T_HDR = Layout(HLEN_R2T, [*_CH_FIELDS, ("cccid", 8, "H"), ("ttag", 10, "H"),
                            ("r2to", 12, "I"), ("r2tl", 16, "I")])
TERM_HDR = Layout(HLEN_TERM, [*_CH_FIELDS, ("fes", 8, "H"), ("fei", 10, "I")])
DIGEST = struct.Struct("<I")
# What every PDU in and out goes through, as plain Structs (see Layout.plain)
_CH, _DATA, _R2T = CH.plain, DATA_HDR.plain, R2T_HDR.plain
CH_SIZE = CH.size             # the SQE or CQE of a capsule starts here


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC32C as NVMe/TCP digests use it (the C-accelerated package does the work)."""
    return _crc32c.crc32c(data)


class ProtocolError(Exception):
    """The peer broke the transport protocol; ``fes``/``fei`` go into a TermReq."""

    def __init__(self, message: str, fes: int = FES_INVALID_HEADER_FIELD, fei: int = 0,
                 header: bytes = b"") -> None:
        super().__init__(message)
        self.fes = fes
        self.fei = fei
        self.header = header


@dataclass(slots=True)
class Pdu:
    """A received PDU: ``header`` is the full hlen bytes, ``data`` the payload (or empty)."""

    type: int
    flags: int
    hlen: int
    pdo: int
    plen: int
    header: memoryview
    data: memoryview


def _digest_len(flags: int, hdgst: bool, ddgst: bool, has_data: bool) -> tuple[int, int]:
    return (4 if hdgst and flags & FLAG_HDGSTF else 0,
            4 if ddgst and has_data and flags & FLAG_DDGSTF else 0)


# Header lengths every PDU type must carry, and whether it may carry data.
_SHAPE = {ICREQ: (HLEN_IC, False), ICRESP: (HLEN_IC, False), CAPSULE_CMD: (HLEN_CAPSULE_CMD,
          True), CAPSULE_RESP: (HLEN_CAPSULE_RESP, False), H2C_DATA: (HLEN_DATA, True),
          C2H_DATA: (HLEN_DATA, True), R2T: (HLEN_R2T, False), H2C_TERM_REQ: (HLEN_TERM, True),
          C2H_TERM_REQ: (HLEN_TERM, True)}


class PduReader:
    """Incremental PDU parser: ``feed`` bytes, then take PDUs with ``next``.

    ``hdgst``/``ddgst`` say which digests were negotiated; flags in each PDU must agree.
    ``max_plen`` bounds what one PDU may claim, so a hostile length cannot make us buffer
    without limit.
    """

    def __init__(self, max_plen: int = 1 << 20) -> None:
        self.buf: bytearray | memoryview = bytearray()
        self.pos = 0
        self.end = 0
        self.hdgst = False
        self.ddgst = False
        self.max_plen = max_plen

    @classmethod
    def over(cls, buf: memoryview, pos: int, end: int, max_plen: int) -> PduReader:
        """A reader of bytes already placed in ``buf`` (a shared-memory receive ring) by
        someone else: they announce more with :meth:`extend`; nothing is copied."""
        reader = cls(max_plen)
        reader.buf, reader.pos, reader.end = buf, pos, end
        return reader

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        buf = self.buf
        assert isinstance(buf, bytearray), "feed() is for readers that own their buffer"
        if self.pos and self.pos == len(buf):
            buf.clear()
            self.pos = 0
        elif self.pos > 65536:
            del buf[:self.pos]
            self.pos = 0
        buf += data
        self.end = len(buf)

    def extend(self, n: int) -> None:
        """``n`` more bytes were placed after ``end`` in an external buffer."""
        self.end += n

    def pending(self) -> int:
        return self.end - self.pos

    def next(self) -> Pdu | None:
        """The next complete PDU, or None if more bytes are needed."""
        buf, pos, end = self.buf, self.pos, self.end
        if end - pos < CH_SIZE:
            return None
        ptype, flags, hlen, pdo, plen = _CH.unpack_from(buf, pos)
        shape = _SHAPE.get(ptype)
        header = bytes(buf[pos:pos + CH_SIZE])
        if shape is None:
            raise ProtocolError(f"unknown PDU type {ptype:#x}", FES_INVALID_HEADER_FIELD, 0,
                                header)
        if hlen != shape[0]:
            raise ProtocolError(f"{PDU_NAMES[ptype]} with hlen {hlen}", FES_INVALID_HEADER_FIELD,
                                CH.offset("hlen"), header)
        hd, _ = _digest_len(flags, self.hdgst, False, False)
        if plen < hlen + hd or plen > self.max_plen:
            raise ProtocolError(f"{PDU_NAMES[ptype]} with plen {plen}",
                                FES_DATA_LIMIT_EXCEEDED if plen > self.max_plen
                                else FES_INVALID_HEADER_FIELD, CH.offset("plen"), header)
        if end - pos < plen:
            return None
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        hdr = view[pos:pos + hlen]
        if hd:
            (got,) = DIGEST.unpack_from(buf, pos + hlen)
            if got != crc32c(hdr):
                raise ProtocolError("header digest mismatch", FES_HEADER_DIGEST_ERROR, 0,
                                    bytes(hdr[:MAX_TERM_DATA]))
        data = view[0:0]
        if plen > hlen + hd:
            if not shape[1] or pdo < hlen + hd or pdo > plen:
                raise ProtocolError(f"{PDU_NAMES[ptype]} with pdo {pdo}",
                                    FES_INVALID_HEADER_FIELD, CH.offset("pdo"),
                                    bytes(hdr[:MAX_TERM_DATA]))
            dd = 4 if self.ddgst and flags & FLAG_DDGSTF and ptype not in (
                H2C_TERM_REQ, C2H_TERM_REQ) else 0
            data = view[pos + pdo:pos + plen - dd]
            if dd:
                (got,) = DIGEST.unpack_from(buf, pos + plen - 4)
                if got != crc32c(data):
                    raise ProtocolError("data digest mismatch", FES_HEADER_DIGEST_ERROR, 0,
                                        bytes(hdr[:MAX_TERM_DATA]))
        self.pos = pos + plen
        return Pdu(ptype, flags, hlen, pdo, plen, hdr, data)


class PduWriter:
    """Builds outgoing PDUs with the negotiated digests into one bytearray."""

    def __init__(self) -> None:
        self.hdgst = False
        self.ddgst = False
        self.out = bytearray()

    def take(self) -> bytearray:
        out, self.out = self.out, bytearray()
        return out

    def _emit(self, header: bytes, data: bytes | memoryview | None = None) -> None:
        out = self.out
        out += header
        if self.hdgst:
            out += DIGEST.pack(crc32c(header))
        if data is not None and len(data):
            out += data
            if self.ddgst:
                out += DIGEST.pack(crc32c(data))

    def _flags(self, flags: int, has_data: bool) -> int:
        if self.hdgst:
            flags |= FLAG_HDGSTF
        if self.ddgst and has_data:
            flags |= FLAG_DDGSTF
        return flags

    def _lens(self, hlen: int, datal: int) -> tuple[int, int]:
        """(pdo, plen) for a PDU whose data follows the header (no padding: cpda 0)."""
        hd = 4 if self.hdgst else 0
        if not datal:
            return 0, hlen + hd
        return hlen + hd, hlen + hd + datal + (4 if self.ddgst else 0)

    def capsule_cmd(self, sqe: bytes | bytearray, data: bytes | memoryview | None = None) -> None:
        n = len(data) if data is not None else 0
        pdo, plen = self._lens(HLEN_CAPSULE_CMD, n)
        ch = _CH.pack(CAPSULE_CMD, self._flags(0, n > 0), HLEN_CAPSULE_CMD, pdo, plen)
        self._emit(ch + bytes(sqe), data)

    def capsule_resp(self, cqe: bytes | bytearray) -> None:
        _, plen = self._lens(HLEN_CAPSULE_RESP, 0)
        ch = _CH.pack(CAPSULE_RESP, self._flags(0, False), HLEN_CAPSULE_RESP, 0, plen)
        self._emit(ch + bytes(cqe))

    def c2h_data(self, cccid: int, datao: int, data: bytes | memoryview, last: bool,
                 success: bool) -> None:
        pdo, plen = self._lens(HLEN_DATA, len(data))
        flags = (FLAG_LAST_PDU if last else 0) | (FLAG_SUCCESS if success else 0)
        self._emit(_DATA.pack(C2H_DATA, self._flags(flags, True), HLEN_DATA, pdo, plen,
                              cccid, 0, datao, len(data)), data)

    def h2c_data(self, cccid: int, ttag: int, datao: int, data: bytes | memoryview,
                 last: bool) -> None:
        pdo, plen = self._lens(HLEN_DATA, len(data))
        flags = FLAG_LAST_PDU if last else 0
        self._emit(_DATA.pack(H2C_DATA, self._flags(flags, True), HLEN_DATA, pdo, plen,
                              cccid, ttag, datao, len(data)), data)

    def r2t(self, cccid: int, ttag: int, r2to: int, r2tl: int) -> None:
        _, plen = self._lens(HLEN_R2T, 0)
        self._emit(_R2T.pack(R2T, self._flags(0, False), HLEN_R2T, 0, plen, cccid, ttag,
                             r2to, r2tl))

    def term_req(self, ptype: int, fes: int, fei: int, offending: bytes) -> None:
        """A TermReq is sent without digests: the peer may not be able to check them."""
        data = offending[:MAX_TERM_DATA]
        plen = HLEN_TERM + len(data)
        self.out += TERM_HDR.pack(ptype, 0, HLEN_TERM, HLEN_TERM if data else 0, plen, fes,
                                  fei) + data


def ic_req(hpda: int = 0, hdgst: bool = False, ddgst: bool = False, maxr2t: int = 0) -> bytes:
    dgst = (DGST_HDGST_ENABLE if hdgst else 0) | (DGST_DDGST_ENABLE if ddgst else 0)
    return IC_REQ.pack(ICREQ, 0, HLEN_IC, 0, HLEN_IC, 0, hpda, dgst, maxr2t)


def ic_resp(cpda: int, hdgst: bool, ddgst: bool, maxh2cdata: int) -> bytes:
    dgst = (DGST_HDGST_ENABLE if hdgst else 0) | (DGST_DDGST_ENABLE if ddgst else 0)
    return IC_RESP.pack(ICRESP, 0, HLEN_IC, 0, HLEN_IC, 0, cpda, dgst, maxh2cdata)


def parse_ic(pdu: Pdu) -> tuple[int, int, int, int]:
    """(pfv, hpda-or-cpda, dgst, maxr2t-or-maxh2cdata) of an ICReq/ICResp."""
    _, _, _, _, _, pfv, pda, dgst, last = IC_REQ.unpack_from(pdu.header)
    return pfv, pda, dgst, last


def parse_data_hdr(pdu: Pdu) -> tuple[int, int, int, int]:
    """(cccid, ttag, datao/r2to, datal/r2tl) of an H2CData, C2HData or R2T."""
    _, _, _, _, _, cccid, ttag, off, length = _DATA.unpack_from(pdu.header)
    return cccid, ttag, off, length


def parse_term(pdu: Pdu) -> tuple[int, int]:
    _, _, _, _, _, fes, fei = TERM_HDR.unpack_from(pdu.header)
    return fes, fei
