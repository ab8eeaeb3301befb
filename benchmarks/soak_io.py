"""Soak: verified I/O from `nvmf-phoenix io` while the serving process is SIGKILLed N times.

Everything a user would run, nothing else: the target is `nvmf-phoenix target
--crash-transparent` (``--mode transparent``: the serving worker is killed, the host must
see nothing) or `nvmf-phoenix supervise` (``--mode supervised``: the target process is
killed, the supervisor restarts and restores it, the host reconnects; ``--target-cmd``
runs SPDK's nvmf_tgt instead of the embedded target). The namespace of the supervised
target is a file (aio bdev), so data written before a kill must read back after it.

Between kills the script waits until the target serves again (a ready standby worker; a
supervisor back to "ready") and then a random 0..--max-delay seconds. At the end it stops
the I/O with SIGINT, takes `io --json`'s summary and prints: kills, errors, mismatches,
reconnects, and the distribution of the host-visible stalls over 10 ms (every one the
run saw, kills and anything else).

    python benchmarks/soak_io.py --mode transparent --kills 1000
    python benchmarks/soak_io.py --mode supervised --kills 100 \\
        --target-cmd "/usr/local/bin/nvmf_tgt -m 0x1 --num-trace-entries 0"
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nvmf_phoenix.embedded.keeper_client import keeper_status
from nvmf_phoenix.rpc import RpcClient

BIN = Path(sys.executable).parent
NQN = "nqn.2016-06.io.spdk:soak"


def _cli(*args: str) -> list[str]:
    return [str(BIN / "nvmf-phoenix"), *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``cond`` every 20 ms; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"soak: timed out waiting for {what}")
        time.sleep(0.02)


def _configure(sock: str, port: int, disk: str | None) -> None:
    with RpcClient.connect(sock, timeout=30, retry_for=30) as c:
        c.call("nvmf_create_transport", {"trtype": "TCP"})
        if disk:
            c.call("bdev_aio_create", {"filename": disk, "name": "Disk0", "block_size": 4096})
        else:
            c.call("bdev_malloc_create", {"name": "Disk0", "num_blocks": 16384,
                                          "block_size": 4096})
        c.call("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True,
                                         "serial_number": "SOAK0001"})
        c.call("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Disk0"}})
        c.call("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": {
            "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": str(port)}})


def _serving(sock: str, mode: str, after: int) -> Callable[[], bool]:
    """Serving again since the ``after``-th takeover or restart, with a standby ready
    (polled in-process: a CLI process every few milliseconds would load the machine
    and lengthen the very stalls being measured)."""
    def check() -> bool:
        if mode == "transparent":
            k = keeper_status(sock + ".keeper", timeout=5)
            return bool(k["ready"] and k["standby"] and k["takeovers"] - 1 >= after)
        with RpcClient.connect(sock, timeout=5) as c:
            sup = c.call("phoenix_status")
        return bool(sup["state"] == "ready" and sup["restarts"] >= after)
    return check


def _victim(sock: str, mode: str, supervisor: int) -> int:
    """The process serving I/O: the keeper's active worker, or the supervisor's target
    (what `nvmf-phoenix status --pid` prints)."""
    if mode == "transparent":
        return int(keeper_status(sock + ".keeper", timeout=5)["active"])
    kids = []
    for task in Path(f"/proc/{supervisor}/task").glob("*/children"):
        kids += [int(x) for x in task.read_text().split()]
    if len(kids) != 1:
        raise SystemExit(f"soak: supervisor {supervisor} has children {kids}, not one")
    return kids[0]


def soak(mode: str, kills: int, seconds_between: float, qd: int, queues: int,
         target_cmd: str | None, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="phx-soak-", dir="/var/tmp") as d:
        sock = f"{d}/rpc.sock"
        disk = None
        if mode == "transparent":
            cmd = _cli("target", "--crash-transparent", "-r", sock)
        else:
            disk = f"{d}/disk.img"
            with open(disk, "wb") as f:
                f.truncate(64 << 20)
            cmd = _cli("supervise", "-s", sock, "--target-socket", f"{d}/target.sock",
                       "-d", f"{d}/state", "--max-restarts", str(kills + 10))
            if target_cmd:
                cmd += ["--target-cmd", target_cmd]
        # The target's output and io's progress lines, in one log.
        log = open(f"{d}/target.log", "w", buffering=1)   # noqa: SIM115  (closed below)
        target = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        io = None
        try:
            _configure(sock, port, disk)
            _until(_serving(sock, mode, 0), 60, "the target")
            io = subprocess.Popen(_cli("io", "-s", str(port), "-n", NQN, "--verify",
                                       "--json", "-q", str(qd), "-P", str(queues),
                                       "-T", str(10 ** 7), "-o", "4k"),
                                  stdout=subprocess.PIPE, stderr=log, text=True)
            _until(lambda: "io:" in Path(f"{d}/target.log").read_text(), 60,
                   "I/O flowing (io's first progress line)")
            done = 0
            for n in range(1, kills + 1):
                time.sleep(rng.uniform(0.0, seconds_between))   # a random moment
                os.kill(_victim(sock, mode, target.pid), signal.SIGKILL)
                _until(_serving(sock, mode, n), 120, f"the target after kill {n}")
                done = n
                if io.poll() is not None:
                    break
                if n % 50 == 0:
                    print(f"soak: {n} kills", file=sys.stderr, flush=True)
            # The host's view of the last kill ends with its first completions after it.
            time.sleep(2.0)
            io.send_signal(signal.SIGINT)
            out, _ = io.communicate(timeout=300)
        finally:
            for p in (io, target):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(60)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait(10)
            log.close()
            if mode == "supervised":
                subprocess.run(_cli("checkpoint", "drop", "-d", f"{d}/state"),
                               capture_output=True, timeout=60)
    summary = json.loads(out)
    ms = sorted(s["ms"] for s in summary.pop("stalls"))

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(len(ms) * p / 100))] if ms else 0.0
    return {"mode": mode, "kills": done, "io_exit": io.returncode, **{
        k: summary[k] for k in ("seconds", "ios", "iops", "errors", "mismatches",
                                "reconnects", "read_back", "longest_stall_ms",
                                "stalls_over_10ms", "latency_us")},
        "stall_ms": {"count": len(ms), "median": round(statistics.median(ms), 1) if ms else 0.0,
                     "p90": pct(90), "p99": pct(99), "max": ms[-1] if ms else 0.0}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("transparent", "supervised"), default="transparent")
    ap.add_argument("--kills", type=int, default=100)
    ap.add_argument("--max-delay", type=float, default=0.5, metavar="SECONDS",
                    help="longest random wait before each kill, once serving again")
    ap.add_argument("--qd", type=int, default=32)
    ap.add_argument("--queues", type=int, default=2)
    ap.add_argument("--target-cmd", help="supervised: target command (SPDK's nvmf_tgt)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    result = soak(args.mode, args.kills, args.max_delay, args.qd, args.queues,
                  args.target_cmd, args.seed)
    print(json.dumps(result, indent=2))
    ok = result["errors"] == 0 and result["mismatches"] == 0 and result["io_exit"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
