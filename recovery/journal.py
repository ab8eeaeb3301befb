"""The durable journal: append-only CRC-framed records plus an atomic snapshot file.

For when the node itself dies and shared memory is gone. Layout, declared once here:

    journal file   header: magic, version; then records of
                   (length u32, kind u16, flags u16, seq u64, CRC32C u32) + payload,
                   the CRC covering the record header fields and the payload;
                   kinds: 1 a whole state, 2 a call's intent, 3 its outcome,
                   4 the change it made (changes.py operations)
    snapshot file  magic, version, seq u64, length u64, CRC32C, payload
                   written atomically (temp file, fsync, rename, fsync directory)

Appends are buffered and made durable by :meth:`Journal.sync` (group commit: one fsync
for many records). Reading skips a corrupt record and finds the next whole one (so a
flipped byte in an old record does not hide every newer one), and says what it skipped;
a torn tail ends the read. Reopening for append cuts a torn tail off, rewrites a journal
with a damaged record as its good records, and moves a journal whose header is unreadable
aside (``journal.damaged-<time>``), so new records never hide behind garbage and a damaged
journal never stops the store from saving.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

from nvmf_phoenix.persist.atomic import atomic_write
from nvmf_phoenix.persist.record import Sealed, checksum
from nvmf_phoenix.wire.layout import Layout

J_MAGIC = b"PHXJRNL1"
S_MAGIC = b"PHXSNAP1"
VERSION = 1
FILE_HDR = Layout(16, [("magic", 0, "8s"), ("version", 8, "I")])
REC_HDR = Layout(16, [("length", 0, "I"), ("kind", 4, "H"), ("flags", 6, "H"), ("seq", 8, "Q")])
REC = Sealed(REC_HDR)                             # its CRC covers the payload after it too
SNAP_HDR = Layout(36, [("magic", 0, "8s"), ("version", 8, "I"), ("seq", 16, "Q"),
                      ("length", 24, "Q"), ("crc", 32, "I")])
MAX_RECORD = 64 << 20
KIND_STATE, KIND_INTENT, KIND_OUTCOME, KIND_CHANGE = 1, 2, 3, 4


class JournalError(Exception):
    """A journal or snapshot file is unusable; the message names the file and the fault."""


@dataclass
class Record:
    kind: int
    seq: int
    payload: bytes


@dataclass
class ReadResult:
    records: list[Record] = field(default_factory=list)
    valid_end: int = FILE_HDR.size
    problem: str | None = None     # what was skipped or stopped the read, if anything
    skipped: bool = False          # records after a damaged one were recovered


def read_journal(path: str) -> ReadResult:
    """All complete, CRC-valid records; ``problem`` describes a torn or corrupt tail."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < FILE_HDR.size:
        raise JournalError(f"journal {path}: truncated header ({len(data)} bytes)")
    magic, version = FILE_HDR.unpack_from(data)
    if magic != J_MAGIC:
        raise JournalError(f"journal {path}: bad magic {magic!r}")
    if version > VERSION:
        raise JournalError(f"journal {path}: version {version} is newer than this "
                           f"nvmf-phoenix ({VERSION})")
    res = ReadResult()
    pos = FILE_HDR.size
    while pos < len(data):
        rec, end, why = _record_at(data, pos)
        if rec is None:
            later = _next_record(data, pos + 1, res.records[-1].seq if res.records else 0)
            if later is None:
                res.problem = why
                break
            res.problem = f"{why}; skipped {later - pos} bytes to the next whole record"
            res.skipped = True
            pos = later
            continue
        res.records.append(rec)
        pos = res.valid_end = end
    return res


def _record_at(data: bytes, pos: int) -> tuple[Record | None, int, str]:
    """The record starting at ``pos`` if it is whole and its CRC matches."""
    if len(data) - pos < REC.size:
        return None, pos, f"truncated record header at offset {pos}"
    length, kind, _flags, seq = REC.peek(data, pos)
    end = pos + REC.size + length
    if length > MAX_RECORD or end > len(data):
        return None, pos, f"truncated record at offset {pos} (claims {length} bytes)"
    payload = data[pos + REC.size:end]
    if REC.unpack(data, pos, covers=payload) is None:
        return None, pos, f"CRC mismatch in record at offset {pos}"
    return Record(kind, seq, payload), end, ""


