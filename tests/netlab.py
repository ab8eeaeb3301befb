"""A small LAN of test machines made of network namespaces, built with pyroute2.

A "switch" namespace holds the bridges (``br0`` at first; :meth:`NetLab.bridge` adds
more, e.g. a data and a control network); every node is a namespace with one veth per
network whose peer, the node's port on that bridge, lives in the switch namespace. Names
carry the test process id so parallel runs never meet; closing kills what still runs in
the namespaces and removes them (and with them every veth).

Cutting a node off is done at the switch (:meth:`NetLab.link_down` sets the node's
bridge port down): the node sees only a lost carrier and its traffic goes nowhere, with
no FIN and no RST either way, as when a cable is pulled or a machine loses power. A veth
from the root namespace into a bridge (:meth:`NetLab.root_port`) lets the test process
(and a qemu guest behind it, whose user-mode network goes through the root namespace's
routes) reach the nodes' addresses. Addresses of a lab that stays closed live in
192.0.2.0/24 (TEST-NET-1); a lab joined to the root namespace takes free subnets from
:func:`free_subnets`.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys

from pyroute2 import IPRoute, NetNS, netns

NETNS_DIR = "/var/run/netns"


def netns_cmd(ns: str, argv: list[str]) -> list[str]:
    """``argv`` run inside namespace ``ns`` (see tests/netns_exec.py)."""
    return [sys.executable, "-m", "tests.netns_exec", ns, "--", *argv]


class NetLab:
    def __init__(self) -> None:
        self.tag = f"phx{os.getpid()}"
        self.namespaces: list[str] = []
        self.ports: dict[tuple[str, str], str] = {}     # (node namespace, dev) -> port
        self.root_links: list[str] = []
        self._serial = itertools.count()
        self.switch = self._ns("sw")
        self.bridge("br0")

    def _ns(self, name: str) -> str:
        full = f"{self.tag}-{name}"
        netns.create(full)
        self.namespaces.append(full)
        with NetNS(full) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        return full

    def _port_name(self) -> str:
        """A veth name unique on this machine while it sits in the root namespace."""
        return f"p{next(self._serial)}x{os.getpid()}"[:15]

    def bridge(self, name: str) -> str:
        """Another network (a bridge in the switch namespace); returns its name."""
        with NetNS(self.switch) as ns:
            ns.link("add", ifname=name, kind="bridge")
            ns.link("set", index=ns.link_lookup(ifname=name)[0], state="up")
        return name

    def node(self, name: str, cidr: str, bridge: str = "br0", dev: str = "eth0") -> str:
        """A machine on the LAN with ``cidr`` on its ``dev``; returns its namespace."""
        full = self._ns(name)
        self.attach(full, cidr, bridge, dev)
        return full

    def attach(self, ns_name: str, cidr: str, bridge: str = "br0", dev: str = "eth0") -> None:
        """Give machine ``ns_name`` one more interface ``dev`` with ``cidr`` on ``bridge``."""
        port = self._port_name()
        with IPRoute() as ip:     # create in our namespace, then hand each end out
            ip.link("add", ifname=port, kind="veth", peer={"ifname": dev,
                                                           "net_ns_fd": ns_name})
            ip.link("set", index=ip.link_lookup(ifname=port)[0], net_ns_fd=self.switch)
        self.ports[(ns_name, dev)] = port
        with NetNS(self.switch) as ns:
            idx = ns.link_lookup(ifname=port)[0]
            ns.link("set", index=idx, master=ns.link_lookup(ifname=bridge)[0], state="up")
        addr, prefix = cidr.split("/")
        with NetNS(ns_name) as ns:
            idx = ns.link_lookup(ifname=dev)[0]
            ns.addr("add", index=idx, address=addr, prefixlen=int(prefix))
            ns.link("set", index=idx, state="up")

    def root_port(self, cidr: str, bridge: str = "br0") -> str:
        """A veth from the root namespace into ``bridge``, ``cidr`` on the root end (its
        subnet route comes with the address); returns the root end's name."""
        port, root_end = self._port_name(), self._port_name()
        with IPRoute() as ip:
            ip.link("add", ifname=root_end, kind="veth", peer={"ifname": port,
                                                               "net_ns_fd": self.switch})
            self.root_links.append(root_end)
            idx = ip.link_lookup(ifname=root_end)[0]
            addr, prefix = cidr.split("/")
            ip.addr("add", index=idx, address=addr, prefixlen=int(prefix))
            ip.link("set", index=idx, state="up")
        with NetNS(self.switch) as ns:
            idx = ns.link_lookup(ifname=port)[0]
            ns.link("set", index=idx, master=ns.link_lookup(ifname=bridge)[0], state="up")
        return root_end

    def _set_port(self, ns_name: str, dev: str, state: str) -> None:
        with NetNS(self.switch) as ns:
            ns.link("set", index=ns.link_lookup(ifname=self.ports[(ns_name, dev)])[0],
                    state=state)

    def link_down(self, ns_name: str, dev: str = "eth0") -> None:
        """The node drops off that network (as when it dies, or its cable is pulled):
        its port on the bridge goes down, nothing is sent to either side."""
        self._set_port(ns_name, dev, "down")

    def link_up(self, ns_name: str, dev: str = "eth0") -> None:
        """The node's port on that network comes back."""
        self._set_port(ns_name, dev, "up")

    def addresses(self, ns_name: str, dev: str = "eth0") -> list[str]:
        with NetNS(ns_name) as ns:
            idx = ns.link_lookup(ifname=dev)[0]
            return [a.get_attr("IFA_ADDRESS") for a in ns.get_addr(index=idx, family=2)]

    def neighbour_mac(self, ns_name: str, addr: str) -> str | None:
        with NetNS(ns_name) as ns:
            for n in ns.get_neighbours(family=2):
                if n.get_attr("NDA_DST") == addr:
                    return str(n.get_attr("NDA_LLADDR"))
        return None

    def mac(self, ns_name: str, dev: str = "eth0") -> str:
        with NetNS(ns_name) as ns:
            return str(ns.get_links(ns.link_lookup(ifname=dev)[0])[0].get_attr("IFLA_ADDRESS"))

    def close(self) -> None:
        """Kill whatever still runs inside the lab, then remove every namespace and the
        root namespace's veths; safe to call twice."""
        for name in self.namespaces:
            kill_netns_processes(name)
        for name in reversed(self.namespaces):
            with contextlib.suppress(OSError):
                netns.remove(name)
        self.namespaces.clear()
        with IPRoute() as ip:
            for link in self.root_links:
                with contextlib.suppress(Exception):    # gone with the switch namespace
                    ip.link("del", index=ip.link_lookup(ifname=link)[0])
        self.root_links.clear()


