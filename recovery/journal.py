"""The durable journal: append-only CRC-framed records plus an atomic snapshot file.

For when the node itself dies and shared memory is gone. Layout, declared once here:

    journal file   header: magic, version; then records of
                   (length u32, kind u16, flags u16, seq u64, CRC32C u32) + payload,
                   the CRC covering the record header fields and the payload
    snapshot file  magic, version, seq u64, length u64, CRC32C, payload
                   written atomically (temp file, fsync, rename, fsync directory)

Appends are buffered and made durable by :meth:`Journal.sync` (group commit: one fsync
for many records). Reading stops at the first torn or corrupt record and says where;
reopening for append cuts that tail off, so new records never hide behind garbage.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import crc32c
from nvmf_phoenix.recovery.atomic import atomic_write

J_MAGIC = b"PHXJRNL1"
S_MAGIC = b"PHXSNAP1"
VERSION = 1
FILE_HDR = struct.Struct("<8sI4x")                # magic, version
REC_HDR = struct.Struct("<IHHQ")                  # length, kind, flags, seq
CRC = struct.Struct("<I")
SNAP_HDR = struct.Struct("<8sI4xQQI")             # magic, version, seq, length, crc
MAX_RECORD = 64 << 20
KIND_STATE, KIND_INTENT, KIND_OUTCOME = 1, 2, 3


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
    problem: str | None = None     # what stopped the read early, if anything


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
        if len(data) - pos < REC_HDR.size + CRC.size:
            res.problem = f"truncated record header at offset {pos}"
            break
        length, kind, _flags, seq = REC_HDR.unpack_from(data, pos)
        end = pos + REC_HDR.size + CRC.size + length
        if length > MAX_RECORD or end > len(data):
            res.problem = f"truncated record at offset {pos} (claims {length} bytes)"
            break
        body = data[pos:pos + REC_HDR.size]
        payload = data[pos + REC_HDR.size + CRC.size:end]
        (crc,) = CRC.unpack_from(data, pos + REC_HDR.size)
        if crc != crc32c.crc32c(body + payload):
            res.problem = f"CRC mismatch in record at offset {pos}"
            break
        res.records.append(Record(kind, seq, payload))
        pos = end
    res.valid_end = pos
    return res


class Journal:
    """Appender. Opening an existing journal truncates a torn tail (and says so)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.problem: str | None = None
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            atomic_write(path, FILE_HDR.pack(J_MAGIC, VERSION))
            self.last_seq = 0
        else:
            res = read_journal(path)
            self.problem = res.problem
            self.last_seq = res.records[-1].seq if res.records else 0
            if res.valid_end < os.path.getsize(path):
                os.truncate(path, res.valid_end)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._buf = bytearray()

    def append(self, kind: int, payload: bytes, sync: bool = False) -> int:
        self.last_seq += 1
        body = REC_HDR.pack(len(payload), kind, 0, self.last_seq)
        self._buf += body + CRC.pack(crc32c.crc32c(body + payload)) + payload
        if sync:
            self.sync()
        return self.last_seq

    def sync(self) -> None:
        """Write buffered records and fsync once: every record before is durable."""
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
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


def write_snapshot(path: str, seq: int, payload: bytes) -> None:
    atomic_write(path, SNAP_HDR.pack(S_MAGIC, VERSION, seq, len(payload),
                                     crc32c.crc32c(payload)) + payload)


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
    if crc32c.crc32c(payload) != crc:
        raise JournalError(f"snapshot {path}: CRC mismatch")
    return seq, payload
