"""Per-namespace host visibility (nvmf_ns_add_host / nvmf_ns_remove_host), end to end.

A namespace added with ``no_auto_visible`` is seen only by the hosts on its list. That
list is host-visible state: a restore that drops it leaves a host without its data. So it
is captured, checkpointed, restored and compared like everything else, the embedded target
serves both methods with SPDK's refusals, and its data path hides the namespace from
every other host (SPDK v26.05: subsystem.c nvmf_ns_visible, ctrlr.c).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from nvmf_phoenix.embedded import rpc_nvmf  # noqa: F401  (registers the nvmf handlers)
from nvmf_phoenix.embedded.config_store import TargetCore
from nvmf_phoenix.embedded.rpc_methods import RpcContext, load_config
from nvmf_phoenix.initiator.connection import NvmeStatusError
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.plugin import ops
from nvmf_phoenix.recovery.capture import capture_config, state_from_rpc
from nvmf_phoenix.recovery.diff import diff
from nvmf_phoenix.recovery.planner import plan
from nvmf_phoenix.recovery.restore import restore
from nvmf_phoenix.rpc import RpcClient, RpcError
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn
from nvmf_phoenix.wire import nvme

from nvmf_phoenix.model import Bdev, Namespace, TargetState
from tests.phoenix_tools import drop_region
from tests.target_fixture import NQN, free_port, running_target
from tests.target_process import TARGET_KINDS, TargetProcess, target_process

SUB = "nqn.2016-06.io.phx:visible"
HOST_A = "nqn.2014-08.org.nvmexpress:uuid:0000000a-0000-4000-8000-000000000000"
HOST_B = "nqn.2014-08.org.nvmexpress:uuid:0000000b-0000-4000-8000-000000000000"


def _hidden_namespace(c: RpcClient) -> None:
    """The issue's scenario: a no_auto_visible namespace that host A may see."""
    rn.nvmf_create_transport(c, "TCP")
    rb.bdev_malloc_create(c, 64, 512, name="M0")
    rb.bdev_malloc_create(c, 64, 512, name="M1")
    rn.nvmf_create_subsystem(c, SUB, serial_number="VIS1", max_namespaces=4)
    rn.nvmf_subsystem_add_ns(c, SUB, "M0", nsid=1, no_auto_visible=True)
    rn.nvmf_subsystem_add_ns(c, SUB, "M1", nsid=2)
    rn.nvmf_ns_add_host(c, SUB, 1, HOST_A)


def _nvmf_config(c: RpcClient) -> list[dict[str, Any]]:
    return c.call("framework_get_config", {"name": "nvmf"})


def test_capture_plan_and_diff_carry_the_host_list() -> None:
    """From a save_config as nvmf_tgt writes it: captured (newest first), replayed oldest
    first after the namespace and before the listener, and its loss is a difference."""
    addr = rn.listen_address("127.0.0.1", 4420)
    nvmf = [{"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
            {"method": "nvmf_create_subsystem", "params": {"nqn": SUB}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": SUB, "namespace": {
                "nsid": 1, "bdev_name": "M0", "no_auto_visible": True}}},
            {"method": "nvmf_ns_add_host", "params": {"nqn": SUB, "nsid": 1, "host": HOST_B}},
            {"method": "nvmf_ns_add_host", "params": {"nqn": SUB, "nsid": 1, "host": HOST_A}},
            {"method": "nvmf_subsystem_add_listener", "params": {"nqn": SUB,
                                                                 "listen_address": addr}}]
    st = state_from_rpc({"nvmf": nvmf})
    assert st.subsystems[SUB].namespaces[1].hosts == [HOST_B, HOST_A]
    calls = [(c.method, c.params) for c in plan(st, TargetState.empty()).calls]
    names = [m for m, _ in calls]
    hosts = [p for m, p in calls if m == "nvmf_ns_add_host"]
    assert hosts == [{"nqn": SUB, "nsid": 1, "host": HOST_A},
                     {"nqn": SUB, "nsid": 1, "host": HOST_B}]
    assert names.index("nvmf_subsystem_add_ns") < names.index("nvmf_ns_add_host") < \
        names.index("nvmf_subsystem_add_listener")
    lost = TargetState.from_dict(st.to_dict())
    lost.subsystems[SUB].namespaces[1].hosts = []
    assert diff(st, lost, desired=True) != []


