"""Restore planning: desired state + live state -> an ordered list of RPC calls. Pure.

Order follows what depends on what, and what a host may see when: STARTUP options,
framework_start_init, keys, bdevs (with their uuids), transports, subsystems, namespaces
(explicit nsid/uuid/nguid/eui64/anagrpid), hosts, then listeners last. Listeners of
ANA-reporting subsystems open ``inaccessible`` and flip to their saved states in a final
stage, once everything behind them exists, so no host sees a half-built subsystem.

Only differences produce calls: restoring onto a target that already matches plans
nothing, and nothing that matches is deleted and re-added. An object that exists with a
different identity is a *conflict*, reported, never silently destroyed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nvmf_phoenix.model import Bdev, Listener, Namespace, Subsystem, TargetState

STAGES = ("startup", "init", "keys", "bdevs", "transports", "subsystems", "namespaces",
          "hosts", "listeners", "ana", "prune")
GATE_STATE = "inaccessible"


@dataclass(frozen=True)
class Call:
    """One RPC of a plan; ``key`` names the object, ``deps`` the objects it needs."""

    stage: str
    method: str
    params: dict[str, Any] | None
    key: str
    deps: tuple[str, ...] = ()


@dataclass
class Plan:
    calls: list[Call] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)   # live objects not in the desired state

    def add(self, stage: str, method: str, params: dict[str, Any] | None, key: str,
            *deps: str) -> None:
        self.calls.append(Call(stage, method, params, key, tuple(deps)))

    def by_stage(self) -> list[list[Call]]:
        return [[c for c in self.calls if c.stage == s] for s in STAGES
                if any(c.stage == s for c in self.calls)]


def plan(desired: TargetState, live: TargetState, phase: str = "running",
         prune: bool = False) -> Plan:
    p = Plan()
    if phase == "startup":
        _startup(p, desired)
        p.add("init", "framework_start_init", None, "framework")
    for name, key in desired.keys.items():
        if name not in live.keys:
            p.add("keys", "keyring_file_add_key", key.to_dict(), f"key:{name}")
        elif live.keys[name].path != key.path:
            p.conflicts.append(f"key {name}: path {live.keys[name].path} != {key.path}")
    for name, bdev in desired.bdevs.items():
        have = live.bdevs.get(name)
        if have is None:
            p.add("bdevs", *_bdev_create(bdev), f"bdev:{name}")
        elif have.uuid != bdev.uuid or have.kind != bdev.kind:
            p.conflicts.append(f"bdev {name}: live {have.kind} uuid {have.uuid} != "
                               f"desired {bdev.kind} uuid {bdev.uuid}")
    for trtype, tr in desired.transports.items():
        if trtype not in live.transports:
            p.add("transports", "nvmf_create_transport", {"trtype": trtype, **tr.options},
                  f"transport:{trtype}")
    for nqn, sub in desired.subsystems.items():
        _subsystem(p, sub, live.subsystems.get(nqn))
    # SPDK puts each new referral at the head of its list: adding them oldest first (the
    # captured list is newest first) gives back the same order, hence the same discovery log.
    for ref in reversed(desired.referrals):
        if ref not in live.referrals:
            p.add("listeners", "nvmf_discovery_add_referral", ref.to_dict(),
                  f"referral:{ref.address.traddr}:{ref.address.trsvcid}")
    if prune:
        _prune(p, desired, live)
    else:
        p.extra = _extra(desired, live)
    return p


def _startup(p: Plan, st: TargetState) -> None:
    if st.startup.nvmf_config:
        p.add("startup", "nvmf_set_config", dict(st.startup.nvmf_config), "startup:config")
    if st.startup.max_subsystems is not None:
        p.add("startup", "nvmf_set_max_subsystems",
              {"max_subsystems": st.startup.max_subsystems}, "startup:max_subsystems")
    if st.startup.crdt:
        p.add("startup", "nvmf_set_crdt", dict(st.startup.crdt), "startup:crdt")


def _bdev_create(b: Bdev) -> tuple[str, dict[str, Any]]:
    if b.kind == "malloc":
        return "bdev_malloc_create", {"name": b.name, "num_blocks": b.num_blocks,
                                      "block_size": b.block_size, "uuid": b.uuid, **b.params}
    params = {"name": b.name, "filename": b.filename, "block_size": b.block_size,
              "uuid": b.uuid, **{k: v for k, v in b.params.items()
                                 if k in ("readonly", "fallocate")}}
    return "bdev_aio_create", params


def _subsystem(p: Plan, sub: Subsystem, have: Subsystem | None) -> None:
    key = f"subsystem:{sub.nqn}"
    if have is None and sub.is_discovery:   # always exists; never created by RPC
        have = Subsystem(nqn=sub.nqn, subtype="Discovery", allow_any_host=True,
                         max_namespaces=0)
    if have is None:
        p.add("subsystems", "nvmf_create_subsystem", {
            "nqn": sub.nqn, "serial_number": sub.serial_number,
            "model_number": sub.model_number, "max_namespaces": sub.max_namespaces,
            "min_cntlid": sub.min_cntlid, "max_cntlid": sub.max_cntlid,
            "ana_reporting": sub.ana_reporting, "allow_any_host": sub.allow_any_host}, key)
        have = Subsystem(nqn=sub.nqn, subtype=sub.subtype, ana_reporting=sub.ana_reporting,
                         allow_any_host=sub.allow_any_host)
    else:
        for f in ("serial_number", "model_number", "min_cntlid", "max_cntlid",
                  "max_namespaces", "ana_reporting"):
            if not sub.is_discovery and getattr(have, f) != getattr(sub, f):
                p.conflicts.append(f"subsystem {sub.nqn}: {f} {getattr(have, f)!r} != "
                                   f"{getattr(sub, f)!r}")
        if have.allow_any_host != sub.allow_any_host:
            p.add("hosts", "nvmf_subsystem_allow_any_host",
                  {"nqn": sub.nqn, "allow_any_host": sub.allow_any_host}, key + "/any")
    for nsid, ns in sorted(sub.namespaces.items()):
        cur = have.namespaces.get(nsid)
        if cur is None:
            p.add("namespaces", "nvmf_subsystem_add_ns",
                  {"nqn": sub.nqn, "namespace": _ns_params(ns)}, f"{key}/ns:{nsid}",
                  key, f"bdev:{ns.bdev_name}")
        elif _ns_identity(cur) != _ns_identity(ns):
            p.conflicts.append(f"subsystem {sub.nqn} nsid {nsid}: live {_ns_identity(cur)} "
                               f"!= desired {_ns_identity(ns)}")
    for hostnqn, host in sub.hosts.items():
        if hostnqn not in have.hosts:
            params = {"nqn": sub.nqn, "host": hostnqn,
                      **{k: v for k, v in host.to_dict().items() if k != "nqn"}}
            p.add("hosts", "nvmf_subsystem_add_host", params, f"{key}/host:{hostnqn}", key)
    for addr, ls in sub.listeners.items():
        _listener(p, sub, ls, have.listeners.get(addr), key)


def _ns_params(ns: Namespace) -> dict[str, Any]:
    d = ns.to_dict()
    d.pop("hosts", None)
    return d


def _ns_identity(ns: Namespace) -> tuple[Any, ...]:
    return (ns.bdev_name, ns.uuid, ns.nguid, ns.eui64, ns.anagrpid)


def _listener(p: Plan, sub: Subsystem, ls: Listener, have: Listener | None, key: str) -> None:
    lkey = f"{key}/listener:{ls.address.traddr}:{ls.address.trsvcid}"
    addr = ls.address.to_dict()
    if have is None:
        params: dict[str, Any] = {"nqn": sub.nqn, "listen_address": addr}
        if ls.secure_channel:
            params["secure_channel"] = True
        if sub.ana_reporting:
            params["ana_state"] = GATE_STATE
        p.add("listeners", "nvmf_subsystem_add_listener", params, lkey, key)
        current = {g: GATE_STATE for g in ls.ana_states}
    else:
        current = dict(have.ana_states)
    if not sub.ana_reporting:
        return
    wanted = {g: s for g, s in ls.ana_states.items() if current.get(g) != s}
    if not wanted:
        return
    if len(set(ls.ana_states.values())) == 1 and len(wanted) > 1:
        state = next(iter(ls.ana_states.values()))
        p.add("ana", "nvmf_subsystem_listener_set_ana_state",
              {"nqn": sub.nqn, "listen_address": addr, "ana_state": state}, lkey + "/ana",
              lkey)
        return
    for grp, state in sorted(wanted.items()):
        p.add("ana", "nvmf_subsystem_listener_set_ana_state",
              {"nqn": sub.nqn, "listen_address": addr, "ana_state": state, "anagrpid": grp},
              f"{lkey}/ana:{grp}", lkey)


def _extra(desired: TargetState, live: TargetState) -> list[str]:
    out = [f"bdev {n}" for n in live.bdevs if n not in desired.bdevs]
    for nqn, sub in live.subsystems.items():
        want = desired.subsystems.get(nqn)
        if want is None:
            out.append(f"subsystem {nqn}")
            continue
        out += [f"{nqn} nsid {n}" for n in sub.namespaces if n not in want.namespaces]
        out += [f"{nqn} host {h}" for h in sub.hosts if h not in want.hosts]
        out += [f"{nqn} listener {a.traddr}:{a.trsvcid}" for a in sub.listeners
                if a not in want.listeners]
    return out


def _prune(p: Plan, desired: TargetState, live: TargetState) -> None:
    """Removals, most dependent first: listeners, hosts, namespaces, subsystems, bdevs."""
    for nqn, sub in live.subsystems.items():
        want = desired.subsystems.get(nqn)
        for addr in sub.listeners:
            if want is None or addr not in want.listeners:
                p.add("prune", "nvmf_subsystem_remove_listener",
                      {"nqn": nqn, "listen_address": addr.to_dict()}, f"-{nqn}/{addr}")
        if want is None and not sub.is_discovery:
            p.add("prune", "nvmf_delete_subsystem", {"nqn": nqn}, f"-{nqn}")
            continue
        for h in sub.hosts:
            if want is None or h not in want.hosts:
                p.add("prune", "nvmf_subsystem_remove_host", {"nqn": nqn, "host": h},
                      f"-{nqn}/host:{h}")
        for nsid in sub.namespaces:
            if want is not None and nsid not in want.namespaces:
                p.add("prune", "nvmf_subsystem_remove_ns", {"nqn": nqn, "nsid": nsid},
                      f"-{nqn}/ns:{nsid}")
    for name, b in live.bdevs.items():
        if name not in desired.bdevs:
            method = "bdev_malloc_delete" if b.kind == "malloc" else "bdev_aio_delete"
            p.add("prune", method, {"name": name}, f"-bdev:{name}")
