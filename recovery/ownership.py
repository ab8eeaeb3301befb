"""Who may serve a group: node leases, slots, the owner key and its epoch, self-fencing.

A node is alive for the cluster while its lease is: ``nodes/<node>`` lives under it, and
so does the owner key of every group the node owns. etcd deletes both the moment the
lease expires, which is how peers learn a node is gone (a watch on the owner key fires)
and what makes a takeover possible: :meth:`Ownership.try_acquire` succeeds only on an
absent owner key, in one transaction that also moves the epoch on by one, so two nodes can
never both win, and every commit of the owner carries a compare on its own owner value
(:meth:`Ownership.fence_compares`), so a node whose lease expired can commit nothing more.

etcd's side is not enough: a node cut off from etcd does not learn that its lease expired
and would go on serving hosts as ``optimized`` next to the peer that took over. So each
node keeps its own clock of how long its lease is certainly still alive
(:class:`NodeLease`), and fences itself (its listeners ``inaccessible``) before that time
runs out, i.e. before any peer can have taken over.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from nvmf_phoenix.persist.etcd import (
    EtcdClient,
    EtcdError,
    compare,
    delete_op,
    put_op,
)
from nvmf_phoenix.persist.etcd_keys import ClusterKeys, GroupKeys, decode, encode
from nvmf_phoenix.recovery.pair_view import SLOTS

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL = 2.0
"""Seconds a node's lease lives without renewal.

