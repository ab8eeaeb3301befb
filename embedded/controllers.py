"""The target's protocol engine: controllers, queue pairs, and reactions to config changes.

Still sans-I/O: the engine knows which queue pairs exist and which of them have bytes to
send or must be closed (``dirty``), and the I/O loop (embedded/io_loop.py) does the sending.
Config changes arrive as :class:`~nvmf_phoenix.embedded.config_store.Event` objects and turn into
asynchronous event notices, disconnects and a new discovery generation.
"""
from __future__ import annotations

import resource
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from nvmf_phoenix.embedded.config_store import Change, Event, TargetCore
from nvmf_phoenix.embedded.controller import AdminHandler, Controller
from nvmf_phoenix.wire import nvme

from nvmf_phoenix.model import (
    DISCOVERY_NQN,
    TRANSPORT_DEFAULTS,
    Kind,
    ListenAddress,
    QPair,
    Subsystem,
)
from nvmf_phoenix.model import Controller as ControllerFacts

if TYPE_CHECKING:
    from nvmf_phoenix.embedded.qpair import QueuePair


@dataclass
class TransportOptions:
    """The TCP transport's limits the data path uses, as SPDK names them
    (nvmf_create_transport); each defaults to SPDK's default (model.TRANSPORT_DEFAULTS)."""

    max_queue_depth: int = TRANSPORT_DEFAULTS["max_queue_depth"]
    max_io_qpairs_per_ctrlr: int = TRANSPORT_DEFAULTS["max_io_qpairs_per_ctrlr"]
    in_capsule_data_size: int = TRANSPORT_DEFAULTS["in_capsule_data_size"]
    max_io_size: int = TRANSPORT_DEFAULTS["max_io_size"]
    max_aq_depth: int = TRANSPORT_DEFAULTS["max_aq_depth"]
    c2h_success: bool = TRANSPORT_DEFAULTS["c2h_success"]

    @classmethod
    def from_core(cls, core: TargetCore) -> TransportOptions:
        tr = core.state.transports.get("TCP")
        opts = cls()
        if tr is not None:
            for f in fields(cls):
                if f.name in tr.options:
                    setattr(opts, f.name, type(getattr(opts, f.name))(tr.options[f.name]))
        return opts


@dataclass
class Stats:
    admin_qpairs: int = 0
    io_qpairs: int = 0
    completed_nvme_io: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    internal_errors: int = 0   # exceptions a queue pair contained (each closed its connection)


CONNECT_TIMEOUT = 10.0   # seconds from TCP connect to a successful Connect command
FD_RESERVE = 256         # descriptors kept for RPC clients, files, the journal


