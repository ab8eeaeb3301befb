"""The cost of a checkpoint in etcd: what ``supervise --store etcd://`` adds per call.

    python benchmarks/bench_etcd.py [--calls 200] [--states 30]

1. Front latency of the mutations bench_supervisor.py times (nvmf_create_subsystem,
   nvmf_subsystem_add_ns, nvmf_subsystem_add_host, each undone by an untimed inverse
   call so the configuration keeps its size), through a supervisor's public socket with
   the local store only and with ``--store`` on a 3-member etcd cluster on loopback
   (every acknowledged change is then also one etcd transaction, committed by a quorum,
   before the answer), on an empty target and on one holding 64 subsystems x 4
   namespaces. Medians and 99th percentiles.
2. The group store alone (recovery/etcd_store.py): ``commit_state`` of the 64x4 state
   (encode, compress, chunk puts, head txn), ``commit_change`` of one host, ``load``,
   and ``commit_as_change`` of the state with one more host (what a cluster's owner
   commits per call: the two states compared, then one change).

etcd members run with the test suite's timing (tests/etcd_cluster.py: 50 ms heartbeats)
and their data on the same disk as everything else; etcd fsyncs its WAL on every commit,
so the disk's fsync latency is most of an etcd commit.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_restore import desired_state
from bench_supervisor import latency, mutations, pct
from nvmf_phoenix.recovery.etcd_store import EtcdGroupStore
from nvmf_phoenix.recovery.restore import restore
from nvmf_phoenix.recovery.supervisor import Supervisor
from nvmf_phoenix.rpc import RpcClient

from nvmf_phoenix.model import Host
from tests.etcd_cluster import EtcdCluster
from tests.target_fixture import free_port

EMBEDDED = [sys.executable, "-m", "nvmf_phoenix.embedded"]


def _store(cluster: EtcdCluster) -> EtcdGroupStore:
    """A group of its own under a fresh prefix."""
    return EtcdGroupStore.open(cluster.url(f"bench-{uuid.uuid4().hex[:8]}"))


@contextmanager
def supervisor(store: EtcdGroupStore | None, subsystems: int, per_sub: int
               ) -> Iterator[tuple[str, str]]:
    """A supervised embedded target loaded with ``subsystems`` x ``per_sub``."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        pub, priv = f"{d}/pub.sock", f"{d}/priv.sock"
        sup = Supervisor(EMBEDDED, priv, pub, f"{d}/state", drift_interval=3600,
                         cluster_store=store)
        sup.start()
        try:
            if subsystems:
                with RpcClient.connect(priv, timeout=120) as c:
                    report = restore(c, desired_state(subsystems, per_sub, free_port()))
                    assert report.ok, report.summary()
                with sup.front.lock:
                    sup.front.checkpoint()
            yield pub, priv
            if store is not None:
                assert sup.store.replica_error == "", sup.store.replica_error
        finally:
            sup.stop()
            sup.store.region.unlink()


def _ms(samples: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(samples) * 1e3, 2),
            "p99_ms": round(pct(samples, 0.99) * 1e3, 2)}


def front_latency(cluster: EtcdCluster, calls: int, subsystems: int, per_sub: int
                  ) -> dict[str, Any]:
    out: dict[str, Any] = {"config": f"{subsystems}x{per_sub}", "calls": calls}
    for where in ("local", "etcd"):
        store = _store(cluster) if where == "etcd" else None
        with supervisor(store, subsystems, per_sub) as (pub, _priv):
            with RpcClient.connect(pub) as c:
                c.call("bdev_malloc_create", {"name": "LAT0", "num_blocks": 64,
                                              "block_size": 512})
                c.call("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.phx:lat"})
            for kind, (method, params, undo) in mutations(where).items():
                out[f"{kind}_{where}"] = _ms(latency(pub, method, calls, params, undo))
        if store is not None:
            store.client.close()
    for kind in mutations(""):
        out[f"{kind}_added_median_ms"] = round(out[f"{kind}_etcd"]["median_ms"]
                                               - out[f"{kind}_local"]["median_ms"], 2)
    return out


def store_costs(cluster: EtcdCluster, states: int) -> dict[str, Any]:
    state = desired_state(64, 4, 4420)
    store = _store(cluster)
    whole, change, load, as_change = [], [], [], []
    host = {"op": "host", "nqn": "nqn.2016-06.io.phoenix:bench0000"}
    for i in range(states):
        t = time.perf_counter()
        store.commit_state(state)
        whole.append(time.perf_counter() - t)
        name = f"nqn.2014-08.org.bench:{i}"
        t = time.perf_counter()
        store.commit_change([{**host, "host": name, "value": {"nqn": name}}])
        change.append(time.perf_counter() - t)
        t = time.perf_counter()
        store.load()
        load.append(time.perf_counter() - t)
        nxt = copy.deepcopy(store.current)
        assert nxt is not None
        sub = nxt.subsystems[host["nqn"]]
        sub.hosts[f"{name}-as"] = Host(nqn=f"{name}-as")
        t = time.perf_counter()
        store.commit_as_change(nxt)
        as_change.append(time.perf_counter() - t)
    head = json.loads(store.client.get(store.keys.head).value)
    _, chunks = store.client.prefix(store.keys.states)
    store.client.close()
    return {"config": "64x4", "runs": states, "commit_state": _ms(whole),
            "commit_change": _ms(change), "load": _ms(load),
            "commit_as_change": _ms(as_change),
            "state_bytes_compressed": sum(len(kv.value) for kv in chunks),
            "state_bytes_json": len(json.dumps(state.to_dict(), separators=(",", ":"))),
            "chunks": int(head.get("chunks", 0) or len(chunks))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200, help="timed calls per kind")
    ap.add_argument("--states", type=int, default=30, help="commit_state runs")
    args = ap.parse_args()
    cluster = EtcdCluster(3)
    try:
        print(json.dumps({"store": store_costs(cluster, args.states)}), flush=True)
        for s, n in ((0, 0), (64, 4)):
            print(json.dumps({"front_latency": front_latency(cluster, args.calls, s, n)}),
                  flush=True)
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
