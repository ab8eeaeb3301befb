"""Zero-disconnect restarts: the crash-transparent target survives SIGKILL of its worker.

Every test runs the real process tree (socket keeper plus workers) over loopback TCP with
the project's initiator, which treats a closed connection, a duplicate or unknown
completion and a digest error as fatal, exactly as the Linux host does.
"""
from __future__ import annotations

from pathlib import Path

import pytest

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
