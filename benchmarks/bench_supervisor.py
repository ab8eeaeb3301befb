"""Supervisor: SIGKILL to restored and listening, the front's added latency, torture.

    python benchmarks/bench_supervisor.py [--runs 50] [--configs 1x1,64x4] [--calls 2000]
                                          [--kills 100] [--target-cmd "nvmf_tgt -m 0x1"]

1. Kill to restored: a supervised target holding a configuration of S subsystems x N
   namespaces (malloc bdevs, explicit identities, ANA reporting, one TCP listener each) is
   SIGKILLed ``--runs`` times while idle. Per kill: time to the supervisor's "ready"
   (restarted with --wait-for-rpc, restored, re-captured and verified equal) and time until
   a host (the project's initiator, retrying every 5 ms) completes an NVMe/TCP Connect and
   Identify on the first subsystem's listener; and the two parts of a restart: process
   start to RPC answering, and restore (plan, pipelined calls, re-capture, compare).
2. Front latency: the same calls one at a time, directly on the target's private socket
   and through the supervisor's public socket; read-only pass-through, and mutations
   (intent written + forward + read-back + change journaled + outcome fsync before the
   answer: nvmf_create_subsystem, nvmf_subsystem_add_ns and nvmf_subsystem_add_host,
   each undone by an untimed inverse call so the configuration keeps its size) on an
   empty target and on one holding the 64x4 configuration.
3. Torture (tests/torture.py): a stream of mutating RPCs and verified host I/O while the
   target is SIGKILLed ``--kills`` times at random moments; integrity counts and
   kill-to-ready times under load.

With --target-cmd the same runs against another nvmf_tgt-compatible binary
(``-r SOCKET --wait-for-rpc`` are appended), e.g. a real SPDK nvmf_tgt.
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_restore import desired_state
from nvmf_phoenix.initiator.connection import NvmeError
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.recovery.restore import restore
from nvmf_phoenix.recovery.supervisor import Supervisor
from nvmf_phoenix.rpc import RpcClient

from tests.target_fixture import free_port
from tests.torture import run_torture


@contextmanager
def supervisor(cmd: list[str], subsystems: int = 0, per_sub: int = 0,
               port: int = 0) -> Iterator[tuple[Supervisor, str, str]]:
    """A supervised target loaded with ``subsystems`` x ``per_sub`` and checkpointed."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        pub, priv = f"{d}/pub.sock", f"{d}/priv.sock"
        # Kills come faster than any real crash loop: no crash-loop guard or backoff.
        sup = Supervisor(cmd, priv, pub, f"{d}/state", drift_interval=3600,
                         max_restarts=1_000_000, restart_window=1e-3)
        sup.start()
        try:
            if subsystems:
                with RpcClient.connect(priv, timeout=120) as c:
                    report = restore(c, desired_state(subsystems, per_sub, port))
                    assert report.ok, report.summary()
                with sup.front.lock:
                    sup.front.checkpoint()
            yield sup, pub, priv
        finally:
            sup.stop()
            sup.store.region.unlink()


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p))]


def kill_to_restored(cmd: list[str], runs: int, subsystems: int, per_sub: int
                     ) -> dict[str, Any]:
    port = free_port()
    nqn = "nqn.2016-06.io.phoenix:bench0000"
    ready, host, start_s, restore_s = [], [], [], []
    with supervisor(cmd, subsystems, per_sub, port) as (sup, _, _):
        for _ in range(runs):
            assert sup.proc is not None
            gen = sup.generation
            killed = time.monotonic()
            sup.proc.send_signal(signal.SIGKILL)
            while True:
                try:
                    Host("127.0.0.1", port, nqn, timeout=2).close()
                    break
                except (NvmeError, OSError):
                    if time.monotonic() - killed > 60:
                        raise
                    time.sleep(0.005)            # benchmark pacing, not synchronisation
            host.append(time.monotonic() - killed)
            while sup.generation == gen and time.monotonic() - killed < 60:
                time.sleep(0.001)
            ready.append(sup.status.ready_at - killed)
            start_s.append(sup.status.last_start_s)
            restore_s.append(sup.status.last_restore_s)
        assert sup.status.restarts == runs and sup.status.state == "ready"
    ms = {"ready": ready, "host_connect": host, "process_start": start_s,
          "restore": restore_s}
    out: dict[str, Any] = {"config": f"{subsystems}x{per_sub}", "runs": runs}
    for k, v in ms.items():
        out[f"{k}_median_ms"] = round(statistics.median(v) * 1000, 1)
        out[f"{k}_p90_ms"] = round(pct(v, 0.9) * 1000, 1)
        out[f"{k}_worst_ms"] = round(max(v) * 1000, 1)
    return out


