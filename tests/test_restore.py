"""Capture -> kill -9 -> fresh target -> restore -> capture equals, on the embedded target."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.recovery.capture import capture, capture_config
from nvmf_phoenix.recovery.diff import diff
from nvmf_phoenix.recovery.planner import plan
from nvmf_phoenix.recovery.restore import restore
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import nvmf as rn

from nvmf_phoenix.model import TargetState
from tests.support import rich_config
from tests.target_fixture import free_port
from tests.target_process import TARGET_KINDS, TargetProcess

HOST1 = "nqn.2014-08.org.nvmexpress:uuid:00000001-0000-0000-0000-000000000000"


def _build(tmp_path: Path, sock: str, kind: str = "embedded") -> tuple[TargetProcess, str]:
    image = tmp_path / "a0.img"
    image.write_bytes(bytes(1 << 20))
    port = str(free_port())
    tp = TargetProcess(sock, kind=kind)
    with RpcClient.connect(sock) as c:
        rich_config(c, image, port)
        addr = rn.listen_address("127.0.0.1", port)
        rn.nvmf_subsystem_listener_set_ana_state(c, "nqn.2016-06.io.spdk:rt1", addr,
                                                 "inaccessible", anagrpid=2)
        rn.nvmf_subsystem_listener_set_ana_state(c, "nqn.2016-06.io.spdk:rt1", addr,
                                                 "optimized", anagrpid=1)
    return tp, port


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_round_trip_through_kill_9(tmp_path: Path, kind: str) -> None:
    """Runs against SPDK's nvmf_tgt too when $SPDK_NVMF_TGT names one."""
    sock = str(tmp_path / "spdk.sock")
    tp, port = _build(tmp_path, sock, kind)
    try:
        with RpcClient.connect(sock) as c, Host("127.0.0.1", port, "nqn.2016-06.io.spdk:rt1",
                                                hostnqn=HOST1) as h:
            h.create_io_queues(2)
            before = capture(c)
    finally:
        tp.kill()   # the crash under test; also no target left running if capture failed
    # 2 I/O queue pairs + the admin one: SPDK's num_io_qpairs counts them all.
    assert [(x.hostnqn, x.num_io_qpairs) for x in before.runtime.controllers] == [(HOST1, 3)]
    assert list(before.keys) == ["psk0"] and len(before.referrals) == 1
    assert before.subsystems["nqn.2016-06.io.spdk:rt1"].namespaces[3].eui64 == \
        "0011223344556677"
    fresh = TargetProcess(sock, "--wait-for-rpc", kind=kind)
    try:
        with RpcClient.connect(sock) as c:
            report = restore(c, before)
            assert report.ok, report.summary()
            after = capture_config(c)
            assert diff(before, after) == []
            # Idempotent: a second restore plans nothing.
            assert plan(before, after).calls == []
            again = restore(c, before)
            assert again.ok and again.execution.done == 0
        with Host("127.0.0.1", port, "nqn.2016-06.io.spdk:rt1", hostnqn=HOST1) as h:
            ns = h.identify_namespace(3)
            assert ns["eui64"] == "0011223344556677" and ns["anagrpid"] == 2
    finally:
        fresh.stop()


def test_one_failing_object_does_not_stop_the_rest(tmp_path: Path) -> None:
    sock = str(tmp_path / "spdk.sock")
    tp, _ = _build(tmp_path, sock)
    with RpcClient.connect(sock) as c:
        desired = capture_config(c)
    tp.kill()
    (tmp_path / "a0.img").unlink()   # the aio bdev's file is gone: that bdev must fail
    fresh = TargetProcess(sock)
    try:
        with RpcClient.connect(sock) as c:
            report = restore(c, desired)
            assert not report.ok
            assert [f.key for f in report.execution.failures] == ["bdev:A0"]
            assert report.execution.skipped == [
                "subsystem:nqn.2016-06.io.spdk:rt1/ns:1: skipped, needs bdev:A0"]
            after = capture_config(c)
            assert after.subsystems["nqn.2016-06.io.spdk:rt1"].namespaces.keys() == {3}
            assert len(after.subsystems["nqn.2016-06.io.spdk:rt2"].namespaces) == 1
            assert any("nsid" in d or "A0" in d for d in report.differences)
    finally:
        fresh.stop()


def test_conflicting_identity_is_reported_not_destroyed(tmp_path: Path) -> None:
    sock = str(tmp_path / "spdk.sock")
    tp, _ = _build(tmp_path, sock)
    try:
        with RpcClient.connect(sock) as c:
            live = capture_config(c)
        desired = TargetState.from_dict(live.to_dict())
        ns = desired.subsystems["nqn.2016-06.io.spdk:rt2"].namespaces[1]
        desired.subsystems["nqn.2016-06.io.spdk:rt2"].namespaces[1] = dataclasses.replace(
            ns, uuid="99999999-9999-9999-9999-999999999999")
        p = plan(desired, live)
        assert p.calls == [] and len(p.conflicts) == 1 and "nsid 1" in p.conflicts[0]
    finally:
        tp.stop()


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_referral_order_survives_a_restore(tmp_path: Path, kind: str) -> None:
    """The discovery log lists referrals in the target's order (SPDK: newest first); a
    restore must give it back the same, not reversed."""
    sock = str(tmp_path / "spdk.sock")
    tp = TargetProcess(sock, kind=kind)
    try:
        with RpcClient.connect(sock) as c:
            for last in (2, 3, 4):
                rn.nvmf_discovery_add_referral(c, rn.listen_address(f"127.0.0.{last}", 8009))
            listed = c.call("nvmf_discovery_get_referrals")
            before = capture_config(c)
    finally:
        tp.kill()
    assert [r["address"]["traddr"] for r in listed] == ["127.0.0.4", "127.0.0.3", "127.0.0.2"]
    fresh = TargetProcess(sock, "--wait-for-rpc", kind=kind)
    try:
        with RpcClient.connect(sock) as c:
            assert restore(c, before).ok
            assert c.call("nvmf_discovery_get_referrals") == listed
    finally:
        fresh.stop()
