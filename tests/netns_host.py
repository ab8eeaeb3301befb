"""``python -m tests.netns_host ...``: one NVMe/TCP host session, run inside a namespace.

Connects with the project's initiator, optionally writes a seeded pattern or reads it
back, and prints one JSON line: the controller and namespace identity, the data's hash,
or the error that refused it. Exit code 0 when connected, 1 when refused or unreachable.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys

from nvmf_phoenix.initiator.connection import NvmeError
from nvmf_phoenix.initiator.host import Host

BS, BLOCKS = 512, 16


def main() -> int:
    p = argparse.ArgumentParser()
    for a in ("--addr", "--port", "--nqn", "--hostnqn"):
        p.add_argument(a, required=True)
    p.add_argument("--write-seed", type=int)
    args = p.parse_args()
    try:
        with Host(args.addr, args.port, args.nqn, hostnqn=args.hostnqn, timeout=10) as h:
            h.create_io_queues(1)
            if args.write_seed is not None:
                data = random.Random(args.write_seed).randbytes(BS * BLOCKS)
                h.write(1, 0, data, BS)
                h.flush(1)
            data = h.read(1, 0, BLOCKS, BS)
            ns = h.identify_namespace(1)
            print(json.dumps({"connected": True, "serial": h.identity["sn"],
                              "uuid": ns["uuid"], "nguid": ns["nguid"],
                              "sha256": hashlib.sha256(data).hexdigest()}))
            return 0
    except (NvmeError, OSError) as exc:
        print(json.dumps({"connected": False, "error": str(exc)}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
