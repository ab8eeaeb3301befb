"""A lab of storage nodes for the cluster tests: namespaces, etcd, supervisors, a host.

Three node namespaces (n1..n3) and a host namespace (h) on two networks built by
tests/netlab.py: *data* (NVMe/TCP; the nodes and the host) and *control* (etcd and the
supervisors' store traffic; the nodes only). Each node runs one etcd member on its
control address and one ``nvmf-phoenix supervise --store etcd://... --node nK
--node-address <data address>`` (the embedded target under it, or SPDK's nvmf_tgt when
$SPDK_NVMF_TGT names one); all of them open one
shared backing file (namespaces share the filesystem: the lab's SAN). The root namespace
has a port on each network, so the test process reaches etcd and the nodes, and a qemu
guest behind it could reach the data addresses.

Node deaths, as the cluster sees them:

- :meth:`ClusterLab.kill_node_loud`: every process of the node SIGKILLed at once
  (supervisor, target, etcd member); the kernel resets their connections.
- :meth:`ClusterLab.kill_node_silent`: the node's ports on both networks go down; its
  processes keep running but nothing reaches anyone (no FIN, no RST), as a power cut
  looks from outside. :meth:`ClusterLab.reap` then kills them.
- :meth:`ClusterLab.partition_from_etcd`: only the control port goes down; hosts still
  reach the node.

The host runs tests/cluster_host.py (the project's multipath initiator with verified I/O)
in its namespace; :class:`~tests.cluster_host.HostIO` starts it, waits for I/O to flow
and collects its summary. Every wait is bounded; :meth:`ClusterLab.close` kills every
process and removes every namespace even when a test failed half-way.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from nvmf_phoenix.persist.etcd import EtcdClient, EtcdError
from nvmf_phoenix.persist.etcd_keys import ClusterKeys, decode
from nvmf_phoenix.rpc import RpcClient, RpcError
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn

from nvmf_phoenix.model import DISCOVERY_NQN
from tests.cluster_host import HostIO, host_write, pattern
from tests.etcd_cluster import EtcdCluster
from tests.netlab import NetLab, free_subnets, kill_netns_processes, netns_cmd, netns_pids
from tests.pair_lab import member_command, pair_kind
from tests.phoenix_tools import BIN, drop_region
from tests.waiting import wait_for

NQN = "nqn.2016-06.io.phx:cluster"
SERIAL = "PHXCLUSTER0001"
MODEL = "nvmf-phoenix cluster"
BDEV = "Shared0"
BDEV_UUID = "70686f65-6e69-4870-8163-6c7573740001"
NGUID = "70686F656E69487081636C7573740001"
EUI64 = "7068786373740001"
BLOCK_SIZE = 4096
IMAGE_BYTES = 64 << 20
IO_PORT, DISC_PORT = 4420, 8009
PREFIX, GROUP = "phxlab", "default"
DATA_DEV, CTL_DEV = "eth0", "eth1"


@dataclass
class Node:
    """One storage node: its namespace, addresses, sockets and the supervisor process."""
    k: int
    ns: str
    data_addr: str
    ctl_addr: str
    sock: str             # the supervisor's public RPC socket
    target_sock: str      # the target's private RPC socket
    state_dir: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    cut: bool = False     # links down (silent death or partition)

    @property
    def name(self) -> str:
        return f"n{self.k}"


NodeCommand = Callable[["ClusterLab", Node], list[str]]


def supervise_command(lab: ClusterLab, node: Node) -> list[str]:
    """The product's cluster member (the CLI contract of issue 20)."""
    argv = [str(BIN / "nvmf-phoenix"), "supervise", "-s", node.sock, "--target-socket",
            node.target_sock, "-d", node.state_dir, "--store", lab.store_url,
            "--group", GROUP, "--node", node.name, "--node-address", node.data_addr,
            "--max-restarts", "1000"]
    if lab.lease_ttl is not None:
        argv += ["--lease-ttl", str(lab.lease_ttl)]
    if pair_kind() == "spdk":     # SPDK's nvmf_tgt when $SPDK_NVMF_TGT names one
        argv += ["--target-cmd", shlex.join(member_command("spdk"))]
    return argv


def plain_target_command(lab: ClusterLab, node: Node) -> list[str]:
    """Just the embedded target on the node's socket (the lab's own self-test)."""
    return [sys.executable, "-m", "nvmf_phoenix.embedded", "-r", node.sock]


