"""Many SIGKILLs of whichever pair member is active, under verified multipath I/O.

The pair runs under its supervisor (no hand-made failover here); the project's multipath
initiator finds both paths through one discovery address, as a Linux host with
`nvme connect-all` does. After each kill: the I/O goes on with no error and no mismatch,
the supervisor has failed over, the dead member comes back as standby, and the host has
both paths live again (redundancy back) before the next kill.
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
from nvmf_phoenix.initiator.mpworkload import MultipathWorkload
from nvmf_phoenix.initiator.multipath import MultipathHost
from nvmf_phoenix.rpc import RpcClient

from tests.support import PAIR_NQN, configure_pair, paired
from tests.target_fixture import free_port
from tests.target_process import TARGET_KINDS
from tests.waiting import wait_for

BLOCKS = 2048
KILLS = {"embedded": 50, "spdk": 20}


def host_converged(mp: MultipathHost) -> bool:
    """Both paths live, one optimized and one non-optimized, as the host sees them (the
    pair serves one namespace)."""
    paths = mp.paths()
    states = sorted(str(state) for p in paths for state in dict(p["ana"]).values())
    return len(paths) == 2 and all(p["live"] for p in paths) and \
        states == ["non_optimized", "optimized"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_sigkills_of_the_active_member_under_verified_multipath_io(tmp_path: Path,
                                                                   kind: str) -> None:
    port, disc = free_port(), free_port()
    # Kills every second or two are the test, not a crash loop: no restart limit here.
    with paired(tmp_path, kind=kind, max_restarts=1000) as pair:
        with RpcClient.connect(str(tmp_path / "public.sock")) as c:
            configure_pair(c, tmp_path / "disk.img", port, disc, BLOCKS)
        with MultipathHost.from_discovery("127.0.0.1", disc, subnqn=PAIR_NQN,
                                          reconnect_delay=0.2) as mp:
            wl = MultipathWorkload(mp, 1, 4096, BLOCKS, qd=8, seed=7)
            stop = threading.Event()
            runner = threading.Thread(target=lambda: (wl.run(3600, stop=stop.is_set),
                                                      wl.drain()))
            runner.start()
            done_before: list[int] = []
            try:
                for i in range(KILLS[kind]):
                    # Redundant, and the host knows which path is optimized (it may
                    # hear of a promotion after the restored member's path is back):
                    # every kill then takes away the path its I/O is on.
                    wait_for(lambda: pair.status_dict()["redundant"] and host_converged(mp),
                             timeout=60, what=f"redundancy before kill {i + 1}")
                    done_before.append(wl.stats.completed)
                    active = pair.members[pair.active]
                    assert active.proc is not None
                    os.kill(active.proc.pid, signal.SIGKILL)
                    def failed_over(n: int = i + 1) -> bool:
                        return pair.status.failovers == n

                    def io_goes_on(n: int = done_before[-1] + 100) -> bool:
                        return wl.stats.completed > n

                    wait_for(failed_over, timeout=30, what=f"failover {i + 1}")
                    # I/O goes on through the standby while the dead member is rebuilt.
                    wait_for(io_goes_on, timeout=30, what=f"I/O after kill {i + 1}")
                    assert not wl.stats.errors and not wl.stats.mismatches, wl.report()
                wait_for(lambda: pair.status_dict()["redundant"], timeout=60,
                         what="redundancy after the last kill")
            finally:
                stop.set()
                runner.join(timeout=60)
            report = wl.report()
            assert report["errors"] == 0 and report["mismatches"] == 0, wl.stats.errors
            # The host moved its I/O at every kill (each kill took its path away).
            assert mp.counters()["failovers"] >= KILLS[kind], report
            assert wl.verify_all(lambda lba, n: mp.read(1, lba, n, 4096)) == []
        assert pair.status.failovers == KILLS[kind]
