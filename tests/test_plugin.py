"""`spdk-rpc --plugin nvmf_phoenix.plugin`: the real spdk-rpc against the embedded target."""
from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import nvmf as rn

from tests.phoenix_tools import BIN, PLUGIN, drop_region, spdk_rpc
from tests.target_fixture import free_port
from tests.target_process import TargetProcess
from tests.waiting import wait_for

NQN = "nqn.2016-06.io.phx:plugin"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:6e767068-6f65-6e69-7800-0000000000a1"


def ok(run: subprocess.CompletedProcess[str]) -> dict:
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[str]:
    d = str(tmp_path / "state")
    yield d
    drop_region(d)


def configure(sock: str, port: int) -> None:
    """Build a target the way an operator would: SPDK's own commands, then ours."""
    for cmd in (["bdev_malloc_create", "-b", "Malloc0", "-u",
                 "8a3f7c1e-2b4d-4e6f-9a0b-1c2d3e4f5a6b", "32", "512"],
                ["nvmf_create_transport", "-t", "TCP"],
                ["nvmf_create_subsystem", NQN, "-s", "PHXPLUGIN1", "-d", "phx plugin"],
                ["nvmf_subsystem_add_ns", NQN, "Malloc0"],
                ["nvmf_subsystem_add_host", NQN, HOSTNQN],
                ["phoenix_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1",
                 "-s", str(port)]):
        run = spdk_rpc(sock, *cmd)
        assert run.returncode == 0, f"{cmd}: {run.stdout}{run.stderr}"


def test_checkpoint_kill_restore_and_reconnect_through_spdk_rpc(tmp_path: Path,
                                                               state: str) -> None:
    sock, port = str(tmp_path / "spdk.sock"), free_port()
    tp = TargetProcess(sock)
    try:
        configure(sock, port)
        with Host("127.0.0.1", port, NQN, hostnqn=HOSTNQN) as h:
            h.create_io_queues(2)
            h.write(1, 0, b"\x5a" * 512, 512)
            before = h.identify_namespace(1)
            saved = ok(spdk_rpc(sock, "phoenix_checkpoint", "-d", state))
            assert saved["seq"] == 1 and saved["summary"]["namespaces"] == 1
            assert saved["summary"]["connected_controllers"] == 1
            shown = ok(spdk_rpc(sock, "phoenix_get_checkpoint", "-d", state, "--full"))
            assert shown["state"]["runtime"]["controllers"][0]["hostnqn"] == HOSTNQN
            assert ok(spdk_rpc(sock, "phoenix_diff_checkpoint", "-d", state))["same"]
            tp.kill()
    finally:
        tp.stop()
    tp = TargetProcess(sock)     # a fresh target: nothing configured
    try:
        run = spdk_rpc(sock, "phoenix_diff_checkpoint", "-d", state, "--fail-on-difference")
        assert run.returncode == 1 and f"subsystems[{NQN}]" in run.stdout
        # Restore and wait for the host; the host reconnects as soon as its subsystem is
        # back, the way a kernel host's reconnect timer would.
        restore = subprocess.Popen([str(BIN / "spdk-rpc"), "-s", sock, "--plugin", PLUGIN,
                                    "phoenix_restore", "-d", state, "-w", "20"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        got: dict = {}

        def host_comes_back() -> None:
            with RpcClient.connect(sock) as c:
                wait_for(lambda: rn.nvmf_subsystem_get_listeners(c, NQN), 20,
                         what="restored listener")
            with Host("127.0.0.1", port, NQN, hostnqn=HOSTNQN) as h:
                h.create_io_queues(2)
                got["ns"] = h.identify_namespace(1)
                got["data"] = h.read(1, 0, 1, 512)
                wait_for(lambda: restore.poll() is not None, 30, what="phoenix_restore")

        t = threading.Thread(target=host_comes_back)
        t.start()
        out, err = restore.communicate(timeout=60)
        t.join(timeout=30)
        assert restore.returncode == 0, out + err
        result = json.loads(out)
        assert result["ok"] and result["failures"] == [] and result["differences"] == []
        assert result["hosts"]["expected"] == 1 and result["hosts"]["missing"] == []
        assert got["ns"]["uuid"] == before["uuid"] and got["ns"]["nguid"] == before["nguid"]
        assert got["data"] == bytes(512)       # malloc contents are not kept, identity is
        status = ok(spdk_rpc(sock, "phoenix_get_reconnect_status", "-d", state))
        assert status["expected"] == 1 and status["ok"] is False   # the host left again
        assert ok(spdk_rpc(sock, "phoenix_diff_checkpoint", "-d", state))["same"]
    finally:
        tp.stop()


def test_plugin_errors_say_what_to_do(tmp_path: Path, state: str) -> None:
    sock = str(tmp_path / "spdk.sock")
    tp = TargetProcess(sock)
    try:
        run = spdk_rpc(sock, "phoenix_get_checkpoint", "-d", state)
        assert run.returncode == 1 and "checkpoint now" in run.stdout
        assert "Traceback" not in run.stdout + run.stderr
        run = spdk_rpc(sock, "phoenix_restore", "-d", state)
        assert run.returncode == 1 and "no checkpoint" in run.stdout
        run = spdk_rpc(sock, "nvmf_create_transport", "-t", "TCP")
        run = spdk_rpc(sock, "nvmf_create_subsystem", NQN, "-a")
        run = spdk_rpc(sock, "phoenix_subsystem_add_listener", NQN, "-t", "tcp", "-a",
                       "192.0.2.201", "-s", "4420")
        assert run.returncode == 1 and "on no interface" in run.stdout
        assert "--floating-dev" in run.stdout
        run = spdk_rpc(sock, "phoenix_get_status")
        assert run.returncode == 1 and "nvmf-phoenix supervise" in run.stdout
        # The plugin's commands are listed in spdk-rpc's help like SPDK's own.
        helptext = subprocess.run([str(BIN / "spdk-rpc"), "--plugin", PLUGIN, "-h"],
                                  capture_output=True, text=True, timeout=60).stdout
        for name in ("phoenix_checkpoint", "phoenix_get_checkpoint", "phoenix_restore",
                     "phoenix_diff_checkpoint", "phoenix_get_reconnect_status"):
            assert name in helptext
    finally:
        tp.stop()
