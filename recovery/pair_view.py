"""What each member of a hot-standby pair must hold, derived from one configuration. Pure.

A pair is two targets serving the same namespaces from shared storage. A Linux host
groups their controllers under one multipath head when every host-visible identity is the
same (subsystem NQN, serial, model, namespace UUID/NGUID/EUI-64, ANA group) and no
controller ID repeats within a subsystem; it sends I/O to the ``optimized`` path and
moves to a ``non_optimized`` one the moment the optimized path fails. So the pair keeps
one *logical* configuration (the checkpoint: what the user asked for, in member a's
addresses) and derives each member's view of it:

- cntlid ranges are split once, per member (a: 1-32767, b: 32768-65519), and never follow
  the role: a host connected to both never sees one cntlid twice;
- ANA reporting is on for every subsystem, and every listener's ANA state is the
  member's role: ``optimized`` on the active, ``non_optimized`` on the standby;
- member b listens where :class:`PairLayout` says (by default the same address, port + 1);
- each member's discovery service refers hosts to the other's, so a host that discovers
  through either finds both paths.

:func:`to_logical` is the inverse used on what the active reports, so a capture from
either member checkpoints the same logical state.

The same views serve a cluster (:mod:`~.cluster`): there a member is a node holding a
*slot* (one of :data:`SLOTS`), listening on its own address, with one of four disjoint
cntlid ranges; :class:`ClusterLayout` places the members as :class:`PairLayout` does for
a pair, and the functions below take either (both are a :class:`Placement`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

from nvmf_phoenix.model import (
    DISCOVERY_NQN,
    ListenAddress,
    Referral,
    Subsystem,
    TargetState,
)

MEMBERS = ("a", "b")
ACTIVE, STANDBY, FENCED = "active", "standby", "fenced"
# A fenced member (a cluster node that lost etcd) must not be used by hosts at all.
ROLE_ANA_STATE = {ACTIVE: "optimized", STANDBY: "non_optimized", FENCED: "inaccessible"}
MAX_CNTLID = 0xFFEF         # 65519: the highest controller ID
# Split so that neither range moves with a failover.
CNTLID_RANGES = {"a": (1, 32767), "b": (32768, MAX_CNTLID)}
DEFAULT_CNTLID_RANGE = (1, MAX_CNTLID)
SLOTS = 4                   # members of a cluster group at most: one cntlid range each
_SLOT_WIDTH = -(-MAX_CNTLID // SLOTS)


def slot_range(slot: int) -> tuple[int, int]:
    """Slot ``slot``'s controller IDs: a quarter of 1-65519, disjoint from the others
    (Linux refuses a second controller with the same cntlid in one subsystem)."""
    if not 0 <= slot < SLOTS:
        raise ValueError(f"slot {slot}: a cluster has slots 0-{SLOTS - 1}")
    lo = 1 + slot * _SLOT_WIDTH
    return lo, min(lo + _SLOT_WIDTH - 1, MAX_CNTLID)


def peer(member: str) -> str:
    return "b" if member == "a" else "a"


class Placement(Protocol):
    """Where each member of a set of targets listens and which controller IDs it owns."""

    def member_address(self, addr: ListenAddress, member: str) -> ListenAddress: ...

    def user_address(self, addr: ListenAddress, member: str,
                     user_traddr: str | None = None) -> ListenAddress: ...

    def cntlid_range(self, member: str) -> tuple[int, int]: ...

    def others(self, member: str) -> list[str]: ...

    def members(self) -> list[str]: ...

    def describe_split(self) -> str: ...


@dataclass(frozen=True)
class PairLayout:
    """Where member b listens, given where the user asked for a listener (member a's).

    By default the same address on the next port (4420 -> 4421, 8009 -> 8010); with
    ``address`` the same port on a second address (for a standby on another interface
    or node). Either way the mapping is one-to-one, so a listener reported by b maps back.
    """

    port_offset: int = 1
    address: str | None = None

    def member_address(self, addr: ListenAddress, member: str) -> ListenAddress:
        if member == "a":
            return addr
        if self.address is not None:
            return ListenAddress.make(self.address, addr.trsvcid, addr.trtype)
        return ListenAddress.make(addr.traddr, int(addr.trsvcid) + self.port_offset,
                                  addr.trtype, addr.adrfam)

    def user_address(self, addr: ListenAddress, member: str,
                     user_traddr: str | None = None) -> ListenAddress:
        """The inverse of :meth:`member_address`. With a second address the user's own
        cannot be computed from b's: it comes from ``user_traddr`` (the one a listener
        with that port has in the logical state), else b's is kept."""
        if member == "a":
            return addr
        if self.address is not None:
            return ListenAddress.make(user_traddr or addr.traddr, addr.trsvcid,
                                      addr.trtype)
        return ListenAddress.make(addr.traddr, int(addr.trsvcid) - self.port_offset,
                                  addr.trtype, addr.adrfam)

    def cntlid_range(self, member: str) -> tuple[int, int]:
        return CNTLID_RANGES[member]

    def others(self, member: str) -> list[str]:
        return [peer(member)]

    def members(self) -> list[str]:
        return list(MEMBERS)

    def describe_split(self) -> str:
        return "between the two targets itself (a: 1-32767, b: 32768-65519)"

    def describe(self) -> str:
        if self.address is not None:
            return f"standby listens on {self.address}, same ports"
        return f"standby listens on the same addresses, port + {self.port_offset}"

    def to_dict(self) -> dict[str, Any]:
        return {"port_offset": self.port_offset, "address": self.address,
                "description": self.describe()}


