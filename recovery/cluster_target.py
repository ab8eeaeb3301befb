"""A cluster node's own target: started, given the view of its role, watched,
restarted; fenced in one round trip; the floating address put on and taken off around
the listeners on it.

:class:`NodeTarget` is the half of a cluster node (:class:`~.cluster.ClusterNode`) that
talks to its local target and to the network through :class:`FloatingAddress`, knowing
nothing of etcd: the node decides the role (owner, standby, fenced) from its lease and
the owner key, this half carries it out. The node fills in the two things only it knows:
where a restarted target's configuration comes from (:meth:`NodeTarget._restore_state`)
and what the target's death means for the group (:meth:`NodeTarget._target_died`).

Order around the floating address: an owner's view puts the address on first (announced,
so hosts' neighbour caches follow), then its listeners on it; any other role's view
takes the listeners away (a fence: makes them inaccessible) first, then the address.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from nvmf_phoenix.recovery.capture import capture_config
from nvmf_phoenix.recovery.deathwatch import DeathWatch
from nvmf_phoenix.recovery.executor import execute
from nvmf_phoenix.recovery.member import Member, Proc
from nvmf_phoenix.recovery.pair_view import (
    ACTIVE,
    FENCED,
    STANDBY,
    ClusterLayout,
    NodePlace,
    fence_calls,
    floating_calls,
    member_view,
    referral_calls,
    to_logical,
)
from nvmf_phoenix.recovery.planner import plan
from nvmf_phoenix.recovery.restore import restore
from nvmf_phoenix.recovery.store import CheckpointStore
from nvmf_phoenix.rpc import RpcClient, RpcError
from nvmf_phoenix.rpc.client import outcomes

from nvmf_phoenix.model import TargetState

log = logging.getLogger(__name__)

OWNER = "owner"
ROLES = {OWNER: ACTIVE, STANDBY: STANDBY, FENCED: FENCED}   # node role -> view role


class FloatingAddress(Protocol):
    """The address hosts connect to when they know one only; the owner alone holds it.
    Recovery never touches the network itself: the command line fills this in (with
    pyroute2, :mod:`nvmf_phoenix.plugin.netplumb`). Both raise OSError on failure."""

    address: str

    def take(self) -> None:
        """Put the address on this node's interface and announce it (gratuitous ARP),
        also when it is there already."""

    def give_up(self) -> None:
        """Take the address off this node's interface (nothing if it is not there)."""


@dataclass
class ClusterStatus:
    state: str = "starting"       # starting, ready, restarting, stopped
    role: str = STANDBY
    generation: int = 0           # bumped on every role change and target restart
    takeovers: int = 0
    last_takeover_s: float = 0.0  # owner key seen absent -> our listeners optimized
    fences: int = 0
    last_fence_s: float = 0.0     # fence decided -> every listener inaccessible
    restarts: int = 0
    resigned: int = 0
    last_error: str = ""


