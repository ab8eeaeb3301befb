"""Supervisor: SIGKILL-to-ready times under load, and the latency the RPC front adds.

    python benchmarks/bench_supervisor.py [--kills 100] [--calls 2000] [--target-cmd CMD]

With --target-cmd both parts run against another nvmf_tgt-compatible binary (e.g. a real
SPDK nvmf_tgt; the supervisor appends ``-r SOCKET --wait-for-rpc``).

1. Torture (tests/torture.py): a stream of mutating RPCs and verified host I/O (the
   project's initiator) while the embedded target is SIGKILLed ``--kills`` times at random
   moments; prints kill-to-ready median/worst and the integrity counts.
2. Front latency: the same call sequentially through the public (front) socket and
   directly on the target's private socket; read-only pass-through and mutating calls
   (journal fsync + capture + checkpoint before the answer).
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvmf_phoenix.recovery.supervisor import Supervisor
from nvmf_phoenix.rpc import RpcClient

from tests.torture import run_torture


def latency(sock: str, method: str, n: int, params_fn=None) -> float:  # type: ignore[no-untyped-def]
    with RpcClient.connect(sock) as c:
        samples = []
        for i in range(n):
            t = time.perf_counter()
            c.call(method, params_fn(i) if params_fn else None)
            samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def front_latency(calls: int, target_cmd: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        pub, priv = f"{d}/pub.sock", f"{d}/priv.sock"
        sup = Supervisor(target_cmd, priv, pub, f"{d}/state")
        sup.start()
        try:
            out = {"read_direct_us": latency(priv, "spdk_get_version", calls),
                   "read_front_us": latency(pub, "spdk_get_version", calls)}
            mk = calls // 10

            def sub(prefix: str):  # type: ignore[no-untyped-def]
                return lambda i: {"nqn": f"nqn.2016-06.io.phx:{prefix}{i}"}
            out["mutate_direct_us"] = latency(priv, "nvmf_create_subsystem", mk, sub("d"))
            out["mutate_front_us"] = latency(pub, "nvmf_create_subsystem", mk, sub("f"))
        finally:
            sup.stop()
            sup.store.region.unlink()
    out["read_added_us"] = out["read_front_us"] - out["read_direct_us"]
    out["mutate_added_us"] = out["mutate_front_us"] - out["mutate_direct_us"]
    return {k: round(v, 1) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--target-cmd", default=f"{sys.executable} -m nvmf_phoenix.target")
    args = ap.parse_args()
    cmd = shlex.split(args.target_cmd)
    print(json.dumps({"front_latency": front_latency(args.calls, cmd)}))
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        print(json.dumps({"torture": run_torture(Path(d), kills=args.kills, seed=11,
                                                 target_cmd=cmd)}))


if __name__ == "__main__":
    main()
