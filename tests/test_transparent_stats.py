"""Statistics of the crash-transparent target survive takeovers, counting each command once.

nvmf_get_stats is what metrics read: queue pairs created and NVMe I/O completed must never
go backwards because a worker died, and must equal what the host saw completed, although a
successor executes again every command its predecessor read but did not commit. The
counters file itself (embedded/counters.py) is checked with real files: a torn record, a
record whose commit never happened, a file from another build.
"""
from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import pytest
from nvmf_phoenix.embedded import counters as cnt
from nvmf_phoenix.embedded.controllers import Stats
from nvmf_phoenix.embedded.counters import SharedCounters
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.initiator.workload import VerifiedWorkload

from tests.target_fixture import HOSTNQN, NQN
from tests.transparent_target import TransparentTarget, torture, transparent_target

COUNTED = ("admin_qpairs", "io_qpairs", "completed_nvme_io")


def _stats(t: TransparentTarget) -> dict[str, int]:
    with t.rpc() as c:
        (group,) = c.call("nvmf_get_stats")["poll_groups"]
    return {k: int(group[k]) for k in (*COUNTED, "current_admin_qpairs", "current_io_qpairs")}


@pytest.mark.slow
def test_counters_are_monotonic_and_exact_across_50_takeovers(tmp_path: Path) -> None:
    """50 SIGKILLs at random moments during verified QD32 I/O: after every takeover no
    counter is lower than before, the queues the host made are still counted (and
    still current), and at the end the I/O completed equals what the host completed."""
    seen: list[dict[str, int]] = []
    with transparent_target(tmp_path) as t:
        t.configure()

        def check(n: int) -> None:
            now = _stats(t)
            if seen:
                went_down = {k: (seen[-1][k], now[k]) for k in COUNTED
                             if now[k] < seen[-1][k]}
                assert not went_down, f"after takeover {n}: {went_down}"
            seen.append(now)

        report = torture(t, kills=50, after_takeover=check)
        final = _stats(t)
    print(f"stats after 50 takeovers: {final}, host: {report['completed']} + "
          f"{report['verified']} read-backs")
    assert report["kills"] == 50 and len(seen) == 50
    assert report["errors"] == 0 and report["mismatches"] == 0, report
    assert report["status"]["connections"] == 3            # never reconnected
    assert all(s["current_admin_qpairs"] == 1 and s["current_io_qpairs"] == 2 for s in seen)
    assert (final["admin_qpairs"], final["io_qpairs"]) == (1, 2)
    assert final["completed_nvme_io"] == report["completed"] + report["verified"]


@pytest.mark.parametrize("point", ["io-read", "io-committed", "io-torn-commit",
                                   "io-unsealed-commit"])
def test_a_kill_at_the_worst_instant_counts_each_command_once(tmp_path: Path,
                                                             point: str) -> None:
    """Killed with commands read but not executed, with a counted commit not sent, with
    the count written but its commit torn, or with the commit written but not sealed:
    the successor's count is still exactly what the host completed."""
    marker = tmp_path / "fired"
    env = {"NVMF_PHOENIX_FAILPOINT": f"{point}:200:{marker}"}
    with transparent_target(tmp_path, env=env) as t:
        t.configure()
        t.wait_standby()
        host = Host("127.0.0.1", t.port, NQN, hostnqn=HOSTNQN)
        try:
            host.create_io_queues(1)
            work = VerifiedWorkload(host.io, 1, 4096, 2048, qd=32, seed=11, max_nlb=8)
            work.run(30, stop=marker.exists)
            t.wait_standby(takeovers=2)
            work.run(0.3)
            work.drain()
        finally:
            host.close()
        stats = _stats(t)
    assert marker.exists(), "the failpoint never fired"
    assert work.stats.errors == [] and work.stats.mismatches == []
    assert (stats["admin_qpairs"], stats["io_qpairs"]) == (1, 1)
    assert stats["completed_nvme_io"] == work.stats.completed


# -- the counters file ------------------------------------------------------------------------
def _totals(c: SharedCounters) -> dict[str, Any]:
    return dict(zip(cnt.FIELDS, c.latest()[1], strict=True))


def test_a_record_whose_commit_never_happened_is_taken_off(tmp_path: Path) -> None:
    c = SharedCounters.open("s", str(tmp_path))
    s = Stats(io_qpairs=2, completed_nvme_io=10)
    c.record(s, conn_id=3, commit=7)
    s.completed_nvme_io = 25
    c.record(s, conn_id=4, commit=9)          # killed before commit 9 of connection 4
    c.close()
    again = SharedCounters.open("s", str(tmp_path))
    assert again.reconcile({4: 8}.get).completed_nvme_io == 10
    assert _totals(again)["completed_nvme_io"] == 10 and again.latest()[2:4] == (0, 0)
    again.close()
    # Reconciled once, the record names no commit: asking again changes nothing.
    third = SharedCounters.open("s", str(tmp_path))
    assert third.reconcile(lambda _c: 0).completed_nvme_io == 10


@pytest.mark.parametrize("newest", [9, 12, None], ids=["done", "later", "unknown"])
def test_a_record_whose_commit_happened_stands(tmp_path: Path, newest: int | None) -> None:
    c = SharedCounters.open("s", str(tmp_path))
    c.record(Stats(completed_nvme_io=25, bytes_read=4096), conn_id=4, commit=9)
    assert c.reconcile(lambda _c: newest) == Stats(completed_nvme_io=25, bytes_read=4096)


def test_a_torn_record_leaves_the_previous_one(tmp_path: Path) -> None:
    c = SharedCounters.open("s", str(tmp_path))
    c.record(Stats(completed_nvme_io=5), conn_id=1, commit=2)
    c.record(Stats(completed_nvme_io=8), conn_id=1, commit=3)
    seq = c.latest()[0]
    off = cnt.RECORD_OFFSET[seq & 1] + 20
    with open(c.path, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        mm[off] ^= 0xFF
    assert c.latest()[0] == seq - 1
    assert c.reconcile({1: 2}.get).completed_nvme_io == 5


def test_unchanged_counters_write_nothing(tmp_path: Path) -> None:
    c = SharedCounters.open("s", str(tmp_path))
    c.record(Stats(io_qpairs=1), conn_id=1, commit=2)
    seq = c.latest()[0]
    c.record(Stats(io_qpairs=1), conn_id=1, commit=3)
    assert c.latest()[0] == seq


@pytest.mark.parametrize("damage", ["magic", "counters"])
def test_a_foreign_file_restarts_from_zero(tmp_path: Path, damage: str) -> None:
    c = SharedCounters.open("s", str(tmp_path))
    c.record(Stats(completed_nvme_io=5), conn_id=1, commit=2)
    c.close()
    off = 0 if damage == "magic" else 12    # the magic, or the number of counters
    with open(tmp_path / cnt.NAME, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        mm[off] ^= 0xFF
    assert SharedCounters.open("s", str(tmp_path)).reconcile(lambda _c: None) == Stats()
