"""PDU fuzzing, long runs: executions tried and crashes found.

    python benchmarks/fuzz_pdu.py [--seconds 60 | --execs 1000000] [--seed 1]
    python benchmarks/fuzz_pdu.py --live [--target 127.0.0.1:4420 --nqn NQN] [--seconds 60]

Default: the sans-I/O core (QueuePair + Engine on a fresh TargetCore per example, RAM bdev
wrapped to catch any access outside the namespace), with the mutations and checks of
tests/pdu_fuzz.py drawn at random. ``--live`` sends the same examples over TCP, one
connection each, to a target: the embedded one started here (configured as
tests/pdu_fuzz_live.configure does, with a good host doing verified I/O on a second
subsystem all along), or any target named by ``--target`` (the crash-transparent mode,
SPDK's nvmf_tgt): then ``--nqn`` names the subsystem to aim at, which must allow any host.
A crash is an exception escaping the core (or contained by it and counted); a problem is
a malformed answer, a missing close, or an out-of-bounds access. Both must stay at zero.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvmf_phoenix.rpc import RpcClient

from tests.pdu_fuzz import NQN, Outcome, random_case
from tests.pdu_fuzz_live import GoodHost, LiveFuzzer, configure
from tests.pdu_fuzz_sansio import crash_signature, run_case
from tests.target_fixture import free_port
from tests.target_process import TargetProcess


def fuzz(run: object, args: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(args.seed)
    crashes: collections.Counter[str] = collections.Counter()
    problems: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    execs, start = 0, time.monotonic()
    deadline = start + args.seconds if args.seconds else float("inf")
    while execs < (args.execs or float("inf")) and time.monotonic() < deadline:
        case = random_case(rng)
        out: Outcome = run(*case)   # type: ignore[operator]
        execs += 1
        if out.crash:
            sig = crash_signature(out.crash)
            crashes[sig] += 1
            examples.setdefault(sig, repr(case)[:400])
        for p in out.problems:
            key = re.sub(r"\d+", "N", p)
            problems[key] += 1
            examples.setdefault(key, repr(case)[:400])
        if args.progress and execs % args.progress == 0:
            print(f"  {execs} execs, {sum(crashes.values())} crashes, "
                  f"{sum(problems.values())} problems", flush=True)
    elapsed = time.monotonic() - start
    for kind, found in (("CRASH", crashes), ("PROBLEM", problems)):
        for key, n in found.most_common():
            print(f"{kind} x{n}: {key}\n    e.g. {examples[key]}")
    return {"executions": execs, "seconds": round(elapsed, 1),
            "execs_per_s": round(execs / elapsed) if elapsed else 0,
            "crashes": sum(crashes.values()), "unique_crashes": len(crashes),
            "problems": sum(problems.values()), "seed": args.seed}


def live(args: argparse.Namespace) -> dict[str, object]:
    if args.target:
        host, port = args.target.rsplit(":", 1)
        fz = LiveFuzzer(host, int(port), args.nqn)
        try:
            return {"mode": f"live {args.target}", **fuzz(fz.run, args)}
        finally:
            fz.close()
    with tempfile.TemporaryDirectory() as tmp:
        tp = TargetProcess(str(Path(tmp) / "spdk.sock"))
        try:
            port = free_port()
            with RpcClient.connect(tp.sock) as c:
                configure(c, port)
            good = GoodHost("127.0.0.1", port).start()
            fz = LiveFuzzer("127.0.0.1", port)
            try:
                res = fuzz(fz.run, args)
            finally:
                fz.close()
                good.stop()
            alive = tp.proc.poll() is None
            return {"mode": "live embedded target process", **res, "target_alive": alive,
                    "good_host": good.summary(), "good_host_error": good.error}
        finally:
            tp.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--execs", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--live", action="store_true", help="over TCP to a live target")
    p.add_argument("--target", help="HOST:PORT of a target to fuzz instead of our own")
    p.add_argument("--nqn", default=NQN, help="subsystem to aim at (with --target)")
    p.add_argument("--progress", type=int, default=0, help="print a line every N execs")
    args = p.parse_args()
    if not args.seconds and not args.execs:
        args.seconds = 30.0
    if args.live or args.target:
        res = live(args)
    else:
        # A regression that allocates without bound must fail here, not eat the machine.
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        res = {"mode": "sans-I/O core", **fuzz(run_case, args)}
    print(json.dumps(res))
    bad = res["crashes"] or res["problems"] or res.get("good_host_error") or \
        res.get("target_alive") is False
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
