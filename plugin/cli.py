"""The ``nvmf-phoenix`` command line.

Sub-commands are thin: each parses its arguments and hands over to the module that does
the work, so the same operations are reachable from Python, from ``spdk-rpc --plugin`` and
from here. Checkpoint, restore, status and address commands live in :mod:`.cli_checkpoint`;
exit codes are listed in :mod:`.cli_common` (0 ok, 1 failed, 2 usage, 3 unreachable,
4 no checkpoint).
"""
from __future__ import annotations

import argparse
import logging
import sys

from nvmf_phoenix.plugin import cli_checkpoint, cli_cluster, cli_shm
from nvmf_phoenix.plugin import io as io_command
from nvmf_phoenix.plugin.cli_common import (
    EXIT_CODES,
    DefaultsShown,
    add_json,
    add_socket,
    add_state_dir,
    guarded,
)
from nvmf_phoenix.plugin.ops import PhoenixError
from nvmf_phoenix.rpc import RpcError

from nvmf_phoenix import __version__


def _cmd_target(args: argparse.Namespace) -> int:
    """Run the embedded NVMe/TCP target in the foreground (like SPDK's nvmf_tgt)."""
    from nvmf_phoenix.embedded import app

    return int(app.main(args.target_args) or 0)


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job end to end on the embedded target."""
    from nvmf_phoenix.plugin import demo

    return demo.main(as_json=args.json)


def _cmd_supervise(args: argparse.Namespace) -> int:
    """Run a target under supervision behind the write-ahead RPC front (foreground)."""
    if args.node:
        return cli_cluster.supervise_node(args)
    import shlex
    import signal
    import threading

    from nvmf_phoenix.recovery.pair import PairSupervisor
    from nvmf_phoenix.recovery.pair_view import PairLayout
    from nvmf_phoenix.recovery.supervisor import Supervisor

    cmd = shlex.split(args.target_cmd) if args.target_cmd else \
        [sys.executable, "-m", "nvmf_phoenix.embedded"]
    sup: Supervisor | PairSupervisor
    cluster_store = None
    if args.store:
        from nvmf_phoenix.recovery.etcd_store import EtcdGroupStore

        if args.standby:
            print("nvmf-phoenix supervise: --store with --standby is not supported",
                  file=sys.stderr)
            return 2
        try:
            cluster_store = EtcdGroupStore.open(args.store, args.group)
        except ValueError as exc:
            print(f"nvmf-phoenix supervise: --store: {exc}", file=sys.stderr)
            return 2
    if args.standby:
        sup = PairSupervisor(
            (cmd, shlex.split(args.standby_target_cmd) if args.standby_target_cmd else cmd),
            (args.target_socket, args.standby_socket or standby_socket(args.target_socket)),
            args.rpc_socket, args.state_dir,
            PairLayout(args.standby_port_offset, args.standby_address),
            ping_interval=args.ping_interval, misses=args.misses,
            max_restarts=args.max_restarts, restart_window=args.restart_window)
    else:
        sup = Supervisor(cmd, args.target_socket, args.rpc_socket, args.state_dir,
                         ping_interval=args.ping_interval, misses=args.misses,
                         max_restarts=args.max_restarts, restart_window=args.restart_window,
                         cluster_store=cluster_store)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if args.floating_address:
            from nvmf_phoenix.plugin import netplumb

            addr, _, prefix = args.floating_address.partition("/")
            netplumb.add_address(addr, args.floating_dev, int(prefix) if prefix else None)
        sup.start(adopt=args.adopt)
    except Exception as exc:
        print(f"nvmf-phoenix supervise: cannot start: {exc}", file=sys.stderr)
        return 1
    from nvmf_phoenix.plugin import metrics

    try:
        server = metrics.serve_supervisor(args, sup.status_dict)
    except metrics.MetricsPortError as exc:
        print(exc, file=sys.stderr)
        sup.stop()
        return 1
    print(f"nvmf-phoenix supervisor ready: rpc={args.rpc_socket} "
          f"target={args.target_socket} state={args.state_dir}"
          + (f" standby={sup.members['b'].sock} ({sup.layout.describe()})"
             if isinstance(sup, PairSupervisor) else "")
          + (f" metrics=http://{args.metrics_address}:{args.metrics_port}/metrics"
             if server else "")
          + (f" store={args.store} group={args.group}" if args.store else ""), flush=True)
    failed = False
    while not stop.wait(0.5):
        if sup.status.state == "failed":
            print(f"nvmf-phoenix supervise: {sup.status.last_error}", file=sys.stderr)
            failed = True
            break
    metrics.shut(server)
    sup.stop()
    return 1 if failed else 0


def standby_socket(target_socket: str) -> str:
    """The standby member's private socket, beside the active's: x.sock -> x-b.sock."""
    base, dot, ext = target_socket.rpartition(".")
    return f"{base}-b.{ext}" if dot and "/" not in ext else f"{target_socket}-b"


def _control_call(args: argparse.Namespace, method: str, params: dict | None) -> int:
    from nvmf_phoenix.plugin.cli_common import connect, emit

    with connect(args) as c:
        try:
            result = c.call(method, params)
        except RpcError as err:
            if err.code == -32601:
                raise PhoenixError(f"{args.rpc_socket} is not served by `nvmf-phoenix "
                                   "supervise`: point -s at the supervisor's socket") from None
            raise
    emit(args, result, lambda r: f"supervisor: {r['state']}, {r['restarts']} restarts, "
         f"last restore {r['last_restore_s']} s" + (f"; last error: {r['last_error']}"
                                                     if r["last_error"] else ""))
    return 0 if result.get("state") == "ready" else 1


def _cmd_restart(args: argparse.Namespace) -> int:
    """Planned restart or upgrade: checkpoint, stop, start (maybe a new binary), restore."""
    import shlex

    params = {"target_cmd": shlex.split(args.target_cmd)} if args.target_cmd else None
    return _control_call(args, "phoenix_restart", params)


def _cmd_metrics(args: argparse.Namespace) -> int:
    """Serve Prometheus metrics for a target (or supervisor) and its state directory."""
    import signal
    import threading

    from nvmf_phoenix.plugin import metrics

    collector = metrics.PhoenixCollector(args.rpc_socket, args.state_dir,
                                         hosts_interval=args.hosts_interval)
    try:
        server = metrics.serve(collector, args.port, args.address)
    except OSError as exc:
        raise PhoenixError(f"cannot listen on {args.address}:{args.port}: {exc.strerror} "
                           "(choose another --port)") from None
    print(f"nvmf-phoenix metrics: http://{args.address}:{server.server_port}/metrics "
          f"(target {args.rpc_socket}, state {args.state_dir})", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    server.server_close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nvmf-phoenix", epilog=EXIT_CODES,
        description="NVMe-oF targets that come back from kill -9 as if nothing happened.")
    parser.add_argument("--version", action="version", version=f"nvmf-phoenix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("target", help="run the embedded NVMe/TCP target (nvmf_tgt options; "
                       "`nvmf-phoenix target --help` lists them)", add_help=False)
    p.add_argument("target_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_target)
    p = sub.add_parser("demo", help="configure, checkpoint, kill -9 and restore an embedded "
                       "target, verifying a host's identity and data across it")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("supervise", help="run a target under supervision: restart and "
                       "restore it on death; serve its RPC socket write-ahead",
                       formatter_class=DefaultsShown)
    p.add_argument("-s", "--rpc-socket", default="/var/tmp/spdk.sock",
                   help="public RPC socket users and tools talk to")
    p.add_argument("--target-socket", default="/var/tmp/nvmf-phoenix-target.sock",
                   help="the target's private RPC socket")
    p.add_argument("-d", "--state-dir", default="/var/lib/nvmf-phoenix",
                   help="journal and snapshot directory")
    p.add_argument("--target-cmd", help="target command without -r (default: the embedded "
                   "target), e.g. '/usr/local/bin/nvmf_tgt -m 0x1'")
    p.add_argument("--adopt", action="store_true", help="adopt a target already serving "
                   "--target-socket instead of starting one")
    p.add_argument("--ping-interval", type=float, default=0.5, metavar="SECONDS",
                   help="how often the target is pinged (spdk_get_version)")
    p.add_argument("--misses", type=int, default=4, help="missed pings before a silent "
                   "target is declared dead")
    p.add_argument("--max-restarts", type=int, default=10, help="restarts allowed within "
                   "--restart-window before the supervisor gives up (state: failed)")
    p.add_argument("--restart-window", type=float, default=60.0, metavar="SECONDS",
                   help="the window --max-restarts counts in")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port "
                   "(default: no metrics)")
    p.add_argument("--metrics-address", default="0.0.0.0", help="metrics bind address")
    p.add_argument("--metrics-hosts-interval", type=float, default=10.0, metavar="SECONDS",
                   help="poll connected hosts for metrics at most this often")
    p.add_argument("--floating-address", metavar="ADDR[/PREFIX]", help="put this address "
                   "on --floating-dev before restoring (listeners on it can then bind); "
                   "with --node: the group's owner alone holds it and listens on it too")
    p.add_argument("--floating-dev", metavar="DEV", help="interface for --floating-address")
    g = p.add_argument_group("checkpoint in etcd (more than one node)")
    g.add_argument("--store", metavar="etcd://HOST:PORT[,HOST:PORT...]/PREFIX",
                   help="also commit every checkpoint to this etcd cluster before answering; "
                   "at start restore from it (default: the local state directory only)")
    g.add_argument("--group", default="default", help="the configuration's name in --store "
                   "(one supervisor per node and group)")
    g = p.add_argument_group("hot-standby pair (a crash becomes a path failover)")
    g.add_argument("--standby", action="store_true", help="run a second target as hot "
                   "standby: same configuration and identities, its listeners "
                   "non_optimized; takes over when the active dies")
    g.add_argument("--standby-target-cmd", help="the standby's command without -r "
                   "(default: --target-cmd), e.g. another CPU mask")
    g.add_argument("--standby-socket", help="the standby's private RPC socket (default: "
                   "--target-socket with -b before its extension)")
    g.add_argument("--standby-port-offset", type=int, default=1, metavar="N",
                   help="the standby listens on the same addresses, port + N")
    g.add_argument("--standby-address", metavar="ADDR", help="the standby listens on ADDR "
                   "with the same ports instead (e.g. a second interface)")
    cli_cluster.add_supervise_flags(p)
    p.set_defaults(func=_cmd_supervise)
    p = sub.add_parser("restart", help="planned restart or upgrade of a supervised target")
    add_socket(p), add_json(p)
    p.add_argument("--target-cmd", help="start this command instead (upgrade)")
    p.set_defaults(func=guarded(_cmd_restart))
    cli_checkpoint.add_parsers(sub)
    io_command.add_parser(sub, guarded)
    cli_shm.add_parsers(sub)
    cli_cluster.add_parsers(sub, guarded)
    p = sub.add_parser("metrics", help="serve Prometheus metrics for a target or supervisor")
    add_socket(p), add_state_dir(p)
    p.add_argument("--port", type=int, default=9556, help="HTTP port (default 9556; 0 picks "
                   "a free one)")
    p.add_argument("--address", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    p.add_argument("--hosts-interval", type=float, default=10.0, metavar="SECONDS",
                   help="poll connected hosts at most this often (it pauses admin queues)")
    p.set_defaults(func=guarded(_cmd_metrics))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["target"]:
        # Everything after `target` is the target's, unchanged: argparse would try to
        # read options such as -r itself.
        from nvmf_phoenix.embedded import app

        return int(app.main(argv[1:]) or 0)
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
