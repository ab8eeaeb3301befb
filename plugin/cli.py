"""The ``nvmf-phoenix`` command line.

Sub-commands are thin: each parses its arguments and hands over to the module that does
the work, so the same operations are reachable from Python, from ``spdk-rpc --plugin`` and
from here. Exit codes: 0 success, 1 the operation failed, 2 usage error.
"""
from __future__ import annotations

import argparse
import logging
import sys

from nvmf_phoenix import __version__


def _cmd_target(args: argparse.Namespace) -> int:
    """Run the embedded NVMe/TCP target in the foreground (like SPDK's nvmf_tgt)."""
    from nvmf_phoenix.target import app

    return int(app.main(args.target_args) or 0)


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end on the embedded target."""
    from nvmf_phoenix.plugin import demo

    return demo.main(as_json=args.json)


def _cmd_supervise(args: argparse.Namespace) -> int:
    """Run a target under supervision behind the write-ahead RPC front (foreground)."""
    import shlex
    import signal
    import threading

    from nvmf_phoenix.recovery.supervisor import Supervisor

    cmd = shlex.split(args.target_cmd) if args.target_cmd else \
        [sys.executable, "-m", "nvmf_phoenix.target"]
    sup = Supervisor(cmd, args.target_socket, args.rpc_socket, args.state_dir,
                     ping_interval=args.ping_interval, misses=args.misses,
                     max_restarts=args.max_restarts, restart_window=args.restart_window)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        sup.start(adopt=args.adopt)
    except Exception as exc:
        print(f"nvmf-phoenix supervise: cannot start: {exc}", file=sys.stderr)
        return 1
    print(f"nvmf-phoenix supervisor ready: rpc={args.rpc_socket} "
          f"target={args.target_socket} state={args.state_dir}", flush=True)
    while not stop.wait(0.5):
        if sup.status.state == "failed":
            print(f"nvmf-phoenix supervise: {sup.status.last_error}", file=sys.stderr)
            sup.stop()
            return 1
    sup.stop()
    return 0


def _control_call(args: argparse.Namespace, method: str, params: dict | None) -> int:
    import json

    from nvmf_phoenix.rpc import RpcClient, RpcError

    try:
        with RpcClient.connect(args.rpc_socket, timeout=args.timeout) as c:
            result = c.call(method, params)
    except RpcError as err:
        hint = " (is `nvmf-phoenix supervise` serving this socket?)" if err.code in (
            None, -32601) else ""
        print(f"nvmf-phoenix: {err}{hint}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0 if result.get("state") == "ready" else 1


def _cmd_restart(args: argparse.Namespace) -> int:
    """Planned restart or upgrade: checkpoint, stop, start (maybe a new binary), restore."""
    import shlex

    params = {"target_cmd": shlex.split(args.target_cmd)} if args.target_cmd else None
    return _control_call(args, "phoenix_restart", params)


def _cmd_status(args: argparse.Namespace) -> int:
    return _control_call(args, "phoenix_status", None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nvmf-phoenix",
        description="NVMe-oF targets that come back from kill -9 as if nothing happened.")
    parser.add_argument("--version", action="version", version=f"nvmf-phoenix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("target", help="run the embedded NVMe/TCP target (nvmf_tgt options)",
                       add_help=False)
    p.add_argument("target_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_target)
    p = sub.add_parser("demo", help="configure, checkpoint, kill -9 and restore an embedded "
                       "target, verifying a host's identity and data across it")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("supervise", help="run a target under supervision: restart and "
                       "restore it on death; serve its RPC socket write-ahead")
    p.add_argument("-s", "--rpc-socket", default="/var/tmp/spdk.sock",
                   help="public RPC socket users and tools talk to")
    p.add_argument("--target-socket", default="/var/tmp/nvmf-phoenix-target.sock",
                   help="the target's private RPC socket")
    p.add_argument("--state-dir", default="/var/lib/nvmf-phoenix",
                   help="journal and snapshot directory")
    p.add_argument("--target-cmd", help="target command without -r (default: the embedded "
                   "target), e.g. '/usr/local/bin/nvmf_tgt -m 0x1'")
    p.add_argument("--adopt", action="store_true", help="adopt a target already serving "
                   "--target-socket instead of starting one")
    p.add_argument("--ping-interval", type=float, default=0.5)
    p.add_argument("--misses", type=int, default=4, help="missed pings before a silent "
                   "target is declared dead")
    p.add_argument("--max-restarts", type=int, default=10)
    p.add_argument("--restart-window", type=float, default=60.0)
    p.set_defaults(func=_cmd_supervise)
    for name, fn, text in (("restart", _cmd_restart, "planned restart or upgrade of a "
                            "supervised target"),
                           ("status", _cmd_status, "the supervisor's status")):
        p = sub.add_parser(name, help=text)
        p.add_argument("-s", "--rpc-socket", default="/var/tmp/spdk.sock")
        p.add_argument("-t", "--timeout", type=float, default=120.0)
        if name == "restart":
            p.add_argument("--target-cmd", help="start this command instead (upgrade)")
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="nvmf-phoenix: %(levelname)s: "
                        "%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
