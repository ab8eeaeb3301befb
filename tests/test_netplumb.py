"""Network plumbing on a LAN of namespaces: allow-listed hosts and a floating address.

Four machines on one bridge, each its own network namespace built with pyroute2: two
target nodes and two hosts. The target on node 1 listens on a floating address it adds
itself; host 1 (allowed) connects and writes, host 2 (not allowed) is refused. Node 1
dies; node 2 takes the floating address over (with gratuitous ARP) while restoring the
checkpoint into a fresh target, and host 1 finds the same namespace and the same data at
the same address, while host 2 is still refused.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn

from tests.netlab import NetLab, netns_cmd, why_no_netns
from tests.phoenix_tools import BIN, PLUGIN, drop_region

NQN = "nqn.2016-06.io.phx:lan"
HOST1 = "nqn.2014-08.org.nvmexpress:uuid:6e767068-6f65-6e69-7800-0000000000c1"
HOST2 = "nqn.2014-08.org.nvmexpress:uuid:6e767068-6f65-6e69-7800-0000000000c2"
FLOATING, PORT = "192.0.2.100", "4420"

_reason = why_no_netns()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


@pytest.fixture
def lab() -> Iterator[NetLab]:
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()


def start_target(ns: str, sock: str, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(netns_cmd(ns, [sys.executable, "-m", "nvmf_phoenix.embedded", "-r",
                                           sock, *args]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with RpcClient.connect(sock, retry_for=20):
        pass
    return proc


def host(ns: str, hostnqn: str, write_seed: int | None = None) -> dict:
    argv = [sys.executable, "-m", "tests.netns_host", "--addr", FLOATING, "--port", PORT,
            "--nqn", NQN, "--hostnqn", hostnqn]
    if write_seed is not None:
        argv += ["--write-seed", str(write_seed)]
    run = subprocess.run(netns_cmd(ns, argv), capture_output=True, text=True, timeout=60)
    return json.loads(run.stdout.strip().splitlines()[-1]) if run.stdout.strip() else \
        {"connected": False, "error": run.stderr}


def test_allow_list_and_floating_address_across_a_node_failure(lab: NetLab,
                                                               tmp_path: Path) -> None:
    tgt1, tgt2 = lab.node("tgt1", "192.0.2.11/24"), lab.node("tgt2", "192.0.2.12/24")
    h1, h2 = lab.node("h1", "192.0.2.21/24"), lab.node("h2", "192.0.2.22/24")
    state, disk = str(tmp_path / "state"), tmp_path / "disk0.img"
    disk.write_bytes(b"")
    with open(disk, "r+b") as f:
        f.truncate(8 << 20)      # an aio bdev on shared storage both nodes can open
    sock1, sock2 = str(tmp_path / "tgt1.sock"), str(tmp_path / "tgt2.sock")
    t1 = start_target(tgt1, sock1)
    t2 = None
    try:
        with RpcClient.connect(sock1) as c:
            rb.bdev_aio_create(c, str(disk), "Disk0", block_size=512)
            rn.nvmf_create_transport(c, "TCP")
            rn.nvmf_create_subsystem(c, NQN, serial_number="PHXLAN0001")
            rn.nvmf_subsystem_add_ns(c, NQN, "Disk0")
            rn.nvmf_subsystem_add_host(c, NQN, HOST1)
        # The listener's address is on no interface of node 1 yet: the plugin adds it.
        run = subprocess.run(netns_cmd(tgt1, [str(BIN / "spdk-rpc"), "-s", sock1, "--plugin",
                                              PLUGIN, "phoenix_subsystem_add_listener", NQN,
                                              "-t", "tcp", "-a", FLOATING, "-s", PORT,
                                              "--floating-dev", "eth0"]),
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        assert FLOATING in lab.addresses(tgt1)
        first = host(h1, HOST1, write_seed=7)
        assert first["connected"], first
        refused = host(h2, HOST2)
        assert not refused["connected"] and "Connect qid 0" in refused["error"], refused
        run = subprocess.run([str(BIN / "nvmf-phoenix"), "checkpoint", "now", "-s", sock1,
                              "--state-dir", state], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        # Node 1 dies: its target is killed and it drops off the LAN.
        t1.kill()
        t1.wait(timeout=10)
        lab.link_down(tgt1)
        t2 = start_target(tgt2, sock2, "--wait-for-rpc")
        assert FLOATING not in lab.addresses(tgt2)
        run = subprocess.run(netns_cmd(tgt2, [str(BIN / "nvmf-phoenix"), "restore", "-s",
                                              sock2, "--state-dir", state,
                                              "--floating-dev", "eth0"]),
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"floating address {FLOATING} added to eth0" in run.stderr
        assert FLOATING in lab.addresses(tgt2)
        # The gratuitous ARP moved host 1's neighbour entry to node 2 at once.
        assert lab.neighbour_mac(h1, FLOATING) == lab.mac(tgt2)
        again = host(h1, HOST1)
        assert again["connected"], again
        assert (again["serial"], again["uuid"], again["nguid"], again["sha256"]) == \
            (first["serial"], first["uuid"], first["nguid"], first["sha256"])
        assert not host(h2, HOST2)["connected"]
    finally:
        for p in (t1, t2):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
        drop_region(state)


def test_address_commands_in_a_namespace(lab: NetLab) -> None:
    node = lab.node("n1", "192.0.2.31/24")

    def phx(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(netns_cmd(node, [str(BIN / "nvmf-phoenix"), "address", *args]),
                              capture_output=True, text=True, timeout=60)

    run = phx("check", "192.0.2.31")
    assert run.returncode == 0 and "eth0" in run.stdout
    assert phx("check", "192.0.2.150").returncode == 1
    run = phx("add", "192.0.2.150/24", "--dev", "eth0")
    assert run.returncode == 0 and "added to eth0" in run.stdout
    assert "192.0.2.150" in lab.addresses(node)
    assert "already on" in phx("add", "192.0.2.150", "--dev", "eth0").stdout
    run = phx("add", "192.0.2.151", "--dev", "nosuch0")
    assert run.returncode == 1 and "no network interface 'nosuch0'" in run.stderr
    run = phx("del", "192.0.2.150", "--json")
    assert run.returncode == 0 and json.loads(run.stdout)["removed_from"] == ["eth0"]
    assert "192.0.2.150" not in lab.addresses(node)
