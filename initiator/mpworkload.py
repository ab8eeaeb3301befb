"""The verified workload over a :class:`~.multipath.MultipathHost` instead of raw queues.

Same bookkeeping as :class:`~.workload.VerifiedWorkload` (unique patterns, one command
per block at a time, every read checked against the last write, gaps between
completions, per-command latency), but commands go through the multipath layer, which
picks the path and moves them when a path fails. A command's latency runs from its first
submission to its completion, so the cost of a failover shows up in
:meth:`MultipathWorkload.worst_latency`.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from nvmf_phoenix.initiator.multipath import MultipathHost
from nvmf_phoenix.initiator.workload import Op, Stats, VerifiedWorkload
from nvmf_phoenix.wire import nvme


class MultipathWorkload(VerifiedWorkload):
    """A verified workload at queue depth ``qd`` on one namespace of a multipath host."""

    def __init__(self, mp: MultipathHost, nsid: int, block_size: int, blocks: int,
                 qd: int = 8, write_fraction: float = 0.5, max_nlb: int = 1,
                 seed: int | None = None, gap_threshold: float = 0.010) -> None:
        super().__init__([], nsid, block_size, blocks, qd=qd, write_fraction=write_fraction,
                         max_nlb=max_nlb, seed=seed, gap_threshold=gap_threshold)
        self.mp = mp
        self.inflight: list[dict[int, Op]] = [{}]    # one pseudo-queue: tag -> Op

    def _submit(self, qi: int, op: Op) -> None:
        opcode = nvme.NVM_WRITE if op.write else nvme.NVM_READ
        tag = self.mp.submit(opcode, self.nsid, op.slba, op.nlb, op.data, self.bs)
        self.inflight[0][tag] = op
        self.stats.submitted += 1

    def _fill(self) -> None:
        for _ in range(self.qd - len(self.inflight[0])):
            op = self._new_op()
            if op is None:
                break
            self._submit(0, op)

    def _collect(self, timeout: float) -> None:
        comps = self.mp.poll(timeout)
        now = time.monotonic()
        for comp in comps:
            if comp.cid in self.inflight[0]:
                self._complete(0, comp, now)

    def step(self, timeout: float = 1.0) -> None:
        self._fill()
        self._collect(timeout)

    def run(self, seconds: float, stop: Callable[[], bool] = lambda: False) -> Stats:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not stop():
            self.step(min(0.1, max(0.0, end - time.monotonic())))
        return self.stats

    def drain(self, timeout: float = 60.0) -> None:
        """Wait for every outstanding command; one never completed is an error."""
        deadline = time.monotonic() + timeout
        while self.inflight[0] and time.monotonic() < deadline:
            self._collect(0.2)
        if self.inflight[0]:
            self.stats.errors.append(f"{len(self.inflight[0])} commands never completed")

    def worst_latency(self) -> float:
        """The longest a command took, first submission to completion (seconds)."""
        return max(self.stats.latencies, default=0.0)

    def report(self) -> dict[str, object]:
        """The stats summary, worst latency, and the multipath host's counters."""
        return {**self.stats.summary(), "worst_latency_ms": round(self.worst_latency() * 1000,
                                                                  1),
                **self.mp.counters()}
