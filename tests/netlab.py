"""A small LAN of test machines made of network namespaces, built with pyroute2.

A "switch" namespace holds a bridge; every node is a namespace with an ``eth0`` veth
whose peer is enslaved to that bridge. Names carry the test process id so parallel runs
never meet; closing removes every namespace (and with them every veth). Addresses come
from 192.0.2.0/24 (TEST-NET-1), and they live only inside these namespaces.
"""
from __future__ import annotations

import contextlib
import os
import sys

from pyroute2 import IPRoute, NetNS, netns


def netns_cmd(ns: str, argv: list[str]) -> list[str]:
    """``argv`` run inside namespace ``ns`` (see tests/netns_exec.py)."""
    return [sys.executable, "-m", "tests.netns_exec", ns, "--", *argv]


class NetLab:
    def __init__(self) -> None:
        self.tag = f"phx{os.getpid()}"
        self.namespaces: list[str] = []
        self.switch = self._ns("sw")
        with NetNS(self.switch) as ns:
            ns.link("add", ifname="br0", kind="bridge")
            ns.link("set", index=ns.link_lookup(ifname="br0")[0], state="up")

    def _ns(self, name: str) -> str:
        full = f"{self.tag}-{name}"
        netns.create(full)
        self.namespaces.append(full)
        with NetNS(full) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        return full

    def node(self, name: str, cidr: str) -> str:
        """A machine on the LAN with ``cidr`` on its eth0; returns its namespace."""
        full = self._ns(name)
        port = f"{self.tag[-6:]}{name}"[:15]
        with IPRoute() as ip:     # create in our namespace, then hand each end out
            ip.link("add", ifname=port, kind="veth", peer={"ifname": "eth0",
                                                           "net_ns_fd": full})
            ip.link("set", index=ip.link_lookup(ifname=port)[0], net_ns_fd=self.switch)
        with NetNS(self.switch) as ns:
            idx = ns.link_lookup(ifname=port)[0]
            ns.link("set", index=idx, master=ns.link_lookup(ifname="br0")[0], state="up")
        addr, prefix = cidr.split("/")
        with NetNS(full) as ns:
            idx = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=idx, address=addr, prefixlen=int(prefix))
            ns.link("set", index=idx, state="up")
        return full

    def link_down(self, ns_name: str, dev: str = "eth0") -> None:
        """The node drops off the LAN (as when it dies)."""
        with NetNS(ns_name) as ns:
            ns.link("set", index=ns.link_lookup(ifname=dev)[0], state="down")

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
        for name in reversed(self.namespaces):
            with contextlib.suppress(OSError):
                netns.remove(name)
        self.namespaces.clear()


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
