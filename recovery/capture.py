"""Capture a live target's state into the model, through JSON-RPC.

Parsing is pure (:func:`state_from_rpc` turns RPC answers into a TargetState) and the I/O
edge is small (:func:`capture`). Three RPCs pause a subsystem's admin queues while they run
(get_listeners, get_controllers, get_qpairs), so they are kept apart: configuration
capture reads listener ANA states only for subsystems with ANA reporting, and runtime
facts are read by :class:`Capturer` on a slow cadence, never on every change.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from nvmf_phoenix.model import (
    DISCOVERY_NQN,
    Bdev,
    Controller,
    Host,
    Key,
    ListenAddress,
    Listener,
    Namespace,
    QPair,
    Referral,
    Runtime,
    Subsystem,
    TargetState,
    Transport,
)

CONFIG_SUBSYSTEMS = ("keyring", "bdev", "nvmf")
MALLOC_CORE = ("name", "num_blocks", "block_size", "uuid")


class Caller(Protocol):
    def call(self, method: str, params: dict[str, Any] | None = None) -> Any: ...


def call_all(client: Any, calls: list[tuple[str, dict[str, Any] | None]]) -> list[Any]:
    """Pipeline when the client can, else one by one; errors are raised."""
    if hasattr(client, "pipeline"):
        outcomes = client.pipeline(calls)
        for o in outcomes:
            if isinstance(o, Exception):
                raise o
        return list(outcomes)
    return [client.call(m, p) for m, p in calls]


def state_from_rpc(configs: dict[str, list[dict[str, Any]]],
                   listeners: dict[str, list[dict[str, Any]]] | None = None,
                   controllers: dict[str, list[dict[str, Any]]] | None = None,
                   qpairs: dict[str, list[dict[str, Any]]] | None = None,
                   captured_at: float = 0.0) -> TargetState:
    """Build a TargetState from framework_get_config answers (+ optional live facts)."""
    st = TargetState()
    st.subsystems[DISCOVERY_NQN] = Subsystem(nqn=DISCOVERY_NQN, subtype="Discovery",
                                             allow_any_host=True, max_namespaces=0)
    for name in CONFIG_SUBSYSTEMS:
        for entry in configs.get(name) or []:
            apply_entry(st, entry.get("method", ""), entry.get("params") or {})
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


def apply_entry(st: TargetState, method: str, p: dict[str, Any]) -> None:
    """One framework_get_config entry (a creating call with the target's parameters)
    into ``st``; the journal's changes reuse it for calls of the same shape."""
    if method == "keyring_file_add_key":
        st.keys[p["name"]] = Key(name=p["name"], path=p["path"])
    elif method == "bdev_malloc_create":
        st.bdevs[p["name"]] = Bdev(name=p["name"], kind="malloc", uuid=p.get("uuid", ""),
                                   block_size=p["block_size"], num_blocks=p["num_blocks"],
                                   params={k: v for k, v in p.items() if k not in MALLOC_CORE})
    elif method == "bdev_aio_create":
        st.bdevs[p["name"]] = Bdev(name=p["name"], kind="aio", uuid=p.get("uuid", ""),
                                   block_size=p.get("block_size", 512), num_blocks=0,
                                   filename=p["filename"],
                                   params={k: p[k] for k in ("readonly", "fallocate")
                                           if k in p})
    elif method == "nvmf_set_config":
        st.startup.nvmf_config = dict(p)
    elif method == "nvmf_set_max_subsystems":
        st.startup.max_subsystems = p.get("max_subsystems")
    elif method == "nvmf_set_crdt":
        st.startup.crdt = dict(p)
    elif method == "nvmf_create_transport":
        opts = {k: v for k, v in p.items() if k != "trtype"}
        st.transports[p["trtype"].upper()] = Transport(trtype=p["trtype"].upper(),
                                                       options=opts)
    elif method == "nvmf_create_subsystem":
        st.subsystems[p["nqn"]] = Subsystem(
            nqn=p["nqn"], serial_number=p.get("serial_number", "00000000000000000000"),
            model_number=p.get("model_number", "SPDK bdev Controller"),
            max_namespaces=p.get("max_namespaces", 32), min_cntlid=p.get("min_cntlid", 1),
            max_cntlid=p.get("max_cntlid", 0xFFEF), ana_reporting=p.get("ana_reporting", False),
            allow_any_host=p.get("allow_any_host", False))
    elif method == "nvmf_subsystem_add_host":
        sub = st.subsystems.get(p["nqn"])
        if sub is not None:
            sub.hosts[p["host"]] = Host(nqn=p["host"], psk=p.get("psk"),
                                        dhchap_key=p.get("dhchap_key"),
                                        dhchap_ctrlr_key=p.get("dhchap_ctrlr_key"))
    elif method == "nvmf_subsystem_add_ns":
        sub = st.subsystems.get(p["nqn"])
        if sub is not None:
            ns = Namespace.from_dict(p["namespace"])
            sub.namespaces[ns.nsid] = ns
    elif method == "nvmf_subsystem_add_listener":
        sub = st.subsystems.get(p["nqn"])
        if sub is not None:
            addr = ListenAddress.from_dict(p["listen_address"])
            sub.listeners[addr] = Listener(address=addr,
                                           secure_channel=p.get("secure_channel", False))
    elif method == "nvmf_discovery_add_referral":
        st.referrals.append(Referral.from_dict(p))


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
    answers = call_all(client, [("framework_get_config", {"name": n})
                                 for n in CONFIG_SUBSYSTEMS])
    configs = dict(zip(CONFIG_SUBSYSTEMS, answers, strict=True))
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


class Capturer:
    """Steady-state capture: config on demand, runtime facts at most every ``period``."""

    def __init__(self, client: Any, period: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.period = period
        self.clock = clock
        self._last_runtime = float("-inf")
        self.runtime = Runtime()

    def capture(self, config_changed: bool = True) -> TargetState:
        st = capture_config(self.client)
        now = self.clock()
        if now - self._last_runtime >= self.period:
            self.runtime = capture_runtime(self.client, list(st.subsystems))
            self._last_runtime = now
        st.runtime = self.runtime
        return st
