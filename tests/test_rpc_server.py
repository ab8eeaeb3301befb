"""The embedded target's JSON-RPC server: spdk-rpc, phases, round trip, hostile input."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.rpc import RpcClient, RpcError
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import framework as rf
from nvmf_phoenix.rpc import nvmf as rn

from tests.support import rich_config, spdk_rpc_ok
from tests.target_fixture import free_port
from tests.target_process import TARGET_KINDS, TargetProcess, target_process

NQN = "nqn.2016-06.io.spdk:cnode1"


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_spdk_rpc_drives_a_full_scenario(tmp_path: Path, kind: str) -> None:
    port = str(free_port())
    with target_process(tmp_path, kind=kind) as tp:
        s = tp.sock
        assert spdk_rpc_ok(s, "bdev_malloc_create", "-b", "Malloc0", "-u",
                        "11111111-2222-3333-4444-555555555555", "16", "4096").strip() == \
            "Malloc0"
        spdk_rpc_ok(s, "nvmf_create_transport", "-t", "TCP")
        spdk_rpc_ok(s, "nvmf_create_subsystem", NQN, "-s", "PHX42", "-d", "phx model", "-r")
        spdk_rpc_ok(s, "nvmf_subsystem_add_ns", NQN, "Malloc0")
        spdk_rpc_ok(s, "nvmf_subsystem_add_host", NQN, "nqn.2014-08.org.nvmexpress:uuid:"
                 "6e767068-6f65-6e69-7800-000000000001")
        spdk_rpc_ok(s, "nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1",
                 "-s", port)
        subs = json.loads(spdk_rpc_ok(s, "nvmf_get_subsystems", NQN))
        assert subs[0]["serial_number"] == "PHX42"
        assert subs[0]["namespaces"][0]["uuid"] == "11111111-2222-3333-4444-555555555555"
        listeners = json.loads(spdk_rpc_ok(s, "nvmf_subsystem_get_listeners", NQN))
        assert listeners[0]["address"]["trsvcid"] == port
        with Host("127.0.0.1", port, NQN) as h:
            h.create_io_queues(2)
            ctrls = json.loads(spdk_rpc_ok(s, "nvmf_subsystem_get_controllers", NQN))
            # As SPDK counts it: the admin queue pair included.
            assert [(c["cntlid"], c["num_io_qpairs"]) for c in ctrls] == [(1, 3)]
            qps = json.loads(spdk_rpc_ok(s, "nvmf_subsystem_get_qpairs", NQN))
            assert sorted(q["qid"] for q in qps) == [0, 1, 2]
            stats = json.loads(spdk_rpc_ok(s, "nvmf_get_stats"))
            assert stats["poll_groups"][0]["current_io_qpairs"] == 2
        spdk_rpc_ok(s, "nvmf_subsystem_remove_listener", NQN, "-t", "tcp", "-a", "127.0.0.1",
                 "-s", port)
        spdk_rpc_ok(s, "nvmf_subsystem_remove_ns", NQN, "1")
        spdk_rpc_ok(s, "nvmf_delete_subsystem", NQN)
        spdk_rpc_ok(s, "bdev_malloc_delete", "Malloc0")
        assert json.loads(spdk_rpc_ok(s, "bdev_get_bdevs")) == []


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_save_config_round_trips_through_dash_c(tmp_path: Path, kind: str) -> None:
    image = tmp_path / "a0.img"
    image.write_bytes(bytes(1 << 20))
    port = str(free_port())
    with target_process(tmp_path, name="one.sock", kind=kind) as tp, \
            RpcClient.connect(tp.sock) as c:
        rich_config(c, image, port)
        saved = rf.save_config(c)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(saved))
    with target_process(tmp_path, "-c", str(cfg), name="two.sock", kind=kind) as tp, \
            RpcClient.connect(tp.sock) as c:
        assert rf.save_config(c) == saved
        assert rf.framework_wait_init(c) is True


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_wait_for_rpc_phases(tmp_path: Path, kind: str) -> None:
    with target_process(tmp_path, "--wait-for-rpc", kind=kind) as tp, \
            RpcClient.connect(tp.sock) as c:
        with pytest.raises(RpcError) as err:
            rb.bdev_malloc_create(c, 16, 512)
        assert err.value.code == -1 and "after framework is initialized" in err.value.message
        rn.nvmf_set_max_subsystems(c, 16)
        # SPDK decodes bdev_set_options' sizes as uint32 and refuses the call otherwise.
        for bad in ({"bdev_io_pool_size": -1}, {"bdev_io_cache_size": 1 << 40},
                    {"bogus": 1}):
            with pytest.raises(RpcError) as err:
                c.call("bdev_set_options", bad)
            assert (err.value.code, err.value.message) == (-32602, "Invalid parameters")
        assert c.call("bdev_set_options", {"bdev_auto_examine": True}) is True
        assert rf.framework_start_init(c) is True
        assert rb.bdev_malloc_create(c, 16, 512) == "Malloc0"
        with pytest.raises(RpcError) as err:
            rn.nvmf_set_max_subsystems(c, 8)
        assert err.value.code == -1 and "before framework is initialized" in err.value.message
        nvmf = rf.framework_get_config(c, "nvmf")
        assert nvmf[1] == {"method": "nvmf_set_max_subsystems",
                           "params": {"max_subsystems": 16}}


def test_second_target_refuses_a_live_socket_and_stale_one_is_cleaned(tmp_path: Path) -> None:
    with target_process(tmp_path) as tp:
        second = subprocess.run([sys.executable, "-m", "nvmf_phoenix.embedded", "-r", tp.sock],
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1 and "in use by another target" in second.stderr
        tp.kill()
    assert os.path.exists(tp.sock)   # SIGKILL leaves the socket file behind
    again = TargetProcess(tp.sock)
    try:
        with RpcClient.connect(tp.sock) as c:
            assert rf.framework_wait_init(c) is True
    finally:
        again.stop()


def _raw(sock_path: str, payload: bytes, timeout: float = 5) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock_path)
    s.sendall(payload)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
            if out.strip().endswith(b"}"):
                break
    except (TimeoutError, ConnectionResetError):   # closed with our bytes unread: a reset
        pass
    s.close()
    return out


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_hostile_rpc_input_is_refused_and_changes_nothing(tmp_path: Path, kind: str) -> None:
    with target_process(tmp_path, kind=kind) as tp, RpcClient.connect(tp.sock) as c:
        silent = socket.socket(socket.AF_UNIX)
        silent.connect(tp.sock)                 # connects and never sends
        half = socket.socket(socket.AF_UNIX)
        half.connect(tp.sock)
        half.sendall(b'{"jsonrpc": "2.0", "method": "spdk_get_')   # half a request
        # Unparseable input: SPDK builds a -32700 answer but closes the connection before
        # sending it (jsonrpc_server_tcp.c closes on the parse failure): the caller sees
        # only the close, from either target.
        assert _raw(tp.sock, b"this is not json") == b""
        deep = b'{"jsonrpc":"2.0","id":1,"method":"x","params":' + b"[" * 100000
        assert _raw(tp.sock, deep + b"]" * 100000 + b"}") == b""
        # nvmf methods refuse bad params with -32602; SPDK's bdev modules answer a decode
        # failure with -32603 "spdk_json_decode_object failed" (checked against nvmf_tgt).
        cases = [("nvmf_create_subsystem", {"nqn": 42}, -32602),
                 ("nvmf_create_subsystem", {}, -32602),
                 ("nvmf_create_subsystem", {"nqn": NQN, "bogus": 1}, -32602),
                 ("bdev_malloc_create", {"num_blocks": 1 << 80, "block_size": 512}, -32603),
                 ("bdev_malloc_create", {"num_blocks": "many", "block_size": 512}, -32603),
                 ("bdev_malloc_create", {"num_blocks": -1, "block_size": 512}, -32603),
                 ("bdev_malloc_create", {"num_blocks": 8, "block_size": 512, "uuid": "x"},
                  -32603),
                 ("bdev_malloc_create", {"num_blocks": (1 << 64) - 1, "block_size": 512},
                  -12),   # decodes, but no memory for it: ENOMEM, not a crash
                 ("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": "Malloc0"}, -32602)]
        for method, params, code in cases:
            with pytest.raises(RpcError) as err:
                c.call(method, params)
            assert err.value.code == code, (method, params, err.value)
        before = rf.save_config(c)
        rn.nvmf_create_subsystem(c, NQN)
        with pytest.raises(RpcError):   # nsid collision after a valid first namespace
            rb.bdev_malloc_create(c, 16, 512, name="M")
            rn.nvmf_subsystem_add_ns(c, NQN, "M", nsid=1)
            rn.nvmf_subsystem_add_ns(c, NQN, "M", nsid=1)
        after = rf.save_config(c)
        assert after != before and len(rn.nvmf_get_subsystems(c, NQN)[0]["namespaces"]) == 1
        assert rf.spdk_get_version(c)["fields"]["suffix"] == \
            ("-embedded" if kind == "embedded" else "")   # and the target is still there
        silent.close()
        half.close()
