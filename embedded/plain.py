"""The embedded target in one process, as nvmf_tgt runs: its connections end with it.

``nvmf-phoenix target`` without ``--crash-transparent`` (embedded/app.py parses the
command line): the configuration store, the I/O loop on its own thread with the plain
transport, and the JSON-RPC server, until SIGINT, SIGTERM or spdk_kill_instance.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from nvmf_phoenix.embedded.bdev import open_bdev
from nvmf_phoenix.embedded.config_file import ConfigFileError, read_config
from nvmf_phoenix.embedded.config_store import TargetCore
from nvmf_phoenix.embedded.io_loop import DataPath
from nvmf_phoenix.embedded.rpc_methods import (
    RUNTIME,
    STARTUP,
    RpcContext,
    dispatch,
    load_config,
)
from nvmf_phoenix.rpc.server import RpcServer
from nvmf_phoenix.rpc.sockpath import SocketInUse

# Importing registers the nvmf_* methods.
from nvmf_phoenix.embedded import rpc_nvmf  # noqa: F401  isort: skip


def run(args: argparse.Namespace) -> int:
    """Serve until stopped: 0 after a stop, 1 if the target could not start or its data
    path died."""
    try:
        document = read_config(args.config) if args.config else None
    except ConfigFileError as exc:
        print(f"nvmf-phoenix target: {exc}", file=sys.stderr)
        return 1
    core = TargetCore(bdev_opener=open_bdev)
    dp = DataPath(core)
    stop = threading.Event()
    ctx = RpcContext(core, dp, phase=STARTUP if args.wait_for_rpc or args.config else RUNTIME,
                     on_kill=lambda sig: stop.set())
    dp.start_in_thread()
    try:
        if document is not None:
            errors = load_config(ctx, document)
            if errors:
                for e in errors:
                    print(f"config error: {e}", file=sys.stderr)
                return 1
        try:
            server = RpcServer(ctx, args.rpc_socket, dispatch)
        except (SocketInUse, OSError) as exc:
            print(f"nvmf-phoenix target: {exc}", file=sys.stderr)
            return 1
        return _serve(args, ctx, dp, server, stop)
    finally:
        dp.stop()


def _serve(args: argparse.Namespace, ctx: RpcContext, dp: DataPath, server: RpcServer,
           stop: threading.Event) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    print(f"nvmf-phoenix target ready: rpc={args.rpc_socket} "
          f"phase={ctx.phase}", flush=True)
    while not stop.wait(0.5):
        if not dp.alive:   # hosts would hang on a target that only answers RPC
            print("nvmf-phoenix target: the data path stopped (see the log); exiting",
                  file=sys.stderr, flush=True)
            server.close()
            return 1
    server.close()
    return 0
