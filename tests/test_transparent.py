"""Zero-disconnect restarts: the crash-transparent target survives SIGKILL of its worker.

Every test runs the real process tree (socket keeper plus workers) over loopback TCP with
the project's initiator, which treats a closed connection, a duplicate or unknown
completion and a digest error as fatal, exactly as the Linux host does.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from nvmf_phoenix.target.host import Host
from nvmf_phoenix.target.workload import VerifiedWorkload

from tests.target_fixture import HOSTNQN, NQN
from tests.transparent_target import torture, transparent_target


@pytest.mark.parametrize("max_nlb", [1, 8], ids=["in-capsule", "r2t"])
def test_sigkill_during_verified_io_is_invisible(tmp_path: Path, max_nlb: int) -> None:
    """SIGKILLs at random moments during QD32 verified I/O: zero errors, zero
    disconnects, zero mismatches, every command completed exactly once."""
    with transparent_target(tmp_path) as t:
        t.configure()
        report = torture(t, kills=12, max_nlb=max_nlb)
    print(f"transparent torture: {report}")
    assert report["kills"] == 12
    assert report["errors"] == 0 and report["mismatches"] == 0, report
    assert report["unreadable"] == 0 and report["outstanding"] == 0
    assert report["completed"] == report["submitted"] and report["completed"] > 500
    assert report["status"]["takeovers"] == 13
    assert report["status"]["connections"] == 3   # admin + 2 I/O, never reconnected


@pytest.mark.parametrize("point,policy", [
    ("io-read", "replay"), ("io-read", "abort"), ("io-committed", "replay"),
    ("io-half-sent", "replay"), ("io-torn-commit", "replay")])
def test_kill_at_the_worst_instant(tmp_path: Path, point: str, policy: str) -> None:
    """SIGKILL exactly where it hurts most: commands read but not executed (replayed, or
    completed with a retryable status under --inflight abort), completions committed but
    not sent, a PDU half sent, a commit half written. The host sees nothing but, under
    abort, the retryable status it re-issues."""
    marker = tmp_path / "fired"
    env = {"NVMF_PHOENIX_FAILPOINT": f"{point}:200:{marker}"}
    with transparent_target(tmp_path, "--inflight", policy, env=env) as t:
        t.configure()
        t.wait_standby()
        host = Host("127.0.0.1", t.port, NQN, hostnqn=HOSTNQN)
        try:
            host.create_io_queues(1)
            # Under abort, in-capsule writes only: every capsule read is then a command
            # the successor must interrupt (H2CData of an R2T write is not a command).
            work = VerifiedWorkload(host.io, 1, 4096, 2048, qd=32, seed=7,
                                    max_nlb=1 if policy == "abort" else 8)
            work.run(30, stop=marker.exists)
            t.wait_standby(takeovers=2)
            work.run(0.5)
            work.drain()
            assert work.verify_all(lambda lba, n: host.read(1, lba, n, 4096)) == []
        finally:
            host.close()
        status = t.status()
    print(f"{point}/{policy}: {work.stats.summary()}")
    assert marker.exists() and status["takeovers"] == 2
    assert work.stats.errors == [] and work.stats.mismatches == []
    assert work.stats.completed == work.stats.submitted - work.stats.retries
    if policy == "abort":
        assert work.stats.retries >= 1
    else:
        assert work.stats.retries == 0
