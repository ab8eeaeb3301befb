"""Hot-standby pair under a real Linux host: what a SIGKILL of the active member costs.

    python benchmarks/bench_pair_realhost.py [--kills 20] [--opts reconnect_delay=1]
                                             [--kind embedded|spdk] [--guest-cpu 1]
                                             [--json]

Debian's kernel under qemu (TCG) finds the pair through discovery and the referral between
the two discovery services (nvme-cli, default connect options unless --opts), runs fio
4 KiB randrw QD8 with crc32c verify on the multipath head, and the active member is
SIGKILLed ``--kills`` times (alternating), each time once both paths are live again. The
pair is tests/pair_lab.py: two targets in a network namespace, the survivor promoted to
``optimized`` by RPC and the dead one restarted as the ``non_optimized`` standby (what the
supervisor's pair mode does). --kind spdk needs $SPDK_NVMF_TGT (and $SPDK_NVMF_TGT_ARGS,
e.g. "-m 0x1 --num-trace-entries 0 --no-huge -s 1024 --disable-cpumask-locks").

Per kill: the worst completion latency of any I/O completing between this kill and the
next (fio's per-I/O log), the longest time with no completion, when the guest saw a path
go down, and when both paths were live again. Also: the worst latency before the first
kill (what TCG costs with no kill at all) and the pair's own failover times.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import realhost
from tests.pair_lab import pair_kind, pair_lab
from tests.realhost_pair import format_report, run_pair


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--opts", default="", help="connect options, kernel names "
                    "(e.g. reconnect_delay=1,ctrl_loss_tmo=60); default: none")
    ap.add_argument("--kind", choices=("embedded", "spdk"), default=pair_kind())
    ap.add_argument("--slow-ms", type=int, default=30,
                    help="latencies from this up are reported one by one by the guest")
    ap.add_argument("--guest-cpu", type=int, default=None,
                    help="run the guest alone on this CPU and the targets on the others, "
                    "as a host on its own machine (default: not pinned)")
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    args = ap.parse_args()
    if args.guest_cpu is not None:
        realhost.pin_guest(args.guest_cpu)
    why = realhost.unavailable_reason()
    if why is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    if args.kind == "spdk" and not os.environ.get("SPDK_NVMF_TGT"):
        print("--kind spdk needs $SPDK_NVMF_TGT", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="phx-pair-") as tmp, \
            pair_lab(Path(tmp), args.kind) as lab:
        rep = run_pair(lab, args.kills, opts=args.opts, slow_ms=args.slow_ms)
        failovers = lab.failovers
    result = rep.summary()
    result.update(kind=args.kind, opts=args.opts or "default",
                  promote_ms_max=round(max(((f.promoted - f.at) * 1000 for f in failovers),
                                           default=0), 1),
                  standby_back_ms_median=round(statistics.median(
                      (f.standby - f.at) * 1000 for f in failovers), 1) if failovers else None,
                  per_kill=[{"member": k.member, "worst_ms": round(k.worst_ms, 1),
                             "gap_ms": k.longest_gap_ms,
                             "both_live_s": None if k.both_live_ms is None
                             else round(k.both_live_ms / 1000, 2)} for k in rep.kills])
    if args.json:
        print(json.dumps(result))
    else:
        print(f"pair of {args.kind} targets, host options: {args.opts or 'default'}")
        print(format_report(rep))
        print(f"failover (SIGKILL -> survivor optimized): max {result['promote_ms_max']} ms; "
              f"SIGKILL -> standby serving again: median {result['standby_back_ms_median']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
