"""Run a plan against a target: stage by stage, calls within a stage pipelined.

Tolerant, like rtslib's restore: a failing call is recorded with its JSON-RPC code and
message and the rest still run; calls that depend on a failed object (the namespaces of a
subsystem that could not be created) are skipped and reported as such, not sent to fail.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nvmf_phoenix.recovery.planner import Plan
from nvmf_phoenix.rpc.client import outcomes


@dataclass
class Failure:
    key: str
    method: str
    code: int | None
    message: str

    def __str__(self) -> str:
        code = f" (code {self.code})" if self.code is not None else ""
        return f"{self.key}: {self.method} failed: {self.message}{code}"


@dataclass
class ExecReport:
    done: int = 0
    failures: list[Failure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.skipped


# progress(stage, calls done so far, calls in the plan), called after each stage
Progress = Callable[[str, int, int], None]


def execute(client: Any, plan: Plan, progress: Progress | None = None) -> ExecReport:
    report = ExecReport()
    total, finished = len(plan.calls), 0
    failed: set[str] = set()
    for stage in plan.by_stage():
        start = time.perf_counter()
        runnable = []
        for call in stage:
            blocked = [d for d in call.deps if d in failed]
            if blocked:
                report.skipped.append(f"{call.key}: skipped, needs {', '.join(blocked)}")
                failed.add(call.key)
            else:
                runnable.append(call)
        got = outcomes(client, [(c.method, c.params) for c in runnable])
        for call, outcome in zip(runnable, got, strict=True):
            if isinstance(outcome, Exception):
                failed.add(call.key)
                report.failures.append(Failure(call.key, call.method,
                                               getattr(outcome, "code", None),
                                               getattr(outcome, "message", str(outcome))))
            else:
                report.done += 1
        report.stage_seconds[stage[0].stage] = time.perf_counter() - start
        finished += len(stage)
        if progress is not None:
            progress(stage[0].stage, finished, total)
    return report