def latency(sock: str, method: str, n: int,
            params: Callable[[int], dict[str, Any]] | None = None,
            undo: Callable[[int], tuple[str, dict[str, Any]]] | None = None) -> list[float]:
    """Time ``n`` calls one at a time; ``undo`` (untimed) after each keeps the
    configuration the same size throughout."""
    with RpcClient.connect(sock) as c:
        samples = []
        for i in range(n):
            t = time.perf_counter()
            c.call(method, params(i) if params else None)
            samples.append(time.perf_counter() - t)
            if undo is not None:
                c.call(*undo(i))
    return samples


LAT = "nqn.2016-06.io.phx:lat"


def mutations(where: str) -> dict[str, tuple[str, Callable[[int], dict[str, Any]],
                                             Callable[[int], tuple[str, dict[str, Any]]]]]:
    """Timed call and untimed undo for each kind of mutation measured: the undo keeps
    the configuration the same size throughout."""
    def sub(i: int) -> str:
        return f"{LAT}-{where}{i}"

    return {
        "create_subsystem": ("nvmf_create_subsystem", lambda i: {"nqn": sub(i)},
                             lambda i: ("nvmf_delete_subsystem", {"nqn": sub(i)})),
        "add_ns": ("nvmf_subsystem_add_ns",
                   lambda i: {"nqn": LAT, "namespace": {"bdev_name": "LAT0", "nsid": 1}},
                   lambda i: ("nvmf_subsystem_remove_ns", {"nqn": LAT, "nsid": 1})),
        "add_host": ("nvmf_subsystem_add_host",
                     lambda i: {"nqn": LAT, "host": f"nqn.2014-08.org.lat:{where}{i}"},
                     lambda i: ("nvmf_subsystem_remove_host",
                                {"nqn": LAT, "host": f"nqn.2014-08.org.lat:{where}{i}"})),
    }


def front_latency(cmd: list[str], calls: int, subsystems: int, per_sub: int
                  ) -> dict[str, Any]:
    out: dict[str, Any] = {"config": f"{subsystems}x{per_sub}"}
    with supervisor(cmd, subsystems, per_sub, free_port()) as (_, pub, priv):
        if not subsystems:
            for where, sock in (("direct", priv), ("front", pub)):
                s = latency(sock, "spdk_get_version", calls)
                out[f"read_{where}_median_us"] = round(statistics.median(s) * 1e6, 1)
                out[f"read_{where}_p99_us"] = round(pct(s, 0.99) * 1e6, 1)
            out["read_added_median_us"] = round(out["read_front_median_us"] -
                                                out["read_direct_median_us"], 1)
        with RpcClient.connect(pub) as c:
            c.call("bdev_malloc_create", {"name": "LAT0", "num_blocks": 64, "block_size": 512})
            c.call("nvmf_create_subsystem", {"nqn": LAT})
        n = max(20, calls // 20)
        for kind in mutations(""):
            for where, sock in (("direct", priv), ("front", pub)):
                method, params, undo = mutations(where)[kind]
                s = latency(sock, method, n, params, undo)
                out[f"{kind}_{where}_median_us"] = round(statistics.median(s) * 1e6, 1)
                out[f"{kind}_{where}_p99_us"] = round(pct(s, 0.99) * 1e6, 1)
            out[f"{kind}_added_median_us"] = round(out[f"{kind}_front_median_us"] -
                                                   out[f"{kind}_direct_median_us"], 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50, help="SIGKILLs per configuration")
    ap.add_argument("--configs", default="1x1,64x4", help="SUBSYSTEMSxNAMESPACES,...")
    ap.add_argument("--calls", type=int, default=2000, help="read calls per latency run")
    ap.add_argument("--kills", type=int, default=100, help="SIGKILLs in the torture run")
    ap.add_argument("--target-cmd", default=f"{sys.executable} -m nvmf_phoenix.embedded")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: "
                    "kill,latency,torture")
    args = ap.parse_args()
    cmd = shlex.split(args.target_cmd)
    skip = set(args.skip.split(","))
    if "kill" not in skip:
        for conf in args.configs.split(","):
            s, n = (int(x) for x in conf.split("x"))
            print(json.dumps({"kill_to_restored": kill_to_restored(cmd, args.runs, s, n)}),
                  flush=True)
    if "latency" not in skip:
        for s, n in ((0, 0), (64, 4)):
            print(json.dumps({"front_latency": front_latency(cmd, args.calls, s, n)}),
                  flush=True)
    if "torture" not in skip:
        with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
            res = run_torture(Path(d), kills=args.kills, seed=11, target_cmd=cmd)
        res["rpc_failed"] = len(res["rpc_failed"])
        res["restores_incomplete"] = len(res["restores_incomplete"])
        del res["to_ready_s"], res["host_stalls_s"]   # per kill: soak_supervised.py
        print(json.dumps({"torture": res}), flush=True)


if __name__ == "__main__":
    main()
