"""Restore planning: desired state + live state -> an ordered list of RPC calls. Pure.

Order follows what depends on what, and what a host may see when: STARTUP options,
framework_start_init, keys, bdevs (with their uuids), settings of bdevs (QoS, histograms,
multipath policy), transports, subsystems, namespaces (explicit nsid/uuid/nguid/eui64/
anagrpid), hosts (of subsystems, then of no_auto_visible namespaces), then listeners
last. Listeners of ANA-reporting subsystems open
``inaccessible`` and flip to their saved states in a final stage, once everything behind
them exists, so no host sees a half-built subsystem.

Only differences produce calls: restoring onto a target that already matches plans
nothing, and nothing that matches is deleted and re-added. An object that exists with a
different identity is a *conflict*, reported, never silently destroyed.

Which call makes an object, and its params, come from the method table
(:mod:`nvmf_phoenix.rpc.methods`, each method's ``emit``); this module decides only
whether a call is needed, and when.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nvmf_phoenix.recovery.diff import opaque_label, unset_option
from nvmf_phoenix.rpc.methods import bdev_method, emit, is_startup_option, makes_bdevs

from nvmf_phoenix.model import Listener, Namespace, Subsystem, TargetState

STAGES = ("startup", "init", "keys", "bdevs", "settings", "transports", "subsystems",
          "namespaces", "hosts", "listeners", "ana", "prune")
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
    opaque: list[str] = field(default_factory=list)  # entries replayed verbatim (labels)

    def add(self, stage: str, method: str, params: dict[str, Any] | None, key: str,
            *deps: str) -> None:
        self.calls.append(Call(stage, method, params, key, tuple(deps)))

    def emit(self, stage: str, method: str, objs: tuple[Any, ...], key: str,
             *deps: str) -> None:
        """Add the call ``method`` with its params for model objects ``objs``."""
        self.add(stage, method, emit(method, *objs), key, *deps)

    def by_stage(self) -> list[list[Call]]:
        return [[c for c in self.calls if c.stage == s] for s in STAGES
                if any(c.stage == s for c in self.calls)]


def plan(desired: TargetState, live: TargetState, phase: str = "running",
         prune: bool = False) -> Plan:
    p = Plan()
    _opaque(p, desired, live, phase, options=True)
    if phase == "startup":
        _startup(p, desired)
        p.emit("init", "framework_start_init", (), "framework")
    for name, key in desired.keys.items():
        if name not in live.keys:
            p.emit("keys", "keyring_file_add_key", (key,), f"key:{name}")
        elif live.keys[name].path != key.path:
            p.conflicts.append(f"key {name}: path {live.keys[name].path} != {key.path}")
    for name, bdev in desired.bdevs.items():
        have = live.bdevs.get(name)
        if have is None:
            p.emit("bdevs", bdev_method(bdev.kind), (bdev,), f"bdev:{name}")
        elif have.uuid != bdev.uuid or have.kind != bdev.kind:
            p.conflicts.append(f"bdev {name}: live {have.kind} uuid {have.uuid} != "
                               f"desired {bdev.kind} uuid {bdev.uuid}")
    for trtype, tr in desired.transports.items():
        if trtype not in live.transports:
            p.emit("transports", "nvmf_create_transport", (tr,), f"transport:{trtype}")
    for nqn, sub in desired.subsystems.items():
        _subsystem(p, sub, live.subsystems.get(nqn))
    # SPDK puts each new referral at the head of its list: adding them oldest first (the
    # captured list is newest first) gives back the same order, hence the same discovery log.
    for ref in reversed(desired.referrals):
        if ref not in live.referrals:
            p.emit("listeners", "nvmf_discovery_add_referral", (ref,),
                   f"referral:{ref.address.traddr}:{ref.address.trsvcid}")
    _opaque(p, desired, live, phase, options=False)
    p.extra = _extra(desired, live)
    if prune:   # what it removes is no longer extra; opaque entries it cannot remove
        _prune(p, desired, live)
        p.extra = [x for x in p.extra if x.startswith("opaque ")]
    return p


# When an opaque entry of each configuration subsystem is replayed: after the modelled
# objects of its subsystem (added after them to the same stage), nvmf's before listeners
# open; entries of the other subsystems before any bdev, which may need them.
OPAQUE_STAGE = {"keyring": "keys", "bdev": "bdevs", "nvmf": "hosts"}


def _opaque(p: Plan, desired: TargetState, live: TargetState, phase: str,
            options: bool) -> None:
    """Replay, verbatim, the entries no declaration models that the live target lacks:
    option setters (``options``) before framework_start_init, the rest by subsystem.
    An option the running target has otherwise cannot be set any more: a conflict."""
    have = [(e["method"], e.get("params")) for e in live.opaque or []]
    for e in desired.opaque or []:
        method, params = e["method"], e.get("params")
        if is_startup_option(method) != options or (method, params) in have:
            continue
        label = opaque_label(e)
        if options and phase != "startup":
            p.conflicts.append(f"{label}: the live target's is not the checkpoint's; a "
                               "STARTUP option, set only on a target started with "
                               "--wait-for-rpc")
            continue
        name = params.get("name") if isinstance(params, dict) else None
        key = f"bdev:{name}" if e.get("subsystem") == "bdev" and name else f"opaque:{label}"
        stage = "startup" if options else OPAQUE_STAGE.get(e.get("subsystem", ""), "keys")
        if stage == "bdevs" and not makes_bdevs(method):
            # set on a bdev made before, once all exist (an NVMe-oF bdev appears only
            # when its controller answers, after the call that makes it returned)
            stage = "settings"
        p.add(stage, method, params, key)
        p.opaque.append(label)


def _startup(p: Plan, st: TargetState) -> None:
    if st.startup.nvmf_config:
        p.emit("startup", "nvmf_set_config", (st.startup,), "startup:config")
    if st.startup.max_subsystems is not None:
        p.emit("startup", "nvmf_set_max_subsystems", (st.startup,), "startup:max_subsystems")
    if st.startup.crdt:
        p.emit("startup", "nvmf_set_crdt", (st.startup,), "startup:crdt")


def _subsystem(p: Plan, sub: Subsystem, have: Subsystem | None) -> None:
    key = f"subsystem:{sub.nqn}"
    if have is None and sub.is_discovery:   # always exists; never created by RPC
        have = Subsystem.discovery()
    if have is None:
        p.emit("subsystems", "nvmf_create_subsystem", (sub,), key)
        have = Subsystem(nqn=sub.nqn, subtype=sub.subtype, ana_reporting=sub.ana_reporting,
                         allow_any_host=sub.allow_any_host)
    else:
        for f in ("serial_number", "model_number", "min_cntlid", "max_cntlid",
                  "max_namespaces", "ana_reporting", "dmrsl", "wzsl", "passthrough",
                  "enable_nssr"):
            if not sub.is_discovery and getattr(have, f) != getattr(sub, f):
                p.conflicts.append(f"subsystem {sub.nqn}: {f} {getattr(have, f)!r} != "
                                   f"{getattr(sub, f)!r}")
        if have.allow_any_host != sub.allow_any_host:
            p.emit("hosts", "nvmf_subsystem_allow_any_host", (sub,), key + "/any")
    for nsid, ns in sorted(sub.namespaces.items()):
        cur = have.namespaces.get(nsid)
        if cur is None:
            p.emit("namespaces", "nvmf_subsystem_add_ns", (sub, ns), f"{key}/ns:{nsid}",
                   key, f"bdev:{ns.bdev_name}")
        elif cur.identity() != ns.identity():
            p.conflicts.append(f"subsystem {sub.nqn} nsid {nsid}: live {cur.identity()} "
                               f"!= desired {ns.identity()}")
    for hostnqn, host in sub.hosts.items():
        if hostnqn not in have.hosts:
            p.emit("hosts", "nvmf_subsystem_add_host", (sub, host), f"{key}/host:{hostnqn}",
                   key)
    for nsid, ns in sorted(sub.namespaces.items()):
        _ns_hosts(p, sub, ns, have.namespaces.get(nsid), f"{key}/ns:{nsid}")
    for addr, ls in sub.listeners.items():
        _listener(p, sub, ls, have.listeners.get(addr), key)


def _ns_hosts(p: Plan, sub: Subsystem, ns: Namespace, have: Namespace | None,
              nskey: str) -> None:
    """Who sees a no_auto_visible namespace, before any listener opens. The list is
    newest first and each call puts its host at the head: so the oldest goes first."""
    if have is not None and have.identity() != ns.identity():
        return   # a conflict, reported with the namespace: its hosts are not ours to add
    if have is not None and have.no_auto_visible != ns.no_auto_visible and ns.hosts:
        p.conflicts.append(f"subsystem {sub.nqn} nsid {ns.nsid}: no_auto_visible "
                           f"{have.no_auto_visible} != {ns.no_auto_visible}")
        return
    had = have.hosts if have is not None else []
    for host in reversed(ns.hosts):
        if host not in had:
            p.emit("hosts", "nvmf_ns_add_host", (sub, ns, host), f"{nskey}/host:{host}",
                   nskey)


def _listener(p: Plan, sub: Subsystem, ls: Listener, have: Listener | None, key: str) -> None:
    lkey = f"{key}/listener:{ls.address.traddr}:{ls.address.trsvcid}"
    if have is None:
        params = emit("nvmf_subsystem_add_listener", sub, ls)
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
        p.emit("ana", "nvmf_subsystem_listener_set_ana_state", (sub, ls, state),
               lkey + "/ana", lkey)
        return
    for grp, state in sorted(wanted.items()):
        p.emit("ana", "nvmf_subsystem_listener_set_ana_state", (sub, ls, state, grp),
               f"{lkey}/ana:{grp}", lkey)


def _extra(desired: TargetState, live: TargetState) -> list[str]:
    out = [f"bdev {n}" for n in live.bdevs if n not in desired.bdevs]
    if desired.opaque is not None:
        carried = [(e["method"], e.get("params")) for e in desired.opaque]
        out += [f"opaque {opaque_label(e)}" for e in live.opaque or []
                if (e["method"], e.get("params")) not in carried and
                not unset_option(e, desired.opaque)]
    for nqn, sub in live.subsystems.items():
        want = desired.subsystems.get(nqn)
        if want is None:
            out.append(f"subsystem {nqn}")
            continue
        out += [f"{nqn} nsid {n}" for n in sub.namespaces if n not in want.namespaces]
        out += [f"{nqn} host {h}" for h in sub.hosts if h not in want.hosts]
        out += [f"{nqn} nsid {n} host {h}" for n, ns in sub.namespaces.items()
                if n in want.namespaces for h in ns.hosts
                if h not in want.namespaces[n].hosts]
        out += [f"{nqn} listener {a.traddr}:{a.trsvcid}" for a in sub.listeners
                if a not in want.listeners]
    return out


def _prune(p: Plan, desired: TargetState, live: TargetState) -> None:
    """Removals, most dependent first: listeners, hosts, namespaces, subsystems, bdevs."""
    for nqn, sub in live.subsystems.items():
        want = desired.subsystems.get(nqn)
        for addr, ls in sub.listeners.items():
            if want is None or addr not in want.listeners:
                p.emit("prune", "nvmf_subsystem_remove_listener", (sub, ls), f"-{nqn}/{addr}")
        if want is None and not sub.is_discovery:
            p.emit("prune", "nvmf_delete_subsystem", (sub,), f"-{nqn}")
            continue
        for h, host in sub.hosts.items():
            if want is None or h not in want.hosts:
                p.emit("prune", "nvmf_subsystem_remove_host", (sub, host), f"-{nqn}/host:{h}")
        for nsid, ns in sub.namespaces.items():
            if want is not None and nsid not in want.namespaces:
                p.emit("prune", "nvmf_subsystem_remove_ns", (sub, ns), f"-{nqn}/ns:{nsid}")
            elif want is not None:
                for h in ns.hosts:
                    if h not in want.namespaces[nsid].hosts:
                        p.emit("prune", "nvmf_ns_remove_host", (sub, ns, h),
                               f"-{nqn}/ns:{nsid}/host:{h}")
    for name, b in live.bdevs.items():
        if name not in desired.bdevs:
            p.emit("prune", bdev_method(b.kind, create=False), (b,), f"-bdev:{name}")
