"""The shared-memory region: latest snapshot in two slots, plus a queue-pair table.

A file on hugetlbfs (or /dev/shm when no hugepages are to be had, with a warning saying
why), mapped MAP_SHARED, survives the SIGKILL of every process that maps it. Layout,
declared once here (little-endian):

    header (4 KiB)   magic, layout version, geometry, header CRC32C; at MARK_OFFSET the
                     journal mark (sequence number of the newest state or change
                     journaled, CRC32C): how far the journal must reach
    slot 0, slot 1   64-byte slot header (generation, length, payload CRC, header CRC)
                     followed by the payload (a serialised TargetState)
    qpair table      fixed-size records, each with its own CRC

A writer fills the *older* slot's payload, then writes that slot's header last. A writer
killed at any instruction leaves either the new slot complete or its CRC broken, and the
other slot holds the previous complete snapshot: a reader never sees a torn state.
"""
from __future__ import annotations

import logging
import mmap
import os
import struct
from dataclasses import dataclass

import crc32c
from nvmf_phoenix.persist.shm import (  # noqa: F401  (re-exported for callers)
    HUGEPAGE,
    candidates,
    hugetlbfs_mount,
    hugetlbfs_mounts,
    map_file,
    on_hugetlbfs,
    place,
    private_dir,
    remove,
    round_up,
)

log = logging.getLogger(__name__)

MAGIC = b"PHXREGN1"
LAYOUT_VERSION = 1
HEADER = struct.Struct("<8sIIQIIQQQQ")   # magic, version, hdr size, slot size, qp slots,
HEADER_SIZE = 4096                        # qp record size, slot0, slot1, qp table, total
MARK = struct.Struct("<QI")               # journal sequence number, its CRC32C
MARK_OFFSET = 2048                        # in the header's spare space: v1 readers skip it
SLOT_HDR = struct.Struct("<QQI")          # generation, payload length, payload CRC
SLOT_HDR_SIZE = 64
# valid, cntlid, qid, sqsize, sqhd, kato_ms, digests, hostnqn, listen, peer
QP_RECORD = struct.Struct("<BxHHHHIB3x64s48s48s")
QP_RECORD_SIZE = QP_RECORD.size + 4      # + CRC32C


class RegionError(Exception):
    """The region cannot be used; the message says what is wrong with which file."""


@dataclass
class QPairRecord:
    cntlid: int
    qid: int
    sqsize: int
    sqhd: int
    kato_ms: int
    digests: int
    hostnqn: str
    listen: str
    peer: str