The lease bounds how long a silently dead owner (power cut, cable pulled) keeps its
group: peers take over only once it expires. Hosts notice a silent path no sooner than
their keep-alive timeout (Linux: 5 s by default), so a 2 s lease keeps the takeover well
inside that, while renewals every 0.5 s and self-fencing after 1.5 s without one leave room
for an etcd leader election (about a second with etcd's default timing) before a healthy
node fences itself. etcd grants whole seconds: 1 s is the shortest lease there is."""


class ClusterFull(RuntimeError):
    """Every slot (cntlid range) is held by another node."""


class NodeLease:
    """This node's lease, its registration under it, its slot, and the fencing clock.

    The fencing clock: a renewal *sent* at time t that etcd accepts keeps the lease alive
    until at least t + ttl, since etcd restarts the lease's time when it handles the
    renewal, which is after t. Counting from the send is therefore the conservative side:
    our idea of the expiry is never later than etcd's. A margin (ttl/4) is taken off on
    top, for what happens after the fence is decided (setting listeners inaccessible takes
    a few RPCs), for this process being scheduled late, and for the two clocks' rates.
    So ``safe_until = t + ttl - margin``; when it passes without another success,
    ``on_fence()`` is called at once, from a thread of its own, without waiting for any
    request in flight to etcd to end.
    """

    def __init__(self, client: EtcdClient, keys: ClusterKeys, node: str, address: str,
                 ttl: float = DEFAULT_LEASE_TTL,
                 on_fence: Callable[[], None] = lambda: None,
                 on_unfence: Callable[[], None] = lambda: None,
                 on_rejoin: Callable[[], None] = lambda: None) -> None:
        self.keys, self.node, self.address = keys, node, address
        self.ttl = max(1, math.ceil(ttl))
        self.margin = self.ttl / 4
        # Renewals must not block longer than their own period: a client of their own.
        self.client = EtcdClient(client.urls, timeout=self.ttl / 4)
        self.admin = client
        self.on_fence, self.on_unfence, self.on_rejoin = on_fence, on_unfence, on_rejoin
        self.extra: dict[str, Any] = {}     # more facts in the registration (group, role)
        self.id = 0
        self.slot = -1
        self.since = 0.0
        self.safe_until = 0.0
        self.fenced = False
        self.renewed_at = 0.0          # monotonic time of the last renewal that succeeded
        self.fences = 0
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- start and stop ------------------------------------------------------------------
    def start(self) -> None:
        """Claim a slot, grant the lease, register; then keep it alive."""
        self.slot = self.claim_slot()
        self._grant_and_register()
        for name, fn in (("lease-renew", self._renew_loop), ("lease-clock", self._clock)):
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, revoke: bool = True) -> None:
        """Stop renewing; with ``revoke`` end the lease now (a planned stop: what this
        node owns is released at once, not after the TTL)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=self.ttl)
        if revoke and self.id:
            try:
                self.admin.lease_revoke(self.id)
            except EtcdError as exc:
                log.warning("lease %x not revoked (it expires by itself): %s", self.id, exc)
        self.client.close()

    def claim_slot(self) -> int:
        """The slot this node held before (slots are persistent), else the first free
        one, taken in a transaction that succeeds only if it is still free."""
        _rev, kvs = self.admin.prefix(self.keys.slots)
        for kv in kvs:
            if kv.value.decode() == self.node:
                return int(kv.key.decode().rsplit("/", 1)[1])
        for slot in range(SLOTS):
            key = self.keys.slot(slot)
            if self.admin.txn([compare(key, "CREATE", 0)], [put_op(key, self.node)]).succeeded:
                return slot
        raise ClusterFull(f"node {self.node}: all {SLOTS} slots are taken "
                          f"({', '.join(kv.value.decode() for kv in kvs)}); remove a node "
                          f"that is gone for good with `etcdctl del {self.keys.slots}<i>`")

    def _grant_and_register(self) -> None:
        """A new lease and ``nodes/<node>`` under it. A predecessor of this node (the same
        name: a supervisor that died) may still hold its old lease: it is revoked, which
        also releases what it owned, so peers take over now rather than after its TTL."""
        old = self.admin.get(self.keys.node(self.node))
        if old is not None and old.lease:
            log.warning("node %s: revoking the lease of a previous run (%x)", self.node,
                        old.lease)
            self.admin.lease_revoke(old.lease)
        sent = time.monotonic()
        lease = self.admin.lease_grant(self.ttl)
        self.since = time.time()
        with self._cond:
            self.id = lease
            self._extended(sent)
        self.register()

    def register(self, **extra: Any) -> None:
        """(Re)write ``nodes/<node>`` under the lease, with ``extra`` facts kept."""
        self.extra.update(extra)
        self.admin.put(self.keys.node(self.node), encode(
            {**self.extra, "node": self.node, "address": self.address, "slot": self.slot,
             "since": round(self.since, 3)}), lease=self.id)

    # -- the fencing clock ---------------------------------------------------------------
    def _extended(self, sent: float) -> None:
        """(Caller holds the condition.) A renewal sent at ``sent`` succeeded."""
        self.renewed_at = sent
        self.safe_until = max(self.safe_until, sent + self.ttl - self.margin)
        self._cond.notify_all()

    def ttl_left(self) -> float:
        """Seconds our lease certainly has left (by our conservative clock)."""
        return max(0.0, self.safe_until + self.margin - time.monotonic())

    def _clock(self) -> None:
        """Fence the moment ``safe_until`` passes without a renewal."""
        with self._cond:
            while not self._stop.is_set():
                left = self.safe_until - time.monotonic()
                if left > 0 or self.fenced:
                    self._cond.wait(left if left > 0 else None)
                    continue
                self.fenced = True
                self.fences += 1
                log.warning("node %s: no lease renewal for %.2f s: fencing (listeners "
                            "inaccessible)", self.node, time.monotonic() - self.renewed_at)
                self._cond.release()
                try:
                    self.on_fence()
                finally:
                    self._cond.acquire()

    def _renew_loop(self) -> None:
        period = self.ttl / 4
        while not self._stop.wait(period):
            sent = time.monotonic()
            try:
                ttl = self.client.lease_keepalive(self.id)
            except EtcdError as exc:
                if "not found" not in str(exc):
                    continue                 # no answer: the clock decides
                ttl = 0
            if self._stop.is_set():
                return
            if ttl > 0:
                with self._cond:
                    self._extended(sent)
                    # An answer that came too late to extend past now changes nothing.
                    was = self.fenced and self.safe_until > time.monotonic()
                    if was:
                        self.fenced = False
                if was:
                    log.warning("node %s: lease renewed again: unfencing", self.node)
                    self.on_unfence()
                continue
            self._rejoin()

    def _rejoin(self) -> None:
        """Our lease expired (etcd says so): whatever we owned is gone. Register again
        under a new lease and let the node decide what it is now."""
        with self._cond:
            if not self.fenced:      # etcd answers faster than our clock: fence first
                self.fenced = True
                self.fences += 1
                fence_now = True
            else:
                fence_now = False
        if fence_now:
            self.on_fence()
        log.warning("node %s: lease %x expired: registering again", self.node, self.id)
        try:
            self._grant_and_register()
        except EtcdError as exc:
            log.warning("node %s: re-registration failed: %s", self.node, exc)
            return
        with self._cond:
            self.fenced = False
        self.on_rejoin()

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "address": self.address, "slot": self.slot,
                "lease": f"{self.id:x}", "ttl": self.ttl,
                "ttl_left": round(self.ttl_left(), 3), "fenced": self.fenced,
                "renewed_s_ago": round(time.monotonic() - self.renewed_at, 3)
                if self.renewed_at else None}


