"""The shared-memory region: the latest snapshot, in two slots.

A file on hugetlbfs (or /dev/shm when no hugepages are to be had, with a warning saying
why), mapped MAP_SHARED, survives the SIGKILL of every process that maps it. Layout,
declared once here (little-endian):

    header (4 KiB)   magic, layout version, geometry, header CRC32C; at MARK_OFFSET the
                     journal mark (sequence number of the newest state or change
                     journaled, CRC32C): how far the journal must reach
    slot 0, slot 1   64-byte slot header (generation, length, payload CRC, header CRC)
                     followed by the payload (a serialised TargetState)

Header, slot headers and mark are CRC-framed records (persist/record.py). Regions made by
earlier versions end in a queue-pair table that nothing read; it was removed from the
end, so no other byte moved: the header keeps its fields for it (written as an empty
table at the end of slot 1), and a region that still has one opens as before.

A writer fills the *older* slot's payload, then writes that slot's header last. A writer
killed at any instruction leaves either the new slot complete or its CRC broken, and the
other slot holds the previous complete snapshot: a reader never sees a torn state.
"""
from __future__ import annotations

import logging
import mmap
import os

from nvmf_phoenix.persist.record import Sealed, checksum
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
from nvmf_phoenix.wire.layout import Layout

log = logging.getLogger(__name__)

MAGIC = b"PHXREGN1"
LAYOUT_VERSION = 1
# The queue-pair fields are retired: an empty table (0 slots of 0 bytes) where slot 1 ends.
HEADER = Layout(64, [
    ("magic", 0, "8s"), ("version", 8, "I"), ("header_size", 12, "I"), ("slot_size", 16, "Q"),
    ("qp_slots", 24, "I"), ("qp_record_size", 28, "I"), ("slot0", 32, "Q"),
    ("slot1", 40, "Q"), ("qp_table", 48, "Q"), ("total_size", 56, "Q")])
HEADER_REC = Sealed(HEADER)
HEADER_SIZE = 4096
MARK = Sealed(Layout(8, [("seq", 0, "Q")]))   # how far the journal reaches
MARK_OFFSET = 2048                        # in the header's spare space: v1 readers skip it
SLOT_HDR = Layout(20, [("generation", 0, "Q"), ("length", 8, "Q"), ("payload_crc", 16, "I")])
SLOT_REC = Sealed(SLOT_HDR)
SLOT_HDR_SIZE = 64


class RegionError(Exception):
    """The region cannot be used; the message says what is wrong with which file."""


class Region:
    """An open region (created or attached)."""

    def __init__(self, path: str, mm: mmap.mmap, hugepages: bool) -> None:
        self.path = path
        self.mm = mm
        self.hugepages = hugepages
        (_, _, _, self.slot_size, _, _, s0, s1, _, self.size) = HEADER.unpack_from(mm, 0)
        self.slots = (s0, s1)

    # -- creation and attachment ---------------------------------------------------------
    @classmethod
    def create(cls, name: str, slot_size: int = 4 << 20, directory: str | None = None,
               sub: str = "") -> Region:
        """Create (or replace) a region; hugetlbfs first, /dev/shm as the fallback."""
        slot_size = round_up(slot_size, 4096)
        s0 = HEADER_SIZE
        s1 = s0 + slot_size
        size = s1 + slot_size
        header = HEADER_REC.pack(MAGIC, LAYOUT_VERSION, HEADER_SIZE, slot_size, 0, 0, s0, s1,
                                 size, size)
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
        if size < HEADER_REC.size:
            raise RegionError(f"region {path}: truncated ({size} bytes)")
        magic, version = HEADER_REC.peek(mm)[:2]
        if magic != MAGIC:
            raise RegionError(f"region {path}: bad magic {magic!r}")
        if version > LAYOUT_VERSION:
            raise RegionError(f"region {path}: layout version {version} is newer than "
                              f"this nvmf-phoenix ({LAYOUT_VERSION})")
        if HEADER_REC.unpack(mm) is None:
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
        got = SLOT_REC.unpack(self.mm, off)
        if got is None:
            return None
        gen, length, pcrc = got
        if gen == 0 or length > self.slot_size - SLOT_HDR_SIZE:
            return None
        payload = self.mm[off + SLOT_HDR_SIZE:off + SLOT_HDR_SIZE + length]
        return (gen, payload) if checksum(payload) == pcrc else None

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
        self.mm[off:off + SLOT_REC.size] = SLOT_REC.pack(gen, len(payload), checksum(payload))
        return gen

    def set_mark(self, seq: int) -> None:
        """Record that the journal reaches ``seq``. One 12-byte store: a writer killed
        half-way leaves a CRC mismatch, which reads as damaged, never as a wrong mark."""
        self.mm[MARK_OFFSET:MARK_OFFSET + MARK.size] = MARK.pack(seq)

    def mark(self) -> int | None:
        """The journal mark; None if never set; RegionError if damaged."""
        if MARK.blank(self.mm, MARK_OFFSET):
            return None
        got = MARK.unpack(self.mm, MARK_OFFSET)
        if got is None:
            raise RegionError(f"region {self.path}: journal mark damaged")
        return int(got[0])


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