class Region:
    """An open region (created or attached)."""

    def __init__(self, path: str, mm: mmap.mmap, hugepages: bool) -> None:
        self.path = path
        self.mm = mm
        self.hugepages = hugepages
        (_, _, _, self.slot_size, self.qp_slots, _, s0, s1, self.qp_off,
         self.size) = HEADER.unpack_from(mm, 0)
        self.slots = (s0, s1)

    # -- creation and attachment ---------------------------------------------------------
    @classmethod
    def create(cls, name: str, slot_size: int = 4 << 20, qp_slots: int = 4096,
               directory: str | None = None, sub: str = "") -> Region:
        """Create (or replace) a region; hugetlbfs first, /dev/shm as the fallback."""
        slot_size = round_up(slot_size, 4096)
        s0 = HEADER_SIZE
        s1 = s0 + slot_size
        qp_off = s1 + slot_size
        size = qp_off + qp_slots * QP_RECORD_SIZE
        header = HEADER.pack(MAGIC, LAYOUT_VERSION, HEADER_SIZE, slot_size, qp_slots,
                             QP_RECORD_SIZE, s0, s1, qp_off, size)
        header += struct.pack("<I", crc32c.crc32c(header))
        try:
            path, mm, huge = place(name, size, directory, sub)
        except OSError as exc:
            raise RegionError(f"cannot create region {name}: {exc.strerror}") from None
        mm[:len(header)] = header
        if not huge:
            log.warning("no hugepages available: region %s is on %s (4 KiB pages)", name,
                        os.path.dirname(path))
        return cls(path, mm, huge)

    @classmethod
    def open(cls, path: str) -> Region:
        """Attach to an existing region, checking magic, version, geometry and CRC."""
        try:
            size = os.path.getsize(path)
            mm = map_file(path, size, create=False)
        except OSError as exc:
            raise RegionError(f"region {path}: {exc.strerror}") from None
        if size < HEADER.size + 4:
            raise RegionError(f"region {path}: truncated ({size} bytes)")
        magic, version = struct.unpack_from("<8sI", mm, 0)
        if magic != MAGIC:
            raise RegionError(f"region {path}: bad magic {magic!r}")
        if version > LAYOUT_VERSION:
            raise RegionError(f"region {path}: layout version {version} is newer than "
                              f"this nvmf-phoenix ({LAYOUT_VERSION})")
        (crc,) = struct.unpack_from("<I", mm, HEADER.size)
        if crc != crc32c.crc32c(mm[:HEADER.size]):
            raise RegionError(f"region {path}: header CRC mismatch")
        region = cls(path, mm, on_hugetlbfs(path))
        if region.size > size:
            raise RegionError(f"region {path}: truncated ({size} < {region.size} bytes)")
        return region

    def close(self) -> None:
        self.mm.close()

    def unlink(self) -> None:
        remove(self.path)   # and the record of its owner beside it

    # -- snapshots -----------------------------------------------------------------------
    def _slot(self, i: int) -> tuple[int, bytes] | None:
        off = self.slots[i]
        gen, length, pcrc = SLOT_HDR.unpack_from(self.mm, off)
        (hcrc,) = struct.unpack_from("<I", self.mm, off + SLOT_HDR.size)
        if gen == 0 or hcrc != crc32c.crc32c(self.mm[off:off + SLOT_HDR.size]) or \
                length > self.slot_size - SLOT_HDR_SIZE:
            return None
        payload = self.mm[off + SLOT_HDR_SIZE:off + SLOT_HDR_SIZE + length]
        return (gen, payload) if crc32c.crc32c(payload) == pcrc else None

    def read_snapshot(self) -> tuple[int, bytes] | None:
        """The newest complete snapshot as (generation, payload), or None."""
        found = [s for s in (self._slot(0), self._slot(1)) if s is not None]
        return max(found, key=lambda s: s[0]) if found else None

    def write_snapshot(self, payload: bytes) -> int:
        """Write into the older slot, header last; returns the new generation."""
        if len(payload) > self.slot_size - SLOT_HDR_SIZE:
            raise RegionError(f"snapshot of {len(payload)} bytes exceeds the region's "
                              f"slot size {self.slot_size - SLOT_HDR_SIZE}")
        gens = [SLOT_HDR.unpack_from(self.mm, off)[0] if self._slot(i) else 0
                for i, off in enumerate(self.slots)]
        target = 0 if gens[0] <= gens[1] else 1
        gen = max(gens) + 1
        off = self.slots[target]
        self.mm[off + SLOT_HDR_SIZE:off + SLOT_HDR_SIZE + len(payload)] = payload
        hdr = SLOT_HDR.pack(gen, len(payload), crc32c.crc32c(payload))
        self.mm[off:off + SLOT_HDR.size + 4] = hdr + struct.pack("<I", crc32c.crc32c(hdr))
        return gen

    # -- queue-pair table ----------------------------------------------------------------
    def put_qpair(self, index: int, rec: QPairRecord) -> None:
        body = QP_RECORD.pack(1, rec.cntlid, rec.qid, rec.sqsize, rec.sqhd, rec.kato_ms,
                              rec.digests, rec.hostnqn.encode()[:64], rec.listen.encode()[:48],
                              rec.peer.encode()[:48])
        off = self._qp_off(index)
        self.mm[off:off + QP_RECORD_SIZE] = body + struct.pack("<I", crc32c.crc32c(body))

    def clear_qpair(self, index: int) -> None:
        off = self._qp_off(index)
        self.mm[off:off + QP_RECORD_SIZE] = bytes(QP_RECORD_SIZE)

    def get_qpair(self, index: int) -> QPairRecord | None:
        """The record at ``index``; None if empty; RegionError if torn."""
        off = self._qp_off(index)
        body = self.mm[off:off + QP_RECORD.size]
        if body[0] == 0:
            return None
        (crc,) = struct.unpack_from("<I", self.mm, off + QP_RECORD.size)
        if crc != crc32c.crc32c(body):
            raise RegionError(f"region {self.path}: queue-pair record {index} CRC mismatch")
        (_, cntlid, qid, sqsize, sqhd, kato, dg, host, listen, peer) = QP_RECORD.unpack(body)
        return QPairRecord(cntlid, qid, sqsize, sqhd, kato, dg, _text(host), _text(listen),
                           _text(peer))

    def _qp_off(self, index: int) -> int:
        if not 0 <= index < self.qp_slots:
            raise IndexError(f"queue-pair slot {index} outside 0..{self.qp_slots - 1}")
        return self.qp_off + index * QP_RECORD_SIZE


    def set_mark(self, seq: int) -> None:
        """Record that the journal reaches ``seq``. One 12-byte store: a writer killed
        half-way leaves a CRC mismatch, which reads as damaged, never as a wrong mark."""
        raw = struct.pack("<Q", seq)
        self.mm[MARK_OFFSET:MARK_OFFSET + MARK.size] = MARK.pack(seq, crc32c.crc32c(raw))

    def mark(self) -> int | None:
        """The journal mark; None if never set; RegionError if damaged."""
        seq, crc = MARK.unpack_from(self.mm, MARK_OFFSET)
        if seq == 0 and crc == 0:
            return None
        if crc != crc32c.crc32c(struct.pack("<Q", seq)):
            raise RegionError(f"region {self.path}: journal mark damaged")
        return int(seq)


def read_mark(path: str) -> int | None:
    """The journal mark of the region at ``path`` (see Region.mark)."""
    region = Region.open(path)
    try:
        return region.mark()
    finally:
        region.close()


def read_latest(path: str) -> bytes:
    """The newest complete snapshot's payload of the region at ``path``; RegionError
    naming the file when it cannot be opened or holds no complete snapshot."""
    region = Region.open(path)
    try:
        snap = region.read_snapshot()
    finally:
        region.close()
    if snap is None:
        raise RegionError(f"region {path}: no complete snapshot")
    return snap[1]


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")
