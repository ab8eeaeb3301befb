"""One connection's state in shared memory: the layout, declared once.

The crash-transparent target (embedded/transparent.py) keeps, per TCP connection, a file on
hugetlbfs (or /dev/shm) that outlives the serving process:

    header (4 KiB)      magic, layout version, geometry, connection id, the kernel's byte
                        counters at accept (baselines), header CRC32C
    commit slot 0, 1    COMMIT record + CRC, then a blob (the queue pair's plain state,
                        JSON) - written alternately, header last
    seal (in the header page)  the sequence number of the last *complete* commit + CRC
    receive ring        bytes read from the socket land here directly (recv_into)
    transmit ring       every PDU is copied here, and committed, before it is sent
    staging             fixed-size slots where R2T writes gather their H2CData

Stream positions count bytes since accept. A commit says: every PDU before ``rx_done`` has
been executed and its output lies in the transmit ring before ``tx_done``; ``rx_base`` and
``tx_base`` are the stream positions sitting at offset 0 of each ring. How far the dead
process really got on the socket is not stored at all: the kernel's counters say it
exactly (see embedded/tcpcount.py). Header, commit records and seal are CRC-framed records
(persist/record.py).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from nvmf_phoenix.persist import shm
from nvmf_phoenix.persist.record import Sealed, checksum
from nvmf_phoenix.wire.layout import Layout

MAGIC = b"PHXCONN1"
LAYOUT_VERSION = 4
HEADER_SIZE = 4096
# slot_size and slots: the staging slots; base_rx and base_tx: the baselines, the kernel's
# bytes_received - SIOCINQ and bytes_acked + SIOCOUTQ at accept (signed: a connection reset
# before it was accepted reports odd counters)
HEADER = Layout(56, [
    ("magic", 0, "8s"), ("version", 8, "I"), ("rx_size", 12, "I"), ("tx_size", 16, "I"),
    ("slot_size", 20, "I"), ("slots", 24, "I"), ("commit_size", 28, "I"),
    ("conn_id", 32, "Q"), ("base_rx", 40, "q"), ("base_tx", 48, "q")])
HEADER_REC = Sealed(HEADER)
# sqhd and ttag: the queue pair's SQ head and next transfer tag; blob: its other state
COMMIT = Layout(52, [
    ("seq", 0, "Q"), ("rx_done", 8, "Q"), ("rx_base", 16, "Q"), ("tx_done", 24, "Q"),
    ("tx_base", 32, "Q"), ("sqhd", 40, "H"), ("ttag", 42, "H"), ("blob_length", 44, "I"),
    ("blob_crc", 48, "I")])
COMMIT_REC = Sealed(COMMIT)
COMMIT_HDR_SIZE = 64
SEAL = Sealed(Layout(8, [("seq", 0, "Q")]))   # seq of the last complete commit
SEAL_OFFSET = 2048                     # in the header page, after the header


class ConnStateError(Exception):
    """The file cannot be trusted; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Geometry:
    rx_size: int = 1 << 20
    tx_size: int = 2 << 20
    slot_size: int = 128 << 10
    slots: int = 16
    commit_size: int = 16 << 10

    @property
    def total(self) -> int:
        return HEADER_SIZE + 2 * self.commit_size + self.rx_size + self.tx_size + \
            self.slot_size * self.slots


@dataclass
class Commit:
    seq: int = 0
    rx_done: int = 0
    rx_base: int = 0
    tx_done: int = 0
    tx_base: int = 0
    sqhd: int = 0      # the queue pair's fields that change with every command live here,
    ttag: int = 1      # so the blob is re-encoded only when its colder state changes


