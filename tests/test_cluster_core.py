"""Cluster nodes on loopback: a real 3-member etcd, nodes = `nvmf-phoenix supervise
--node` processes with embedded targets on 127.0.0.11/12/13, one aio backing file.

The owner serves optimized, standbys non_optimized with the same identities and their own
cntlid ranges; configuration goes to the owner and reaches the standbys; a standby refuses
configuration calls naming the owner; the owner's loud death moves the group to a peer
under verified multipath I/O; a node cut off from etcd fences itself before its lease
can expire, acknowledges no write after that, and a peer takes over.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from nvmf_phoenix.initiator.connection import NvmeError
from nvmf_phoenix.initiator.mpworkload import MultipathWorkload
from nvmf_phoenix.initiator.multipath import MultipathHost
from nvmf_phoenix.persist.etcd import Endpoints, EtcdClient
from nvmf_phoenix.persist.etcd_keys import ClusterKeys
from nvmf_phoenix.plugin import metrics
from nvmf_phoenix.plugin.cli_cluster import cluster_status
from nvmf_phoenix.recovery.etcd_store import EtcdGroupStore
from nvmf_phoenix.recovery.pair_view import slot_range
from nvmf_phoenix.recovery.process import socket_owner
from nvmf_phoenix.rpc import RpcClient, RpcError
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn

from nvmf_phoenix.model import DISCOVERY_NQN
from tests.cut_proxy import CutProxy
from tests.etcd_cluster import EtcdCluster
from tests.phoenix_tools import drop_region
from tests.target_fixture import free_port
from tests.waiting import wait_for

NQN = "nqn.2016-06.io.phx:cluster"
UUID = "5e1f0000-0000-4000-8000-0000000000cc"
BLOCKS = 2048
TTL = 2.0
H1 = "nqn.2014-08.org.nvmexpress:uuid:6e767068-6f65-6e69-7800-0000000000c1"
H2 = "nqn.2014-08.org.nvmexpress:uuid:6e767068-6f65-6e69-7800-0000000000c2"
_prefixes = count()


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    c = EtcdCluster(3)
    yield c
    c.close()


class Node:
    """One node: `nvmf-phoenix supervise --node` in a process group of its own (its
    target is its child, in the same group: a loud death kills both)."""

    def __init__(self, tmp: Path, name: str, address: str, store: str) -> None:
        self.name, self.address, self.store = name, address, store
        self.dir = tmp / name
        self.dir.mkdir(exist_ok=True)
        self.public = str(self.dir / "public.sock")
        self.target = str(self.dir / "target.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Node:
        argv = [sys.executable, "-m", "nvmf_phoenix.plugin.cli", "supervise",
                "--store", self.store, "--group", "g", "--node", self.name,
                "--node-address", self.address, "--lease-ttl", str(TTL),
                "-d", str(self.dir / "state"), "-s", self.public,
                "--target-socket", self.target]
        with open(self.dir / "supervisor.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log,
                                         start_new_session=True)
        wait_for(lambda: self.status()["state"] == "ready", timeout=30,
                 what=f"node {self.name} ready (log {self.dir}/supervisor.log)")
        return self

    def status(self) -> dict[str, Any]:
        with RpcClient.connect(self.public, timeout=2) as c:
            return c.call("phoenix_status")

    def call(self, method: str, params: Any = None, public: bool = False) -> Any:
        with RpcClient.connect(self.public if public else self.target, timeout=5) as c:
            return c.call(method, params)

    def role(self) -> str | None:
        try:
            return self.status()["role"]
        except RpcError:
            return None

    def ana(self) -> set[str]:
        try:
            return {s["ana_state"] for ls in self.call("nvmf_subsystem_get_listeners",
                                                        {"nqn": NQN})
                    for s in ls["ana_states"]}
        except RpcError:
            return set()

    def kill(self) -> None:
        """Loud death: every process of the node SIGKILLed."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        self.kill()


