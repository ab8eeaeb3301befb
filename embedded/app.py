"""The embedded target as a process, with nvmf_tgt's command line.

``python -m nvmf_phoenix.embedded`` (or ``nvmf-phoenix target``) accepts the nvmf_tgt flags
that matter here (``-r``, ``--wait-for-rpc``, ``-c/--json``) and ignores the DPDK ones
(``-m``, ``-i``, ``-s``, ``--no-huge``), so scripts written for nvmf_tgt run it unchanged.

With ``--crash-transparent`` the process started is the socket keeper (embedded/keeper.py):
it owns the sockets and runs the target in worker processes (embedded/worker.py), so the
serving process can be killed at any moment without a host noticing. Without it the
target runs in this process (embedded/plain.py). The keeper is this module too, and it
must stay small: the modes that run the target are imported only when chosen.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys

from nvmf_phoenix.embedded.config_file import ConfigFileError, read_config
from nvmf_phoenix.embedded.keeper import serve
from nvmf_phoenix.persist import shm

DEFAULT_SOCKET = "/var/tmp/spdk.sock"
log = logging.getLogger("nvmf_phoenix.embedded")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nvmf-phoenix target",
                                description="Embedded NVMe/TCP target (nvmf_tgt-compatible)")
    p.add_argument("-r", "--rpc-socket", default=DEFAULT_SOCKET, help="JSON-RPC socket path")
    p.add_argument("--wait-for-rpc", action="store_true",
                   help="stay in the STARTUP phase until framework_start_init")
    p.add_argument("-c", "--json", dest="config", help="JSON config in save_config format")
    p.add_argument("--crash-transparent", action="store_true",
                   help="keep TCP connections and queue pairs alive across the death of the "
                   "serving process (a socket keeper owns the sockets; state lives in "
                   "hugepage shared memory)")
    p.add_argument("--inflight", choices=("replay", "abort"), default="replay",
                   help="with --crash-transparent: commands the dead process had read but "
                   "not completed are re-executed (replay) or completed with a retryable "
                   "status (abort)")
    p.add_argument("--worker", metavar="KEEPER_SOCKET", help=argparse.SUPPRESS)
    p.add_argument("--scratch", help=argparse.SUPPRESS)
    p.add_argument("--huge-dir", help="hugetlbfs mount for shared memory (with "
                   "--crash-transparent; default: the first one mounted, else /dev/shm)")
    for flag in ("-m", "--cpumask", "-i", "--shm-id", "-s", "--mem-size"):
        p.add_argument(flag, help=argparse.SUPPRESS)
    p.add_argument("--no-huge", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="WARNING", help="Python logging level")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.huge_dir:
        shm.prefer_mount(args.huge_dir)
    if args.worker:
        from nvmf_phoenix.embedded.worker import run as run_worker
        return run_worker(args)
    if args.crash_transparent:
        return run_keeper(args)
    from nvmf_phoenix.embedded.plain import run as run_plain
    return run_plain(args)


def scratch_name(rpc_socket: str) -> str:
    """The shared-memory directory of the target serving ``rpc_socket``."""
    return "t-" + hashlib.sha1(os.path.abspath(rpc_socket).encode()).hexdigest()[:12]


def run_keeper(args: argparse.Namespace) -> int:
    """Be the socket keeper: its workers run the target (``--worker``) behind it."""
    if args.config:
        # The workers load it; a file that can never load is refused before "ready".
        try:
            read_config(args.config)
        except ConfigFileError as exc:
            print(f"nvmf-phoenix target: {exc}", file=sys.stderr)
            return 1
    scratch = scratch_name(args.rpc_socket)
    shm.wipe(scratch)   # a new target starts from nothing, as nvmf_tgt does
    shm.claim(scratch, os.path.abspath(args.rpc_socket))   # `nvmf-phoenix shm list`
    cmd = [sys.executable, "-m", "nvmf_phoenix.embedded", "--worker",
           args.rpc_socket + ".keeper", "--scratch", scratch, "-r", args.rpc_socket,
           "--inflight", args.inflight, "--log-level", args.log_level]
    if args.config:
        cmd += ["-c", os.path.abspath(args.config)]
    if args.wait_for_rpc:
        cmd.append("--wait-for-rpc")
    if args.huge_dir:
        cmd += ["--huge-dir", args.huge_dir]
    log.info("crash-transparent state goes to %s", shm.where())
    try:
        return serve(args.rpc_socket, cmd)
    finally:
        shm.wipe(scratch)


if __name__ == "__main__":
    sys.exit(main())
