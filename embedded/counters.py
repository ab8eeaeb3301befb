"""The crash-transparent target's statistics in shared memory: counted at the commit.

nvmf_get_stats' counters (queue pairs created, NVMe I/O completed, bytes moved) must look
to a host and to metrics as if one process had served from the start: monotonic across
takeovers, and each command counted once although a successor executes again every
command its predecessor had read but not committed (embedded/transparent.py). So a count
belongs to the commit that makes its completion part of the connection's state, and it
is written just before that commit:

    record   seq, totals (every counter of controllers.Stats), then the commit it is
             about (connection id, commit seq) and the part of the totals that commit
             adds (delta), CRC32C last

Two records are written alternately, by seq parity, so a writer killed half-way leaves
the other one intact (its CRC tells which). A successor reads the newest intact record
and asks whether the commit it names exists: if that connection's newest commit is older,
the worker died between the record and the commit, the delta never became a completion
and is taken off (the successor counts those commands when it executes them). Before
serving anything it writes the reconciled totals as a record naming no commit, so the
question is asked only about the last one.

The file is small (4 KiB), so it lives in /dev/shm, not in a 2 MiB hugepage, in the
target's scratch directory: it goes when the keeper stops, like the connection state.
"""
from __future__ import annotations

import contextlib
import logging
import mmap
import operator
import os
import struct
from collections.abc import Callable
from dataclasses import fields

import crc32c
from nvmf_phoenix.embedded.controllers import Stats
from nvmf_phoenix.persist import shm

log = logging.getLogger(__name__)

NAME = "counters"
MAGIC = b"PHXCNTR1"
LAYOUT_VERSION = 1
FIELDS = tuple(f.name for f in fields(Stats))     # the counters, in record order
N = len(FIELDS)
# magic, layout version, number of counters, CRC32C of their names (a build with other
# counters must not read this one's as its own), then the header's CRC32C
HEADER = struct.Struct("<8sIII")
# seq, totals, connection id, commit seq, delta; the record's CRC32C follows it
RECORD = struct.Struct(f"<Q{N}QQQ{N}q")
RECORD_OFFSET = (64, 64 + 256)
SIZE = 4096
_NAMES_CRC = crc32c.crc32c(",".join(FIELDS).encode())
assert RECORD.size + 4 <= 256


class CountersError(Exception):
    """The file cannot be trusted (the message says why)."""


# The counters as a tuple, in C: record() runs before every commit.
snapshot: Callable[[Stats], tuple[int, ...]] = operator.attrgetter(*FIELDS)
CRC = struct.Struct("<I")
assert N > 1   # attrgetter of one name would give a number, not a tuple


class SharedCounters:
    """The counters file of one crash-transparent target, open in this worker:
    :meth:`reconcile` once, before anything is served, then :meth:`record` before each
    commit."""

    def __init__(self, path: str, mm: mmap.mmap) -> None:
        self.path = path
        self.mm = mm
        self.seq = 0
        self.written: tuple[int, ...] = (0,) * N    # the totals of the newest record
        self._buf = bytearray(RECORD.size + CRC.size)

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, scratch: str, directory: str | None = None) -> SharedCounters:
        """The scratch directory's counters file, made (all zero) if there is none yet;
        one that cannot be trusted is replaced, and the loss is logged."""
        where = directory or os.path.join(shm.SHM_DIR, "nvmf-phoenix", scratch)
        path = os.path.join(where, NAME)
        if os.path.exists(path):
            try:
                return cls._checked(path)
            except (OSError, CountersError) as exc:
                log.error("statistics restart from zero: %s", exc)
        mm = shm.map_file(path, SIZE, create=True)
        head = HEADER.pack(MAGIC, LAYOUT_VERSION, N, _NAMES_CRC)
        mm[:HEADER.size + 4] = head + struct.pack("<I", crc32c.crc32c(head))
        counters = cls(path, mm)
        counters._write((0,) * N, 0, 0, (0,) * N)
        return counters

    @classmethod
    def _checked(cls, path: str) -> SharedCounters:
        if os.path.getsize(path) < SIZE:
            raise CountersError(f"{path}: truncated")
        mm = shm.map_file(path, SIZE, create=False)
        head = mm[:HEADER.size + 4]
        magic, version, n, names = HEADER.unpack_from(head)
        problem = None
        if magic != MAGIC or struct.unpack_from("<I", head, HEADER.size)[0] != \
                crc32c.crc32c(head[:HEADER.size]):
            problem = "bad header"
        elif version != LAYOUT_VERSION or n != N or names != _NAMES_CRC:
            problem = f"layout {version} with {n} counters, not this build's"
        if problem is not None:
            mm.close()
            raise CountersError(f"{path}: {problem}")
        return cls(path, mm)

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self.mm.close()

    # -- records -------------------------------------------------------------------------
    def _read(self, i: int) -> tuple[int, ...] | None:
        off = RECORD_OFFSET[i]
        raw = self.mm[off:off + RECORD.size + 4]
        if struct.unpack_from("<I", raw, RECORD.size)[0] != crc32c.crc32c(raw[:RECORD.size]):
            return None
        rec: tuple[int, ...] = RECORD.unpack_from(raw)
        return rec if rec[0] else None

    def _write(self, totals: tuple[int, ...], conn_id: int, commit: int,
               delta: tuple[int, ...]) -> None:
        self.seq += 1
        buf = self._buf
        RECORD.pack_into(buf, 0, self.seq, *totals, conn_id, commit, *delta)
        CRC.pack_into(buf, RECORD.size, crc32c.crc32c(memoryview(buf)[:RECORD.size]))
        off = RECORD_OFFSET[self.seq & 1]
        self.mm[off:off + len(buf)] = buf
        self.written = totals

    def latest(self) -> tuple[int, tuple[int, ...], int, int, tuple[int, ...]]:
        """(seq, totals, connection id, commit seq, delta) of the newest intact record."""
        found = [r for r in (self._read(0), self._read(1)) if r is not None]
        if not found:
            raise CountersError(f"{self.path}: no intact record")
        rec = max(found, key=lambda r: r[0])
        return rec[0], rec[1:1 + N], rec[1 + N], rec[2 + N], rec[3 + N:]

    def reconcile(self, newest_commit: Callable[[int], int | None]) -> Stats:
        """The totals as of the commits that exist, written back naming no commit, as a
        Stats for the engine. ``newest_commit(conn_id)`` is that connection's newest
        complete commit, or None when that cannot be known (its state file gone: the
        connection ended after its last commit, so its counts stand)."""
        try:
            seq, totals, conn_id, commit, delta = self.latest()
        except CountersError as exc:
            log.error("statistics restart from zero: %s", exc)
            seq, totals, conn_id, commit, delta = 0, (0,) * N, 0, 0, (0,) * N
        if conn_id:
            have = newest_commit(conn_id)
            if have is not None and have < commit:
                log.info("connection %d: commit %d never completed: its %s not counted",
                         conn_id, commit, dict(zip(FIELDS, delta, strict=True)))
                totals = tuple(t - d for t, d in zip(totals, delta, strict=True))
        self.seq = seq
        self._write(totals, 0, 0, (0,) * N)
        return Stats(**dict(zip(FIELDS, totals, strict=True)))

    def record(self, stats: Stats, conn_id: int, commit: int) -> None:
        """Called just before ``commit`` of ``conn_id`` is written: what the engine
        counted since the last record becomes part of that commit."""
        now = snapshot(stats)
        if now != self.written:
            self._write(now, conn_id, commit, tuple(map(operator.sub, now, self.written)))