def test_refusals_and_save_config_are_spdks(tmp_path: Path) -> None:
    with target_process(tmp_path) as tp, RpcClient.connect(tp.sock) as c:
        _hidden_namespace(c)
        refused = {
            "no such subsystem": {"nqn": SUB + "x", "nsid": 1, "host": HOST_B},
            "host not an NQN": {"nqn": SUB, "nsid": 1, "host": "host-b"},
            "nsid 0": {"nqn": SUB, "nsid": 0, "host": HOST_B},
            "nsid above max_namespaces": {"nqn": SUB, "nsid": 5, "host": HOST_B},
            "no namespace 3": {"nqn": SUB, "nsid": 3, "host": HOST_B},
            "auto-visible namespace": {"nqn": SUB, "nsid": 2, "host": HOST_B},
            "no host given": {"nqn": SUB, "nsid": 1},
            "discovery subsystem": {"nqn": "nqn.2014-08.org.nvmexpress.discovery",
                                    "nsid": 1, "host": HOST_B}}
        for why, params in refused.items():
            for method in ("nvmf_ns_add_host", "nvmf_ns_remove_host"):
                with pytest.raises(RpcError) as err:
                    c.call(method, params)
                assert (err.value.code, err.value.message) == (-32602, "Invalid parameters"), \
                    (method, why)
        with pytest.raises(RpcError) as err:
            c.call("nvmf_ns_add_host", {"nqn": SUB, "nsid": 1, "host": HOST_B,
                                        "tgt_name": "other"})
        assert (err.value.code, err.value.message) == (-32603, "Unable to find a target.")
        # Adding a listed host and removing an unlisted one change nothing, as in SPDK.
        assert rn.nvmf_ns_add_host(c, SUB, 1, HOST_A) is True
        assert rn.nvmf_ns_remove_host(c, SUB, 1, HOST_B) is True
        assert c.call("nvmf_ns_add_host", {"nqn": SUB, "nsid": 1, "host": HOST_B,
                                           "tgt_name": "nvmf_tgt"}) is True
        rn.nvmf_subsystem_add_listener(c, SUB, rn.listen_address("127.0.0.1", free_port()))
        methods = [e["method"] for e in _nvmf_config(c)]
        visible = [e["params"] for e in _nvmf_config(c) if e["method"] == "nvmf_ns_add_host"]
    # nvmf_tgt's order: every add_ns, then every ns_add_host (newest first), then listeners.
    assert visible == [{"nqn": SUB, "nsid": 1, "host": HOST_B},
                       {"nqn": SUB, "nsid": 1, "host": HOST_A}]
    first, last = methods.index("nvmf_ns_add_host"), len(methods) - 1 - \
        methods[::-1].index("nvmf_ns_add_host")
    assert max(i for i, m in enumerate(methods) if m == "nvmf_subsystem_add_ns") < first
    assert last < methods.index("nvmf_subsystem_add_listener")


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_restore_brings_the_namespace_host_list_back(tmp_path: Path, kind: str) -> None:
    """The issue's finding: checkpoint, SIGKILL, restore into a fresh target: the host
    list is back, and `checkpoint diff` notices when it is not."""
    sock, state_dir = str(tmp_path / "spdk.sock"), str(tmp_path / "state")
    tp = TargetProcess(sock, kind=kind)
    try:
        with RpcClient.connect(sock) as c:
            _hidden_namespace(c)
            rn.nvmf_ns_add_host(c, SUB, 1, HOST_B)
            ops.checkpoint_now(c, state_dir, runtime=False)
    finally:
        tp.kill()
    loaded, _ = ops.load(state_dir)
    assert loaded.state is not None
    assert loaded.state.subsystems[SUB].namespaces[1].hosts == [HOST_B, HOST_A]
    fresh = TargetProcess(sock, "--wait-for-rpc", kind=kind)
    try:
        with RpcClient.connect(sock) as c:
            report = restore(c, loaded.state)
            assert report.ok, report.summary()
            assert capture_config(c).subsystems[SUB].namespaces[1].hosts == [HOST_B, HOST_A]
            visible = [e["params"]["host"] for e in _nvmf_config(c)
                       if e["method"] == "nvmf_ns_add_host"]
            assert visible == [HOST_B, HOST_A]     # the same order as before the kill
            assert ops.diff_live(c, state_dir)["same"]
            rn.nvmf_ns_remove_host(c, SUB, 1, HOST_A)
            got = ops.diff_live(c, state_dir)
    finally:
        fresh.stop()
        drop_region(state_dir)
    assert not got["same"]
    assert any("hosts" in d for d in got["differences"]), got["differences"]