@contextlib.contextmanager
def cluster(tmp: Path, etcd: EtcdCluster, n: int, stores: dict[int, str] | None = None,
            prefix: str | None = None) -> Iterator[tuple[list[Node], str]]:
    url = etcd.url(prefix or f"cl{os.getpid()}x{next(_prefixes)}")
    nodes = [Node(tmp, f"n{i + 1}", f"127.0.0.{11 + i}", (stores or {}).get(i, url))
             for i in range(n)]
    try:
        yield nodes, url
    finally:
        for node in nodes:
            node.stop()
            drop_region(node.dir / "state")


def configure(owner: Node, image: Path, port: int, disc: int) -> None:
    """What a user does on the owner's public socket, naming the owner's address."""
    image.write_bytes(b"\0" * (BLOCKS * 4096))
    with RpcClient.connect(owner.public, timeout=30) as c:
        rn.nvmf_create_transport(c, "TCP")
        rb.bdev_aio_create(c, str(image), "D0", 4096, uuid=UUID)
        rn.nvmf_create_subsystem(c, NQN, serial_number="CLUSTER1", allow_any_host=True)
        rn.nvmf_subsystem_add_ns(c, NQN, "D0")
        addr = {"trtype": "TCP", "adrfam": "IPv4", "traddr": owner.address,
                "trsvcid": str(port)}
        rn.nvmf_subsystem_add_listener(c, NQN, addr)
        rn.nvmf_subsystem_add_listener(c, DISCOVERY_NQN, {**addr, "trsvcid": str(disc)})


def identities(node: Node) -> dict[str, Any]:
    sub = next(s for s in node.call("nvmf_get_subsystems") if s["nqn"] == NQN)
    ns = sub["namespaces"][0]
    return {k: sub[k] for k in ("serial_number", "model_number")} | \
        {k: ns.get(k) for k in ("nsid", "uuid", "nguid", "eui64", "anagrpid")} | \
        {"cntlid": (sub["min_cntlid"], sub["max_cntlid"])}


def has_subsystem(node: Node) -> bool:
    try:
        return any(s["nqn"] == NQN for s in node.call("nvmf_get_subsystems"))
    except RpcError:
        return False


def follows(node: Node) -> bool:
    """The whole configuration reached the standby (the discovery listener is the
    last call of configure())."""
    return has_subsystem(node) and node.ana() == {"non_optimized"} and \
        bool(node.call("nvmf_subsystem_get_listeners", {"nqn": DISCOVERY_NQN}))


def refers_to(node: Node, want: list[str]) -> bool:
    return sorted(r["address"]["traddr"]
                  for r in node.call("nvmf_discovery_get_referrals")) == want


def has_hosts(node: Node, want: list[str]) -> bool:
    return [h["nqn"] for s in node.call("nvmf_get_subsystems") if s["nqn"] == NQN
            for h in s["hosts"]] == want


def first_owner(nodes: list[Node]) -> None:
    nodes[0].start()
    wait_for(lambda: nodes[0].role() == "owner", timeout=10, what="the first node owns")
    for node in nodes[1:]:
        node.start()
        assert node.role() == "standby"


