"""Soak: a supervised target SIGKILLed N times under host I/O and a stream of changes.

    python benchmarks/soak_supervised.py [--kills 100] [--target-cmd "nvmf_tgt -m 0x1 ..."]

The supervisor (recovery/supervisor.py) runs the embedded target by default, or any
nvmf_tgt-compatible command given with ``--target-cmd`` (``-r SOCKET --wait-for-rpc`` are
appended), for example SPDK's:

    --target-cmd "/path/to/spdk/build/bin/nvmf_tgt -m 0x1 --num-trace-entries 0 \\
                  --no-huge -s 1024 --disable-cpumask-locks"

tests/torture.py does the work: one client streams random mutating RPCs through the
supervisor's front and checks after every restore that the target holds exactly what was
acknowledged; a host (the project's initiator) writes 4 KiB blocks to a file-backed
namespace, reads some back, and reconnects whenever the target dies (this is the host
reconnect path: unlike the crash-transparent target, a supervised one loses its
connections); the target is SIGKILLed at random moments. At the end every acknowledged
write is read back through the target and from the file.

Printed: kills, restarts, host writes, reconnects, I/O and file mismatches, RPC calls
acknowledged and failed, configuration mismatches, incomplete restores, and two
distributions over the kills: kill to ready (restarted, restored, verified) and the
host's stall (the gap between its acknowledged writes that spans the kill).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak_transparent import distribution

from tests.torture import run_torture


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=100, help="SIGKILLs of the target")
    ap.add_argument("--target-cmd", default=f"{sys.executable} -m nvmf_phoenix.embedded",
                    help="the target to supervise (default: the embedded target)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        r = run_torture(Path(d), kills=args.kills, seed=args.seed,
                        target_cmd=shlex.split(args.target_cmd))
    out = {"target": args.target_cmd, "kills": r["kills"], "restarts": r["restarts"],
           "state": r["state"], "seconds": r["seconds"], "host_writes": r["io_acked"],
           "reconnects": r["io_reconnects"], "io_mismatches": r["io_mismatches"],
           "file_mismatches": r["file_mismatches"],
           "identity_changes": len(r["identity_changes"]), "rpc_acked": r["rpc_acked"],
           "rpc_failed": len(r["rpc_failed"]), "state_mismatches": len(r["state_mismatches"]),
           "restores_incomplete": len(r["restores_incomplete"]), "errors": r["errors"],
           "kill_to_ready": distribution(r["to_ready_s"]),
           "host_stall": distribution(r["host_stalls_s"])}
    print(json.dumps({"soak_supervised": out}), flush=True)
    bad = (r["errors"] or r["io_mismatches"] or r["file_mismatches"] or r["rpc_failed"]
           or r["state_mismatches"] or r["restores_incomplete"] or r["identity_changes"])
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
