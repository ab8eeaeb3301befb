"""Supervisor and write-ahead front: kill the target at any moment, lose nothing."""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from nvmf_phoenix.recovery.capture import capture_config
from nvmf_phoenix.recovery.supervisor import Supervisor
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn

from tests.target_process import TARGET_KINDS, target_command
from tests.waiting import wait_for


@contextmanager
def supervised(tmp_path: Path, cmd: list[str] | None = None, kind: str = "embedded",
               **kw: object) -> Iterator[Supervisor]:
    sup = Supervisor(cmd or target_command(kind), str(tmp_path / "private.sock"),
                     str(tmp_path / "public.sock"), str(tmp_path / "state"), **kw)
    try:
        sup.start()
        yield sup
    finally:
        sup.stop()
        sup.store.region.unlink()


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_calls_during_a_restart_wait_and_are_served(tmp_path: Path, kind: str) -> None:
    with supervised(tmp_path, kind=kind) as sup, \
            RpcClient.connect(str(tmp_path / "public.sock")) as c:
        rn.nvmf_create_transport(c, "TCP")
        rb.bdev_malloc_create(c, 64, 512, name="M0", uuid="aaaaaaaa-0000-4000-8000-000000000001")
        rn.nvmf_create_subsystem(c, "nqn.2016-06.io.phx:s1", serial_number="SUP1")
        rn.nvmf_subsystem_add_ns(c, "nqn.2016-06.io.phx:s1", "M0")
        assert sup.proc is not None
        sup.proc.send_signal(signal.SIGKILL)
        # No waiting here: the call blocks until the supervisor has restored the target.
        subs = rn.nvmf_get_subsystems(c, "nqn.2016-06.io.phx:s1")
        assert subs[0]["serial_number"] == "SUP1"
        assert subs[0]["namespaces"][0]["uuid"] == "aaaaaaaa-0000-4000-8000-000000000001"
        rn.nvmf_create_subsystem(c, "nqn.2016-06.io.phx:s2")   # mutations work after it
        wait_for(lambda: sup.status.restarts == 1, timeout=10, what="restart counted")
        status = c.call("phoenix_status")
        assert status["state"] == "ready" and status["restarts"] == 1


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_slow_but_alive_target_is_not_killed(tmp_path: Path, kind: str) -> None:
    with supervised(tmp_path, kind=kind, ping_interval=0.2, misses=10) as sup:
        assert sup.proc is not None
        pid = sup.proc.pid
        os.kill(pid, signal.SIGSTOP)            # stalls for ~1 ping-window fraction
        wait_for(lambda: sup.status.state == "ready" and sup.proc is not None
                 and sup.proc.pid == pid, timeout=2, what="still the same target")
        os.kill(pid, signal.SIGCONT)
        assert sup.status.restarts == 0 and sup.proc.pid == pid


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_unanswering_target_is_replaced(tmp_path: Path, kind: str) -> None:
    with supervised(tmp_path, kind=kind, ping_interval=0.2, misses=3) as sup:
        assert sup.proc is not None
        pid = sup.proc.pid
        os.kill(pid, signal.SIGSTOP)            # alive but silent for good
        wait_for(lambda: sup.status.restarts == 1, timeout=20, what="replacement")
        assert sup.proc.pid != pid


