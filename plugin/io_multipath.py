"""``nvmf-phoenix io --multipath``: verified I/O over every path a discovery service lists.

What a Linux host with native multipath does, from the command line: discover (following
referrals), connect one controller per path, send I/O on the ANA-optimized path, move to
another live path the moment one fails, reconnect the failed one in the background. The
way to see a hot-standby pair turn a kill -9 into a path failover.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from nvmf_phoenix.initiator.mpworkload import MultipathWorkload
from nvmf_phoenix.initiator.multipath import MultipathHost
from nvmf_phoenix.plugin.ops import EXIT_FAIL, EXIT_OK, PhoenixError


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    """``args.time`` seconds of verified random I/O over ``args.blocks`` blocks."""
    try:
        mp = MultipathHost.from_discovery(args.traddr, int(args.trsvcid),
                                          subnqn=args.nqn,
                                          reconnect_delay=args.reconnect_delay)
    except (OSError, ValueError) as exc:
        raise PhoenixError(f"discovery at {args.traddr}:{args.trsvcid}: {exc}") from None
    with mp:
        nsid, bs = args.nsid or 1, args.block_size
        work = MultipathWorkload(mp, nsid, bs, args.blocks, qd=args.queue_depth,
                                 seed=args.seed)
        start, last = time.monotonic(), 0.0
        while not stop.is_set() and time.monotonic() - start < args.time:
            work.run(1.0, stop=stop.is_set)
            if not args.quiet and time.monotonic() - last >= 1.0:
                last = time.monotonic()
                paths = ", ".join(f"{p['address']} {_state(p)}" for p in mp.paths())
                print(f"{last - start:5.1f} s: {work.stats.completed} done, "
                      f"{len(work.stats.errors)} errors; paths: {paths}",
                      file=sys.stderr, flush=True)
        work.drain()
        bad = work.verify_all(lambda lba, n: mp.read(nsid, lba, n, bs))
        summary: dict[str, Any] = {**work.report(), "read_back_mismatches": len(bad),
                                   "paths": mp.paths()}
    print(json.dumps(summary, indent=2) if args.json else _human(summary), flush=True)
    failed = summary["errors"] or summary["mismatches"] or bad
    return EXIT_FAIL if failed else EXIT_OK


def _state(p: dict[str, Any]) -> str:
    if not p["live"]:
        return "down"
    return "/".join(sorted(set(p["ana"].values()))) or "live"


def _human(s: dict[str, Any]) -> str:
    return (f"{s['completed']} commands, {s['errors']} errors, {s['mismatches']} mismatches "
            f"({s['read_back_mismatches']} on read-back); {s['failovers']} path failovers, "
            f"worst latency {s['worst_latency_ms']} ms, longest stall {s['max_gap_ms']} ms")
