"""Reconnect verification: did every host that had queues come back?

Expectations come from the last captured runtime facts: each host NQN, the subsystems it
was connected to, and how many I/O queues it had. The live target is polled (its
get_controllers pauses a subsystem, so politely: every ``interval``) until all are met or
the deadline passes. Clock and sleep are injectable so the logic is tested without waiting.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nvmf_phoenix.model import Runtime


@dataclass(frozen=True)
class Expectation:
    hostnqn: str
    nqn: str
    io_queues: int   # SPDK's num_io_qpairs: connected queues counting the admin queue


@dataclass
class VerifyReport:
    reconnected: dict[Expectation, float] = field(default_factory=dict)   # seconds taken
    missing: list[Expectation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing


def expectations(runtime: Runtime) -> list[Expectation]:
    return sorted({Expectation(c.hostnqn, c.nqn, c.num_io_qpairs)
                   for c in runtime.controllers}, key=lambda e: (e.nqn, e.hostnqn))


def verify_reconnect(client: Any, expected: list[Expectation], deadline_s: float,
                     interval: float = 0.25, clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], None] = time.sleep) -> VerifyReport:
    start = clock()
    report = VerifyReport()
    pending = list(expected)
    while pending:
        for nqn in sorted({e.nqn for e in pending}):
            try:
                ctrls = client.call("nvmf_subsystem_get_controllers", {"nqn": nqn})
            except Exception:
                continue
            for e in [e for e in pending if e.nqn == nqn]:
                if any(c["hostnqn"] == e.hostnqn and c.get("num_io_qpairs", 0) >= e.io_queues
                       for c in ctrls):
                    report.reconnected[e] = clock() - start
                    pending.remove(e)
        if not pending or clock() - start >= deadline_s:
            break
        sleep(interval)
    report.missing = pending
    return report
