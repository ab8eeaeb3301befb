"""Reconnect verification logic, with an injected clock: no real waiting."""
from __future__ import annotations

from typing import Any

from nvmf_phoenix.recovery.verify import Expectation, expectations, verify_reconnect

from nvmf_phoenix.model import Controller, Runtime


class FakeTarget:
    """Hosts appear on the target at given (fake) times."""

    def __init__(self, clock: list[float], arrivals: dict[str, tuple[float, str, int]]):
        self.clock = clock
        self.arrivals = arrivals

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        assert method == "nvmf_subsystem_get_controllers" and params
        return [{"hostnqn": h, "num_io_qpairs": q} for h, (t, nqn, q) in
                self.arrivals.items() if nqn == params["nqn"] and self.clock[0] >= t]


def test_expectations_from_runtime() -> None:
    rt = Runtime(controllers=[Controller("nqn.s1", 1, "h1", "id", 4),
                              Controller("nqn.s1", 2, "h2", "id", 2)])
    assert expectations(rt) == [Expectation("h1", "nqn.s1", 4), Expectation("h2", "nqn.s1", 2)]


def test_reports_time_to_reconnect_and_missing_hosts() -> None:
    clock = [0.0]
    target = FakeTarget(clock, {"h1": (1.0, "nqn.s1", 4), "h2": (3.0, "nqn.s2", 1),
                                "h3": (2.0, "nqn.s1", 1)})   # h3 came back with too few queues
    expected = [Expectation("h1", "nqn.s1", 4), Expectation("h2", "nqn.s2", 1),
                Expectation("h3", "nqn.s1", 2)]

    def sleep(s: float) -> None:
        clock[0] += s

    report = verify_reconnect(target, expected, deadline_s=5.0, interval=0.5,
                              clock=lambda: clock[0], sleep=sleep)
    assert {e.hostnqn: t for e, t in report.reconnected.items()} == {"h1": 1.0, "h2": 3.0}
    assert report.missing == [Expectation("h3", "nqn.s1", 2)] and not report.ok
    assert clock[0] == 5.0   # gave up exactly at the deadline
