"""The etcd client against a real 3-member etcd cluster on loopback."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from nvmf_phoenix.persist.etcd import (
    Endpoints,
    EtcdClient,
    EtcdUnavailable,
    compare,
    prefix_end,
    put_op,
)

from tests.etcd_cluster import EtcdCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    c = EtcdCluster(3)
    yield c
    c.close()


def client(c: EtcdCluster) -> EtcdClient:
    return EtcdClient(Endpoints.parse(c.url("t")).urls)


def test_endpoints_parse_and_refuse() -> None:
    e = Endpoints.parse("etcd://10.0.0.1:2379,10.0.0.2:2379/phx/a")
    assert e.urls == ("http://10.0.0.1:2379", "http://10.0.0.2:2379") and e.prefix == "phx/a"
    for bad in ("http://h:1/p", "etcd://h:1/", "etcd:///p", "etcd://h/p"):
        with pytest.raises(ValueError):
            Endpoints.parse(bad)
    assert prefix_end(b"a/") == b"a0" and prefix_end(b"\xff") == b"\0"


def test_put_get_prefix_txn(cluster: EtcdCluster) -> None:
    c = client(cluster)
    rev = c.put("t/k1", b"one")
    c.put("t/k2", "two")
    kv = c.get("t/k1")
    assert kv is not None and kv.value == b"one" and kv.mod_revision == rev
    assert [k.key for k in c.prefix("t/")[1]] == [b"t/k1", b"t/k2"]
    # compare-and-swap on the revision read: the second writer of the same read loses
    ok = c.txn([compare("t/k1", "MOD", rev)], [put_op("t/k1", b"uno")])
    lost = c.txn([compare("t/k1", "MOD", rev)], [put_op("t/k1", b"eins")])
    assert ok.succeeded and not lost.succeeded
    assert c.get("t/k1").value == b"uno"
    assert c.delete("t/", prefix_end("t/")) == 2 and c.get("t/k1") is None


def test_lease_expiry_removes_its_keys(cluster: EtcdCluster) -> None:
    c = client(cluster)
    lease = c.lease_grant(2)
    c.put("t/owner", b"me", lease=lease)
    assert c.lease_keepalive(lease) == 2
    c.lease_revoke(lease)
    assert c.get("t/owner") is None and c.lease_ttl(lease) == -1
    assert c.lease_keepalive(lease) == 0


def test_a_dead_member_costs_one_timeout_and_quorum_holds(cluster: EtcdCluster) -> None:
    c = client(cluster)
    c._current = 0
    cluster.kill(0)
    try:
        c.put("t/q", b"with two of three")
        assert c.get("t/q").value == b"with two of three" and c._current != 0
    finally:
        cluster.start(0)
        cluster.wait_healthy()
    assert cluster.healthy(0)


def test_nothing_answering_is_unavailable() -> None:
    from tests.target_fixture import free_port
    c = EtcdClient([f"http://127.0.0.1:{free_port()}"], timeout=0.5)
    with pytest.raises(EtcdUnavailable, match="no member answered"):
        c.get("x")
