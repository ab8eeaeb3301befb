"""A group's checkpoint in etcd (recovery/etcd_store.py) against a real 3-member cluster.

Each test uses its own key prefix in one module-wide cluster. What is checked: a rich
state and its changes come back equal through another, independent store; one of two
writers of the same read wins; a fence that fails refuses the commit; compaction and
chunking keep the requests and the key count bounded; a damaged key is named.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from nvmf_phoenix.persist.etcd import (
    Endpoints,
    EtcdClient,
    EtcdUnavailable,
    TxnResult,
    compare,
)
from nvmf_phoenix.persist.etcd_keys import ClusterKeys, GroupKeys, decode, encode
from nvmf_phoenix.recovery.capture import capture_config
from nvmf_phoenix.recovery.diff import diff
from nvmf_phoenix.recovery.etcd_store import (
    EtcdGroupStore,
    EtcdStoreError,
    Fenced,
    StoreConflict,
    StoreUnavailable,
)
from nvmf_phoenix.recovery.store import MAX_CHANGES
from nvmf_phoenix.rpc import RpcClient, RpcError
from nvmf_phoenix.rpc import nvmf as rn

from nvmf_phoenix.model import (
    Bdev,
    Host,
    Key,
    ListenAddress,
    Listener,
    Namespace,
    Referral,
    StartupOptions,
    Subsystem,
    TargetState,
    Transport,
)
from tests.etcd_cluster import EtcdCluster
from tests.phoenix_tools import BIN, drop_region, phoenix
from tests.support import rich_config, supervised
from tests.target_fixture import free_port
from tests.waiting import wait_for

NQN = "nqn.2016-06.io.phx:etcd"
HOST = "nqn.2016-06.io.phx:host"
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    c = EtcdCluster(3)
    yield c
    c.close()


@pytest.fixture
def keys() -> GroupKeys:
    """A prefix of its own for each test."""
    return ClusterKeys(f"t{next(_prefixes)}-{uuid.uuid4().hex[:6]}").group("default")


def client(c: EtcdCluster) -> EtcdClient:
    return EtcdClient(Endpoints.parse(c.url("x")).urls)


def rich_state() -> TargetState:
    """Objects of every kind, optional fields set."""
    st = TargetState.empty()
    st.startup = StartupOptions(nvmf_config={"discovery_filter": "address"},
                                max_subsystems=64, crdt={"crdt1": 5})
    st.keys["k0"] = Key(name="k0", path="/keys/k0")
    st.transports["TCP"] = Transport(trtype="TCP", options={"max_queue_depth": 64})
    st.bdevs["m0"] = Bdev(name="m0", kind="malloc", uuid="9f1e4f0b-5ab8-4c43-9b1b-000000000001",
                          block_size=4096, num_blocks=256, params={"md_size": 0})
    st.bdevs["a0"] = Bdev(name="a0", kind="aio", uuid="9f1e4f0b-5ab8-4c43-9b1b-000000000002",
                          block_size=512, num_blocks=0, filename="/dev/null",
                          params={"readonly": True})
    sub = Subsystem(nqn=NQN, serial_number="SN1", model_number="M1", max_namespaces=8,
                    min_cntlid=3, max_cntlid=9, allow_any_host=False, ana_reporting=True)
    sub.hosts["nqn.h1"] = Host(nqn="nqn.h1", psk="k0", dhchap_key="k0")
    sub.namespaces[2] = Namespace(nsid=2, bdev_name="m0", uuid="0b5c7b44-0000-4000-8000-"
                                  "000000000002", nguid="00112233445566778899AABBCCDDEEFF",
                                  anagrpid=2, no_auto_visible=True, hosts=["nqn.h1"])
    addr = ListenAddress.make("127.0.0.1", 4420)
    sub.listeners[addr] = Listener(address=addr, ana_states={1: "optimized"})
    st.subsystems[NQN] = sub
    st.referrals.append(Referral(address=ListenAddress.make("10.0.0.9", 8009)))
    return st


def add_host(host: str) -> list[dict]:
    return [{"op": "host", "nqn": NQN, "host": host, "value": {"nqn": host}}]


def test_rich_state_and_changes_round_trip(cluster: EtcdCluster, keys: GroupKeys) -> None:
    a = EtcdGroupStore(client(cluster), keys)
    empty = a.load()
    assert empty.state is None and empty.seq == 0 and empty.owner is None
    st = rich_state()
    assert a.commit_state(st) == 1
    assert a.commit_change(add_host("nqn.h2")) == 2
    st.subsystems[NQN].hosts["nqn.h2"] = Host(nqn="nqn.h2")
    # a second, independent store (its own session) sees exactly that
    got = EtcdGroupStore(client(cluster), keys).load()
    assert got.state == st and got.seq == 2 and got.base == 1 and got.changes == 1
    assert got.head_revision > 0 and got.revision >= got.head_revision


def test_two_writers_of_one_read_exactly_one_wins(cluster: EtcdCluster,
                                                  keys: GroupKeys) -> None:
    a, b = EtcdGroupStore(client(cluster), keys), EtcdGroupStore(client(cluster), keys)
    a.commit_state(rich_state())
    a.load(), b.load()
    assert a.commit_change(add_host("nqn.a")) == 2
    with pytest.raises(StoreConflict):
        b.commit_change(add_host("nqn.b"))
    with pytest.raises(StoreConflict):       # a whole state compares the same head
        b.commit_state(TargetState.empty())
    hosts = EtcdGroupStore(client(cluster), keys).load().state.subsystems[NQN].hosts
    assert "nqn.a" in hosts and "nqn.b" not in hosts
    # b's refused whole state left no chunks behind
    _, kvs = client(cluster).prefix(keys.states)
    assert {kv.key.decode().rsplit("/", 2)[1] for kv in kvs} == {f"{1:020d}-{a.tag}"}
    b.load()                                  # after a reload b writes on top of a
    assert b.commit_change(add_host("nqn.b")) == 3


def test_a_failed_fence_refuses_the_commit_and_names_the_owner(cluster: EtcdCluster,
                                                               keys: GroupKeys) -> None:
    c = client(cluster)
    c.put(keys.owner, encode({"node": "n1", "epoch": 1}))
    a = EtcdGroupStore(c, keys)
    a.fence = lambda: [compare(keys.owner, "VALUE", encode({"node": "n1", "epoch": 1}))]
    a.commit_state(rich_state())
    c.put(keys.owner, encode({"node": "n2", "epoch": 2}))     # n2 took over
    with pytest.raises(Fenced, match="'n2' at epoch 2"):
        a.commit_change(add_host("nqn.late"))
    c.delete(keys.owner)                                        # lease expired
    with pytest.raises(Fenced, match="no owner"):
        a.commit_state(TargetState.empty())
    loaded = EtcdGroupStore(c, keys).load()
    assert loaded.seq == 1 and "nqn.late" not in loaded.state.subsystems[NQN].hosts
    assert [kv.key for kv in c.prefix(keys.states)[1]] == [keys.state_chunk(1, 0, a.tag)
                                                            .encode()]


def test_compaction_keeps_at_most_max_changes(cluster: EtcdCluster, keys: GroupKeys) -> None:
    c = client(cluster)
    a = EtcdGroupStore(c, keys)
    st = rich_state()
    a.commit_state(st)
    for i in range(MAX_CHANGES + 5):
        a.commit_change(add_host(f"nqn.h{i}"))
        st.subsystems[NQN].hosts[f"nqn.h{i}"] = Host(nqn=f"nqn.h{i}")
    got = EtcdGroupStore(c, keys).load()
    assert got.state == st and got.seq == MAX_CHANGES + 6
    assert got.base == MAX_CHANGES + 2 and got.changes == 4
    assert len(c.prefix(keys.changes)[1]) <= MAX_CHANGES
    assert len({kv.key.rsplit(b"/", 1)[0] for kv in c.prefix(keys.states)[1]}) == 1


def test_a_new_whole_state_is_committed_as_its_change(cluster: EtcdCluster,
                                                     keys: GroupKeys) -> None:
    """A cluster owner knows each change as a new whole state: etcd gets one change key
    for it, a reader sees exactly that state, and what no operation describes (a new
    transport) goes whole."""
    c = client(cluster)
    a = EtcdGroupStore(c, keys)
    st = rich_state()
    assert a.commit_as_change(st) == 1                      # nothing in etcd: whole
    st = copy.deepcopy(st)
    st.subsystems[NQN].hosts["nqn.h2"] = Host(nqn="nqn.h2")
    del st.bdevs["a0"]
    assert a.commit_as_change(st) == 2
    change = decode(c.get(keys.change(2)).value)
    assert [op["op"] for op in change["ops"]] == ["bdev", "host"]
    got = EtcdGroupStore(c, keys).load()
    assert got.state == st and got.base == 1 and got.changes == 1
    st = copy.deepcopy(st)
    st.transports["RDMA"] = Transport(trtype="RDMA")
    assert a.commit_as_change(st) == 3
    got = EtcdGroupStore(c, keys).load()
    assert got.state == st and got.base == 3 and got.changes == 0


def test_a_large_state_is_chunked_and_round_trips(cluster: EtcdCluster,
                                                  keys: GroupKeys) -> None:
    st = TargetState.empty()
    for s in range(120):
        sub = Subsystem(nqn=f"{NQN}{s}", serial_number=f"SN{s}", max_namespaces=100)
        for n in range(1, 101):
            name = f"bdev-{s}-{n}"
            st.bdevs[name] = Bdev(name=name, kind="malloc", uuid=str(uuid.uuid4()),
                                  block_size=512, num_blocks=64)
            sub.namespaces[n] = Namespace(nsid=n, bdev_name=name, uuid=str(uuid.uuid4()),
                                          nguid=uuid.uuid4().hex.upper())
        st.subsystems[sub.nqn] = sub
    assert len(json.dumps(st.to_dict())) > 3 << 20
    a = EtcdGroupStore(client(cluster), keys)
    a.commit_state(st)
    head = json.loads(client(cluster).get(keys.head).value)
    assert head["chunks"] > 1
    assert EtcdGroupStore(client(cluster), keys).load().state == st


def test_a_damaged_key_is_named(cluster: EtcdCluster, keys: GroupKeys) -> None:
    c = client(cluster)
    a = EtcdGroupStore(c, keys)
    a.commit_state(rich_state())
    a.commit_change(add_host("nqn.x"))
    c.put(keys.change(2), b"{not json")
    with pytest.raises(EtcdStoreError, match=keys.change(2)):
        EtcdGroupStore(c, keys).load()
    c.put(keys.change(2), encode({"seq": 2, "ops": {"op": "host"}}))
    with pytest.raises(EtcdStoreError, match=keys.change(2)):
        EtcdGroupStore(c, keys).load()
    c.put(keys.change(2), encode({"seq": 2, "ops": add_host("y")}))
    c.put(keys.epoch, b'"x"')
    with pytest.raises(EtcdStoreError, match=keys.epoch):
        EtcdGroupStore(c, keys).load()
    c.put(keys.epoch, b"3")
    assert EtcdGroupStore(c, keys).load().epoch == 3
    chunk = keys.state_chunk(1, 0, a.tag)
    c.put(chunk, b"\x78\x9cnot zlib")
    with pytest.raises(EtcdStoreError, match=chunk):
        EtcdGroupStore(c, keys).load()
    c.delete(chunk)
    with pytest.raises(EtcdStoreError, match=f"{chunk}: chunk 0 of 1"):
        EtcdGroupStore(c, keys).load()
    c.put(keys.head, b"[]")
    with pytest.raises(EtcdStoreError, match=keys.head):
        EtcdGroupStore(c, keys).load()


class AnswerLost(EtcdClient):
    """A real client whose next transaction is applied by etcd but answered as lost."""
    lose_next = False

    def txn(self, *args: Any, **kwargs: Any) -> TxnResult:
        res = super().txn(*args, **kwargs)
        if self.lose_next:
            self.lose_next = False
            raise EtcdUnavailable("etcd /v3/kv/txn: the answer was lost (test)")
        return res


def test_an_unanswered_commit_that_landed_is_not_a_conflict(cluster: EtcdCluster,
                                                            keys: GroupKeys) -> None:
    """etcd applied the txn but the answer was lost: the next commit finds its own
    write there and goes on from it."""
    c = AnswerLost(Endpoints.parse(cluster.url("x")).urls)
    a = EtcdGroupStore(c, keys)
    a.commit_state(rich_state())
    c.lose_next = True
    with pytest.raises(StoreUnavailable):
        a.commit_change(add_host("nqn.lost-answer"))
    assert a.commit_change(add_host("nqn.next")) == 3
    c.lose_next = True
    with pytest.raises(StoreUnavailable):
        a.commit_state(rich_state())
    assert a.commit_change(add_host("nqn.after-state")) == 5
    got = EtcdGroupStore(c, keys).load()
    assert got.base == 4 and set(got.state.subsystems[NQN].hosts) == {"nqn.h1",
                                                                      "nqn.after-state"}


def test_follow_returns_the_new_load_or_none(cluster: EtcdCluster, keys: GroupKeys) -> None:
    c = client(cluster)
    a, b = EtcdGroupStore(c, keys), EtcdGroupStore(client(cluster), keys)
    a.commit_state(rich_state())
    seen = b.load()
    assert b.follow(seen.revision, timeout=0.5) is None
    a.commit_change(add_host("nqn.watched"))
    got = b.follow(seen.revision, timeout=5)
    assert got is not None and got.seq == 2
    assert "nqn.watched" in got.state.subsystems[NQN].hosts
    # etcd compacted the revision a follower waits from away: its watch is cancelled,
    # and the change is still found (by the read that ends a quiet wait)
    a.commit_change(add_host("nqn.compacted"))
    rev = c.get(keys.head).mod_revision
    r = requests.post(cluster.members[0].client_url + "/v3/kv/compaction",
                      data=json.dumps({"revision": str(rev)}), timeout=5)
    assert r.status_code == 200, r.text
    got = b.follow(seen.revision, timeout=1)
    assert got is not None and got.seq == 3
    assert "nqn.compacted" in got.state.subsystems[NQN].hosts


# -- through a supervisor ------------------------------------------------------------------
def group_store(c: EtcdCluster, keys: GroupKeys) -> EtcdGroupStore:
    return EtcdGroupStore(client(c), keys)


def leader(c: EtcdCluster) -> int:
    """The index of the member that leads the cluster now."""
    for i, m in enumerate(c.members):
        doc = requests.post(m.client_url + "/v3/maintenance/status", data="{}",
                            timeout=2).json()
        if doc["leader"] == doc["header"]["member_id"]:
            return i
    raise AssertionError("no member leads")


def test_every_acknowledged_call_is_in_etcd_across_a_member_kill(
        cluster: EtcdCluster, keys: GroupKeys, tmp_path: Path) -> None:
    """A stream of mutating calls while one member is SIGKILLed and started again:
    quorum holds, and every call the front acknowledged is in etcd's checkpoint."""
    acked: list[tuple[str, int]] = []
    refused = []
    with supervised(tmp_path, cluster_store=group_store(cluster, keys)) as sup, \
            RpcClient.connect(str(tmp_path / "public.sock")) as c:
        rn.nvmf_create_transport(c, "TCP")
        for i in range(36):
            if i == 8:
                victim = leader(cluster)          # the harder case: an election follows
                cluster.kill(victim)
            if i == 24:
                cluster.start(victim)
            nqn = f"{NQN}:s{i}"
            for what, method, params in (
                    ("sub", "nvmf_create_subsystem", {"nqn": nqn, "serial_number": f"S{i}"}),
                    ("bdev", "bdev_malloc_create", {"num_blocks": 8, "block_size": 512,
                                                    "name": f"B{i}"}),
                    ("ns", "nvmf_subsystem_add_ns", {"nqn": nqn,
                                                     "namespace": {"bdev_name": f"B{i}"}}),
                    ("host", "nvmf_subsystem_add_host", {"nqn": nqn, "host": f"{HOST}{i}"})):
                try:
                    c.call(method, params)
                    acked.append((what, i))
                except RpcError as err:
                    assert "cluster store does not" in err.message, err
                    refused.append((what, i, err.message))
        cluster.wait_healthy()
        rn.nvmf_create_subsystem(c, f"{NQN}:last")       # the store is in step again
        assert sup.status_dict()["store"]["behind"] == ""
        live = capture_config(c)
    got = group_store(cluster, keys).load().state
    assert got is not None and diff(got, live, desired=True) == []
    for what, i in acked:
        sub = got.subsystems.get(f"{NQN}:s{i}")
        assert {"sub": sub is not None, "bdev": f"B{i}" in got.bdevs,
                "ns": sub is not None and any(n.bdev_name == f"B{i}"
                                              for n in sub.namespaces.values()),
                "host": sub is not None and f"{HOST}{i}" in sub.hosts}[what], (what, i)
    print(f"acknowledged {len(acked)}, refused {len(refused)}: {refused}")
    assert len(acked) >= 4 * 36 - 8, refused     # quorum held: (almost) all acknowledged


