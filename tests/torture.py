"""Torture run: a stream of mutating RPCs and host I/O while the target is SIGKILLed.

Used by tests (small kill count) and by benchmarks/bench_torture.py (hundreds). Returns
what was acknowledged and what was found afterwards: every acknowledged change must be
present, nothing half-present, and every acknowledged write must read back.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from nvmf_phoenix.recovery.supervisor import Supervisor
from nvmf_phoenix.rpc import RpcClient, RpcError
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn
from nvmf_phoenix.target.host import Host
from nvmf_phoenix.target.initiator import NvmeError

DATA_NQN = "nqn.2016-06.io.phx:torture"
BS = 512
BLOCKS = 2048


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connect(port: int, deadline: float) -> Host:
    while True:
        try:
            h = Host("127.0.0.1", port, DATA_NQN, timeout=5)
            h.create_io_queues(1)
            return h
        except (NvmeError, OSError):
            if time.monotonic() > deadline:
                raise
            threading.Event().wait(0.02)   # target restarting: retry the connect


def run_torture(tmp: Path, kills: int, seed: int = 0,
                target_cmd: list[str] | None = None) -> dict[str, Any]:
    """``target_cmd`` defaults to the embedded target; SPDK's nvmf_tgt works the same."""
    rng = random.Random(seed)
    port = _port()
    image = tmp / "torture.img"
    with open(image, "wb") as f:
        f.truncate(BLOCKS * BS)
    sup = Supervisor(target_cmd or [sys.executable, "-m", "nvmf_phoenix.target"],
                     str(tmp / "priv.sock"),
                     str(tmp / "pub.sock"), str(tmp / "state"), ping_interval=0.5,
                     max_restarts=100_000, restart_window=1.0)
    sup.start()
    public = str(tmp / "pub.sock")
    with RpcClient.connect(public) as c:
        rn.nvmf_create_transport(c, "TCP")
        rb.bdev_aio_create(c, str(image), "D0", block_size=BS,
                           uuid="7e57da7a-0000-4000-8000-000000000001")
        rn.nvmf_create_subsystem(c, DATA_NQN, allow_any_host=True)
        rn.nvmf_subsystem_add_ns(c, DATA_NQN, "D0")
        rn.nvmf_subsystem_add_listener(c, DATA_NQN, rn.listen_address("127.0.0.1", port))
    stop = threading.Event()
    acked: list[tuple[str, str]] = []
    failed: list[tuple[str, str, str]] = []
    expected: dict[int, bytes] = {}
    io = {"acked": 0, "mismatches": 0, "reconnects": 0}

    def rpc_stream() -> None:
        with RpcClient.connect(public, timeout=90) as c:
            i = 0
            while not stop.is_set():
                nqn = f"nqn.2016-06.io.phx:stream{i:05d}"
                for method, params in (("nvmf_create_subsystem",
                                        {"nqn": nqn, "serial_number": f"T{i:05d}"}),
                                       ("nvmf_subsystem_add_host",
                                        {"nqn": nqn, "host": f"nqn.2014-08.org.h:{i}"})):
                    try:
                        c.call(method, params)
                        acked.append((method, nqn))
                    except RpcError as err:
                        failed.append((method, nqn, str(err)))
                i += 1

    def host_io() -> None:
        h = _connect(port, time.monotonic() + 60)
        n = 0
        while not stop.is_set():
            blk = rng.randrange(BLOCKS // 8) * 8
            data = os.urandom(8 * BS)
            while True:
                try:
                    h.write(1, blk, data, BS)
                    expected[blk] = data
                    if n % 4 == 0 and expected:
                        rb_ = rng.choice(list(expected))
                        if h.read(1, rb_, 8, BS) != expected[rb_]:
                            io["mismatches"] += 1
                    break
                except (NvmeError, OSError):
                    h.close()
                    io["reconnects"] += 1
                    h = _connect(port, time.monotonic() + 60)
            expected[blk] = data
            io["acked"] += 1
            n += 1
        h.close()

    workers = [threading.Thread(target=rpc_stream), threading.Thread(target=host_io)]
    for w in workers:
        w.start()
    done = 0
    stall: list[float] = []
    try:
        while done < kills:
            stop.wait(rng.uniform(0.05, 0.4))      # pace the kills at random moments
            if not sup.ready.wait(60) or sup.proc is None:
                break
            killed_at = time.monotonic()
            sup.proc.send_signal(signal.SIGKILL)
            done += 1
            while sup.status.restarts < done and sup.status.state != "failed":
                stop.wait(0.01)                    # bounded by the supervisor's restart
                if time.monotonic() - killed_at > 60:
                    break
            stall.append(time.monotonic() - killed_at)
    finally:
        stop.set()
        for w in workers:
            w.join(120)
    with RpcClient.connect(public, timeout=60) as c:
        subs = {s["nqn"]: s for s in rn.nvmf_get_subsystems(c)}
    missing = [(m, n) for m, n in acked if n not in subs or (
        m == "nvmf_subsystem_add_host" and not subs[n]["hosts"])]
    half = [n for n, s in subs.items() if n.startswith("nqn.2016-06.io.phx:stream") and
            s["serial_number"] != "T" + n[-5:]]
    h = _connect(port, time.monotonic() + 30)
    bad = sum(1 for blk, data in expected.items() if h.read(1, blk, 8, BS) != data)
    h.close()
    status = sup.status.to_dict()
    sup.stop()
    sup.store.region.unlink()
    stall.sort()
    return {"kills": done, "restarts": status["restarts"], "state": status["state"],
            "rpc_acked": len(acked), "rpc_failed": failed[:5], "acked_missing": missing,
            "half_present": half, "io_acked": io["acked"],
            "io_mismatches": io["mismatches"] + bad, "io_reconnects": io["reconnects"],
            "kill_to_ready_median_s": round(stall[len(stall) // 2], 3) if stall else None,
            "kill_to_ready_worst_s": round(stall[-1], 3) if stall else None}
