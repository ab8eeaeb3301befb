"""The embedded target as a process, with nvmf_tgt's command line.

``python -m nvmf_phoenix.target`` (or ``nvmf-phoenix target``) accepts the nvmf_tgt flags
that matter here (``-r``, ``--wait-for-rpc``, ``-c/--json``) and ignores the DPDK ones
(``-m``, ``-i``, ``-s``, ``--no-huge``), so scripts written for nvmf_tgt run it unchanged.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from nvmf_phoenix.target.bdev import open_bdev
from nvmf_phoenix.target.config_io import load_config
from nvmf_phoenix.target.core import TargetCore
from nvmf_phoenix.target.rpc_methods import RUNTIME, STARTUP, RpcContext
from nvmf_phoenix.target.rpc_server import RpcServer, SocketInUse
from nvmf_phoenix.target.server import DataPath

# Importing registers the nvmf_* methods.
from nvmf_phoenix.target import rpc_nvmf  # noqa: F401  isort: skip

DEFAULT_SOCKET = "/var/tmp/spdk.sock"
log = logging.getLogger("nvmf_phoenix.target")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nvmf-phoenix target",
                                description="Embedded NVMe/TCP target (nvmf_tgt-compatible)")
    p.add_argument("-r", "--rpc-socket", default=DEFAULT_SOCKET, help="JSON-RPC socket path")
    p.add_argument("--wait-for-rpc", action="store_true",
                   help="stay in the STARTUP phase until framework_start_init")
    p.add_argument("-c", "--json", dest="config", help="JSON config in save_config format")
    for flag in ("-m", "--cpumask", "-i", "--shm-id", "-s", "--mem-size", "--huge-dir"):
        p.add_argument(flag, help=argparse.SUPPRESS)
    p.add_argument("--no-huge", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--log-level", default="WARNING", help="Python logging level")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    core = TargetCore(bdev_opener=open_bdev)
    dp = DataPath(core)
    stop = threading.Event()
    ctx = RpcContext(core, dp, phase=STARTUP if args.wait_for_rpc or args.config else RUNTIME,
                     on_kill=lambda sig: stop.set())
    dp.start_in_thread()
    try:
        if args.config:
            with open(args.config) as f:
                errors = load_config(ctx, json.load(f))
            if errors:
                for e in errors:
                    print(f"config error: {e}", file=sys.stderr)
                return 1
        try:
            server = RpcServer(ctx, args.rpc_socket)
        except (SocketInUse, OSError) as exc:
            print(f"nvmf-phoenix target: {exc}", file=sys.stderr)
            return 1
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        server.start()
        print(f"nvmf-phoenix target ready: rpc={args.rpc_socket} "
              f"phase={ctx.phase}", flush=True)
        stop.wait()
        server.close()
        return 0
    finally:
        dp.stop()


if __name__ == "__main__":
    sys.exit(main())
