"""Node leases, slots, the owner key and self-fencing against a real 3-member etcd; the
N-member views (pure)."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from itertools import count, pairwise

import pytest
from nvmf_phoenix.persist.etcd import Endpoints, EtcdClient
from nvmf_phoenix.persist.etcd_keys import ClusterKeys, decode
from nvmf_phoenix.recovery.ownership import ClusterFull, NodeLease, Ownership
from nvmf_phoenix.recovery.pair_view import (
    ACTIVE,
    FENCED,
    STANDBY,
    ClusterLayout,
    NodePlace,
    PairLayout,
    fence_calls,
    for_member,
    member_view,
    slot_range,
    to_logical,
)

from nvmf_phoenix.model import DISCOVERY_NQN, ListenAddress, Referral, TargetState
from tests.cut_proxy import CutProxy
from tests.etcd_cluster import EtcdCluster
from tests.waiting import wait_for

_prefixes = count()


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    c = EtcdCluster(3)
    yield c
    c.close()


def _client(etcd: EtcdCluster) -> tuple[EtcdClient, ClusterKeys]:
    ep = Endpoints.parse(etcd.url(f"own{next(_prefixes)}"))
    return EtcdClient(ep.urls), ClusterKeys(ep.prefix)


# -- the views (pure) ----------------------------------------------------------------------
def _logical() -> TargetState:
    st = TargetState.from_dict({"subsystems": [
        {"nqn": "nqn.2016-06.io.spdk:c1", "serial_number": "SPDK1", "ana_reporting": True,
         "listeners": [{"address": {"trtype": "TCP", "adrfam": "IPv4",
                                    "traddr": "10.0.0.1", "trsvcid": "4420"}}],
         "namespaces": [{"nsid": 1, "bdev_name": "b0", "uuid":
                         "0b6a7f7e-9d58-4a8c-8d7e-0e3f8a1c2b3d", "anagrpid": 1}]},
        {"nqn": DISCOVERY_NQN, "subtype": "Discovery", "listeners": [{"address": {
            "trtype": "TCP", "adrfam": "IPv4", "traddr": "10.0.0.1", "trsvcid": "8009"}}]}]})
    return st


def _layout() -> ClusterLayout:
    return ClusterLayout({"n1": NodePlace(0, "10.0.0.1"), "n2": NodePlace(1, "10.0.0.2"),
                          "n3": NodePlace(3, "10.0.0.3")})


def test_slot_ranges_are_disjoint_and_cover() -> None:
    ranges = [slot_range(i) for i in range(4)]
    assert ranges[0][0] == 1 and ranges[-1][1] == 0xFFEF
    for (_, hi), (lo, _) in pairwise(ranges):
        assert lo == hi + 1
    with pytest.raises(ValueError):
        slot_range(4)


def test_cluster_views_place_each_node() -> None:
    logical, layout = _logical(), _layout()
    nqn = "nqn.2016-06.io.spdk:c1"
    views = {n: member_view(logical, layout, n, role) for n, role in
             (("n1", ACTIVE), ("n2", STANDBY), ("n3", FENCED))}
    for n, want in (("n1", "optimized"), ("n2", "non_optimized"), ("n3", "inaccessible")):
        sub = views[n].subsystems[nqn]
        (addr, ls), = sub.listeners.items()
        assert addr == ListenAddress.make(layout.nodes[n].address, 4420)
        assert set(ls.ana_states.values()) == {want}
        assert (sub.min_cntlid, sub.max_cntlid) == slot_range(layout.nodes[n].slot)
        assert sub.namespaces[1].uuid == logical.subsystems[nqn].namespaces[1].uuid
        # referrals to every other node's discovery service, none to itself
        assert sorted(r.address.traddr for r in views[n].referrals) == sorted(
            p.address for o, p in layout.nodes.items() if o != n)
        assert {r.address.trsvcid for r in views[n].referrals} == {"8009"}
    # what any node reports maps back to the same logical state
    back = {n: to_logical(v, layout, n, logical) for n, v in views.items()}
    assert back["n1"] == back["n2"] == back["n3"]
    assert back["n2"].subsystems[nqn].listeners.keys() == logical.subsystems[nqn].listeners.keys()
    assert back["n2"].referrals == []


def test_cluster_view_keeps_user_referrals_and_drops_gone_nodes() -> None:
    logical = _logical()
    user = Referral(address=ListenAddress.make("192.168.9.9", 8009))
    gone = Referral(address=ListenAddress.make("10.0.0.7", 8009))
    logical.referrals = [user]
    layout = ClusterLayout({"n1": NodePlace(0, "10.0.0.1")}, frozenset({"10.0.0.7"}))
    live = member_view(logical, layout, "n1", ACTIVE)
    live.referrals.append(gone)            # left from when 10.0.0.7 was a member
    assert to_logical(live, layout, "n1", logical).referrals == [user]


def test_fence_calls_cover_every_ana_listener() -> None:
    view = member_view(_logical(), _layout(), "n2", STANDBY)
    calls = fence_calls(view)
    assert calls == [("nvmf_subsystem_listener_set_ana_state", {
        "nqn": "nqn.2016-06.io.spdk:c1", "ana_state": "inaccessible",
        "listen_address": ListenAddress.make("10.0.0.2", 4420).to_dict()})]
    assert fence_calls(None) == []


def test_for_member_gives_the_nodes_range_and_address() -> None:
    layout = _layout()
    out = for_member("nvmf_create_subsystem", {"nqn": "nqn.x:y"}, layout, "n2")
    assert (out["min_cntlid"], out["max_cntlid"]) == slot_range(1) and out["ana_reporting"]
    out = for_member("nvmf_subsystem_add_listener", {"nqn": "nqn.x:y", "listen_address": {
        "trtype": "tcp", "adrfam": "ipv4", "traddr": "10.0.0.1", "trsvcid": "4420"}},
        layout, "n2")
    assert out["listen_address"]["traddr"] == "10.0.0.2"
    # the pair keeps its two ranges
    out = for_member("nvmf_create_subsystem", {"nqn": "nqn.x:y"}, PairLayout(), "b")
    assert (out["min_cntlid"], out["max_cntlid"]) == (32768, 65519)


# -- leases, slots, owner key against real etcd ---------------------------------------------
def test_slots_persist_and_run_out(etcd: EtcdCluster) -> None:
    c, keys = _client(etcd)
    leases = [NodeLease(c, keys, f"n{i}", f"127.0.0.{i + 11}") for i in range(4)]
    assert [lease.claim_slot() for lease in leases] == [0, 1, 2, 3]
    assert leases[2].claim_slot() == 2                      # kept across restarts
    with pytest.raises(ClusterFull, match="slots are taken"):
        NodeLease(c, keys, "n9", "127.0.0.19").claim_slot()


def test_lease_registers_and_owner_is_exclusive(etcd: EtcdCluster) -> None:
    c, keys = _client(etcd)
    gk = keys.group("g")
    a = NodeLease(c, keys, "a", "127.0.0.11", ttl=2)
    b = NodeLease(c, keys, "b", "127.0.0.12", ttl=2)
    a.start(), b.start()
    try:
        reg = decode(c.get(keys.node("a")).value)
        assert reg["address"] == "127.0.0.11" and reg["slot"] == 0
        oa, ob = Ownership(c, gk, "a", a), Ownership(c, gk, "b", b)
        results: list[bool] = []
        threads = [threading.Thread(target=lambda o=o: results.append(o.try_acquire()))
                   for o in (oa, ob)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [False, True]
        winner, loser = (oa, ob) if oa.epoch else (ob, oa)
        assert winner.owner() == {"node": winner.node, "epoch": 1}
        assert c.txn(winner.fence_compares(), []).succeeded
        assert winner.resign() and winner.owner() is None
        assert loser.try_acquire() and loser.epoch == 2
        assert not c.txn(winner.fence_compares(), []).succeeded
        # the owner key goes with the lease: the other takes over, epoch 3
        loser.lease.stop(revoke=True)
        assert winner.try_acquire() and winner.epoch == 3
    finally:
        a.stop(), b.stop()


def test_fences_before_the_lease_expires_then_rejoins(etcd: EtcdCluster) -> None:
    """Cut the node's way to etcd: it fences itself while etcd still holds its lease
    (so no peer can have taken over yet); when etcd answers again after the lease expired
    it registers anew."""
    c, keys = _client(etcd)
    proxy = CutProxy(("127.0.0.1", etcd.members[0].client_port))
    events: list[tuple[str, float]] = []
    via = EtcdClient([f"http://{proxy.address}"])
    lease = NodeLease(via, keys, "a", "127.0.0.11", ttl=2,
                      on_fence=lambda: events.append(("fence", time.monotonic())),
                      on_unfence=lambda: events.append(("unfence", time.monotonic())),
                      on_rejoin=lambda: events.append(("rejoin", time.monotonic())))
    lease.start()
    try:
        first = lease.id
        proxy.cut()
        cut_at = time.monotonic()
        wait_for(lambda: events, timeout=3, what="fence")
        assert events[0][0] == "fence"
        fenced_after = events[0][1] - cut_at
        assert fenced_after < lease.ttl - lease.margin + 0.2
        assert c.get(keys.node("a")) is not None, "fenced only once the lease was gone"
        wait_for(lambda: c.get(keys.node("a")) is None, timeout=5, what="lease expiry")
        proxy.restore()
        wait_for(lambda: [e for e, _ in events if e == "rejoin"], timeout=5, what="rejoin")
        assert lease.id != first and not lease.fenced
        assert decode(c.get(keys.node("a")).value)["slot"] == 0
        # a short cut, within the lease: fenced, then unfenced on the same lease
        events.clear()
        proxy.cut()
        wait_for(lambda: events, timeout=3, what="second fence")
        proxy.restore()
        wait_for(lambda: [e for e, _ in events if e == "unfence"], timeout=3,
                 what="unfence")
        assert [e for e, _ in events] == ["fence", "unfence"]
    finally:
        lease.stop()
        proxy.close()
