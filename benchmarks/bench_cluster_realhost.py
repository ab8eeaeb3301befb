"""Node deaths in a three-node cluster under a real Linux host: what each costs.

    python benchmarks/bench_cluster_realhost.py [--deaths 4] [--how loud|silent]
                                                [--opts keep_alive_tmo=2] [--guest-cpu 1]
                                                [--kmsg] [--json]

The lab of tests/cluster_lab.py (three storage-node namespaces with a data and a control
network, an etcd member and an ``nvmf-phoenix supervise --store etcd://... --node``
each, one shared backing file) and Debian's kernel under qemu (TCG) behind the root
namespace's port on the data network: nvme-cli discovers from the owner, follows the
referrals to the two other nodes, connects one path per node (default options unless
--opts) and runs fio 4 KiB randrw QD8 with crc32c verify on the multipath head. The owner
node dies ``--deaths`` times, loud (every process SIGKILLed) or silent (its links
dropped), each time once every path is live again; the dead node is brought back and
rejoins as a standby.

Per death: the worst completion latency of any I/O completing until the next death, the
longest time with no completion, when the guest saw the path go and when all paths were
live again; and the cluster's own time from the death to a peer owning the group.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import realhost
from tests.cluster_lab import cluster_lab
from tests.realhost_cluster import ClusterAsPair, run_cluster
from tests.realhost_pair import format_report, kmsg_by_kill


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deaths", type=int, default=4)
    ap.add_argument("--how", choices=("loud", "silent"), default="loud")
    ap.add_argument("--opts", default="", help="connect options, kernel names "
                    "(e.g. keep_alive_tmo=2); default: none")
    ap.add_argument("--guest-cpu", type=int, default=None,
                    help="run the guest alone on this CPU and the targets on the others, "
                    "as a host on its own machine (default: not pinned)")
    ap.add_argument("--kmsg", action="store_true",
                    help="also print the guest's kernel messages around each death")
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    args = ap.parse_args()
    if args.guest_cpu is not None:
        realhost.pin_guest(args.guest_cpu)
    why = realhost.unavailable_reason()
    if why is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="phx-cluster-") as tmp, \
            cluster_lab(Path(tmp)) as lab:
        lab.start()
        lab.configure()
        lab.wait_roles()
        cluster = ClusterAsPair(lab, args.how)
        rep = run_cluster(cluster, args.deaths, opts=args.opts)
    result = rep.summary()
    takeover = cluster.takeover_s
    result.update(how=args.how, opts=args.opts or "default", epochs=cluster.epochs,
                  takeover_s_median=round(statistics.median(takeover), 2) if takeover else None,
                  takeover_s_max=round(max(takeover), 2) if takeover else None)
    if not args.json:
        print(format_report(rep))
        if args.kmsg:
            print("\n".join(kmsg_by_kill(rep)))
    print(json.dumps(result))
    return 0 if rep.errors == [] and result["io_errors"] == "0" else 1


if __name__ == "__main__":
    sys.exit(main())
