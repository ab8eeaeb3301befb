"""``python -m tests.netns_exec NETNS -- CMD...``: run CMD inside a network namespace.

The test suite's stand-in for ``ip netns exec``, through pyroute2's setns (the namespace is
kept across exec); used to run a target, spdk-rpc or a host as if on another machine.
"""
from __future__ import annotations

import os
import sys

from pyroute2 import netns


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m tests.netns_exec NETNS -- CMD [ARGS...]", file=sys.stderr)
        return 2
    netns.setns(argv[0])
    os.execvp(argv[2], argv[2:])
    return 1   # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
