"""Soak: verified I/O against a crash-transparent target whose worker is SIGKILLed N times.

    python benchmarks/soak_transparent.py [--kills 1000] [--round 100] [--qd 32]

Starts ``nvmf-phoenix target --crash-transparent`` (one 64 MiB RAM namespace on loopback)
and runs the project's verified workload (initiator/workload.py: mixed 4-32 KiB reads and
writes at QD 32 over two I/O queues, every read checked against what was last written
there) while the serving worker is SIGKILLed at random moments, each once a standby is
ready (tests/transparent_target.torture does the killing and measuring). The kills come in
rounds of ``--round``; each round connects afresh, starts from zeroed blocks and ends by
reading back every block it wrote, so one failed round is reported and the soak goes on.

Printed per round and at the end: kills, commands, I/O errors, data mismatches, blocks
unreadable at the end, reconnects (queue pairs the target had to create beyond the ones
the soak opens: a host that lost its connection makes new ones), rounds that failed, and
the distribution of the host-visible stall of each kill (the gap between completions that
spans it; gaps under 1 ms are counted as 1 ms). The target's own count of completed I/O
(nvmf_get_stats, kept across takeovers) is compared with the host's.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvmf_phoenix.initiator.host import Host

from tests.target_fixture import HOSTNQN, NQN
from tests.transparent_target import TransparentTarget, torture, transparent_target

BLOCKS = 4096          # the blocks the workload uses (torture's range), zeroed per round


def distribution(samples: list[float]) -> dict[str, float]:
    """p50/p90/p99/max of samples in seconds, as milliseconds."""
    if not samples:
        return {}
    s = sorted(samples)

    def at(p: float) -> float:
        return round(s[min(len(s) - 1, int(len(s) * p))] * 1000, 1)
    return {"p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99),
            "max_ms": round(s[-1] * 1000, 1)}


def _counters(t: TransparentTarget) -> dict[str, int]:
    with t.rpc() as c:
        (group,) = c.call("nvmf_get_stats")["poll_groups"]
    return {k: int(group[k]) for k in ("admin_qpairs", "io_qpairs", "completed_nvme_io")}


def _zero(t: TransparentTarget) -> None:
    """Every block the workload may read back is zero again (what it expects of a block
    it has not written)."""
    with Host("127.0.0.1", t.port, NQN, hostnqn=HOSTNQN) as h:
        h.create_io_queues(1)
        h.write_zeroes(1, 0, BLOCKS)


def soak(kills: int, per_round: int, qd: int, queues: int, seed: int,
         progress: bool = True) -> dict[str, Any]:
    totals: dict[str, Any] = {"kills": 0, "commands": 0, "errors": 0, "mismatches": 0,
                              "unreadable": 0, "failed_rounds": []}
    stalls: list[float] = []
    host_io = opened = 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, transparent_target(Path(tmp)) as t:
        t.configure()
        rnd = 0
        while totals["kills"] < kills:
            rnd += 1
            n = min(per_round, kills - totals["kills"])
            try:
                _zero(t)
                host_io += 1                  # the Write Zeroes
                opened += 2 + 1 + queues      # its admin and I/O queue, then torture's
                r = torture(t, kills=n, qd=qd, queues=queues, max_nlb=8,
                            seed=seed + rnd, gap_threshold=0.001)
            except Exception as exc:   # one bad round is a finding, not the end
                totals["failed_rounds"].append(f"round {rnd}: {exc!r}"[:500])
                totals["kills"] += n   # at most n were made; the round counts as done
                continue
            host_io += r["completed"] + r["verified"]
            totals["kills"] += r["kills"]
            totals["commands"] += r["completed"]
            for k in ("errors", "mismatches", "unreadable"):
                totals[k] += r[k]
            stalls += r["stalls"]
            if progress:
                print(json.dumps({"round": rnd, "kills": totals["kills"],
                                  "commands": r["completed"], "errors": r["errors"],
                                  "mismatches": r["mismatches"],
                                  "stall": distribution(r["stalls"])}), flush=True)
        counted = _counters(t)
    totals["reconnects"] = counted["admin_qpairs"] + counted["io_qpairs"] - opened
    totals["target_completed_io"] = counted["completed_nvme_io"]
    totals["host_completed_io"] = host_io
    totals["stall"] = distribution(stalls)
    totals["stalls_measured"] = len(stalls)
    totals["seconds"] = round(time.monotonic() - started, 1)
    return totals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=1000, help="SIGKILLs of the worker")
    ap.add_argument("--round", type=int, default=100, help="kills per round")
    ap.add_argument("--qd", type=int, default=32, help="queue depth (over all queues)")
    ap.add_argument("--queues", type=int, default=2, help="I/O queues")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    result = soak(args.kills, args.round, args.qd, args.queues, args.seed)
    print(json.dumps({"soak_transparent": result}), flush=True)
    ok = not (result["errors"] or result["mismatches"] or result["unreadable"] or
              result["failed_rounds"] or result["reconnects"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