class ConnState:
    """An open connection-state file."""

    def __init__(self, path: str, mm: object, geo: Geometry, conn_id: int, base_rx: int,
                 base_tx: int, huge: bool) -> None:
        self.path = path
        self.mm = mm
        self.geo = geo
        self.conn_id = conn_id
        self.base_rx = base_rx
        self.base_tx = base_tx
        self.huge = huge
        view = memoryview(mm)   # type: ignore[arg-type]
        self._view = view
        rx_off = HEADER_SIZE + 2 * geo.commit_size
        tx_off = rx_off + geo.rx_size
        st_off = tx_off + geo.tx_size
        self.rx = view[rx_off:tx_off]
        self.tx = view[tx_off:st_off]
        self.staging = view[st_off:st_off + geo.slot_size * geo.slots]

    # -- creation and attachment ---------------------------------------------------------
    @classmethod
    def create(cls, sub: str, conn_id: int, base_rx: int, base_tx: int,
               geo: Geometry = Geometry(), directory: str | None = None) -> ConnState:
        """A new file with an empty first commit, made before the first byte is read."""
        path, mm, huge = shm.place(f"conn-{conn_id}", geo.total, directory, sub)
        mm[:HEADER_REC.size] = HEADER_REC.pack(MAGIC, LAYOUT_VERSION, geo.rx_size, geo.tx_size,
                                               geo.slot_size, geo.slots, geo.commit_size,
                                               conn_id, base_rx, base_tx)
        state = cls(path, mm, geo, conn_id, base_rx, base_tx, huge)
        state.commit(Commit(seq=1), b"{}")
        return state

    @classmethod
    def open(cls, path: str) -> ConnState:
        try:
            size = os.path.getsize(path)
            mm = shm.map_file(path, size, create=False)
        except OSError as exc:
            raise ConnStateError(f"{path}: {exc.strerror}") from None
        try:
            return cls._checked(path, mm, size)
        except ConnStateError:
            mm.close()
            raise

    @classmethod
    def _checked(cls, path: str, mm: object, size: int) -> ConnState:
        if size < HEADER_SIZE:
            raise ConnStateError(f"{path}: truncated ({size} bytes)")
        raw = bytes(memoryview(mm)[:HEADER_REC.size])   # type: ignore[arg-type]
        (magic, version, rx, tx, slot, slots, commit, conn_id, base_rx,
         base_tx) = HEADER_REC.peek(raw)
        if magic != MAGIC:
            raise ConnStateError(f"{path}: bad magic {magic!r}")
        if version != LAYOUT_VERSION:
            raise ConnStateError(f"{path}: layout version {version}, this nvmf-phoenix "
                                 f"reads {LAYOUT_VERSION}")
        if HEADER_REC.unpack(raw) is None:
            raise ConnStateError(f"{path}: header CRC mismatch")
        geo = Geometry(rx, tx, slot, slots, commit)
        if size < geo.total:
            raise ConnStateError(f"{path}: truncated ({size} < {geo.total} bytes)")
        return cls(path, mm, geo, conn_id, base_rx, base_tx, shm.on_hugetlbfs(path))

    def close(self) -> None:
        """Unmap; views a queue pair still holds (a pending write's staging slot) keep
        the mapping alive until they go, so a refusal to close now is not an error."""
        for v in (self.rx, self.tx, self.staging, self._view):
            v.release()
        with contextlib.suppress(BufferError):
            self.mm.close()   # type: ignore[attr-defined]

    def unlink(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    # -- commits -------------------------------------------------------------------------
    def _slot_off(self, i: int) -> int:
        return HEADER_SIZE + i * self.geo.commit_size

    def commit(self, c: Commit, blob: bytes) -> None:
        """Write into the slot the previous commit did not use, header last, then the
        seal: a writer killed half-way leaves that slot invalid and the other one intact;
        one killed between record and seal leaves a complete commit the seal lags by one."""
        self._write_slot(c, blob)
        self._view[SEAL_OFFSET:SEAL_OFFSET + SEAL.size] = SEAL.pack(c.seq)

    def _write_slot(self, c: Commit, blob: bytes) -> None:
        if len(blob) > self.geo.commit_size - COMMIT_HDR_SIZE:
            raise ConnStateError(f"{self.path}: state of {len(blob)} bytes exceeds the "
                                 f"commit slot ({self.geo.commit_size} bytes)")
        off = self._slot_off(c.seq & 1)
        view = self._view
        view[off + COMMIT_HDR_SIZE:off + COMMIT_HDR_SIZE + len(blob)] = blob
        view[off:off + COMMIT_REC.size] = _record(c, blob)

    def commit_torn(self, c: Commit, blob: bytes) -> None:
        """What a writer killed in the middle of :meth:`commit` leaves (failpoint tests):
        the blob and half of the record."""
        off = self._slot_off(c.seq & 1)
        self._view[off + COMMIT_HDR_SIZE:off + COMMIT_HDR_SIZE + len(blob)] = blob
        self._view[off:off + COMMIT.size // 2] = _record(c, blob)[:COMMIT.size // 2]

    def commit_unsealed(self, c: Commit, blob: bytes) -> None:
        """What a writer killed after the record but before the seal leaves (failpoint
        tests): a complete commit the seal does not name yet."""
        self._write_slot(c, blob)

    def _read_slot(self, i: int) -> tuple[Commit, bytes] | None:
        off = self._slot_off(i)
        got = COMMIT_REC.unpack(bytes(self._view[off:off + COMMIT_REC.size]))
        if got is None:
            return None
        seq, rx_done, rx_base, tx_done, tx_base, sqhd, ttag, blen, bcrc = got
        if seq == 0 or blen > self.geo.commit_size - COMMIT_HDR_SIZE:
            return None
        blob = bytes(self._view[off + COMMIT_HDR_SIZE:off + COMMIT_HDR_SIZE + blen])
        if checksum(blob) != bcrc:
            return None
        return Commit(seq, rx_done, rx_base, tx_done, tx_base, sqhd, ttag), blob

    def latest(self) -> tuple[Commit, bytes]:
        """The newest complete commit; ConnStateError if neither slot holds one, if it
        contradicts the geometry, or if it is not the one the seal names.

        The seal is written after each commit. A slot that fails its CRC is then either a
        commit torn by a death (the seal still names the previous one, which is exactly
        where the dead process stood) or a complete commit damaged later (the seal names
        it): the older slot is used only in the first case, because after a complete
        commit the rings may have been reused in ways the older one does not describe.
        A complete commit one past the seal is a death between record and seal: nothing
        of it was sent yet (sending waits for the seal), and it is whole, so it is used."""
        found = [s for s in (self._read_slot(0), self._read_slot(1)) if s is not None]
        if not found:
            raise ConnStateError(f"{self.path}: no complete commit")
        c, blob = max(found, key=lambda s: s[0].seq)
        got = SEAL.unpack(self._view, SEAL_OFFSET)
        if got is None:
            raise ConnStateError(f"{self.path}: commit seal damaged")
        (sealed,) = got
        if sealed > c.seq:
            raise ConnStateError(f"{self.path}: commit {sealed} is sealed but damaged "
                                 f"(newest intact: {c.seq})")
        if c.seq > sealed + 1:
            raise ConnStateError(f"{self.path}: commit {c.seq} is newer than the seal "
                                 f"({sealed}) allows")
        if not (c.rx_base <= c.rx_done <= c.rx_base + self.geo.rx_size and
                c.tx_base <= c.tx_done <= c.tx_base + self.geo.tx_size):
            raise ConnStateError(f"{self.path}: commit {c.seq} lies outside its rings")
        return c, blob


def _record(c: Commit, blob: bytes) -> bytes:
    """The commit record for ``c`` with ``blob``, CRC-framed."""
    return COMMIT_REC.pack(c.seq, c.rx_done, c.rx_base, c.tx_done, c.tx_base, c.sqhd, c.ttag,
                           len(blob), checksum(blob))