# kind (1..4) and flags (0) of a record header, where they sit in it: where to try again.
_RESYNC = re.compile(rb"[\x01-\x04]\x00\x00\x00")
_KIND_AT = REC_HDR.offset("kind")


def _next_record(data: bytes, start: int, after_seq: int) -> int | None:
    """Offset of the next whole, CRC-valid record with a newer sequence number."""
    for m in _RESYNC.finditer(data, start + _KIND_AT):
        pos = m.start() - _KIND_AT
        rec, _, _ = _record_at(data, pos)
        if rec is not None and rec.seq > after_seq:
            return pos
    return None


class Journal:
    """Appender. Opening an existing journal truncates a torn tail (and says so)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problem: str | None = None
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            atomic_write(path, FILE_HDR.pack(J_MAGIC, VERSION))
            self.last_seq = 0
        else:
            self.last_seq = self._reopen(path)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._buf = bytearray()

    def _reopen(self, path: str) -> int:
        """Make an existing journal appendable again; returns its last sequence number."""
        try:
            res = read_journal(path)
        except JournalError as exc:
            aside = f"{path}.damaged-{int(time.time())}"
            os.rename(path, aside)
            atomic_write(path, FILE_HDR.pack(J_MAGIC, VERSION))
            self.problem = f"{exc}; moved to {aside}, started a new journal"
            return 0
        self.problem = res.problem
        if res.skipped:   # rewrite as the good records only
            atomic_write(path, FILE_HDR.pack(J_MAGIC, VERSION) + b"".join(
                _frame(r.kind, r.seq, r.payload) for r in res.records))
        elif res.valid_end < os.path.getsize(path):
            os.truncate(path, res.valid_end)
        return res.records[-1].seq if res.records else 0

    def append(self, kind: int, payload: bytes, sync: bool = False) -> int:
        self.last_seq += 1
        self._buf += _frame(kind, self.last_seq, payload)
        if sync:
            self.sync()
        return self.last_seq

    def write(self) -> None:
        """Hand buffered records to the kernel: they survive this process (not the node)
        and any reader of the file sees them."""
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]

    def sync(self) -> None:
        """Write buffered records and fsync once: every record before is durable."""
        self.write()
        os.fsync(self.fd)

    def size(self) -> int:
        return os.fstat(self.fd).st_size + len(self._buf)

    def close(self) -> None:
        if self._buf:
            self.sync()
        os.close(self.fd)

    def compact(self, snapshot_path: str, payload: bytes) -> None:
        """Write ``payload`` as the snapshot covering every record so far; restart empty."""
        self.sync()
        write_snapshot(snapshot_path, self.last_seq, payload)
        os.close(self.fd)
        atomic_write(self.path, FILE_HDR.pack(J_MAGIC, VERSION))
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)


def _frame(kind: int, seq: int, payload: bytes) -> bytes:
    return REC.pack(len(payload), kind, 0, seq, covers=payload) + payload


def write_snapshot(path: str, seq: int, payload: bytes) -> None:
    atomic_write(path, SNAP_HDR.pack(S_MAGIC, VERSION, seq, len(payload),
                                     checksum(payload)) + payload)


def read_snapshot(path: str) -> tuple[int, bytes]:
    """(sequence covered, payload); JournalError naming the fault otherwise."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < SNAP_HDR.size:
        raise JournalError(f"snapshot {path}: truncated header")
    magic, version, seq, length, crc = SNAP_HDR.unpack_from(data)
    if magic != S_MAGIC:
        raise JournalError(f"snapshot {path}: bad magic {magic!r}")
    if version > VERSION:
        raise JournalError(f"snapshot {path}: version {version} is newer than this "
                           f"nvmf-phoenix ({VERSION})")
    payload = data[SNAP_HDR.size:SNAP_HDR.size + length]
    if len(payload) != length:
        raise JournalError(f"snapshot {path}: truncated payload ({len(payload)} of "
                           f"{length} bytes)")
    if checksum(payload) != crc:
        raise JournalError(f"snapshot {path}: CRC mismatch")
    return seq, payload
