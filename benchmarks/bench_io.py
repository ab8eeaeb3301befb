"""4 KiB random read/write at a queue depth against one embedded target process.

The target runs as its own process pinned to CPU 0; the initiator (the project's Python
initiator, one or more processes) is pinned to the other CPU(s). Prints IOPS and latency
percentiles per case, as JSON lines and a table.

    python benchmarks/bench_io.py [--seconds 5] [--qd 32] [--procs 1]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nvmf_phoenix.embedded.keeper_client import keeper_status
from nvmf_phoenix.initiator.connection import make_sqe
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn
from nvmf_phoenix.wire import nvme

NQN = "nqn.2016-06.io.spdk:bench"
BS = 4096
NUM_BLOCKS = 65536   # 256 MiB RAM namespace


def start_target(sock: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """The target on CPU 0 (with --crash-transparent its keeper and every worker it
    starts inherit that), configured with one RAM namespace."""
    proc = subprocess.Popen([sys.executable, "-m", "nvmf_phoenix.embedded", "-r", sock, *extra],
                            stdout=subprocess.DEVNULL,
                            preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    c = RpcClient.connect(sock, retry_for=20)
    rb.bdev_malloc_create(c, NUM_BLOCKS, BS, name="M0")
    rn.nvmf_create_transport(c, "TCP")
    rn.nvmf_create_subsystem(c, NQN, allow_any_host=True)
    rn.nvmf_subsystem_add_ns(c, NQN, "M0")
    rn.nvmf_subsystem_add_listener(c, NQN, rn.listen_address("127.0.0.1", port))
    c.close()
    if "--crash-transparent" in extra:
        wait_standby(sock + ".keeper")
    return proc


def wait_standby(ctl: str, timeout: float = 30.0) -> None:
    """Measure the steady state: the keeper starts a standby worker once the first one is
    ready, and that start-up (a Python process importing the target) shares CPU 0 with
    the worker being measured for its first half second."""
    deadline = time.monotonic() + timeout
    while not keeper_status(ctl).get("standby"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no standby worker behind {ctl} within {timeout}s")
        time.sleep(0.02)


def worker(port: int, op: str, qd: int, seconds: float, digests: bool, cpu: int,
           out: mp.Queue) -> None:
    os.sched_setaffinity(0, {cpu})
    h = Host("127.0.0.1", port, NQN, hdgst=digests, ddgst=digests)
    h.create_io_queues(1)
    q = h.io[0]
    payload = os.urandom(BS)
    rng = random.Random(cpu)
    started: dict[int, float] = {}
    lat: list[float] = []
    opcode = nvme.NVM_READ if op == "randread" else nvme.NVM_WRITE

    def submit() -> None:
        lba = rng.randrange(NUM_BLOCKS)
        sqe = make_sqe(opcode, 1, lba, 0, 0)
        cid = q.submit(sqe, data_out=payload if opcode == nvme.NVM_WRITE else None,
                       data_in=BS if opcode == nvme.NVM_READ else 0, flush=False)
        started[cid] = time.perf_counter()

    for _ in range(qd):
        submit()
    q.sock.sendall(q.writer.take())
    end = time.perf_counter() + seconds
    done = 0
    while time.perf_counter() < end:
        for comp in q.poll(1.0):
            if comp.status:
                raise SystemExit(f"I/O error {comp.status:#x}")
            lat.append(time.perf_counter() - started.pop(comp.cid))
            done += 1
            submit()
        if q.writer.out:
            q.sock.sendall(q.writer.take())
    out.put((done, lat))
    h.close()


def run_case(port: int, op: str, qd: int, seconds: float, procs: int, digests: bool) -> dict:
    out: mp.Queue = mp.Queue()
    cpus = sorted(os.sched_getaffinity(0) - {0}) or [0]
    ps = [mp.Process(target=worker, args=(port, op, max(1, qd // procs), seconds, digests,
                                          cpus[i % len(cpus)], out)) for i in range(procs)]
    for p in ps:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in ps]
    for p in ps:
        p.join(timeout=30)
    total = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[1])

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6, 1) if lat else 0.0
    return {"op": op, "qd": qd, "procs": procs, "digests": digests, "seconds": seconds,
            "iops": round(total / seconds), "p50_us": pct(0.50), "p99_us": pct(0.99),
            "p999_us": pct(0.999)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--qd", type=int, default=32)
    ap.add_argument("--procs", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sock = str(Path(tmp) / "bench.sock")
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = start_target(sock, port)
        try:
            rows = [run_case(port, op, args.qd, args.seconds, args.procs, dg)
                    for op in ("randread", "randwrite") for dg in (False, True)]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    for r in rows:
        print(json.dumps(r))
    print(f"{'op':10} {'digests':7} {'qd':>3} {'IOPS':>8} {'p50 us':>8} {'p99 us':>8} "
          f"{'p99.9 us':>9}")
    for r in rows:
        print(f"{r['op']:10} {r['digests']!s:7} {r['qd']:>3} {r['iops']:>8} "
              f"{r['p50_us']:>8} {r['p99_us']:>8} {r['p999_us']:>9}")


if __name__ == "__main__":
    main()