def test_crash_loop_ends_in_a_clear_failed_state(tmp_path: Path) -> None:
    with supervised(tmp_path, max_restarts=2, restart_window=60) as sup:
        sup.target_cmd = [sys.executable, "-c", "import sys; sys.exit(3)"]
        assert sup.proc is not None
        sup.proc.send_signal(signal.SIGKILL)
        wait_for(lambda: sup.status.state == "failed", timeout=60, what="failed state")
        assert "crash loop" in sup.status.last_error


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_planned_restart_keeps_everything(tmp_path: Path, kind: str) -> None:
    with supervised(tmp_path, kind=kind) as sup, \
            RpcClient.connect(str(tmp_path / "public.sock")) as c:
        rn.nvmf_create_transport(c, "TCP")
        rn.nvmf_create_subsystem(c, "nqn.2016-06.io.phx:p1", serial_number="PLAN1")
        before = capture_config(c)
        assert sup.proc is not None
        old = sup.proc.pid
        status = c.call("phoenix_restart", {"target_cmd": target_command(kind)})
        assert status["state"] == "ready" and sup.proc.pid != old
        after = capture_config(c)
        assert after.subsystems.keys() == before.subsystems.keys()


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_changes_behind_the_back_are_captured(tmp_path: Path, kind: str) -> None:
    with supervised(tmp_path, kind=kind, drift_interval=0.3) as sup:
        with RpcClient.connect(str(tmp_path / "private.sock")) as c:
            rn.nvmf_create_subsystem(c, "nqn.2016-06.io.phx:sneaky")
        wait_for(lambda: (st := sup.store.load().state) is not None and
                 "nqn.2016-06.io.phx:sneaky" in st.subsystems, timeout=10,
                 what="drift captured")
        assert sup.proc is not None
        sup.proc.send_signal(signal.SIGKILL)
        with RpcClient.connect(str(tmp_path / "public.sock")) as c:
            assert rn.nvmf_get_subsystems(c, "nqn.2016-06.io.phx:sneaky")


@pytest.mark.parametrize("kind", TARGET_KINDS)
@pytest.mark.parametrize("kills", [10])
def test_torture_rpc_stream_and_host_io_under_sigkill(tmp_path: Path, kills: int,
                                                      kind: str) -> None:
    from tests.torture import run_torture

    result = run_torture(tmp_path, kills=kills, seed=1, target_cmd=target_command(kind))
    assert result["kills"] >= kills
    assert result["acked_missing"] == [] and result["half_present"] == []
    assert result["io_mismatches"] == 0 and result["io_acked"] > 0


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_death_is_noticed_while_a_mutation_holds_the_front(tmp_path: Path, kind: str) -> None:
    """A mutation holds the front's lock while it waits for a dead target to come back;
    the watcher's drift check must not wait for that lock, or nobody restarts the target
    (against SPDK this stalled the front for its whole 60 s deadline)."""
    import threading

    with supervised(tmp_path, kind=kind, drift_interval=0.05) as sup:
        entered = threading.Event()
        check = sup._check_drift

        def observed_check() -> None:
            entered.set()
            check()
        sup._check_drift = observed_check
        assert sup.proc is not None
        with sup.front.lock:                    # as a mutation in flight holds it
            entered.clear()
            wait_for(entered.is_set, timeout=10, what="a drift check while the lock is held")
            sup.proc.send_signal(signal.SIGKILL)
            wait_for(lambda: sup.status.restarts == 1 and sup.ready.is_set(), timeout=20,
                     what="restart while the front's lock is held")


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_planned_restart_is_the_only_restart(tmp_path: Path, kind: str) -> None:
    """The old target does not answer pings while a planned restart replaces it; those
    misses must not be held against the new one (the watcher used to kill it right after,
    or SIGTERM a replacement it had started itself)."""
    import threading

    with supervised(tmp_path, kind=kind, ping_interval=0.05, misses=2) as sup, \
            RpcClient.connect(str(tmp_path / "public.sock")) as c:
        pings = 0
        alive = sup._alive
        lock = threading.Lock()

        def counted_alive(timeout: float = 1.0) -> bool:
            nonlocal pings
            with lock:
                pings += 1
            return alive(timeout)
        sup._alive = counted_alive
        status = c.call("phoenix_restart", {"target_cmd": target_command(kind)})
        assert status["state"] == "ready" and status["restarts"] == 1
        assert sup.proc is not None
        pid, seen = sup.proc.pid, pings
        wait_for(lambda: pings >= seen + 5, timeout=20, what="five more liveness pings")
        assert (sup.status.restarts, sup.proc.pid, sup.status.last_error) == (1, pid, "")
