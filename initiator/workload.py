"""A verified mixed read/write workload at a queue depth, with the host's view of stalls.

Used by the crash torture tests and benchmarks: it keeps ``qd`` commands outstanding over
one or more I/O queues, writes unique patterns, checks every read against what it last
wrote there, and never has two commands on the same block in flight (so every read has
exactly one right answer). It records what a host would notice: errors, mismatches,
connection failures (the initiator treats a duplicate or unknown completion as fatal, as
Linux does) and the gaps between consecutive completions.
"""
from __future__ import annotations

import os
import random
import selectors
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nvmf_phoenix.initiator.connection import Completion, QueueConn, make_sqe
from nvmf_phoenix.wire import nvme

RETRYABLE = {nvme.SC_COMMAND_INTERRUPTED}


@dataclass
class Op:
    write: bool
    slba: int
    nlb: int
    data: bytes | None
    submitted: float
    retries: int = 0


@dataclass
class Stats:
    submitted: int = 0
    completed: int = 0
    reads: int = 0
    writes: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)
    mismatches: list[int] = field(default_factory=list)
    max_gap: float = 0.0
    gaps: list[tuple[float, float]] = field(default_factory=list)   # (at, length)
    latencies: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {"submitted": self.submitted, "completed": self.completed,
                "reads": self.reads, "writes": self.writes, "retries": self.retries,
                "errors": len(self.errors), "mismatches": len(self.mismatches),
                "max_gap_ms": round(self.max_gap * 1000, 1)}


class VerifiedWorkload:
    def __init__(self, queues: list[QueueConn], nsid: int, block_size: int, blocks: int,
                 qd: int = 32, write_fraction: float = 0.5, max_nlb: int = 1,
                 seed: int | None = None, gap_threshold: float = 0.010) -> None:
        self.queues = queues
        self.nsid, self.bs, self.blocks = nsid, block_size, blocks
        self.qd, self.write_fraction, self.max_nlb = qd, write_fraction, max_nlb
        self.gap_threshold = gap_threshold      # gaps longer than this are recorded
        self.rng = random.Random(seed)
        self.expected: dict[int, bytes] = {}     # lba -> block last written (else zeroes)
        self.busy: set[int] = set()
        self.inflight: list[dict[int, Op]] = [{} for _ in queues]
        self.stats = Stats()
        self.seq = 0
        self.last_completion = time.monotonic()
        self.sel = selectors.DefaultSelector()
        for i, q in enumerate(queues):
            self.sel.register(q.sock, selectors.EVENT_READ, i)

    # -- submitting ----------------------------------------------------------------------
    def _pattern(self, slba: int, nlb: int) -> bytes:
        self.seq += 1
        out = bytearray(os.urandom(nlb * self.bs))
        for i in range(nlb):
            struct.pack_into("<QQ", out, i * self.bs, slba + i, self.seq)
        return bytes(out)

    def _pick(self) -> tuple[int, int] | None:
        for _ in range(16):
            nlb = self.rng.randint(1, self.max_nlb)
            slba = self.rng.randrange(0, self.blocks - nlb + 1)
            if not any(b in self.busy for b in range(slba, slba + nlb)):
                return slba, nlb
        return None

    def _submit(self, qi: int, op: Op) -> None:
        q = self.queues[qi]
        opcode = nvme.NVM_WRITE if op.write else nvme.NVM_READ
        sqe = make_sqe(opcode, self.nsid, op.slba & 0xFFFFFFFF, op.slba >> 32, op.nlb - 1)
        cid = q.submit(sqe, data_out=op.data, data_in=0 if op.write else op.nlb * self.bs,
                       flush=False)
        self.inflight[qi][cid] = op
        self.stats.submitted += 1

    def _new_op(self) -> Op | None:
        """The next command to send (its blocks now busy), or None if none fits now."""
        picked = self._pick()
        if picked is None:
            return None
        slba, nlb = picked
        write = self.rng.random() < self.write_fraction
        data = self._pattern(slba, nlb) if write else None
        self.busy.update(range(slba, slba + nlb))
        return Op(write, slba, nlb, data, time.monotonic())

    def _fill(self) -> None:
        for qi, q in enumerate(self.queues):
            want = self.qd // len(self.queues) - len(self.inflight[qi])
            for _ in range(want):
                op = self._new_op()
                if op is None:
                    break
                self._submit(qi, op)
            if q.writer.out:
                q.sock.sendall(q.writer.take())

    # -- completing ----------------------------------------------------------------------
    def _complete(self, qi: int, comp: Completion, now: float) -> None:
        op = self.inflight[qi].pop(comp.cid)
        if comp.status in RETRYABLE:
            op.retries += 1
            self.stats.retries += 1
            self._submit(qi, op)
            return
        gap = now - self.last_completion
        if gap > self.stats.max_gap:
            self.stats.max_gap = gap
        if gap > self.gap_threshold:
            self.stats.gaps.append((now, gap))
        self.last_completion = now
        self.stats.completed += 1
        self.stats.latencies.append(now - op.submitted)
        self.busy.difference_update(range(op.slba, op.slba + op.nlb))
        kind = "write" if op.write else "read"
        if comp.status:
            self.stats.errors.append(f"{kind} lba {op.slba}: {nvme.status_name(comp.status)}")
            return
        if op.write:
            self.stats.writes += 1
            assert op.data is not None
            for i in range(op.nlb):
                self.expected[op.slba + i] = op.data[i * self.bs:(i + 1) * self.bs]
            return
        self.stats.reads += 1
        got = bytes(comp.data or b"")
        zero = bytes(self.bs)
        for i in range(op.nlb):
            if got[i * self.bs:(i + 1) * self.bs] != self.expected.get(op.slba + i, zero):
                self.stats.mismatches.append(op.slba + i)

    def step(self, timeout: float = 1.0) -> None:
        """Top up the queue depth, then take whatever completions arrive."""
        self._fill()
        for key, _ in self.sel.select(timeout):
            qi = key.data
            now = time.monotonic()
            for comp in self.queues[qi].pump(0.0):
                self._complete(qi, comp, now)

    def run(self, seconds: float, stop: Callable[[], bool] = lambda: False) -> Stats:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not stop():
            self.step(min(1.0, max(0.0, end - time.monotonic())))
        return self.stats

    def drain(self, timeout: float = 30.0) -> None:
        """Wait for every outstanding command; a command never completed is an error."""
        deadline = time.monotonic() + timeout
        while any(self.inflight) and time.monotonic() < deadline:
            for key, _ in self.sel.select(0.5):
                now = time.monotonic()
                for comp in self.queues[key.data].pump(0.0):
                    self._complete(key.data, comp, now)
        left = sum(len(f) for f in self.inflight)
        if left:
            self.stats.errors.append(f"{left} commands never completed")

    def verify_all(self, read: Callable[[int, int], bytes]) -> list[int]:
        """Read back every block ever written; returns the blocks that differ."""
        return [lba for lba, data in sorted(self.expected.items()) if read(lba, 1) != data]