class NodeTarget:
    """Node ``node``'s target (``member``) placed by ``layout``; ``fenced()`` says
    whether the node's lease clock ran out (its target must then offer no path)."""

    layout: ClusterLayout       # replaced whenever the live nodes change

    def __init__(self, node: str, member: Member, layout: ClusterLayout,
                 store: CheckpointStore, fenced: Callable[[], bool],
                 floating: FloatingAddress | None = None, ping_interval: float = 0.5,
                 misses: int = 4) -> None:
        self.node, self.member, self.store = node, member, store
        self.layout = layout
        self._fenced = fenced
        self.floating = floating
        self.holds_floating = False
        self.ping_interval, self.misses = ping_interval, misses
        self.status = ClusterStatus()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.RLock()      # role and the local target's configuration
        # A killed target's connections end at the kill: hosts move to a peer sooner.
        self.deathwatch = DeathWatch()

    @property
    def role(self) -> str:
        return self.status.role

    # -- what the node fills in ----------------------------------------------------------
    def _restore_state(self) -> TargetState | None:
        """The configuration a restarted target is given (None: the local checkpoint)."""
        return None

    def _target_died(self) -> None:
        """The target just died (the node's role may change before it restarts)."""

    # -- the view of a role --------------------------------------------------------------
    def _place(self, nodes: dict[str, NodePlace]) -> bool:
        """The live nodes are ``nodes`` (this one included): True if that changed the
        layout. Addresses of nodes gone stay known (their referrals are the cluster's)."""
        if nodes == self.layout.nodes:
            return False
        known = self.layout.known | {p.address for p in self.layout.nodes.values()}
        mine = nodes[self.node].address
        self.layout = ClusterLayout(nodes, frozenset(known - {mine}), self.layout.floating)
        return True

    def _bring_up(self, logical: TargetState) -> None:
        """Start the local target (or adopt the one answering its socket) and give it the
        standby view of ``logical``, pruning whatever else it holds."""
        m = self.member
        if os.path.exists(m.sock) and m.alive():
            m.adopt()
        else:
            m.launch(self._stop).close()
        self.store.save(logical, durable=False)
        # A target restarted while fenced comes back fenced: it must not offer a path.
        desired = self._view(logical, FENCED if self._fenced() else STANDBY)
        with m.client() as c:
            report = restore(c, desired, prune=True)
        if not report.ok:
            raise RpcError(-32603, "restore incomplete: " + "; ".join(
                [str(f) for f in report.execution.failures] + report.plan.conflicts +
                report.differences)[:2000])
        m.applied, m.state = desired, "ready"
        if m.proc is not None:
            self.deathwatch.watch(m.proc.pid)
            threading.Thread(target=self._reap, args=(m.proc,), name="cluster-reaper",
                             daemon=True).start()

    def _view(self, logical: TargetState, role: str) -> TargetState:
        return member_view(logical, self.layout, self.node, ROLES[role])

    def _replan(self, role: str) -> None:
        """(Caller holds the lock.) The local target's view for ``role`` of the
        configuration it holds now: only what the role changes (ANA states, referrals,
        listeners on the floating address) is sent. Not planned from the last saved
        state: a configuration call may be under way in the front (its lock is not
        ours), and replanning from the state saved before it would undo it on the
        target, and the front's next whole capture would commit the undone state to etcd
        (acknowledged changes lost; found by benchmarks/bench_cluster.py). The floating
        address is taken before an owner's listeners, given up after anyone else's went."""
        if role == OWNER:
            self._take_floating()
        try:
            if self.member.state != "ready":
                return
            with self.member.client() as c:
                live = capture_config(c)
                logical = to_logical(live, self.layout, self.node, self.store.current)
                desired = self._view(logical, role)
                report = execute(c, plan(desired, live, prune=True))
            self.member.applied = desired
            if role != FENCED and self._fenced():    # the clock ran out again meanwhile
                self.status.role = FENCED
                self._make_inaccessible(desired)
        finally:
            if role != OWNER or self._fenced():
                self._give_up_floating()
        if not report.ok:
            log.warning("node %s: %s view incomplete: %s", self.node, role,
                        "; ".join(str(f) for f in report.failures))

    def _sync_referrals(self, logical: TargetState) -> None:
        """(Caller holds the lock.) What a user's call does not give our target:
        referrals to the other nodes' discovery services, which follow the nodes, and
        the copies of its listeners on the floating address."""
        desired = self._view(logical, self.role)
        applied = self.member.applied
        calls = referral_calls(applied.referrals if applied is not None else [],
                               desired.referrals)
        if self.holds_floating:
            calls += floating_calls(applied, desired, self.layout.floating)
        self.member.applied = desired
        if calls and self.member.state == "ready":
            try:
                with self.member.client(2.0) as c:
                    outcomes(c, calls)
            except (RpcError, OSError) as exc:
                log.warning("node %s: referrals not updated: %s", self.node, exc)

    # -- fencing and the floating address ------------------------------------------------
    def _make_inaccessible(self, state: TargetState | None) -> None:
        """Every listener of ``state`` (in this node's addresses) inaccessible, in one
        pipelined round trip; a target that cannot be told is ended (it restarts
        fenced). Calls the target refuses (a listener gone meanwhile) are no matter."""
        calls = fence_calls(state)
        if not calls:
            return
        try:
            with RpcClient.connect(self.member.sock, timeout=2.0) as c:
                outcomes(c, calls)           # pipelined: one round trip for all
        except (RpcError, OSError) as exc:
            log.warning("node %s: fencing the target failed (%s): ending it", self.node, exc)
            self.member.end(planned=False)

    def _take_floating(self) -> None:
        """The floating address on this node, announced (raises OSError)."""
        if self.floating is not None:
            self.floating.take()
            self.holds_floating = True
            log.warning("node %s: holds floating address %s", self.node,
                        self.floating.address)

    def _give_up_floating(self) -> None:
        """The floating address off this node; a failure is logged (nothing else could
        be done about it here: fencing already made its listeners inaccessible)."""
        if self.floating is None:
            return
        try:
            self.floating.give_up()
        except OSError as exc:
            self.status.last_error = f"floating address not removed: {exc}"
            log.error("node %s: %s", self.node, self.status.last_error)
            return
        if self.holds_floating:
            log.warning("node %s: gave up floating address %s", self.node,
                        self.floating.address)
        self.holds_floating = False

    # -- death and restart ---------------------------------------------------------------
    def _reap(self, proc: Proc) -> None:
        proc.wait()
        died_at = time.monotonic()
        self.deathwatch.unwatch(proc.pid)
        if self._stop.is_set() or self.member.proc is not proc:
            return
        self.ready.clear()
        self.member.state = "down"
        log.warning("node %s: target exited (%s)", self.node, self.role)
        self._target_died()
        self._restart(died_at)

    def _restart(self, died_at: float) -> None:
        self.status.state = "restarting"
        while not self._stop.is_set():
            try:
                with self._lock:
                    logical = self._restore_state()
                    self.member.proc = None
                    self._bring_up(logical or self.store.current or TargetState.empty())
                break
            except (RpcError, OSError) as exc:
                self.status.last_error = f"restart failed: {exc}"
                log.error("node %s: %s", self.node, self.status.last_error)
                self.member.end(planned=False)
                self._stop.wait(0.5)
        self.status.restarts += 1
        self.status.generation += 1
        self.status.state = "ready"
        self.ready.set()
        log.info("node %s: target back as standby %.2f s after its death", self.node,
                 time.monotonic() - died_at)

    def _ping(self) -> None:
        missed = 0
        while not self._stop.wait(self.ping_interval):
            if self.member.state != "ready":
                missed = 0
                continue
            missed = 0 if self.member.alive(self.ping_interval) else missed + 1
            if missed >= self.misses:
                log.warning("node %s: target missed %d pings: killing it", self.node, missed)
                missed = 0
                self.member.end(planned=False)
