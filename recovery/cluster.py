"""One node of a cluster: its target serves one group as owner, standby, or fenced.

The hot-standby pair (:mod:`~.pair`) across nodes, with etcd as the shared truth. Every
node runs its own target on its own address, all of them serving the same namespaces from
shared storage, each with the identities of the group's configuration and its own cntlid
range (its slot) — the views of :mod:`~.pair_view` with a :class:`ClusterLayout`:

- **owner** (one per group, the owner key under its lease, :mod:`~.ownership`): listeners
  ``optimized``; the write-ahead front accepts configuration calls and commits each
  acknowledged one to etcd, fenced by the owner key, before answering.
- **standby**: listeners ``non_optimized``; follows the group's checkpoint in etcd and
  applies each new state to its target (only the difference, identities explicit, what
  is gone pruned); its front refuses configuration calls, naming the owner. When the owner
  key disappears (the owner's lease expired, or it resigned) it takes the group in one
  transaction, epoch + 1, and turns its listeners ``optimized``.
- **fenced**: the node could not renew its lease in time (it may be cut off from etcd and
  a peer may be about to take over): no configuration calls, and every listener
  ``inaccessible`` (an owner's at once; a standby's one lease TTL later, so an etcd
  election does not take paths away from hosts). When etcd answers again it is owner
  again if its lease survived and it still holds the owner key, else standby.

Standbys are safe next to the owner on shared storage because hosts decide: a Linux host
(and the project's multipath initiator) sends I/O to ``optimized`` paths only while one
exists, so a standby's ``non_optimized`` paths carry I/O exactly when the owner's paths
have failed. Two nodes are never both ``optimized`` for one group: a node turns
``optimized`` only holding the owner key, and fences before its lease (and so the key)
can expire.

When the owner's local target dies the node resigns at once (a peer takes over in one
etcd round trip instead of waiting for the target's restart) and comes back as standby.

Hosts that know one address only connect to the group's *floating* address
(:class:`~.cluster_target.FloatingAddress`): the owner holds it on its interface and its
target listens on it too. Taking over puts the address on first (announced, so hosts'
neighbour caches follow), then the listeners; whatever ends ownership (stepping down,
fencing, starting as standby) takes the listeners away (or makes them inaccessible)
first, then the address.

This module decides the role from etcd (lease, owner key, the group's checkpoint) and
serves the front; carrying a role out on the local target (its view, fencing it, the
floating address, its death and restart) is :class:`~.cluster_target.NodeTarget`'s.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

from nvmf_phoenix.persist.etcd import EtcdClient, EtcdError
from nvmf_phoenix.persist.etcd_keys import ClusterKeys, decode
from nvmf_phoenix.recovery.capture import capture_config
from nvmf_phoenix.recovery.cluster_target import OWNER, FloatingAddress, NodeTarget
from nvmf_phoenix.recovery.etcd_store import EtcdGroupStore, EtcdLoaded, EtcdStoreError, Fenced
from nvmf_phoenix.recovery.executor import execute
from nvmf_phoenix.recovery.front import Front
from nvmf_phoenix.recovery.member import Member
from nvmf_phoenix.recovery.ownership import DEFAULT_LEASE_TTL, NodeLease, Ownership
from nvmf_phoenix.recovery.pair_view import (
    FENCED,
    STANDBY,
    ClusterLayout,
    NodePlace,
    PairRefusal,
    for_member,
    to_logical,
)
from nvmf_phoenix.recovery.planner import plan
from nvmf_phoenix.recovery.store import lock_state_dir
from nvmf_phoenix.recovery.supervisor import checkpoint_store
from nvmf_phoenix.rpc import RpcError

from nvmf_phoenix.model import TargetState

log = logging.getLogger(__name__)


class ClusterNode(NodeTarget):
    """Node ``node`` (listening on ``address``) serving group ``group`` of the cluster
    at ``prefix`` in etcd; the local target runs ``target_cmd`` on ``target_sock``, users
    talk to ``public_sock``."""

    def __init__(self, client: EtcdClient, prefix: str, group: str, node: str,
                 address: str, target_cmd: list[str], target_sock: str, public_sock: str,
                 state_dir: str, lease_ttl: float = DEFAULT_LEASE_TTL,
                 ping_interval: float = 0.5, misses: int = 4,
                 floating: FloatingAddress | None = None,
                 standby_grace: float | None = None) -> None:
        self.client, self.group, self.address = client, group, address
        self.standby_grace = lease_ttl if standby_grace is None else standby_grace
        self._paths_fenced = False     # the listeners made inaccessible by a fence
        self.keys = ClusterKeys(prefix)
        self.state_dir = state_dir
        self.lease = NodeLease(client, self.keys, node, address, lease_ttl,
                               on_fence=self._fence, on_unfence=self._unfence,
                               on_rejoin=self._rejoin)
        super().__init__(node, Member(node, list(target_cmd), target_sock,
                                      os.path.join(state_dir, "target.log")),
                         ClusterLayout({node: NodePlace(0, address)},
                                       floating=floating.address if floating else None),
                         checkpoint_store(state_dir), lambda: self.lease.fenced,
                         floating, ping_interval, misses)
        self.etcd = EtcdGroupStore(client, self.keys.group(group))
        self.ownership = Ownership(client, self.keys.group(group), node, self.lease)
        self.etcd.fence = self.ownership.fence_compares
        self.owner: dict[str, Any] | None = None
        self.front = Front(public_sock, target_sock, self.store, self.ready,
                           control=self._control, generation=lambda: self.status.generation,
                           notice_s=max(1.0, ping_interval * 2))
        self.front.pair = self
        self._threads: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Register, bring the local target up as standby, serve; the follow loop then
        takes the group if nobody owns it (the first node of a cluster does)."""
        self._lock_fd: int | None = lock_state_dir(self.store.directory)
        self.lease.extra.update(group=self.group, role=STANDBY)
        self.lease.start()
        self._refresh_nodes()
        loaded = self.etcd.load()
        self.owner = loaded.owner
        logical = loaded.state or self.store.load().state or TargetState.empty()
        self._bring_up(logical)
        self._give_up_floating()      # a standby's target has no listener on it now
        self.status.state = "ready"
        self.ready.set()
        self.front.start()
        for name, fn in (("cluster-follow", self._follow_loop),
                         ("cluster-nodes", self._nodes_loop), ("cluster-ping", self._ping)):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """A planned stop: resign (a peer takes over now), end the lease, the target."""
        self._stop.set()
        self.front.close()
        with contextlib.suppress(EtcdError):
            self.ownership.resign()
        self.lease.stop(revoke=True)
        with self._lock:
            self.member.end(planned=True)
            self._give_up_floating()
        for t in self._threads:
            t.join(timeout=5)
        self.deathwatch.close()
        self.status.state = "stopped"
        self.store.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _set_role(self, role: str) -> None:
        (log.warning if role != self.role else log.info)(
            "node %s: %s -> %s (group %s)", self.node, self.role, role, self.group)
        self.status.role = role
        self.status.generation += 1
        self._paths_fenced = False
        floating = self.floating.address if self.floating and role == OWNER else None
        try:          # what `cluster status` shows: who stands by, who holds the address
            self.lease.register(group=self.group, role=role, floating=floating)
        except EtcdError as exc:
            log.info("node %s: role not registered: %s", self.node, exc)

    # -- the state machine: follow, take over --------------------------------------------
    def _follow_loop(self) -> None:
        revision = 0
        while not self._stop.is_set():
            try:
                if self.role == OWNER:
                    self._check_owner()
                    self._stop.wait(min(1.0, self.lease.ttl / 4))
                    revision = 0
                    continue
                if self.role == FENCED or self.member.state != "ready":
                    self._stop.wait(0.05)
                    revision = 0
                    continue
                got = self.etcd.load() if not revision else \
                    self.etcd.follow(revision, timeout=1.0)
                if got is None:         # nothing new (follow looks once at the end)
                    continue
                revision = got.revision
                self.owner = got.owner
                if got.owner is None:
                    self._take_over()
                else:
                    self._apply_followed(got)
            except (EtcdError, EtcdStoreError, RpcError, OSError) as exc:
                self.status.last_error = f"follow: {exc}"
                log.warning("node %s: %s", self.node, self.status.last_error)
                revision = 0
                self._stop.wait(0.2)

    def _apply_followed(self, loaded: EtcdLoaded) -> None:
        """As standby: the new state's view, planned against what the target was given."""
        with self._lock:
            if self.role != STANDBY or self.member.state != "ready":
                return
            logical = loaded.state or TargetState.empty()
            desired = self._view(logical, STANDBY)
            try:
                with self.member.client() as c:
                    # Against what it was given; after a failure, against what it holds.
                    had = self.member.applied or capture_config(c)
                    report = execute(c, plan(desired, had, prune=True))
                if not report.ok:
                    raise RpcError(-32603, "standby apply: " + "; ".join(
                        str(f) for f in report.failures))
            except (RpcError, OSError):
                self.member.applied = None
                raise
            self.member.applied = desired
            if self.role == FENCED and self._paths_fenced:   # fenced while this ran:
                self._make_inaccessible(desired)                # undo what it set
            if logical != self.store.current:
                self.store.save(logical, durable=False)

    def _take_over(self) -> None:
        """The group has no owner: take it in one transaction; if we won, serve it."""
        seen = time.monotonic()
        with self._lock:
            if self.role != STANDBY or self.member.state != "ready" or self.lease.fenced:
                return
            if not self.ownership.try_acquire():
                return
            try:
                loaded = self.etcd.load()
                logical = loaded.state
                if logical is None:        # a new cluster: our checkpoint, or nothing
                    logical = self.store.current or TargetState.empty()
                    self.etcd.commit_state(logical)
                # The front checkpoints from it as soon as we are owner (etcd is the
                # durable copy: no fsync on the way to optimized).
                self.store.save(logical, durable=False)
                desired = self._view(logical, OWNER)
                self._take_floating()      # the address first: listeners on it can bind
                with self.member.client() as c:
                    # Against what it holds, not what it was given: whatever is served
                    # optimized from now on must be exactly the committed state.
                    report = execute(c, plan(desired, capture_config(c), prune=True))
                if not report.ok:
                    raise RpcError(-32603, "; ".join(str(f) for f in report.failures))
            except (EtcdError, EtcdStoreError, RpcError, OSError) as exc:
                log.warning("node %s: took group %s but cannot serve it (%s): resigning",
                            self.node, self.group, exc)
                with contextlib.suppress(EtcdError):
                    self.ownership.resign()
                self._give_up_floating()
                raise
            self.member.applied = desired
            self.owner = {"node": self.node, "epoch": self.ownership.epoch}
            self.status.takeovers += 1
            self.status.last_takeover_s = time.monotonic() - seen
            if self.lease.fenced:         # fenced meanwhile: unfencing makes us owner
                self._make_inaccessible(desired)
                self._give_up_floating()
                return
            self._set_role(OWNER)
        log.warning("node %s: owner of group %s at epoch %d, optimized %.1f ms after the "
                    "owner key was seen gone", self.node, self.group, self.ownership.epoch,
                    self.status.last_takeover_s * 1e3)

    def _check_owner(self) -> None:
        """As owner: etcd still says so (else someone removed our key: step down)."""
        if self.lease.fenced or self.ownership.still_owner():
            return
        log.warning("node %s: etcd no longer names us owner of group %s", self.node,
                    self.group)
        self._step_down(STANDBY)

    def _step_down(self, role: str) -> None:
        """Owner no more: the view for ``role``; the follow loop takes it from there."""
        with self._lock:
            self.ownership.lost()
            self._set_role(role)
            self._replan(role)

    # -- fencing -------------------------------------------------------------------------
    def _fence(self) -> None:
        """The lease clock ran out. An owner's listeners go inaccessible now, before
        anything else (no lock taken: whatever holds it may be waiting on etcd). A
        standby's stay non_optimized for one more lease TTL: an etcd leader election
        (the usual reason for a late renewal, and the dead node's member is often the
        leader) must not take away the paths hosts are failing over to at that moment.
        Its configuration is then at most that much behind; longer, it goes too."""
        was = self.status.role
        self.status.role = FENCED
        self.status.generation += 1
        self.status.fences += 1
        if was == STANDBY and self.standby_grace > 0:
            log.warning("node %s fenced as standby: paths stay non_optimized for %.1f s "
                        "unless etcd answers", self.node, self.standby_grace)
            timer = threading.Timer(self.standby_grace, self._fence_paths,
                                    args=(self.status.generation,))
            timer.daemon = True
            timer.start()
            return
        self._fence_paths(self.status.generation)

    def _fence_paths(self, generation: int) -> None:
        """Every listener inaccessible, then the floating address gone; nothing if the
        node was unfenced (or fenced anew) since ``generation``."""
        if self._stop.is_set() or self.status.role != FENCED \
                or self.status.generation != generation:
            return
        start = time.monotonic()
        self._paths_fenced = True
        self._make_inaccessible(self.member.applied)
        self.status.last_fence_s = time.monotonic() - start
        self._give_up_floating()            # after its listeners went inaccessible
        log.warning("node %s fenced: listeners inaccessible in %.1f ms", self.node,
                    self.status.last_fence_s * 1e3)
        # A listener added since the view was last given: a second pass over the live state.
        with contextlib.suppress(RpcError, OSError), self.member.client(2.0) as c:
            self._make_inaccessible(capture_config(c))

    def _unfence(self) -> None:
        """Our lease renewed again: owner again if etcd still names us, else standby."""
        with self._lock:
            try:
                owner = self.ownership.still_owner()
            except EtcdError:
                owner = False
            if not owner:
                self.ownership.lost()
            role = OWNER if owner else STANDBY
            self._set_role(role)
            with contextlib.suppress(RpcError, OSError):
                self._replan(role)

    def _rejoin(self) -> None:
        """Our lease expired while we were cut off: whatever we owned is gone."""
        with self._lock:
            self.ownership.lost()
            self._set_role(STANDBY)
            with contextlib.suppress(RpcError, OSError):
                self._replan(STANDBY)

    # -- the front's hooks (PairHooks) ----------------------------------------------------
    def for_active(self, method: str, params: Any) -> Any:
        if self.role != OWNER:
            raise RpcError(-1, f"Operation not permitted: {self.refusal()}", method)
        try:
            return for_member(method, params, self.layout, self.node)
        except PairRefusal as exc:
            raise RpcError(-1, f"Operation not permitted: {exc}", method) from None

    def refusal(self) -> str:
        if self.role == FENCED:
            return (f"node {self.node} is fenced for group {self.group}: it could not "
                    "renew its lease in etcd in time, serves no path and takes no "
                    "configuration until etcd answers again (another node may own the "
                    "group by then)")
        owner = (self.owner or {}).get("node")
        place = self.layout.nodes.get(owner) if owner else None
        where = f"node {owner} at {place.address if place else 'an unknown address'}" \
            if owner else "no node (a takeover is under way)"
        return (f"node {self.node} is {self.role} for group {self.group}: send "
                f"configuration calls to the owner, {where}")

    def to_logical(self, live: TargetState) -> TargetState:
        return to_logical(live, self.layout, self.node, self.store.current)

    def mirror(self) -> None:
        """After an acknowledged change, before the user's answer: commit it to etcd
        (fenced by our owner key), then give our target its referrals."""
        state = self.store.current or TargetState.empty()
        try:
            self.etcd.commit_as_change(state)
        except Fenced as exc:
            self._step_down(STANDBY)
            raise RpcError(-1, f"not committed: {exc}") from None
        except EtcdStoreError as exc:
            raise RpcError(-32603, f"not committed to etcd: {exc}") from None
        if self.role != OWNER:
            # Fenced while the call ran, but the commit above carried our owner compare
            # and succeeded: the change is in the group's checkpoint (a peer taking over
            # loads it), so it is acknowledged; refusing it would tell the user a change
            # was not made that every later owner serves.
            self._make_inaccessible(self._view(state, FENCED))
            return
        with self._lock:
            self._sync_referrals(state)

    # -- the local target's death (NodeTarget's hooks) ------------------------------------
    def _target_died(self) -> None:
        if self.role == OWNER:
            # A peer's standby takes over in one round trip; waiting for our restart
            # would leave hosts on non_optimized paths the whole time. The floating
            # address goes first (its listeners died with the target): the peer's
            # announcement must be the last word on it.
            self._give_up_floating()
            with contextlib.suppress(EtcdError):
                self.ownership.resign()
            self.status.resigned += 1
            self._step_down(STANDBY)

    def _restore_state(self) -> TargetState | None:
        try:
            return self.etcd.load().state
        except (EtcdError, EtcdStoreError) as exc:    # fenced, surely
            log.warning("node %s: restoring from the local checkpoint: %s", self.node, exc)
            return None

    # -- the other nodes -----------------------------------------------------------------
    def _refresh_nodes(self) -> bool:
        """Read the live nodes; True if the layout changed."""
        _rev, kvs = self.client.prefix(self.keys.nodes)
        nodes: dict[str, NodePlace] = {}
        for kv in kvs:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                doc = decode(kv.value)
                nodes[doc["node"]] = NodePlace(int(doc["slot"]), str(doc["address"]))
        nodes[self.node] = NodePlace(self.lease.slot, self.address)
        return self._place(nodes)

    def _nodes_loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                if self._refresh_nodes() and self.role != FENCED:
                    with self._lock:
                        self._sync_referrals(self.store.current or TargetState.empty())
            except EtcdError:
                continue

    # -- status --------------------------------------------------------------------------
    def status_dict(self) -> dict[str, Any]:
        st = self.status
        owner = (self.owner or {}).get("node")
        return {"mode": "cluster", "state": st.state, "role": st.role, "group": self.group,
                "node": self.node, "address": self.address, "slot": self.lease.slot,
                "epoch": self.ownership.epoch or (self.owner or {}).get("epoch", 0),
                "owner": owner, "owner_address": self.layout.nodes[owner].address
                if owner in self.layout.nodes else None,
                "lease": self.lease.to_dict(), "generation": st.generation,
                "takeovers": st.takeovers, "last_takeover_s": round(st.last_takeover_s, 4),
                "fences": st.fences, "last_fence_s": round(st.last_fence_s, 4),
                "restarts": st.restarts, "resigned": st.resigned,
                "last_death_to_ready_s": round(st.last_takeover_s, 4),
                "last_error": st.last_error,
                "nodes": {n: {"slot": p.slot, "address": p.address}
                          for n, p in sorted(self.layout.nodes.items())},
                "floating": {"address": self.floating.address, "held": self.holds_floating}
                if self.floating else None,
                "last_restore_s": round(self.member.last_restore_s, 4)}

    def _control(self, method: str, params: Any) -> Any:
        if method == "phoenix_status":
            return self.status_dict()
        if method == "phoenix_restart":
            raise RpcError(-1, "Operation not permitted: in a cluster, stop the node's "
                           "supervisor (a peer takes over) and start it again")
        raise RpcError(-32601, "Method not found", method)