def connection_budget() -> int:
    """How many host connections fit in this process's descriptor limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, soft - FD_RESERVE) if soft != resource.RLIM_INFINITY else 1 << 20


@dataclass
class Engine:
    core: TargetCore
    controllers: dict[tuple[str, int], Controller] = field(default_factory=dict)
    qpairs: dict[int, QueuePair] = field(default_factory=dict)   # by connection id
    dirty: set[QueuePair] = field(default_factory=set)
    discovery_genctr: int = 0
    ana_chgcnt: int = 0
    stats: Stats = field(default_factory=Stats)
    # Against idle floods (neither SPDK nor the kernel target bound these): a connection
    # that has not completed Connect in connect_timeout is closed, and above
    # max_connections the oldest such connections make room. Connected queues are never
    # touched here (keep-alive governs them).
    connect_timeout: float = CONNECT_TIMEOUT
    max_connections: int = field(default_factory=connection_budget)
    _arrived: dict[int, float] = field(default_factory=dict)   # unassociated: first seen
    _next_reap: float = 0.0

    def __post_init__(self) -> None:
        self.opts = TransportOptions.from_core(self.core)
        self.admin = AdminHandler(self.core, self.opts.max_queue_depth - 1,
                                  self.opts.in_capsule_data_size, self.discovery_log,
                                  self.ana_log)

    def refresh_options(self) -> None:
        self.opts = TransportOptions.from_core(self.core)
        self.admin.mqes = self.opts.max_queue_depth - 1
        self.admin.icd_size = self.opts.in_capsule_data_size

    # -- controllers -------------------------------------------------------------------
    def create_controller(self, sub: Subsystem, hostnqn: str, hostid: str, kato_ms: int,
                          now: float) -> Controller | None:
        """Dynamic controller model: lowest free cntlid in the subsystem's range."""
        used = {cid for (nqn, cid) in self.controllers if nqn == sub.nqn}
        cntlid = next((c for c in range(sub.min_cntlid, sub.max_cntlid + 1)
                       if c not in used), None)
        if cntlid is None:
            return None
        ctrl = Controller(nqn=sub.nqn, cntlid=cntlid, hostnqn=hostnqn, hostid=hostid,
                          discovery=sub.is_discovery, kato_ms=kato_ms, last_seen=now)
        self.controllers[(sub.nqn, cntlid)] = ctrl
        return ctrl

    def destroy_controller(self, ctrl: Controller, reason: str) -> None:
        self.controllers.pop((ctrl.nqn, ctrl.cntlid), None)
        for qp in list(self.qpairs.values()):
            if qp.ctrl is ctrl:
                qp.close(reason)
                self.dirty.add(qp)

    def tick(self, now: float) -> None:
        """Enforce keep-alive (a controller silent for longer than KATO is torn down),
        and every half second the connect timeout and the connection budget."""
        for ctrl in list(self.controllers.values()):
            if ctrl.expired(now):
                self.destroy_controller(ctrl, f"keep-alive timeout ({ctrl.kato_ms} ms)")
        if now >= self._next_reap or len(self.qpairs) > self.max_connections:
            self._next_reap = now + 0.5
            self._reap(now)

    def _reap(self, now: float) -> None:
        waiting = []
        for conn_id, qp in self.qpairs.items():
            if qp.ctrl is None and not qp.closing:
                waiting.append((self._arrived.setdefault(conn_id, now), conn_id, qp))
        self._arrived = {c: t for t, c, _ in waiting}
        excess = sum(1 for q in self.qpairs.values() if not q.closing) - self.max_connections
        for i, (since, _, qp) in enumerate(sorted(waiting, key=lambda w: w[1])):
            if i < excess:
                qp.close(f"over {self.max_connections} connections: the oldest without "
                         "a Connect makes room")
            elif now - since > self.connect_timeout:
                qp.close(f"no Connect within {self.connect_timeout:.0f} s")
            else:
                continue
            self.dirty.add(qp)

    def host_allowed(self, sub: Subsystem, hostnqn: str) -> bool:
        return sub.allow_any_host or hostnqn in sub.hosts

    # -- logs --------------------------------------------------------------------------
    def discovery_log(self, ctrl: Controller) -> bytes:
        """One entry per (listener, subsystem) the host may see, own discovery first."""
        entries = []
        disc = self.core.state.subsystems.get(DISCOVERY_NQN)
        ports = _port_ids(self.core)
        if disc is not None:
            for addr in disc.listeners:
                entries.append(_entry(nvme.SUBTYPE_CURRENT_DISCOVERY, ports[addr], addr,
                                      DISCOVERY_NQN))
        for sub in self.core.state.subsystems.values():
            if sub.is_discovery or not self.host_allowed(sub, ctrl.hostnqn):
                continue
            for addr in sub.listeners:
                entries.append(_entry(nvme.SUBTYPE_NVME, ports[addr], addr, sub.nqn))
        for ref in self.core.state.referrals:
            # SPDK (nvmf.c): a referral to a discovery service is subtype 1, one to an NVM
            # subsystem subtype 2; its port id is never set (0).
            subtype = nvme.SUBTYPE_REFERRAL if ref.subnqn == DISCOVERY_NQN else nvme.SUBTYPE_NVME
            entries.append(_entry(subtype, 0, ref.address, ref.subnqn))
        return nvme.discovery_log(self.discovery_genctr, entries)

    def ana_log(self, ctrl: Controller, rgo: bool) -> bytes:
        sub = self.core.state.subsystems[ctrl.nqn]
        listener = next((qp.listen for qp in self.qpairs.values() if qp.ctrl is ctrl), None)
        states = sub.listeners[listener].ana_states if listener in sub.listeners else {}
        groups = []
        for grp in sorted({ns.anagrpid or ns.nsid for ns in sub.namespaces.values()}):
            nsids = sorted(n.nsid for n in sub.namespaces.values()
                           if (n.anagrpid or n.nsid) == grp)
            code = nvme.ANA_STATE_CODES.get(states.get(grp, "optimized"), 1)
            groups.append((grp, code, nsids))
        return nvme.ana_log(self.ana_chgcnt, groups, rgo)

    # -- configuration events ----------------------------------------------------------
    def apply(self, ev: Event) -> None:
        """React to a configuration change (called on the I/O loop's thread)."""
        if ev.obj in (Kind.SUBSYSTEM, Kind.LISTENER, Kind.HOST, Kind.ALLOW_ANY_HOST,
                      Kind.REFERRAL):     # what the discovery log shows, or to whom
            self.discovery_genctr += 1
            for ctrl in self.controllers.values():
                if ctrl.discovery:
                    self._notify(ctrl, nvme.aer_dw0(0xF0, nvme.LOG_DISCOVERY), 0)
        if ev.change == Change.REMOVED and ev.obj in (Kind.SUBSYSTEM, Kind.HOST,
                                                      Kind.LISTENER):
            self._disconnect_matching(ev)
        elif ev.obj in (Kind.NS, Kind.NS_HOST):
            for ctrl in self._seeing_change(ev):
                ctrl.changed_nsids.add(ev.nsid or 0)
                self._notify(ctrl, nvme.aer_dw0(nvme.AER_NOTICE_NS_ATTR_CHANGED,
                                                nvme.LOG_CHANGED_NS), nvme.AEC_NS_ATTR)
        elif ev.obj == Kind.ANA:
            self.ana_chgcnt += 1
            for ctrl in self._controllers_of(ev.nqn):
                self._notify(ctrl, nvme.aer_dw0(nvme.AER_NOTICE_ANA_CHANGE, nvme.LOG_ANA),
                             nvme.AEC_ANA_CHANGE)
        elif ev.obj == Kind.TRANSPORT:
            self.refresh_options()

    def _controllers_of(self, nqn: str | None) -> list[Controller]:
        return [c for (n, _), c in self.controllers.items() if n == nqn]

    def _seeing_change(self, ev: Event) -> list[Controller]:
        """Whose view of a namespace changed (SPDK notifies only those): a visibility
        change, the named host's controllers; a namespace there, those that see it."""
        ctrls = self._controllers_of(ev.nqn)
        if ev.obj == Kind.NS_HOST:
            return [c for c in ctrls if c.hostnqn == ev.host]
        sub = self.core.state.subsystems.get(ev.nqn or "")
        ns = sub.namespaces.get(ev.nsid or 0) if sub is not None else None
        return [c for c in ctrls if ns is None or ns.visible_to(c.hostnqn)]

    def _disconnect_matching(self, ev: Event) -> None:
        for ctrl in self._controllers_of(ev.nqn):
            if ev.obj == Kind.HOST and ctrl.hostnqn != ev.host:
                continue
            if ev.obj == Kind.LISTENER:
                for qp in list(self.qpairs.values()):
                    if qp.ctrl is ctrl and qp.listen == ev.address:
                        qp.close("listener removed")
                        self.dirty.add(qp)
                continue
            self.destroy_controller(ctrl, f"{ev.obj} {ev.change}")

    def _notify(self, ctrl: Controller, dw0: int, mask: int) -> None:
        if mask and not ctrl.aen_enabled(mask):
            return
        if ctrl.discovery and not ctrl.features.get(nvme.FEAT_ASYNC_EVENT, 0) & (1 << 31):
            return
        ctrl.post_event(dw0)
        self.flush_aers(ctrl)

    def flush_aers(self, ctrl: Controller) -> None:
        admin = next((qp for qp in self.qpairs.values() if qp.ctrl is ctrl and qp.qid == 0),
                     None)
        if admin is None:
            return
        for cid, dw0 in ctrl.take_aer_completions():
            admin.complete(cid, nvme.SC_SUCCESS, dw0)
            self.dirty.add(admin)

    # -- runtime facts for RPC ---------------------------------------------------------
    def controller_facts(self, nqn: str) -> list[ControllerFacts]:
        # SPDK's "num_io_qpairs" counts every connected queue of the controller, the admin
        # queue included (the bits set in ctrlr->qpair_mask): admin + 2 I/O queues is 3.
        return [ControllerFacts(nqn=c.nqn, cntlid=c.cntlid, hostnqn=c.hostnqn,
                                hostid=c.hostid,
                                num_io_qpairs=sum(qp.ctrl is c for qp in self.qpairs.values()))
                for c in self._controllers_of(nqn)]

    def qpair_facts(self, nqn: str) -> list[QPair]:
        return [QPair(nqn=nqn, cntlid=qp.ctrl.cntlid, qid=qp.qid, hostnqn=qp.ctrl.hostnqn,
                      listen_address=qp.listen, peer_address=qp.peer, state="enabled")
                for qp in self.qpairs.values() if qp.ctrl is not None and qp.ctrl.nqn == nqn]


def _port_ids(core: TargetCore) -> dict[ListenAddress, int]:
    """Stable port ids: one per distinct listen address, in order of first appearance."""
    ids: dict[ListenAddress, int] = {}
    for sub in core.state.subsystems.values():
        for addr in sub.listeners:
            ids.setdefault(addr, len(ids))
    return ids


def _entry(subtype: int, portid: int, addr: ListenAddress, subnqn: str) -> bytes:
    return nvme.discovery_entry(subtype=subtype, portid=portid, trsvcid=addr.trsvcid,
                                subnqn=subnqn, traddr=addr.traddr, adrfam=addr.adrfam)
