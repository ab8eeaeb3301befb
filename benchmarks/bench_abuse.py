"""Abuse against a running target: memory it costs and what a good host sees meanwhile.

    python benchmarks/bench_abuse.py [--idle 10000] [--slow-rpc 100] [--seconds 5]

One embedded target process (configured as tests/pdu_fuzz_live.configure does); a good
host doing verified 4 KiB writes and reads on its own subsystem all along (latency per
write+read pair). Phases, each ``--seconds`` long after setup:

1. baseline: the good host alone;
2. idle flood: ``--idle`` TCP connections that never complete a Connect (a third bare, a
   third with an ICReq, a third with half a PDU); target RSS before and after;
3. slow RPC clients: ``--slow-rpc`` clients trickling requests one byte every 50 ms, one
   sending a request that never ends, 20 that connect and never send; a bystander RPC
   client's call latency, the target's CPU time and RSS;
4. a host that never reads: an I/O queue sending reads of 64 KiB and never reading.

Memory from /proc/<pid>/status (VmRSS), CPU from /proc/<pid>/stat. Numbers are
provisional on a shared 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.wire import nvme, pdu

from tests.pdu_fuzz import NQN, PduBuilder, session
from tests.pdu_fuzz_live import GoodHost, configure
from tests.target_fixture import free_port
from tests.target_process import TargetProcess


def rss(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith("VmRSS:"))


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def window(good: GoodHost, seconds: float) -> dict[str, float]:
    """The good host's write+read latency over the next ``seconds``."""
    start = len(good.latencies)
    time.sleep(seconds)   # a measurement window, not synchronisation
    lat = sorted(good.latencies[start:]) or [0.0]
    return {"ops": len(lat), "p50_ms": round(statistics.median(lat) * 1e3, 2),
            "p99_ms": round(lat[int(len(lat) * 0.99)] * 1e3, 2),
            "max_ms": round(lat[-1] * 1e3, 2)}


def idle_flood(port: int, n: int) -> list[socket.socket]:
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall([b"", pdu.ic_req(), pdu.ic_req()[:70]][i % 3])
        socks.append(s)
    return socks


def slow_rpc(sock: str, n: int, stop: threading.Event) -> list[socket.socket]:
    """n trickling clients (one thread feeds them all), an endless one, silent ones."""
    clients = []
    for _ in range(n + 21):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        clients.append(s)
    req = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "spdk_get_version"}).encode()

    def feed() -> None:
        i = 0
        while not stop.wait(0.05):
            for s in clients[:n]:
                with contextlib.suppress(OSError):
                    s.send(req[i % len(req):i % len(req) + 1])
            with contextlib.suppress(OSError):
                clients[n].send(b'{"jsonrpc":"2.0","id":1,"method":"x","params":"' if i == 0
                                else b"a" * 4096)
            i += 1
    threading.Thread(target=feed, daemon=True).start()
    return clients


def bystander(sock: str, stop: threading.Event, out: list[float], errors: list[str]) -> None:
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            with RpcClient.connect(sock, timeout=30) as c:
                c.call("spdk_get_version")
            out.append(time.monotonic() - t0)
        except Exception as exc:
            errors.append(repr(exc))
        stop.wait(0.02)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--idle", type=int, default=10000)
    p.add_argument("--slow-rpc", type=int, default=100)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.idle + 1024), hard))
    res: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tp = TargetProcess(str(Path(tmp) / "spdk.sock"))
        pid = tp.proc.pid
        try:
            port = free_port()
            with RpcClient.connect(tp.sock) as c:
                configure(c, port, fuzz_blocks=1 << 15)
            good = GoodHost("127.0.0.1", port).start()
            c0 = cpu(pid)
            res["baseline"] = {"rss_mib": round(rss(pid), 1), **window(good, args.seconds),
                               "target_cpu_s": round(cpu(pid) - c0, 2)}

            before, t0 = rss(pid), time.monotonic()
            flood = idle_flood(port, args.idle)
            res["idle_flood"] = {"connections": args.idle,
                                 "open_s": round(time.monotonic() - t0, 2),
                                 **window(good, args.seconds),
                                 "rss_mib": round(rss(pid), 1)}
            res["idle_flood"]["kib_per_connection"] = round(  # type: ignore[index]
                (rss(pid) - before) * 1024 / args.idle, 2)
            for s in flood:
                s.close()

            stop = threading.Event()
            calls: list[float] = []
            errors: list[str] = []
            clients = slow_rpc(tp.sock, args.slow_rpc, stop)
            threading.Thread(target=bystander, args=(tp.sock, stop, calls, errors),
                             daemon=True).start()
            c0 = cpu(pid)
            w = window(good, args.seconds)
            stop.set()
            calls.sort()
            res["slow_rpc"] = {"clients": args.slow_rpc, **w,
                               "target_cpu_s": round(cpu(pid) - c0, 2),
                               "rss_mib": round(rss(pid), 1),
                               "bystander_calls": len(calls),
                               "bystander_errors": len(errors),
                               "bystander_max_ms": round((calls or [0])[-1] * 1e3, 1)}
            for s in clients:
                s.close()

            before = rss(pid)
            admin = Host("127.0.0.1", port, NQN)
            admin.set_features(nvme.FEAT_NUM_QUEUES, 1 | (1 << 16))
            deaf = socket.create_connection(("127.0.0.1", port))
            deaf.sendall(b"".join(f.encode(False, False)
                                  for f in session("io", cntlid=admin.cntlid).frames[:2]))
            b = PduBuilder(False, False)
            b.raw = bytearray()
            for _ in range(30):
                b.io(nvme.NVM_READ, 1, 0, 128, data_in=128 * 512)
            deaf.settimeout(2)
            sent = 0
            try:
                while sent < 100000:
                    deaf.sendall(bytes(b.raw))
                    sent += 30
            except OSError:
                pass
            res["deaf_host"] = {"reads_sent": sent, **window(good, args.seconds),
                                "rss_growth_mib": round(rss(pid) - before, 1)}
            deaf.close()
            admin.close()
            good.stop()
            res["good_host_error"] = good.error
            res["good_host_mismatches"] = good.mismatches
        finally:
            tp.stop()
    print(json.dumps(res))
    return 0 if res.get("good_host_error") is None else 1


if __name__ == "__main__":
    sys.exit(main())
