"""Capture a live target's state into the model, through JSON-RPC.

Parsing is pure (:func:`state_from_rpc` turns RPC answers into a TargetState) and the I/O
edge is small (:func:`capture`). Three RPCs pause a subsystem's admin queues while they run
(get_listeners, get_controllers, get_qpairs), so they are kept apart: configuration
capture reads listener ANA states only for subsystems with ANA reporting, and runtime
facts are read on demand (``capture_runtime``), never on every change.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from nvmf_phoenix.rpc.client import call_all
from nvmf_phoenix.rpc.methods import METHODS

from nvmf_phoenix.model import (
    DISCOVERY_NQN,
    Controller,
    ListenAddress,
    Listener,
    QPair,
    Runtime,
    TargetState,
)

log = logging.getLogger(__name__)

CONFIG_SUBSYSTEMS = ("keyring", "bdev", "nvmf")
# The target's option sections: a target may not have them (the embedded one has none).
OPTION_SUBSYSTEMS = ("scheduler", "iobuf", "sock", "accel")
# What capture reads, in the order nvmf_tgt's save_config lists these subsystems.
CAPTURED = ("scheduler", "keyring", "iobuf", "sock", "accel", "bdev", "nvmf")
_told: set[str] = set()   # methods already logged as carried without a model


def state_from_rpc(configs: dict[str, list[dict[str, Any]]],
                   listeners: dict[str, list[dict[str, Any]]] | None = None,
                   controllers: dict[str, list[dict[str, Any]]] | None = None,
                   qpairs: dict[str, list[dict[str, Any]]] | None = None,
                   captured_at: float = 0.0) -> TargetState:
    """Build a TargetState from framework_get_config answers (+ optional live facts).

    Entries no declaration models are kept verbatim (``TargetState.opaque``), so nothing
    the target holds is lost: restore replays them and diff compares them."""
    st = TargetState.empty()
    st.opaque = []
    names = [n for n in CAPTURED if n in configs] + [n for n in configs if n not in CAPTURED]
    for name in names:
        for entry in configs.get(name) or []:
            method, params = entry.get("method", ""), entry.get("params")
            if not apply_entry(st, method, params or {}):
                st.opaque.append({"subsystem": name, "method": method, "params": params})
    _tell_opaque({e["method"] for e in st.opaque})
    for nqn, entries in (listeners or {}).items():
        sub = st.subsystems.get(nqn)
        if sub is None:
            continue
        for addr, states in ana_states(entries).items():
            sub.listeners.setdefault(addr, Listener(address=addr)).ana_states = states
    st.runtime = runtime_from_rpc(controllers or {}, qpairs or {}, captured_at)
    return st


def ana_states(listeners: list[dict[str, Any]]) -> dict[ListenAddress, dict[int, str]]:
    """ANA state per group of each listener, from nvmf_subsystem_get_listeners."""
    return {ListenAddress.from_dict(e["address"]): {int(a["ana_group"]): a["ana_state"]
                                                    for a in e.get("ana_states", [])}
            for e in listeners}


def apply_entry(st: TargetState, method: str, p: dict[str, Any]) -> bool:
    """One framework_get_config entry (a creating call with the target's parameters)
    into ``st``, as the method's declaration puts it; False for an entry not modelled."""
    m = METHODS.get(method)
    if m is None or m.put is None:
        return False
    m.put(st, p)
    return True


def _tell_opaque(methods: set[str]) -> None:
    """Say once per method (per process) what is carried without being modelled."""
    new = sorted(methods - _told)
    if new:
        _told.update(new)
        log.info("carried verbatim, not modelled (replayed as they are on restore): %s",
                 ", ".join(new))


def runtime_from_rpc(controllers: dict[str, list[dict[str, Any]]],
                     qpairs: dict[str, list[dict[str, Any]]], captured_at: float) -> Runtime:
    rt = Runtime(captured_at=captured_at)
    for nqn, ctrls in controllers.items():
        rt.controllers += [Controller(nqn=nqn, cntlid=c["cntlid"], hostnqn=c["hostnqn"],
                                      hostid=c.get("hostid", ""),
                                      num_io_qpairs=c.get("num_io_qpairs", 0)) for c in ctrls]
    for nqn, qps in qpairs.items():
        rt.qpairs += [QPair(nqn=nqn, cntlid=q["cntlid"], qid=q["qid"], hostnqn=q["hostnqn"],
                            listen_address=ListenAddress.from_dict(q["listen_address"]),
                            peer_address=ListenAddress.from_dict(q["peer_address"])
                            if q.get("peer_address") else None,
                            state=q.get("state", "enabled")) for q in qps]
    return rt


def capture_config(client: Any) -> TargetState:
    """Configuration plus ANA states of ANA-reporting subsystems' listeners."""
    *answers, present = call_all(client, [("framework_get_config", {"name": n})
                                          for n in CONFIG_SUBSYSTEMS] +
                                 [("framework_get_subsystems", None)])
    configs = dict(zip(CONFIG_SUBSYSTEMS, answers, strict=True))
    have = {s.get("subsystem") for s in present}
    options = [n for n in OPTION_SUBSYSTEMS if n in have]   # the embedded target has none
    if options:
        got = call_all(client, [("framework_get_config", {"name": n}) for n in options])
        configs.update(zip(options, got, strict=True))
    st = state_from_rpc(configs)
    ana = [s.nqn for s in st.subsystems.values() if s.ana_reporting]
    if ana:
        got = call_all(client, [("nvmf_subsystem_get_listeners", {"nqn": n}) for n in ana])
        st = state_from_rpc(configs, dict(zip(ana, got, strict=True)))
    return st


def capture_runtime(client: Any, nqns: list[str], now: float | None = None) -> Runtime:
    """Who is connected: pauses each subsystem briefly, so call it sparingly."""
    nvm = [n for n in nqns if n != DISCOVERY_NQN]
    calls: list[tuple[str, dict[str, Any] | None]] = []
    for n in nvm:
        calls += [("nvmf_subsystem_get_controllers", {"nqn": n}),
                  ("nvmf_subsystem_get_qpairs", {"nqn": n})]
    got = call_all(client, calls)
    ctrls = {n: got[2 * i] for i, n in enumerate(nvm)}
    qps = {n: got[2 * i + 1] for i, n in enumerate(nvm)}
    return runtime_from_rpc(ctrls, qps, time.time() if now is None else now)


def capture(client: Any, runtime: bool = True) -> TargetState:
    st = capture_config(client)
    if runtime:
        st.runtime = capture_runtime(client, list(st.subsystems))
    return st

