"""Objects a restore could not bring back stay in the checkpoint until they can.

A restore is tolerant: an aio bdev whose file is briefly missing fails, and so does the
namespace on it, while the rest comes back. The checkpoint is then re-taken from the live
target at the next mutation, which does not have them: without care, one transient fault
at a restart would delete them from the configuration for good. So the supervisor keeps
what failed (:func:`missing`) and every checkpoint adds it back (:func:`overlay`), until
the live target has an object by that name again (it came back, or the user made a new
one) or its subsystem is gone (the user deleted it): then the live target wins. Entries
carried verbatim (``TargetState.opaque``) are kept the same way, until the live target
has the same entry.

Pure functions over the state model.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nvmf_phoenix.recovery.diff import opaque_label

from nvmf_phoenix.model import Subsystem, TargetState

K = TypeVar("K")
V = TypeVar("V")


@dataclass
class Carried:
    """Whole objects the live target lacks, and parts of subsystems it does have."""

    whole: TargetState = field(default_factory=TargetState)   # keys, bdevs, transports,
    parts: dict[str, Subsystem] = field(default_factory=dict)  # subsystems; ns/hosts/listeners

    def __bool__(self) -> bool:
        w = self.whole
        return bool(w.keys or w.bdevs or w.transports or w.subsystems or self.parts or
                    w.opaque)

    def describe(self) -> list[str]:
        w = self.whole
        out = [f"key {k}" for k in w.keys] + [f"bdev {b}" for b in w.bdevs]
        out += [f"opaque {opaque_label(e)}" for e in w.opaque or []]
        out += [f"transport {t}" for t in w.transports]
        out += [f"subsystem {n}" for n in w.subsystems]
        for nqn, p in self.parts.items():
            out += [f"{nqn} namespace {n}" for n in p.namespaces]
            out += [f"{nqn} host {h}" for h in p.hosts]
            out += [f"{nqn} listener {a.traddr}:{a.trsvcid}" for a in p.listeners]
        return out


def missing(desired: TargetState, live: TargetState) -> Carried:
    """What ``desired`` has and ``live`` lacks."""
    out = Carried()
    w = out.whole
    w.keys = {k: v for k, v in desired.keys.items() if k not in live.keys}
    w.bdevs = {k: v for k, v in desired.bdevs.items() if k not in live.bdevs}
    w.transports = {k: v for k, v in desired.transports.items() if k not in live.transports}
    if desired.opaque is not None:
        w.opaque = [copy.deepcopy(e) for e in desired.opaque if not _has(live, e)]
    for nqn, sub in desired.subsystems.items():
        have = live.subsystems.get(nqn)
        if have is None:
            w.subsystems[nqn] = copy.deepcopy(sub)
            continue
        part = _shell(sub)
        part.namespaces = {n: ns for n, ns in sub.namespaces.items()
                           if n not in have.namespaces}
        part.hosts = {h: v for h, v in sub.hosts.items() if h not in have.hosts}
        part.listeners = {a: v for a, v in sub.listeners.items() if a not in have.listeners}
        if part.namespaces or part.hosts or part.listeners:
            out.parts[nqn] = copy.deepcopy(part)
    return out


def overlay(live: TargetState, carried: Carried) -> tuple[TargetState, Carried]:
    """(``live`` plus what is still carried, what is still carried)."""
    st, still = copy.deepcopy(live), Carried()
    _fill(carried.whole.keys, st.keys, still.whole.keys)
    _fill(carried.whole.bdevs, st.bdevs, still.whole.bdevs)
    _fill(carried.whole.transports, st.transports, still.whole.transports)
    _fill(carried.whole.subsystems, st.subsystems, still.whole.subsystems)
    if carried.whole.opaque and st.opaque is not None:
        still.whole.opaque = [e for e in carried.whole.opaque if not _has(st, e)]
        st.opaque += still.whole.opaque
    for nqn, part in carried.parts.items():
        have = st.subsystems.get(nqn)
        if have is None:                              # its subsystem was deleted since
            continue
        left = _shell(part)
        for n, ns in part.namespaces.items():
            if n not in have.namespaces:
                have.namespaces[n] = left.namespaces[n] = ns
        for h, host in part.hosts.items():
            if h not in have.hosts:
                have.hosts[h] = left.hosts[h] = host
        for a, ls in part.listeners.items():
            if a not in have.listeners:
                have.listeners[a] = left.listeners[a] = ls
        if left.namespaces or left.hosts or left.listeners:
            still.parts[nqn] = left
    return st, still


def _has(st: TargetState, entry: dict[str, Any]) -> bool:
    """Whether ``st`` holds this opaque entry (same method, same params)."""
    return any(e["method"] == entry["method"] and e.get("params") == entry.get("params")
               for e in st.opaque or [])


def _fill(src: dict[K, V], dst: dict[K, V], keep: dict[K, V]) -> None:
    """Add to ``dst`` what it lacks from ``src`` (the live target has none by that name)."""
    for name, obj in src.items():
        if name not in dst:
            dst[name] = keep[name] = obj


def _shell(sub: Subsystem) -> Subsystem:
    """The subsystem without its namespaces, hosts and listeners."""
    return Subsystem(nqn=sub.nqn, subtype=sub.subtype, serial_number=sub.serial_number,
                     model_number=sub.model_number, max_namespaces=sub.max_namespaces,
                     min_cntlid=sub.min_cntlid, max_cntlid=sub.max_cntlid,
                     ana_reporting=sub.ana_reporting, allow_any_host=sub.allow_any_host)