def test_owner_standbys_identities_refusal_and_status(tmp_path: Path,
                                                     etcd: EtcdCluster) -> None:
    port, disc = free_port(), free_port()
    with cluster(tmp_path, etcd, 3) as (nodes, url):
        first_owner(nodes)
        configure(nodes[0], tmp_path / "disk.img", port, disc)
        for node in nodes[1:]:
            wait_for(partial(follows, node), timeout=10, what=f"{node.name} follows")
        ids = {n.name: identities(n) for n in nodes}
        ranges = {name: i.pop("cntlid") for name, i in ids.items()}
        assert ids["n1"] == ids["n2"] == ids["n3"] and ids["n1"]["uuid"] == UUID
        assert sorted(ranges.values()) == [slot_range(i) for i in range(3)]
        assert nodes[0].ana() == {"optimized"}
        for node in nodes:
            (ls,) = node.call("nvmf_subsystem_get_listeners", {"nqn": NQN})
            assert ls["address"]["traddr"] == node.address
            want = sorted(n.address for n in nodes if n is not node)
            wait_for(partial(refers_to, node, want), timeout=10,
                     what=f"{node.name} refers to the other nodes")
        # a later change reaches the standbys too
        nodes[0].call("nvmf_subsystem_add_host", {"nqn": NQN, "host": H1},
                      public=True)
        for node in nodes[1:]:
            wait_for(partial(has_hosts, node, [H1]), timeout=10,
                     what=f"{node.name} has the host")
        with pytest.raises(RpcError, match=r"n1 at 127\.0\.0\.11"):
            nodes[1].call("nvmf_subsystem_add_host", {"nqn": NQN, "host": H2},
                          public=True)
        st = nodes[1].status()
        assert (st["role"], st["owner"], st["epoch"], st["slot"]) == ("standby", "n1", 1, 1)
        ep = Endpoints.parse(url)
        doc = cluster_status(EtcdClient(ep.urls), ep.prefix)
        g = doc["groups"]["g"]
        assert (g["owner"], g["epoch"], g["standbys"], g["no_standby"]) == \
            ("n1", 1, ["n2", "n3"], False)
        assert all(n["alive"] and n["ttl_left"] >= 0 for n in doc["nodes"].values())
        # a node's status and metrics
        shown = subprocess.run([sys.executable, "-m", "nvmf_phoenix.plugin.cli", "status",
                                "-s", nodes[1].public, "-d", str(nodes[1].dir / "state")],
                               capture_output=True, text=True, timeout=30)
        assert "node n2 (127.0.0.12, slot 1) is STANDBY for group g, epoch 1, owner n1 at " \
            "127.0.0.11" in shown.stdout, shown.stdout + shown.stderr
        listed = subprocess.run([sys.executable, "-m", "nvmf_phoenix.plugin.cli", "cluster",
                                 "status", "--store", url], capture_output=True, text=True,
                                timeout=30)
        assert listed.returncode == 0 and "group g: owner n1, epoch 1" in listed.stdout, \
            listed.stdout + listed.stderr
        collector = metrics.PhoenixCollector(nodes[0].public, str(nodes[0].dir / "state"))
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for m in collector.collect() for s in m.samples}
        assert samples[("nvmf_phoenix_cluster_role", (("group", "g"), ("node", "n1"),
                                                      ("role", "owner")))] == 1
        assert samples[("nvmf_phoenix_cluster_epoch", (("group", "g"),))] == 1
        assert samples[("nvmf_phoenix_cluster_fenced", ())] == 0
        assert samples[("nvmf_phoenix_cluster_takeovers_total", ())] == 1
        assert 0 < samples[("nvmf_phoenix_cluster_lease_ttl_seconds", ())] <= TTL


def test_owner_loud_death_under_multipath_io(tmp_path: Path, etcd: EtcdCluster) -> None:
    port, disc = free_port(), free_port()
    with cluster(tmp_path, etcd, 2) as (nodes, url):
        first_owner(nodes)
        configure(nodes[0], tmp_path / "disk.img", port, disc)
        wait_for(partial(follows, nodes[1]), timeout=10, what="the standby follows")
        wait_for(partial(refers_to, nodes[0], [nodes[1].address]), timeout=10,
                 what="the owner's discovery refers to the standby")
        with MultipathHost.from_discovery(nodes[0].address, disc, subnqn=NQN,
                                          reconnect_delay=0.2) as mp:
            assert len(mp.paths()) == 2
            wl = MultipathWorkload(mp, 1, 4096, BLOCKS, qd=8, seed=11)
            stop = threading.Event()
            runner = threading.Thread(target=lambda: (wl.run(600, stop=stop.is_set),
                                                      wl.drain()))
            runner.start()
            try:
                wait_for(lambda: wl.stats.completed > 200, timeout=20, what="I/O runs")
                killed_at = time.monotonic()
                nodes[0].kill()
                before = wl.stats.completed
                wait_for(lambda: wl.stats.completed > before + 200, timeout=10,
                         what="I/O goes on through the standby's path")
                wait_for(lambda: nodes[1].ana() == {"optimized"}, timeout=TTL + 5,
                         what="the peer optimized")
                wait_for(lambda: nodes[1].role() == "owner", timeout=5, what="peer owner")
                took = time.monotonic() - killed_at
                print(f"owner loud death -> peer optimized: {took * 1e3:.0f} ms "
                      f"(lease ttl {TTL} s)")
                assert took < TTL + 2.0
                st = nodes[1].status()
                assert (st["role"], st["epoch"], st["takeovers"]) == ("owner", 2, 1)
                ep = Endpoints.parse(url)
                doc = cluster_status(EtcdClient(ep.urls), ep.prefix)
                assert not doc["nodes"]["n1"]["alive"] and doc["groups"]["g"]["no_standby"]
                nodes[0].start()
                assert nodes[0].role() == "standby"
                wait_for(lambda: nodes[0].ana() == {"non_optimized"}, timeout=10,
                         what="the dead node back as standby")
                doc = cluster_status(EtcdClient(ep.urls), ep.prefix)
                assert doc["groups"]["g"]["standbys"] == ["n1"]
                wait_for(lambda: all(p["live"] for p in mp.paths()), timeout=15,
                         what="both paths live again")
                before = wl.stats.completed
                wait_for(lambda: wl.stats.completed > before + 200, timeout=10,
                         what="I/O after the rejoin")
            finally:
                stop.set()
                runner.join(timeout=60)
            report = wl.report()
            assert report["errors"] == 0 and report["mismatches"] == 0, report
            assert wl.verify_all(lambda lba, n: mp.read(1, lba, n, 4096)) == []