class ClusterLab:
    """The namespaces, etcd and node processes of one lab (see the module docstring);
    ``command`` says what runs on a node (default: the product's cluster member)."""

    def __init__(self, workdir: Path, nodes: int = 3, lease_ttl: float | None = None,
                 command: NodeCommand = supervise_command) -> None:
        self.workdir, self.lease_ttl, self.command = workdir, lease_ttl, command
        self.image = workdir / "shared.img"
        with open(self.image, "wb") as f:
            f.truncate(IMAGE_BYTES)
        self.net = NetLab()
        self.etcd: EtcdCluster | None = None
        self.nodes: dict[int, Node] = {}
        self._client: EtcdClient | None = None
        try:
            self._build(nodes)
        except BaseException:
            self.close()
            raise

    def _build(self, count: int) -> None:
        data, ctl = free_subnets(2)
        self.net.bridge("data")
        self.net.bridge("ctl")
        self.net.root_port(f"{data}.1/24", "data")
        self.net.root_port(f"{ctl}.1/24", "ctl")
        for k in range(1, count + 1):
            ns = self.net.node(f"n{k}", f"{data}.{10 + k}/24", "data", DATA_DEV)
            self.net.attach(ns, f"{ctl}.{10 + k}/24", "ctl", CTL_DEV)
            base = self.workdir / f"n{k}"
            base.mkdir(exist_ok=True)
            self.nodes[k] = Node(k, ns, f"{data}.{10 + k}", f"{ctl}.{10 + k}",
                                 str(base / "public.sock"), str(base / "target.sock"),
                                 str(base / "state"), base / "node.log")
        self.host_ns = self.net.node("h", f"{data}.50/24", "data", DATA_DEV)
        namespaces = [n.ns for n in self.nodes.values()]
        self.etcd = EtcdCluster(count, hosts=[n.ctl_addr for n in self.nodes.values()],
                                wrap=lambda i, argv: netns_cmd(namespaces[i], argv))

    # -- addresses and etcd ---------------------------------------------------------
    @property
    def store_url(self) -> str:
        assert self.etcd is not None
        return self.etcd.url(PREFIX)

    @property
    def keys(self) -> ClusterKeys:
        return ClusterKeys(PREFIX)

    @property
    def client(self) -> EtcdClient:
        """The test's own etcd session (through the root namespace's control port)."""
        if self._client is None:
            assert self.etcd is not None
            self._client = EtcdClient([m.client_url for m in self.etcd.members], timeout=2)
        return self._client

    def owner(self) -> dict[str, Any] | None:
        """The group's owner as etcd records it ({"node", "epoch"}), None if no owner."""
        kv = self.client.get(self.keys.group(GROUP).owner)
        return decode(kv.value) if kv is not None else None

    def epoch(self) -> int:
        kv = self.client.get(self.keys.group(GROUP).epoch)
        return int(decode(kv.value)) if kv is not None else 0

    def owner_node(self) -> Node:
        owner = self.wait_owner(lambda _o: True, what="a group owner in etcd")
        return self.nodes[node_number(owner)]

    def wait_owner(self, cond: Callable[[dict[str, Any]], bool], timeout: float = 30.0,
                   what: str = "owner") -> dict[str, Any]:
        """The first owner record satisfying ``cond`` (etcd unreachable counts as not)."""
        def check() -> dict[str, Any]:
            try:
                owner = self.owner()
            except EtcdError:
                return {}
            return owner if owner is not None and cond(owner) else {}
        return wait_for(check, timeout=timeout, interval=0.02, what=what)

    # -- node processes ---------------------------------------------------------------
    def start_node(self, k: int, timeout: float = 60.0) -> Node:
        """Start node ``k``'s supervisor (its etcd member is the EtcdCluster's) and wait
        until its public socket answers."""
        node = self.nodes[k]
        for path in (node.sock, node.target_sock):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with open(node.log, "ab") as out:
            node.proc = subprocess.Popen(netns_cmd(node.ns, self.command(self, node)),
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        proc = node.proc
        wait_for(lambda: proc.poll() is not None or _answers(node.sock), timeout=timeout,
                 interval=0.02, what=f"node {node.name}'s socket {node.sock}")
        if proc.poll() is not None:
            raise AssertionError(f"node {node.name} exited with {proc.returncode}: "
                                 f"{self.log_tail(k)}")
        return node

    def start(self) -> None:
        for k in self.nodes:
            self.start_node(k)

    def log_tail(self, k: int, chars: int = 3000) -> str:
        try:
            return self.nodes[k].log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _reap(self, k: int) -> None:
        node = self.nodes[k]
        if node.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=10)
        node.proc = None
        assert self.etcd is not None
        self.etcd.kill(k - 1)     # reaps the member (already dead or killed now)

    def kill_node_loud(self, k: int) -> float:
        """SIGKILL every process of node ``k`` at once; returns when (monotonic)."""
        at = time.monotonic()
        kill_netns_processes(self.nodes[k].ns)
        self._reap(k)
        return at

    def kill_node_silent(self, k: int) -> float:
        """Node ``k`` drops off both networks at once, its processes still running (a
        power cut seen from outside); returns when. :meth:`reap` ends them later."""
        node = self.nodes[k]
        at = time.monotonic()
        self.net.link_down(node.ns, DATA_DEV)
        self.net.link_down(node.ns, CTL_DEV)
        node.cut = True
        return at

    def reap(self, k: int) -> None:
        """Kill what still runs on node ``k`` (after a silent death)."""
        kill_netns_processes(self.nodes[k].ns)
        self._reap(k)

    def partition_from_etcd(self, k: int) -> float:
        """Node ``k`` loses the control network only: hosts still reach it."""
        at = time.monotonic()
        self.net.link_down(self.nodes[k].ns, CTL_DEV)
        self.nodes[k].cut = True
        return at

    def heal(self, k: int) -> None:
        node = self.nodes[k]
        self.net.link_up(node.ns, DATA_DEV)
        self.net.link_up(node.ns, CTL_DEV)
        node.cut = False

    def restart_node(self, k: int, reboot: bool = False) -> Node:
        """Node ``k`` comes back: anything left of it killed, links up, its etcd member
        started on its data, then its supervisor. ``reboot`` also drops its shared
        memory (a power cut loses it; a loud kill of the processes does not)."""
        self.reap(k)
        node = self.nodes[k]
        if reboot:
            drop_region(node.state_dir)
        self.heal(k)
        assert self.etcd is not None
        self.etcd.start(k - 1)
        wait_for(partial(self.etcd.healthy, k - 1), timeout=30, interval=0.05,
                 what=f"etcd member of {node.name} healthy again")
        return self.start_node(k)

    def alive(self, k: int) -> bool:
        return bool(netns_pids(self.nodes[k].ns))

    # -- configuration and target state -----------------------------------------------
    def configure(self, node: Node | None = None, cntlid: tuple[int, int] | None = None
                  ) -> Node:
        """The group's configuration, sent to ``node``'s public socket (default: the
        owner's): the shared file as an aio bdev, a subsystem with fixed identities and
        one namespace, an I/O and a discovery listener on that node's data address."""
        node = node or self.owner_node()
        with RpcClient.connect(node.sock, timeout=30) as c:
            rn.nvmf_create_transport(c, "TCP")
            rb.bdev_aio_create(c, str(self.image), BDEV, block_size=BLOCK_SIZE,
                               uuid=BDEV_UUID)
            extra: dict[str, Any] = {}
            if cntlid is not None:
                extra = {"min_cntlid": cntlid[0], "max_cntlid": cntlid[1]}
            rn.nvmf_create_subsystem(c, NQN, serial_number=SERIAL, model_number=MODEL,
                                     allow_any_host=True, **extra)
            rn.nvmf_subsystem_add_ns(c, NQN, BDEV, nsid=1, uuid=BDEV_UUID, nguid=NGUID,
                                     eui64=EUI64)
            rn.nvmf_subsystem_add_listener(c, NQN, rn.listen_address(node.data_addr,
                                                                     IO_PORT))
            rn.nvmf_subsystem_add_listener(c, DISCOVERY_NQN,
                                           rn.listen_address(node.data_addr, DISC_PORT))
        return node

    def ana_states(self, k: int, sock: str | None = None) -> dict[str, str]:
        """Node ``k``'s listeners of the subsystem: address -> ANA state (group 1)."""
        with RpcClient.connect(sock or self.nodes[k].target_sock, timeout=5) as c:
            listeners = c.call("nvmf_subsystem_get_listeners", {"nqn": NQN})
        out = {}
        for lst in listeners:
            states = lst.get("ana_states") or [{"ana_state": lst.get("ana_state", "?")}]
            out[lst["address"]["traddr"]] = str(states[0].get("ana_state"))
        return out

    def serving_optimized(self, k: int) -> bool:
        """Node ``k``'s target has its own listener up and optimized."""
        try:
            return self.ana_states(k).get(self.nodes[k].data_addr) == "optimized"
        except (OSError, RpcError):
            return False

    def roles(self) -> dict[int, str]:
        """Each reachable node's ANA state on its own address ("" when it has none)."""
        out = {}
        for k, node in self.nodes.items():
            try:
                out[k] = self.ana_states(k).get(node.data_addr, "")
            except (OSError, RpcError):
                out[k] = ""
        return out

    def wait_roles(self, nodes: list[int] | None = None, timeout: float = 60.0) -> Node:
        """Wait until etcd names an owner, the owner serves optimized on its address and
        every other node of ``nodes`` (default: all) is its non_optimized standby;
        returns the owner."""
        want = nodes or list(self.nodes)

        def settled() -> Node | None:
            owner = self.owner()
            if owner is None:
                return None
            k = node_number(owner)
            roles = self.roles()
            ok = roles.get(k) == "optimized" and all(
                roles[j] == "non_optimized" for j in want if j != k)
            return self.nodes[k] if ok else None
        node = wait_for(settled, timeout=timeout, interval=0.05,
                        what=f"owner optimized and standbys non_optimized ({want})")
        assert node is not None      # wait_for returns only a truthy value
        return node

    def read_image(self, lba: int, blocks: int = 1) -> bytes:
        """What the shared file holds at ``lba`` (the backing store, not a target)."""
        with open(self.image, "rb") as f:
            f.seek(lba * BLOCK_SIZE)
            return f.read(blocks * BLOCK_SIZE)

    # -- the host ----------------------------------------------------------------------
    def paths(self) -> list[str]:
        return [f"{n.data_addr}:{IO_PORT}" for n in self.nodes.values()]

    def host_write(self, node: Node, lba: int, seed: int) -> dict[str, Any]:
        """One write of :func:`~tests.cluster_host.pattern` through ``node`` only:
        {"acknowledged": bool, "error": ...}."""
        return host_write(self.host_ns, NQN, f"{node.data_addr}:{IO_PORT}", lba, seed,
                          BLOCK_SIZE)

    def host_io(self, options: dict[str, float | str], discover: bool = False) -> HostIO:
        """Start the host's verified I/O over one path per node (or the paths discovery
        at n1 and its referrals list); ``options`` are tests/cluster_host.py's flags
        (kato_ms, io_timeout, ...)."""
        first = self.nodes[min(self.nodes)]
        paths = {"discover": f"{first.data_addr}:{DISC_PORT}"} if discover else \
            {"path": self.paths()}
        return HostIO(self.host_ns, self.workdir, NQN, paths, {**options,
                                                               "block_size": BLOCK_SIZE})

    def close(self) -> None:
        try:
            for k in self.nodes:
                kill_netns_processes(self.nodes[k].ns)
            for node in self.nodes.values():
                if node.proc is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        node.proc.wait(timeout=10)
            if self._client is not None:
                self._client.close()
            if self.etcd is not None:
                self.etcd.close()
        finally:
            self.net.close()
            for node in self.nodes.values():
                drop_region(node.state_dir)


def node_number(owner: dict[str, Any]) -> int:
    """k of an owner record naming node "nk"."""
    return int(str(owner["node"]).removeprefix("n"))


def written_pattern(seed: int) -> bytes:
    """The block ``host_write`` sends for ``seed``."""
    return pattern(seed, BLOCK_SIZE)


def _answers(sock: str) -> bool:
    try:
        with RpcClient.connect(sock, timeout=2) as c:
            c.call("rpc_get_methods")
        return True
    except (OSError, RpcError):
        return False


@contextlib.contextmanager
def cluster_lab(workdir: Path, **kwargs: Any) -> Iterator[ClusterLab]:
    lab = ClusterLab(workdir, **kwargs)
    try:
        yield lab
    finally:
        lab.close()