def test_only_listed_hosts_see_the_namespace_and_a_change_notifies() -> None:
    with running_target(hosts=[HOST_A, HOST_B]) as rt:
        core = rt.core
        rt.call(lambda: core.remove_namespace(NQN, 1))
        rt.call(lambda: core.add_namespace(NQN, Namespace(nsid=1, bdev_name="Malloc0",
                                                          no_auto_visible=True)))
        rt.call(lambda: core.set_ns_visible(NQN, 1, HOST_A, True))
        with Host("127.0.0.1", rt.port, NQN, hostnqn=HOST_A) as a, \
                Host("127.0.0.1", rt.port, NQN, hostnqn=HOST_B) as b:
            assert a.active_namespaces() == [1]
            assert a.identify_namespace(1)["nsze"] == 16384
            assert b.active_namespaces() == []
            assert nvme.parse_identify_namespace(b.identify(nvme.CNS_NAMESPACE, 1))[
                "nsze"] == 0                              # inactive: all zeroes
            b.create_io_queues(1)
            with pytest.raises(NvmeStatusError) as err:
                b.read(1, 0, 1, 4096)
            assert err.value.status == nvme.SC_INVALID_NS
            b.set_features(nvme.FEAT_ASYNC_EVENT, nvme.AEC_NS_ATTR)
            a.set_features(nvme.FEAT_ASYNC_EVENT, nvme.AEC_NS_ATTR)
            cid = b.submit_aer()
            rt.call(lambda: core.set_ns_visible(NQN, 1, HOST_B, True))
            dw0 = b.wait_aer(cid, timeout=5)
            assert ((dw0 >> 8) & 0xFF, (dw0 >> 16) & 0xFF) == (
                nvme.AER_NOTICE_NS_ATTR_CHANGED, nvme.LOG_CHANGED_NS)
            assert struct.unpack("<2I", b.get_log_page(nvme.LOG_CHANGED_NS, 8)) == (1, 0)
            assert b.active_namespaces() == [1]
            assert len(b.read(1, 0, 1, 4096)) == 4096
            # Host A's view did not change: no notice, nothing in its changed list.
            assert struct.unpack("<I", a.get_log_page(nvme.LOG_CHANGED_NS, 4)) == (0,)
            # A new namespace nobody may see yet changes nobody's view: no notice.
            rt.call(lambda: core.add_bdev(Bdev(name="M9", kind="malloc", uuid="",
                                               block_size=4096, num_blocks=64)))
            rt.call(lambda: core.add_namespace(NQN, Namespace(nsid=2, bdev_name="M9",
                                                              no_auto_visible=True)))
            for h in (a, b):
                assert struct.unpack("<I", h.get_log_page(nvme.LOG_CHANGED_NS, 4)) == (0,)
                assert h.active_namespaces() == [1]
            # And taking B off the list hides the namespace from B again, with a notice.
            cid = b.submit_aer()
            rt.call(lambda: core.set_ns_visible(NQN, 1, HOST_B, False))
            assert (b.wait_aer(cid, timeout=5) >> 8) & 0xFF == nvme.AER_NOTICE_NS_ATTR_CHANGED
            assert b.active_namespaces() == [] and a.active_namespaces() == [1]


def test_planner_adds_only_missing_hosts_and_prunes_extra_ones() -> None:
    nvmf = [{"method": "nvmf_create_subsystem", "params": {"nqn": SUB}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": SUB, "namespace": {
                "nsid": 1, "bdev_name": "M0", "no_auto_visible": True}}},
            {"method": "nvmf_ns_add_host", "params": {"nqn": SUB, "nsid": 1, "host": HOST_A}}]
    desired = state_from_rpc({"nvmf": nvmf})
    live = state_from_rpc({"nvmf": nvmf})
    live.subsystems[SUB].namespaces[1].hosts = [HOST_B]
    the_plan = plan(desired, live)
    assert [(c.method, c.params) for c in the_plan.calls] == [
        ("nvmf_ns_add_host", {"nqn": SUB, "nsid": 1, "host": HOST_A})]
    assert the_plan.extra == [f"{SUB} nsid 1 host {HOST_B}"]
    pruned = plan(desired, live, prune=True)
    assert ("nvmf_ns_remove_host", {"nqn": SUB, "nsid": 1, "host": HOST_B}) in [
        (c.method, c.params) for c in pruned.calls]
    # A live namespace everyone sees cannot take a host list: a conflict, no call.
    live.subsystems[SUB].namespaces[1].no_auto_visible = False
    visible = plan(desired, live)
    assert visible.calls == [] and "no_auto_visible" in visible.conflicts[0]


def test_load_config_takes_nvmf_tgts_entries() -> None:
    """A save_config from nvmf_tgt with namespace hosts loads on the embedded target
    (-c/--json, spdk-rpc load_config). Like nvmf_tgt, loading the newest-first list in
    file order reverses it; the restore planner replays it oldest first instead."""
    ctx = RpcContext(TargetCore())
    ns = {"nsid": 1, "bdev_name": "M0", "no_auto_visible": True}
    doc = {"subsystems": [
        {"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", "params": {
            "name": "M0", "num_blocks": 64, "block_size": 512}}]},
        {"subsystem": "nvmf", "config": [
            {"method": "nvmf_create_subsystem", "params": {"nqn": SUB}},
            {"method": "nvmf_subsystem_add_ns", "params": {"nqn": SUB, "namespace": ns}},
            {"method": "nvmf_ns_add_host", "params": {"nqn": SUB, "nsid": 1, "host": HOST_B}},
            {"method": "nvmf_ns_add_host", "params": {"nqn": SUB, "nsid": 1,
                                                      "host": HOST_A}}]}]}
    assert load_config(ctx, doc) == []
    assert ctx.core.state.subsystems[SUB].namespaces[1].hosts == [HOST_A, HOST_B]