def test_cut_from_etcd_fences_before_the_lease_expires(tmp_path: Path,
                                                        etcd: EtcdCluster) -> None:
    """n1 reaches etcd only through proxies; cutting them, it must go inaccessible while
    its lease still stands, acknowledge no write after that, and n2 must take over."""
    port, disc = free_port(), free_port()
    proxies = [CutProxy(("127.0.0.1", m.client_port)) for m in etcd.members]
    image = tmp_path / "disk.img"
    try:
        prefix = f"cut{os.getpid()}x{next(_prefixes)}"
        via = f"etcd://{','.join(p.address for p in proxies)}/{prefix}"
        with cluster(tmp_path, etcd, 2, stores={0: via}, prefix=prefix) as (nodes, _):
            first_owner(nodes)
            configure(nodes[0], image, port, disc)
            wait_for(partial(follows, nodes[1]), timeout=10, what="the standby follows")
            ep = Endpoints.parse(etcd.url(prefix))
            direct = EtcdClient(ep.urls)
            node_key = f"{prefix}/nodes/n1"
            with MultipathHost(NQN, [(nodes[0].address, port)], command_timeout=3.0,
                               io_timeout=2.0) as mp:
                mp.write(1, 10, b"A" * 4096, 4096)           # acknowledged: on disk
                cut_at = time.monotonic()
                for p in proxies:
                    p.cut()
                wait_for(lambda: nodes[0].ana() == {"inaccessible"}, timeout=TTL,
                         what="n1 fenced")
                fenced_after = time.monotonic() - cut_at
                assert direct.get(node_key) is not None, "fenced after the lease expired"
                print(f"cut from etcd -> listeners inaccessible: {fenced_after * 1e3:.0f} ms")
                with pytest.raises(NvmeError):
                    mp.write(1, 20, b"B" * 4096, 4096)
            with open(image, "rb") as f:
                f.seek(10 * 4096)
                assert f.read(4096) == b"A" * 4096
                f.seek(20 * 4096)
                assert f.read(4096) != b"B" * 4096, "a fenced node wrote"
            wait_for(lambda: nodes[1].ana() == {"optimized"} and
                     nodes[1].role() == "owner", timeout=TTL + 5, what="n2 takes over")
            assert nodes[1].status()["epoch"] == 2
            with pytest.raises(RpcError, match="fenced"):
                nodes[0].call("nvmf_subsystem_add_host", {"nqn": NQN, "host": H2},
                              public=True)
            for p in proxies:
                p.restore()
            wait_for(lambda: nodes[0].role() == "standby" and
                     nodes[0].ana() == {"non_optimized"}, timeout=10,
                     what="n1 back as standby")
    finally:
        for p in proxies:
            p.close()