@dataclass(frozen=True)
class NodePlace:
    slot: int
    address: str


@dataclass(frozen=True)
class ClusterLayout:
    """The members of a cluster group: live nodes by name, each with its slot (its
    cntlid range) and its ``--node-address``. Every listener of the configuration is
    placed on the node's address with the configuration's port (one address per node:
    two listeners differing only in address would collide on a node). ``known`` lists
    addresses of nodes seen before and gone now, so referrals to them are still
    recognised as the cluster's own and never kept as the user's."""

    nodes: dict[str, NodePlace] = field(default_factory=dict)
    known: frozenset[str] = frozenset()

    def member_address(self, addr: ListenAddress, member: str) -> ListenAddress:
        return ListenAddress.make(self.nodes[member].address, addr.trsvcid, addr.trtype)

    def user_address(self, addr: ListenAddress, member: str,
                     user_traddr: str | None = None) -> ListenAddress:
        return ListenAddress.make(user_traddr or addr.traddr, addr.trsvcid, addr.trtype)

    def cntlid_range(self, member: str) -> tuple[int, int]:
        return slot_range(self.nodes[member].slot)

    def others(self, member: str) -> list[str]:
        return sorted(n for n in self.nodes if n != member)

    def members(self) -> list[str]:
        return sorted(self.nodes)

    def describe_split(self) -> str:
        return (f"between the nodes itself (one range of {_SLOT_WIDTH} per slot, e.g. "
                f"slot 0: {slot_range(0)[0]}-{slot_range(0)[1]})")

    def addresses(self) -> set[str]:
        return {p.address for p in self.nodes.values()} | set(self.known)


def ana_groups(sub: Subsystem, known: set[int]) -> list[int]:
    """The ANA groups a listener of ``sub`` reports: SPDK lists one per possible nsid
    (1..max_namespaces); with no limit, those the namespaces use (at least group 1)."""
    groups = set(known) | {ns.anagrpid or ns.nsid for ns in sub.namespaces.values()}
    if sub.max_namespaces:
        groups |= set(range(1, sub.max_namespaces + 1))
    return sorted(groups or {1})


def discovery_addresses(state: TargetState) -> list[ListenAddress]:
    """The discovery service's listeners, in the logical (member a) form."""
    sub = state.subsystems.get(DISCOVERY_NQN)
    return sorted(sub.listeners) if sub is not None else []


def peer_referrals(logical: TargetState, layout: Placement, member: str) -> list[Referral]:
    """The referrals member ``member`` adds: one to each discovery listener of each of
    the other members."""
    return [Referral(address=layout.member_address(a, other))
            for other in layout.others(member) for a in discovery_addresses(logical)]


def _ours(referral: Referral, logical: TargetState, layout: Placement,
          members: list[str]) -> bool:
    """A referral the placement itself adds (by one of ``members``): to a member's
    discovery service; in a cluster, to any node's address, gone ones included."""
    if isinstance(layout, ClusterLayout):
        ports = {a.trsvcid for a in discovery_addresses(logical)}
        return referral.address.traddr in layout.addresses() and \
            referral.address.trsvcid in ports
    return any(referral in peer_referrals(logical, layout, m) for m in members)


def member_view(logical: TargetState, layout: Placement, member: str,
                role: str) -> TargetState:
    """What ``member`` must hold to serve ``logical`` in ``role``."""
    view = copy.deepcopy(logical)
    view.runtime = type(view.runtime)()
    state = ROLE_ANA_STATE[role]
    for sub in view.subsystems.values():
        if not sub.is_discovery:
            sub.ana_reporting = True
            sub.min_cntlid, sub.max_cntlid = layout.cntlid_range(member)
        moved = {}
        for addr, ls in sub.listeners.items():
            ls.address = layout.member_address(addr, member)
            ls.ana_states = {g: state for g in ana_groups(sub, set(ls.ana_states))} \
                if not sub.is_discovery else {}
            moved[ls.address] = ls
        sub.listeners = moved
    view.referrals = [r for r in view.referrals
                      if not _ours(r, logical, layout, layout.members())]
    view.referrals += peer_referrals(logical, layout, member)
    return view


def referral_calls(had: list[Referral], desired: list[Referral]
                   ) -> list[tuple[str, dict[str, Any]]]:
    """The calls that turn a target's referrals ``had`` into ``desired``."""
    return [("nvmf_discovery_add_referral", r.to_create_params())
            for r in desired if r not in had] + \
        [("nvmf_discovery_remove_referral", r.to_create_params())
         for r in had if r not in desired]


