"""The embedded target driven as an operator drives nvmf_tgt: over JSON-RPC only.

Changes made over RPC reach a connected host at once (issue 4), and SPDK's own
``spdk-rpc save_config`` / ``load_config`` round-trip the target's configuration.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from nvmf_phoenix.initiator.connection import NvmeError
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn
from nvmf_phoenix.wire import nvme

from tests.support import rich_config, spdk_rpc_ok
from tests.target_fixture import free_port
from tests.target_process import target_process

NQN = "nqn.2016-06.io.spdk:effects"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:6e767068-6f65-6e69-7800-000000000001"


def test_changes_made_over_rpc_reach_a_connected_host(tmp_path: Path) -> None:
    port = free_port()
    addr = rn.listen_address("127.0.0.1", port)
    with target_process(tmp_path) as tp, RpcClient.connect(tp.sock) as c:
        rn.nvmf_create_transport(c, "TCP")
        rb.bdev_malloc_create(c, 64, 512, name="E0")
        rb.bdev_malloc_create(c, 64, 512, name="E1")
        rn.nvmf_create_subsystem(c, NQN, ana_reporting=True)
        rn.nvmf_subsystem_add_host(c, NQN, HOSTNQN)
        rn.nvmf_subsystem_add_ns(c, NQN, "E0")
        rn.nvmf_subsystem_add_listener(c, NQN, addr)
        with Host("127.0.0.1", port, NQN, hostnqn=HOSTNQN) as h:
            h.set_features(nvme.FEAT_ASYNC_EVENT, nvme.AEC_NS_ATTR | nvme.AEC_ANA_CHANGE)
            h.create_io_queues(1)
            cid = h.submit_aer()
            assert rn.nvmf_subsystem_add_ns(c, NQN, "E1") == 2
            assert (h.wait_aer(cid, timeout=5) >> 8) & 0xFF == nvme.AER_NOTICE_NS_ATTR_CHANGED
            assert h.active_namespaces() == [1, 2]
            cid = h.submit_aer()
            rn.nvmf_subsystem_listener_set_ana_state(c, NQN, addr, "inaccessible")
            assert (h.wait_aer(cid, timeout=5) >> 8) & 0xFF == nvme.AER_NOTICE_ANA_CHANGE
            with pytest.raises(NvmeError):
                h.read(1, 0, 1, 512)            # the path is inaccessible now
            rn.nvmf_subsystem_remove_host(c, NQN, HOSTNQN)
            with pytest.raises(NvmeError):
                h.keep_alive()                  # and the host is gone
        assert rn.nvmf_subsystem_get_controllers(c, NQN) == []


def test_spdk_rpc_save_config_then_load_config_into_a_fresh_target(tmp_path: Path) -> None:
    image = tmp_path / "a0.img"
    image.write_bytes(bytes(1 << 20))
    with target_process(tmp_path, name="one.sock") as tp, RpcClient.connect(tp.sock) as c:
        rich_config(c, image, str(free_port()))
        saved = spdk_rpc_ok(tp.sock, "save_config")
    with target_process(tmp_path, "--wait-for-rpc", name="two.sock") as tp:
        spdk_rpc_ok(tp.sock, "load_config", stdin=saved)
        assert json.loads(spdk_rpc_ok(tp.sock, "save_config")) == json.loads(saved)
