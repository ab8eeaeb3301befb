"""Restore a saved state into a (restarted) target and prove it came back.

capture live -> plan -> execute (pipelined) -> capture again -> diff against desired.
The report says what was done, what failed, what conflicted, and how long each step took.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from nvmf_phoenix.recovery.capture import capture_config
from nvmf_phoenix.recovery.diff import diff
from nvmf_phoenix.recovery.executor import ExecReport, Progress, execute
from nvmf_phoenix.recovery.planner import Plan, plan

from nvmf_phoenix.model import TargetState


@dataclass
class RestoreReport:
    plan: Plan
    execution: ExecReport
    differences: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.execution.ok and not self.differences and not self.plan.conflicts

    def summary(self) -> dict[str, Any]:
        return {"ok": self.ok, "calls": len(self.plan.calls), "done": self.execution.done,
                "failures": [str(f) for f in self.execution.failures],
                "skipped": self.execution.skipped, "conflicts": self.plan.conflicts,
                "extra": self.plan.extra, "opaque": self.plan.opaque,
                "differences": self.differences,
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}


def target_phase(client: Any) -> str:
    """'startup' when the target waits for framework_start_init (--wait-for-rpc)."""
    try:
        methods = client.call("rpc_get_methods", {"current": True})
    except Exception:
        return "running"
    return "startup" if "framework_start_init" in methods else "running"


def restore(client: Any, desired: TargetState, prune: bool = False,
            progress: Progress | None = None) -> RestoreReport:
    t0 = time.perf_counter()
    phase = target_phase(client)
    # A target in STARTUP holds nothing yet but its discovery subsystem.
    live = capture_config(client) if phase == "running" else TargetState()
    t1 = time.perf_counter()
    the_plan = plan(desired, live, phase, prune)
    t2 = time.perf_counter()
    report = execute(client, the_plan, progress)
    t3 = time.perf_counter()
    after = capture_config(client)
    differences = diff(desired, after, desired=True)
    t4 = time.perf_counter()
    return RestoreReport(the_plan, report, differences,
                         {"capture_live": t1 - t0, "plan": t2 - t1, "execute": t3 - t2,
                          "verify": t4 - t3, "total": t4 - t0})