def test_owner_target_death_hands_the_group_over(tmp_path: Path, etcd: EtcdCluster) -> None:
    """Only the owner's target dies (its supervisor lives): the node resigns at once, so
    a peer is optimized after one etcd round trip rather than after the lease or the
    target's restart; the node comes back as standby."""
    port, disc = free_port(), free_port()
    with cluster(tmp_path, etcd, 2) as (nodes, _url):
        first_owner(nodes)
        configure(nodes[0], tmp_path / "disk.img", port, disc)
        wait_for(partial(follows, nodes[1]), timeout=10, what="the standby follows")
        killed_at = time.monotonic()
        os.kill(socket_owner(nodes[0].target), signal.SIGKILL)
        wait_for(lambda: nodes[1].ana() == {"optimized"}, timeout=5,
                 what="the peer optimized")
        took = time.monotonic() - killed_at
        print(f"owner's target death -> peer optimized: {took * 1e3:.0f} ms")
        assert took < 1.0
        wait_for(lambda: nodes[1].role() == "owner", timeout=5, what="peer owner")
        assert nodes[1].status()["epoch"] == 2
        wait_for(lambda: nodes[0].role() == "standby" and nodes[0].ana() ==
                 {"non_optimized"}, timeout=15, what="the node back as standby")
        assert nodes[0].status()["resigned"] == 1


def test_a_standby_cut_from_etcd_fences_and_catches_up(tmp_path: Path,
                                                      etcd: EtcdCluster) -> None:
    """A standby that cannot reach etcd may hold a stale configuration: it goes
    inaccessible (one lease TTL after its lease clock ran out: an etcd election must not
    take paths away), and when etcd answers again it is standby again with what
    changed."""
    port, disc = free_port(), free_port()
    proxies = [CutProxy(("127.0.0.1", m.client_port)) for m in etcd.members]
    try:
        prefix = f"cutsb{os.getpid()}x{next(_prefixes)}"
        via = f"etcd://{','.join(p.address for p in proxies)}/{prefix}"
        with cluster(tmp_path, etcd, 2, stores={1: via}, prefix=prefix) as (nodes, _):
            first_owner(nodes)
            configure(nodes[0], tmp_path / "disk.img", port, disc)
            wait_for(partial(follows, nodes[1]), timeout=10, what="the standby follows")
            for p in proxies:
                p.cut()
            wait_for(lambda: nodes[1].role() == "fenced", timeout=TTL,
                     what="the standby's lease clock ran out")
            assert nodes[1].ana() == {"non_optimized"}, "a standby's paths went at once"
            wait_for(lambda: nodes[1].ana() == {"inaccessible"}, timeout=2 * TTL,
                     what="the standby fenced")
            nodes[0].call("nvmf_subsystem_add_host", {"nqn": NQN, "host": H1}, public=True)
            assert nodes[0].ana() == {"optimized"} and nodes[0].status()["epoch"] == 1
            for p in proxies:
                p.restore()
            wait_for(lambda: follows(nodes[1]) and has_hosts(nodes[1], [H1]), timeout=10,
                     what="the standby back, caught up")
            assert nodes[1].role() == "standby"
    finally:
        for p in proxies:
            p.close()


def test_first_node_of_an_empty_cluster_brings_its_local_checkpoint(
        tmp_path: Path, etcd: EtcdCluster) -> None:
    port, disc = free_port(), free_port()
    with cluster(tmp_path, etcd, 1) as (nodes, _url):
        first_owner(nodes)
        configure(nodes[0], tmp_path / "disk.img", port, disc)
        nodes[0].stop()
        nodes[0].store = etcd.url(f"fresh{os.getpid()}x{next(_prefixes)}")
        first_owner(nodes)          # a new, empty cluster: it owns what it had
        assert has_subsystem(nodes[0]) and nodes[0].ana() == {"optimized"}
        ep = Endpoints.parse(nodes[0].store)
        doc = cluster_status(EtcdClient(ep.urls), ep.prefix)
        assert doc["groups"]["g"]["owner"] == "n1" and doc["groups"]["g"]["seq"] >= 1
        stored = EtcdGroupStore(EtcdClient(ep.urls), ClusterKeys(ep.prefix).group("g"))
        state = stored.load().state
        assert state is not None and NQN in state.subsystems
