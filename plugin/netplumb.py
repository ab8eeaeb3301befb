"""Network plumbing with pyroute2: listener addresses and floating addresses.

A listener on an address that is on no interface cannot accept connections: SPDK and the
embedded target both fail the RPC with a bare "Invalid parameters". So before a listener
is added (by ``phoenix_subsystem_add_listener`` or a restore) the address is checked here,
and, for a *floating* address (one that moves to whichever node runs the target), added to
the interface named and announced with a gratuitous ARP so hosts' neighbour caches follow
it at once instead of after their stale timers.

Everything talks netlink through pyroute2 in the caller's network namespace; nothing
shells out to ``ip``.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

from nvmf_phoenix.plugin.ops import PhoenixError
from pyroute2 import IPRoute, NetlinkError

from nvmf_phoenix.model import TargetState

# An Ethernet frame carrying an ARP request, the one wire format this module writes:
# dst MAC, src MAC, ethertype | htype, ptype, hlen, plen, oper, sha, spa, tha, tpa.
ARP_FRAME = struct.Struct("!6s6sH HHBBH6s4s6s4s")
ETH_P_ARP, ARPHRD_ETHER, ARPOP_REQUEST = 0x0806, 1, 1


def _ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(addr)
    except ValueError:
        raise PhoenixError(f"{addr!r} is not an IP address (listeners take numeric "
                           "addresses)") from None


def is_wildcard(addr: str) -> bool:
    return addr in ("", "0.0.0.0", "::", "*")


def _links(ip: Any) -> dict[int, Any]:
    return {link["index"]: link for link in ip.get_links()}


def _index(ip: Any, dev: str) -> int:
    found = ip.link_lookup(ifname=dev)
    if not found:
        raise PhoenixError(f"no network interface {dev!r} here")
    return int(found[0])


def interfaces_with(addr: str) -> list[str]:
    """Names of the interfaces holding ``addr`` in this network namespace."""
    want = _ip(addr)
    fam = socket.AF_INET6 if want.version == 6 else socket.AF_INET
    with IPRoute() as ip:
        links = _links(ip)
        out = []
        for a in ip.get_addr(family=fam):
            have = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            if have and ipaddress.ip_address(have.split("%")[0]) == want:
                link = links.get(a["index"])
                out.append(link.get_attr("IFLA_IFNAME") if link else str(a["index"]))
        return out


def add_address(addr: str, dev: str, prefixlen: int | None = None,
                announce: bool = True) -> bool:
    """Put ``addr`` on ``dev`` (bringing it up); False if it was already there."""
    want = _ip(addr)
    if dev in interfaces_with(addr):
        return False
    prefix = prefixlen if prefixlen is not None else want.max_prefixlen
    with IPRoute() as ip:
        idx = _index(ip, dev)
        ip.addr("add", index=idx, address=str(want), prefixlen=prefix)
        ip.link("set", index=idx, state="up")
    if announce and want.version == 4:
        gratuitous_arp(str(want), dev)
    return True


def remove_address(addr: str, dev: str | None = None) -> list[str]:
    """Take ``addr`` off ``dev`` (or off every interface); the interfaces it left."""
    want = _ip(addr)
    fam = socket.AF_INET6 if want.version == 6 else socket.AF_INET
    removed = []
    with IPRoute() as ip:
        links = _links(ip)
        for a in ip.get_addr(family=fam):
            have = a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS")
            name = links[a["index"]].get_attr("IFLA_IFNAME") if a["index"] in links else ""
            if have and ipaddress.ip_address(have) == want and dev in (None, name):
                ip.addr("del", index=a["index"], address=str(want),
                        prefixlen=a["prefixlen"])
                removed.append(name)
    return removed


def gratuitous_arp(addr: str, dev: str, count: int = 1) -> None:
    """Announce that ``addr`` now lives at ``dev``'s MAC (hosts update their caches)."""
    with IPRoute() as ip:
        link = ip.get_links(_index(ip, dev))[0]
    mac_text = link.get_attr("IFLA_ADDRESS") or ""
    if link.get_attr("IFLA_LINKINFO") is None and mac_text in ("", "00:00:00:00:00:00"):
        return   # loopback and other interfaces without a link-layer address
    mac = bytes.fromhex(mac_text.replace(":", ""))
    spa = ipaddress.IPv4Address(addr).packed
    frame = ARP_FRAME.pack(b"\xff" * 6, mac, ETH_P_ARP, ARPHRD_ETHER, 0x0800, 6, 4,
                           ARPOP_REQUEST, mac, spa, b"\x00" * 6, spa)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((dev, ETH_P_ARP))
        for _ in range(count):
            s.send(frame)


def prepare_listener_address(traddr: str, floating_dev: str | None = None,
                             floating_prefix: int | None = None) -> str:
    """Make sure a listener on ``traddr`` can accept connections here.

    Returns "wildcard", "present" or "added"; raises PhoenixError saying what to do when
    the address is on no interface and no ``floating_dev`` was given to put it on.
    """
    if is_wildcard(traddr):
        return "wildcard"
    if interfaces_with(traddr):
        return "present"
    if floating_dev:
        add_address(traddr, floating_dev, floating_prefix)
        return "added"
    raise PhoenixError(f"address {traddr} is on no interface here, so a listener on it "
                       f"cannot accept connections: bring it up first (`nvmf-phoenix "
                       f"address add {traddr} --dev DEV`) or pass --floating-dev DEV to "
                       "add it as a floating address")


def listener_addresses(state: TargetState) -> dict[str, list[str]]:
    """IP listener addresses of a state, each with the subsystems listening on it."""
    out: dict[str, list[str]] = {}
    for sub in state.subsystems.values():
        for la in sub.listeners:
            if la.trtype in ("TCP", "RDMA") and not is_wildcard(la.traddr):
                out.setdefault(la.traddr, []).append(sub.nqn)
    return out


def prepare_state_addresses(state: TargetState, floating_dev: str | None = None,
                            floating_prefix: int | None = None) -> dict[str, str]:
    """prepare_listener_address for every listener of ``state``, before a restore."""
    return {addr: prepare_listener_address(addr, floating_dev, floating_prefix)
            for addr in sorted(listener_addresses(state))}


class Floating:
    """A cluster's floating address on this node's ``dev``: the owner takes it (added
    and announced), every other node gives it up (a
    :class:`~nvmf_phoenix.recovery.cluster.FloatingAddress`)."""

    def __init__(self, spec: str, dev: str) -> None:
        addr, _, prefix = spec.partition("/")
        self.address, self.dev = addr, dev
        self.prefixlen = int(prefix) if prefix else None

    def check(self) -> None:
        """Raise PhoenixError now if ``dev`` is not here (rather than at the takeover)."""
        with IPRoute() as ip:
            _index(ip, self.dev)

    def take(self) -> None:
        try:
            if not add_address(self.address, self.dev, self.prefixlen):
                gratuitous_arp(self.address, self.dev)   # ours already: say so
        except (PhoenixError, NetlinkError) as exc:
            raise OSError(f"floating address {self.address} on {self.dev}: {exc}") from None

    def give_up(self) -> None:
        try:
            remove_address(self.address, self.dev)
        except (PhoenixError, NetlinkError) as exc:
            raise OSError(f"floating address {self.address} off {self.dev}: {exc}") \
                from None
