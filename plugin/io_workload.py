"""The workload behind ``nvmf-phoenix io``: SPDK perf's patterns on the verified workload.

:class:`~nvmf_phoenix.initiator.workload.VerifiedWorkload` keeps a queue depth of random
single-block commands outstanding and checks every read against what it wrote. A user
driving a target by hand wants perf's knobs as well: a fixed I/O size, sequential or random
offsets, reads only or writes only, a run bounded by a count, running without the cost of
verification, and commands that survive a lost connection (a host driver re-sends what was
outstanding once it has reconnected). This subclass adds those and nothing else: the
submission, completion and stall bookkeeping stay the initiator's.
"""
from __future__ import annotations

import selectors
from dataclasses import dataclass

from nvmf_phoenix.initiator.connection import Completion, QueueConn
from nvmf_phoenix.initiator.workload import Op, VerifiedWorkload

# perf's -w names: (random offsets, fraction of writes; None: the --rwmixread mix)
PATTERNS: dict[str, tuple[bool, float | None]] = {
    "read": (False, 0.0), "write": (False, 1.0), "rw": (False, None),
    "randread": (True, 0.0), "randwrite": (True, 1.0), "randrw": (True, None)}


@dataclass(frozen=True)
class Pattern:
    """What to submit: how big, where, how many writes, and whether to check reads."""

    nlb: int                    # logical blocks per command (the I/O size)
    random: bool
    write_fraction: float
    verify: bool
    limit: int | None = None    # commands to issue in all (None: until told to stop)


class CliWorkload(VerifiedWorkload):
    """A verified (or unverified) workload with a fixed I/O size and perf's patterns.

    With ``verify`` off, reads are not compared and nothing written is remembered, so a
    long run costs no memory. With it on, a block this run never wrote is learnt the
    first time it is read (the namespace may hold anything from before) and must read
    the same afterwards; every block written is checked on every later read, and
    :meth:`start_readback` reads them all back once more at the end.
    """

    queues: list[QueueConn]
    inflight: list[dict[int, Op]]
    sel: selectors.BaseSelector

    def __init__(self, queues: list[QueueConn], nsid: int, block_size: int, blocks: int,
                 qd: int, pattern: Pattern, seed: int | None = None) -> None:
        super().__init__(queues, nsid, block_size, blocks, qd=qd,
                         write_fraction=pattern.write_fraction, max_nlb=pattern.nlb,
                         seed=seed)
        self.pattern = pattern
        self.cursor = 0              # next offset of a sequential pattern
        self.picked = 0              # commands issued (retries and re-sends not counted)
        self.stopping = False        # no new commands: finish what is outstanding
        self._readback: list[int] | None = None   # blocks to read back, last first
        self._zero = bytes(block_size)

    # -- what to submit ----------------------------------------------------------------
    def _pick(self) -> tuple[int, int] | None:
        if self._readback is not None:
            return (self._readback.pop(), 1) if self._readback else None
        if self.stopping or (self.pattern.limit is not None
                             and self.picked >= self.pattern.limit):
            return None
        nlb = self.pattern.nlb
        slots = self.blocks // nlb
        if self.pattern.random:
            slba = self.rng.randrange(slots) * nlb
        else:
            slba = self.cursor
            self.cursor = (self.cursor + nlb) % (slots * nlb)
        if any(b in self.busy for b in range(slba, slba + nlb)):
            return None          # a sequential run wrapped onto its own tail: wait
        self.picked += 1
        return slba, nlb

    def _pattern(self, slba: int, nlb: int) -> bytes:
        if self.pattern.verify:
            return super()._pattern(slba, nlb)
        return self._zero * nlb     # unverified: what is written does not matter

    def start_readback(self) -> int:
        """Read every block written once more (after the run); returns how many."""
        self.write_fraction = 0.0
        self._readback = sorted(self.expected, reverse=True)
        return len(self._readback)

    # -- what came back ----------------------------------------------------------------
    def _complete(self, qi: int, comp: Completion, now: float) -> None:
        op = self.inflight[qi].get(comp.cid)
        learnt: list[int] = []
        if op is not None and not op.write and not comp.status:
            data = bytes(comp.data or b"")
            for i in range(op.nlb):
                lba = op.slba + i
                if lba not in self.expected:
                    # Unverified: anything goes. Verified: a block never written here
                    # is whatever it was before the run, and must stay so.
                    self.expected[lba] = data[i * self.bs:(i + 1) * self.bs]
                    if not self.pattern.verify:
                        learnt.append(lba)
        super()._complete(qi, comp, now)
        if not self.pattern.verify:
            for lba in learnt:
                self.expected.pop(lba, None)
            if op is not None and op.write:
                for i in range(op.nlb):
                    self.expected.pop(op.slba + i, None)

    # -- a lost connection -------------------------------------------------------------
    def detach(self) -> list[Op]:
        """Forget the queues (their connection is gone); return what was outstanding,
        to be sent again on new queues. A write may or may not have reached the
        medium: sending the same data again leaves the block as if it had, once."""
        ops = [op for inflight in self.inflight for op in inflight.values()]
        self.sel.close()
        self.inflight = []
        self.queues = []
        return ops

    def attach(self, queues: list[QueueConn], ops: list[Op]) -> None:
        """Carry on over new queues, first re-sending ``ops``."""
        self.queues = queues
        self.inflight = [{} for _ in queues]
        self.sel = selectors.DefaultSelector()
        for i, q in enumerate(queues):
            self.sel.register(q.sock, selectors.EVENT_READ, i)
        for n, op in enumerate(ops):
            op.retries += 1
            self.stats.retries += 1
            self._submit(n % len(queues), op)
        for q in queues:
            if q.writer.out:
                q.sock.sendall(q.writer.take())

    @property
    def outstanding(self) -> int:
        return sum(len(f) for f in self.inflight)

    @property
    def finished(self) -> bool:
        """Nothing outstanding and nothing more to issue."""
        if self.outstanding:
            return False
        if self._readback is not None:
            return not self._readback
        return self.stopping or (self.pattern.limit is not None
                                 and self.picked >= self.pattern.limit)
