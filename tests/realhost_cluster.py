"""The cluster lab (tests/cluster_lab.py) seen as a "pair" by the real-host driver.

tests/realhost_pair.py drives a guest against anything with ``addr``, ``disc_port``,
``active`` and ``failover(name)``. Here the members are storage nodes: ``active`` is the
node etcd names owner, and ``failover`` kills that whole node (loud: every process
SIGKILLed; silent: its links dropped), waits for a peer to own the group, and brings the
dead node back as a standby (a silently dead node is rebooted: its processes are ended
and its shared memory dropped, as a power cut would).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from tests.cluster_lab import DISC_PORT, ClusterLab, node_number
from tests.realhost_pair import PairReport, run_pair


@dataclass
class Death:
    killed: str
    at: float          # monotonic time of the kill (the driver's clock for the death)


@dataclass
class ClusterAsPair:
    lab: ClusterLab
    how: str                                   # "loud" or "silent"
    epochs: list[int] = field(default_factory=list)
    takeover_s: list[float] = field(default_factory=list)   # death to a new owner

    def __post_init__(self) -> None:
        self.kind = f"embedded cluster, {self.how} node deaths"
        self.addr = self.lab.owner_node().data_addr
        self.epochs.append(self.lab.epoch())

    @property
    def active(self) -> str:
        return self.lab.owner_node().name

    @property
    def disc_port(self) -> int:
        return DISC_PORT

    def failover(self, killed: str) -> Death:
        k = int(killed.removeprefix("n"))
        assert self.lab.owner_node().k == k, f"{killed} does not own the group"
        before = self.lab.epoch()
        at = self.lab.kill_node_loud(k) if self.how == "loud" else self.lab.kill_node_silent(k)
        self.lab.wait_owner(lambda o: node_number(o) != k, timeout=60)
        self.takeover_s.append(time.monotonic() - at)
        self.epochs.append(self.lab.epoch())
        assert self.epochs[-1] == before + 1, (before, self.epochs)
        self.lab.restart_node(k, reboot=self.how == "silent")
        self.lab.wait_roles()
        return Death(killed, at)


def run_cluster(cluster: ClusterAsPair, deaths: int, opts: str = "") -> PairReport:
    """Boot the guest against the cluster and kill the owner node ``deaths`` times. One
    death-and-rejoin cycle may take the host's reconnect delay (10 s) plus the node's
    restart, plus for a silent death the keep-alive timeout."""
    per = 25.0 if cluster.how == "loud" else 35.0
    return run_pair(cluster, deaths, opts=opts, per_kill=per)