class Ownership:
    """One group's owner key and epoch, as seen from one node."""

    def __init__(self, client: EtcdClient, keys: GroupKeys, node: str,
                 lease: NodeLease) -> None:
        self.client, self.keys, self.node, self.lease = client, keys, node, lease
        self.epoch = 0                 # the epoch we own the group in (0: not owner)

    def _value(self, epoch: int | None = None) -> bytes:
        return encode({"node": self.node, "epoch": self.epoch if epoch is None else epoch})

    def owner(self) -> dict[str, Any] | None:
        kv = self.client.get(self.keys.owner)
        return decode(kv.value) if kv is not None else None

    def current_epoch(self) -> int:
        kv = self.client.get(self.keys.epoch)
        return int(kv.value) if kv is not None else 0

    def try_acquire(self) -> bool:
        """Take the group if nobody owns it: one transaction comparing that the owner key
        is absent and the epoch is the one read, then writing epoch + 1 and the owner key
        under our lease. False if another node got there first, or if we have no lease
        to put it under (an owner key without one would outlive us)."""
        if not self.lease.id or self.lease.fenced:
            return False
        kv = self.client.get(self.keys.epoch)
        read = int(kv.value) if kv is not None else 0
        epoch_cmp = compare(self.keys.epoch, "VALUE", str(read)) if kv is not None else \
            compare(self.keys.epoch, "CREATE", 0)
        new = read + 1
        got = self.client.txn(
            [compare(self.keys.owner, "CREATE", 0), epoch_cmp],
            [put_op(self.keys.epoch, str(new)),
             put_op(self.keys.owner, self._value(new), lease=self.lease.id)])
        if got.succeeded:
            self.epoch = new
            log.warning("node %s owns group %s, epoch %d", self.node, self.keys.root, new)
        return got.succeeded

    def still_owner(self) -> bool:
        """etcd still names us owner in our epoch."""
        return self.epoch > 0 and self.owner() == {"node": self.node, "epoch": self.epoch}

    def resign(self) -> bool:
        """Give the group up now (our owner key, only if it is still ours)."""
        if not self.epoch:
            return False
        got = self.client.txn([compare(self.keys.owner, "VALUE", self._value())],
                              [delete_op(self.keys.owner)])
        self.epoch = 0
        return got.succeeded

    def lost(self) -> None:
        """We are no longer owner (our lease went, or another node is)."""
        self.epoch = 0

    def fence_compares(self) -> list[dict[str, Any]]:
        """What every commit of ours compares: the owner key still holds our value."""
        return [compare(self.keys.owner, "VALUE", self._value())]
