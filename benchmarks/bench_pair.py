"""Hot-standby pair: what a SIGKILL of the active costs, and what the standby costs idle.

Part 1 (``--kills N``): a pair under the supervisor (embedded targets, or SPDK nvmf_tgt
with ``--target-cmd``), configured with one aio namespace on a shared file and a
discovery listener; the active member is SIGKILLed N times, each once the pair is
redundant again. Per kill: death to the standby's listeners ``optimized`` (the
supervisor's failover), and death to a new standby ready (redundancy back). With
``--io`` the project's multipath initiator runs verified I/O through discovery during the
kills, and the stall per kill (longest gap between completions spanning it) is reported
with errors and mismatches.

Part 2 (``--idle S``): CPU time and resident memory of each member over S idle seconds
(the standby's cost), e.g. SPDK with and without ``--interrupt-mode``.

    python benchmarks/bench_pair.py --kills 50 --io --idle 10
    python benchmarks/bench_pair.py --target-cmd "nvmf_tgt -m 0x1 --no-huge -s 1024 \
        --num-trace-entries 0 --disable-cpumask-locks" --kills 20 --idle 10
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvmf_phoenix.initiator.mpworkload import MultipathWorkload
from nvmf_phoenix.initiator.multipath import MultipathHost
from nvmf_phoenix.recovery.pair import PairSupervisor
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn

from tests.target_fixture import free_port
from tests.waiting import wait_for

NQN = "nqn.2016-06.io.phx:benchpair"
DISCOVERY = "nqn.2014-08.org.nvmexpress.discovery"


def configure(c: RpcClient, image: Path, port: int, disc: int) -> None:
    image.write_bytes(b"\0" * (64 << 20))
    rn.nvmf_create_transport(c, "TCP")
    rb.bdev_aio_create(c, str(image), "D0", 4096,
                       uuid="be0c0000-0000-4000-8000-000000000001")
    rn.nvmf_create_subsystem(c, NQN, serial_number="BENCHPAIR", allow_any_host=True)
    rn.nvmf_subsystem_add_ns(c, NQN, "D0")
    addr = {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1"}
    rn.nvmf_subsystem_add_listener(c, NQN, {**addr, "trsvcid": str(port)})
    rn.nvmf_subsystem_add_listener(c, DISCOVERY, {**addr, "trsvcid": str(disc)})


def ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def idle_cost(pair: PairSupervisor, seconds: float) -> dict[str, Any]:
    pids = {n: m.proc.pid for n, m in pair.members.items() if m.proc is not None}
    before = {n: ticks(p) for n, p in pids.items()}
    time.sleep(seconds)            # measuring idle cost: the wait is the measurement
    hz = os.sysconf("SC_CLK_TCK")
    return {n: {"role": pair.members[n].role,
                "cpu_percent": round(100 * (ticks(p) - before[n]) / hz / seconds, 1),
                "rss_mib": round(rss_kib(p) / 1024, 1)} for n, p in pids.items()}


def kills(pair: PairSupervisor, n: int, wl: MultipathWorkload | None = None,
          mp: MultipathHost | None = None) -> dict[str, Any]:
    """Kill the active ``n`` times, each once the pair (and the host's paths) are
    redundant again. With a workload: the stall each kill cost it (the longest gap
    between completions that began within 2 s after the kill)."""
    failover, redundant, stalls = [], [], []
    for _ in range(n):
        wait_for(lambda: pair.status_dict()["redundant"] and
                 (mp is None or all(p["live"] for p in mp.paths())),
                 timeout=60, what="redundant")
        active = pair.members[pair.active]
        before = pair.status.failovers
        assert active.proc is not None
        killed_at = time.monotonic()
        os.kill(active.proc.pid, signal.SIGKILL)

        def failed_over(n: int = before + 1) -> bool:
            return pair.status.failovers == n

        wait_for(failed_over, timeout=30, what="failover")
        wait_for(lambda: pair.status_dict()["redundant"], timeout=60, what="redundant")
        failover.append(pair.status.last_failover_s * 1e3)
        redundant.append(pair.status.last_redundant_s)
        if wl is not None:
            def io_goes_on(n: int = wl.stats.completed + 50) -> bool:
                return wl is not None and wl.stats.completed > n

            wait_for(io_goes_on, timeout=30, what="I/O")
            # A gap is recorded at the completion that ends it: (end, length).
            stalls.append(max([g for end, g in wl.stats.gaps
                               if killed_at <= end - g + 0.001 <= killed_at + 2.0] or
                              [0.0]) * 1e3)
    out: dict[str, Any] = {
        "kills": n, "failovers": pair.status.failovers,
        "failover_ms_median": round(statistics.median(failover), 2),
        "failover_ms_max": round(max(failover), 2),
        "redundant_again_s_median": round(statistics.median(redundant), 3),
        "redundant_again_s_max": round(max(redundant), 3)}
    if wl is not None:
        out.update(stall_ms_median=round(statistics.median(stalls), 1),
                   stall_ms_max=round(max(stalls), 1), **wl.report())
    return out


def with_io(pair: PairSupervisor, disc: int, n: int) -> dict[str, Any]:
    with MultipathHost.from_discovery("127.0.0.1", disc, subnqn=NQN,
                                      reconnect_delay=0.2) as mp:
        wl = MultipathWorkload(mp, 1, 4096, 4096, qd=8, seed=3, gap_threshold=0.002)
        stop = threading.Event()
        runner = threading.Thread(target=lambda: (wl.run(3600, stop=stop.is_set),
                                                  wl.drain()))
        runner.start()
        try:
            return kills(pair, n, wl, mp)
        finally:
            stop.set()
            runner.join(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target-cmd", default=f"{sys.executable} -m nvmf_phoenix.embedded")
    ap.add_argument("--standby-target-cmd", help="member b's command (default: the same)")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--idle", type=float, default=0, metavar="SECONDS")
    ap.add_argument("--io", action="store_true", help="verified multipath I/O during the "
                    "kills; report the stall each kill cost it")
    args = ap.parse_args()
    cmd = shlex.split(args.target_cmd)
    cmd_b = shlex.split(args.standby_target_cmd) if args.standby_target_cmd else cmd
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        pair = PairSupervisor((cmd, cmd_b), (str(t / "a.sock"), str(t / "b.sock")),
                              str(t / "public.sock"), str(t / "state"), max_restarts=10**6)
        pair.start()
        try:
            disc = free_port()
            with RpcClient.connect(str(t / "public.sock")) as c:
                configure(c, t / "disk.img", free_port(), disc)
            if args.idle:
                print(json.dumps({"idle": idle_cost(pair, args.idle)}))
            if args.kills:
                print(json.dumps(with_io(pair, disc, args.kills) if args.io
                                 else kills(pair, args.kills)))
        finally:
            pair.stop()
            pair.store.region.unlink()


if __name__ == "__main__":
    main()