def netns_pids(ns_name: str) -> list[int]:
    """Every process whose network namespace is ``ns_name`` (read from /proc)."""
    try:
        st = os.stat(os.path.join(NETNS_DIR, ns_name))
    except OSError:
        return []
    pids, me = [], {os.getpid(), os.getppid()}   # never ourselves, whatever setns did
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in me:
            continue
        with contextlib.suppress(OSError):
            ns = os.stat(f"/proc/{entry}/ns/net")
            if (ns.st_ino, ns.st_dev) == (st.st_ino, st.st_dev):
                pids.append(int(entry))
    return pids


def kill_netns_processes(ns_name: str) -> list[int]:
    """SIGKILL every process inside namespace ``ns_name``; returns their pids (reaping
    is left to whoever started them)."""
    pids = netns_pids(ns_name)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def free_subnets(count: int, first: int = 78) -> list[str]:
    """``count`` prefixes ``10.{first+i}.N`` (one N for all) with no address of the root
    namespace in any of them, so labs run by different helpers at once differ."""
    with IPRoute() as ip:
        used = {a.get_attr("IFA_ADDRESS") for a in ip.get_addr(family=2)}
    start = os.getpid() % 200
    for n in [*range(start, 250), *range(start)]:
        nets = [f"10.{first + i}.{n}" for i in range(count)]
        if not any(u.startswith(f"{net}.") for u in used for net in nets):
            return nets
    raise RuntimeError(f"no free 10.{first}.N.0/24 subnet in the root namespace")


def why_no_netns() -> str | None:
    """None if this process can build namespaces, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    probe = f"phx{os.getpid()}-probe"
    try:
        netns.create(probe)
        netns.remove(probe)
    except OSError as exc:
        return f"cannot create network namespaces here: {exc}"
    return None