def test_a_failed_commit_is_an_error_for_the_client_and_etcd_catches_up(
        cluster: EtcdCluster, keys: GroupKeys, tmp_path: Path) -> None:
    store = group_store(cluster, keys)
    with supervised(tmp_path, cluster_store=store, drift_interval=0.3) as sup, \
            RpcClient.connect(str(tmp_path / "public.sock")) as c:
        rn.nvmf_create_subsystem(c, f"{NQN}:a")
        store.fence = lambda: [compare(keys.owner, "VALUE", b"nobody")]   # not the owner
        with pytest.raises(RpcError) as err:
            rn.nvmf_create_subsystem(c, f"{NQN}:b")
        assert "the target has the change, but the cluster store does not" in \
            err.value.message and "not the owner" in err.value.message
        assert rn.nvmf_get_subsystems(c, f"{NQN}:b")        # the target has it
        assert "not the owner" in c.call("phoenix_status")["store"]["behind"]
        assert f"{NQN}:b" not in group_store(cluster, keys).load().state.subsystems
        store.fence = lambda: []
        # the periodic check commits the whole state: etcd catches up without a call
        wait_for(lambda: sup.store.replica_error == "", timeout=10, what="caught up")
        assert f"{NQN}:b" in group_store(cluster, keys).load().state.subsystems
        rn.nvmf_subsystem_add_host(c, f"{NQN}:a", f"{HOST}a")   # a change again
        status = c.call("phoenix_status")["store"]
        assert status["behind"] == "" and status["seq"] == status["base"] + 1
    got = group_store(cluster, keys).load().state
    assert {f"{NQN}:a", f"{NQN}:b"} <= set(got.subsystems)
    assert f"{HOST}a" in got.subsystems[f"{NQN}:a"].hosts