def fence_calls(state: TargetState | None) -> list[tuple[str, dict[str, Any]]]:
    """One call per listener of ``state`` that reports ANA, turning every ANA group of
    it ``inaccessible`` (no anagrpid: all of them, in one call)."""
    return [("nvmf_subsystem_listener_set_ana_state",
             {"nqn": nqn, "listen_address": addr.to_dict(), "ana_state": "inaccessible"})
            for nqn, sub in (state.subsystems.items() if state else [])
            if not sub.is_discovery and sub.ana_reporting for addr in sub.listeners]


def to_logical(live: TargetState, layout: Placement, member: str,
               logical: TargetState | None = None) -> TargetState:
    """What ``member`` reports, in the pair's logical form: member a's addresses, the
    cntlid range and ANA states the pair manages left out, the pair's own referrals
    dropped. ``logical`` (the last saved one) resolves addresses a layout with a second
    address cannot invert."""
    out = copy.deepcopy(live)
    known = _user_traddrs(logical)
    for sub in out.subsystems.values():
        if not sub.is_discovery:
            sub.min_cntlid, sub.max_cntlid = DEFAULT_CNTLID_RANGE
            sub.ana_reporting = True
        moved = {}
        for addr, ls in sub.listeners.items():
            ls.address = layout.user_address(addr, member, known.get(addr.trsvcid))
            ls.ana_states = {}
            moved[ls.address] = ls
        sub.listeners = moved
    out.referrals = [r for r in out.referrals if not _ours(r, out, layout, [member])]
    return out


def _user_traddrs(logical: TargetState | None) -> dict[str, str]:
    if logical is None:
        return {}
    return {a.trsvcid: a.traddr for s in logical.subsystems.values() for a in s.listeners}


def normalized(logical: TargetState) -> TargetState:
    """``logical`` with the fields the pair manages in their logical form (as
    :func:`to_logical` leaves them), for comparing a saved state with a live one."""
    return to_logical(logical, PairLayout(), "a")


# Bdevs whose data lives inside one process (or one process's driver) cannot be served
# by both members: the standby would answer from different data.
UNSHAREABLE = {
    "bdev_malloc_create": "a malloc bdev is memory of one target process",
    "bdev_lvol_create_lvstore": "an lvstore's metadata is owned by one process at a time",
    "bdev_lvol_create": "an lvstore's metadata is owned by one process at a time",
}
SHARED_INSTEAD = ("use bdev_aio_create (or bdev_uring_create) on a block device or file "
                  "both targets can open")
MANAGED = {"nvmf_subsystem_listener_set_ana_state":
           "the pair sets ANA states itself (optimized on the active, non_optimized on "
           "the standby)"}


class PairRefusal(ValueError):
    """A call pair mode cannot mirror; the message says what to do instead."""


def for_member(method: str, params: Any, layout: Placement, member: str) -> Any:
    """The user's call as ``member`` (the active) must receive it: every subsystem with
    ANA reporting and the member's cntlid range, listeners at the member's addresses.
    Raises PairRefusal for what a pair cannot serve the same way on both members."""
    if method in MANAGED:
        raise PairRefusal(f"{method}: {MANAGED[method]}")
    if method in UNSHAREABLE:
        raise PairRefusal(f"{method}: not in pair mode: {UNSHAREABLE[method]}; "
                          f"{SHARED_INSTEAD}")
    if not isinstance(params, dict):
        return params
    if method == "bdev_nvme_attach_controller" and \
            str(params.get("trtype", "")).lower() == "pcie":
        raise PairRefusal(f"{method}: not in pair mode: a PCIe controller is driven by "
                          f"one process; {SHARED_INSTEAD}")
    out = dict(params)
    if method == "nvmf_create_subsystem":
        lo, hi = out.get("min_cntlid", 1), out.get("max_cntlid", 0xFFEF)
        if (lo, hi) != DEFAULT_CNTLID_RANGE:
            raise PairRefusal("nvmf_create_subsystem: pair mode splits controller IDs "
                              f"{layout.describe_split()}; leave min_cntlid and "
                              "max_cntlid out")
        out["ana_reporting"] = True
        out["min_cntlid"], out["max_cntlid"] = layout.cntlid_range(member)
    elif "listen_address" in out and isinstance(out["listen_address"], dict):
        try:
            addr = ListenAddress.from_dict(out["listen_address"])
        except (KeyError, TypeError, ValueError):
            return out          # malformed: the target refuses it with its own words
        moved = layout.member_address(addr, member).to_dict()
        out["listen_address"] = {**out["listen_address"],
                                 **{k: moved[k] for k in ("traddr", "trsvcid")}}
        if method == "nvmf_subsystem_add_listener":
            out.pop("ana_state", None)    # a new listener on the active is optimized
    return out
