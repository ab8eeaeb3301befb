"""Random damage to checkpoint stores, by the thousand: trials, faults, what loading did.

    python benchmarks/corrupt_store.py [--trials 20000] [--seed 1]

Each trial (tests/corruption.py): a store saves 1-6 known states (sometimes compacting),
then its region, journal and/or snapshot get 1-3 random injuries each (bit flips, zeroed
runs, garbage, truncation); loading must never raise or return a state other than the
one saved under the reported sequence number, must load the newest state whenever a copy
of it is untouched, must say why when it returns anything older, and the store must save
and load again afterwards. Runs on /dev/shm when there is one (tmpfs: the logic, not the
disk, is under test here; tests/test_persistence.py kills writers on a real file system).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.corruption import run_trial


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    import logging
    logging.disable(logging.WARNING)   # every trial reports its damage; count, not print
    rng = random.Random(args.seed)
    base = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    sources: collections.Counter[str] = collections.Counter()
    faults = reported = older = replayed = 0
    failures: list[str] = []
    start = time.monotonic()
    try:
        for _ in range(args.trials):
            t = run_trial(Path(base) / "t", rng)
            faults += len(t.injuries)
            reported += bool(t.problems)
            older += t.loaded_seq < t.saved
            replayed += t.changes > 0
            sources[t.source] += 1
            failures += [f"{t.injuries}: {f}" for f in t.failures]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for f in failures[:20]:
        print("FAILURE", f)
    print(json.dumps({"trials": args.trials, "faults_injected": faults,
                      "trials_with_problems_reported": reported,
                      "loaded_older_than_newest": older, "loaded_from": dict(sources),
                      "loaded_with_changes_replayed": replayed,
                      "failures": len(failures), "seconds": round(time.monotonic() - start, 1),
                      "seed": args.seed}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