def test_a_local_checkpoint_moves_to_an_empty_cluster_store(
        cluster: EtcdCluster, keys: GroupKeys, tmp_path: Path) -> None:
    with supervised(tmp_path) as _sup, RpcClient.connect(str(tmp_path / "public.sock")) as c:
        rn.nvmf_create_subsystem(c, f"{NQN}:local", serial_number="LOCAL1")
    with supervised(tmp_path, cluster_store=group_store(cluster, keys)) as sup:
        assert sup.status_dict()["store"]["seq"] == 1
    got = group_store(cluster, keys).load().state
    assert got.subsystems[f"{NQN}:local"].serial_number == "LOCAL1"


def _supervise(tmp_path: Path, state: str, store: str) -> subprocess.Popen[str]:
    """``nvmf-phoenix supervise --store`` in a session of its own (so a node's death,
    supervisor and target at once, is one killpg)."""
    return subprocess.Popen([str(BIN / "nvmf-phoenix"), "supervise",
                             "-s", str(tmp_path / "pub.sock"),
                             "--target-socket", str(tmp_path / "priv.sock"),
                             "--state-dir", str(tmp_path / state), "--store", store],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _ready(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()       # ends when the supervisor does
    assert "supervisor ready" in line, proc.stderr.read() if proc.stderr else line
    return line


def _kill_node(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def test_a_node_with_an_empty_disk_restores_from_etcd(cluster: EtcdCluster, keys: GroupKeys,
                                                      tmp_path: Path) -> None:
    """Supervisor and target SIGKILLed, the state directory gone: a new supervisor on an
    empty one with the same --store serves the same configuration."""
    url = cluster.url(keys.root.split("/groups/")[0])
    image = tmp_path / "disk.img"
    image.write_bytes(b"\0" * (1 << 20))
    proc = _supervise(tmp_path, "state1", url)
    try:
        line = _ready(proc)
        assert f"store={url} group=default" in line
        with RpcClient.connect(str(tmp_path / "pub.sock")) as c:
            rich_config(c, image, str(free_port()))
            before = capture_config(c)
        run = phoenix("status", "-s", str(tmp_path / "pub.sock"), "--state-dir",
                      str(tmp_path / "state1"))
        assert run.returncode == 0, run.stderr
        assert "cluster store: etcd" in run.stdout and "up to date" in run.stdout
    finally:
        _kill_node(proc)
    drop_region(tmp_path / "state1")
    shutil.rmtree(tmp_path / "state1")
    for sock in ("pub.sock", "priv.sock"):
        (tmp_path / sock).unlink(missing_ok=True)
    proc = _supervise(tmp_path, "state2", url)
    try:
        _ready(proc)
        with RpcClient.connect(str(tmp_path / "pub.sock")) as c:
            assert diff(before, capture_config(c), desired=True) == []
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drop_region(tmp_path / "state2")
    assert proc.returncode == 0


def test_an_unreachable_store_at_start_is_a_clear_error(tmp_path: Path) -> None:
    url = f"etcd://127.0.0.1:{free_port()}/nowhere"
    proc = _supervise(tmp_path, "state", url)
    try:
        _out, err = proc.communicate(timeout=60)
    finally:
        _kill_node(proc)
        drop_region(tmp_path / "state")
    assert proc.returncode == 1
    assert "cannot start: cluster store http://127.0.0.1" in err and "no member" in err
    assert not (tmp_path / "priv.sock").exists()       # no target was started


def test_store_usage_errors(tmp_path: Path) -> None:
    base = ["supervise", "-s", str(tmp_path / "pub.sock"), "-d", str(tmp_path / "state")]
    run = phoenix(*base, "--store", "http://127.0.0.1:2379/p")
    assert run.returncode == 2 and "--store" in run.stderr and "etcd://" in run.stderr
    run = phoenix(*base, "--store", "etcd://127.0.0.1:2379/p", "--standby")
    assert run.returncode == 2 and "not supported" in run.stderr
    assert not (tmp_path / "state").exists()
