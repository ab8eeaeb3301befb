"""``spdk-rpc --plugin nvmf_phoenix.plugin``: checkpoint and restore from SPDK's own CLI.

Commands follow SPDK's naming (``<module>_<verb>[_<object>]``) and use the client spdk-rpc
hands every command (``args.client``), wrapped so the recovery code gets JSON-RPC error
codes. Results are printed as JSON like SPDK's commands; failures are raised as SPDK's
``JSONRPCException`` so spdk-rpc prints the message (which says what to do) and exits 1.

    phoenix_checkpoint              capture the live target and save it as the checkpoint
    phoenix_get_checkpoint          show the saved checkpoint (what, when, how big)
    phoenix_diff_checkpoint         differences between the checkpoint and the live target
    phoenix_restore                 restore the checkpoint into the (restarted) target
    phoenix_get_reconnect_status    which hosts connected at checkpoint time are back
    phoenix_subsystem_add_listener  nvmf_subsystem_add_listener, once the address is up
    phoenix_get_status / phoenix_restart   a supervisor's status / planned restart
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from nvmf_phoenix.plugin import ops
from nvmf_phoenix.rpc import RpcError, SpdkClientAdapter


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _run(fn: Callable[[argparse.Namespace, SpdkClientAdapter], Any]
         ) -> Callable[[argparse.Namespace], None]:
    """Wrap a command: adapt the client, print the result, turn failures into SPDK's
    exception type (spdk-rpc prints its message and exits 1, no traceback)."""
    def handler(args: argparse.Namespace) -> None:
        from spdk.rpc.client import JSONRPCException

        client = SpdkClientAdapter(args.client, getattr(args, "server_addr", None))
        try:
            result = fn(args, client)
        except ops.PhoenixError as exc:
            raise JSONRPCException(f"{args.called_rpc_name}: {exc}") from None
        except RpcError as exc:
            raise JSONRPCException(f"{args.called_rpc_name}: {exc}") from None
        if result is not None:
            _print(result)
    return handler


def _checkpoint(args: argparse.Namespace, c: SpdkClientAdapter) -> Any:
    return ops.checkpoint_now(c, args.state_dir, runtime=not args.no_runtime)


def _get_checkpoint(args: argparse.Namespace, c: SpdkClientAdapter) -> Any:
    return ops.show(args.state_dir, full=args.full)


def _diff_checkpoint(args: argparse.Namespace, c: SpdkClientAdapter) -> Any:
    result = ops.diff_live(c, args.state_dir)
    _print(result)
    if not result["same"] and args.fail_on_difference:
        raise ops.PhoenixError(f"{len(result['differences'])} differences")
    return None


def _restore(args: argparse.Namespace, c: SpdkClientAdapter) -> Any:
    loaded, _ = ops.load(args.state_dir)
    assert loaded.state is not None
    report, result = ops.restore_checkpoint(c, loaded.state, args.state_dir,
                                            prune=args.prune, wait_hosts=args.wait_hosts)
    result = {"seq": loaded.seq, **result}
    if not report.ok:
        _print(result)
        raise ops.PhoenixError("restore incomplete: see failures, conflicts and "
                               "differences above")
    return result


def _reconnect_status(args: argparse.Namespace, c: SpdkClientAdapter) -> Any:
    loaded, _ = ops.load(args.state_dir)
    assert loaded.state is not None
    return ops.reconnect_status(c, loaded.state, args.wait)


def _add_listener(args: argparse.Namespace, c: SpdkClientAdapter) -> Any:
    from nvmf_phoenix.plugin import netplumb

    if args.trtype.lower() in ("tcp", "rdma"):
        netplumb.prepare_listener_address(args.traddr, args.floating_dev,
                                          args.floating_prefix)
    addr = {"trtype": args.trtype, "traddr": args.traddr, "trsvcid": args.trsvcid,
            "adrfam": args.adrfam or ("ipv6" if ":" in args.traddr else "ipv4")}
    params: dict[str, Any] = {"nqn": args.nqn, "listen_address": addr}
    if args.ana_state:
        params["ana_state"] = args.ana_state
    return c.call("nvmf_subsystem_add_listener", params)


def _supervisor(method: str) -> Callable[[argparse.Namespace, SpdkClientAdapter], Any]:
    def fn(args: argparse.Namespace, c: SpdkClientAdapter) -> Any:
        params = {"target_cmd": args.target_cmd.split()} \
            if getattr(args, "target_cmd", None) else None
        try:
            return c.call(method, params)
        except RpcError as err:
            if err.code == -32601:
                raise ops.PhoenixError("this socket is not served by `nvmf-phoenix "
                                       "supervise` (point -s at the supervisor's socket)"
                                       ) from None
            raise
    return fn


def _state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--state-dir", default=ops.default_state_dir(),
                   help="checkpoint directory (default: $NVMF_PHOENIX_STATE_DIR or "
                   "/var/lib/nvmf-phoenix)")


def spdk_rpc_plugin_initialize(subparsers: Any) -> None:
    """Called by spdk-rpc with its sub-command parsers."""
    p = subparsers.add_parser("phoenix_checkpoint",
                              help="capture the live target and save it as the checkpoint")
    _state_dir(p)
    p.add_argument("--no-runtime", action="store_true", help="skip connected hosts "
                   "(their RPCs briefly pause each subsystem's admin queue)")
    p.set_defaults(func=_run(_checkpoint))

    p = subparsers.add_parser("phoenix_get_checkpoint", help="show the saved checkpoint")
    _state_dir(p)
    p.add_argument("--full", action="store_true", help="include the whole saved state")
    p.set_defaults(func=_run(_get_checkpoint))

    p = subparsers.add_parser("phoenix_diff_checkpoint",
                              help="differences between the checkpoint and the live target")
    _state_dir(p)
    p.add_argument("--fail-on-difference", action="store_true",
                   help="exit 1 when the live target differs")
    p.set_defaults(func=_run(_diff_checkpoint))

    p = subparsers.add_parser("phoenix_restore",
                              help="restore the checkpoint into the target")
    _state_dir(p)
    p.add_argument("--prune", action="store_true",
                   help="also delete live objects the checkpoint does not have")
    p.add_argument("-w", "--wait-hosts", type=float, default=0.0, metavar="SECONDS",
                   help="then wait up to SECONDS for the checkpoint's hosts to reconnect")
    p.set_defaults(func=_run(_restore))

    p = subparsers.add_parser("phoenix_get_reconnect_status",
                              help="hosts connected at checkpoint time: back or missing")
    _state_dir(p)
    p.add_argument("-w", "--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for all of them")
    p.set_defaults(func=_run(_reconnect_status))

    p = subparsers.add_parser("phoenix_subsystem_add_listener",
                              help="nvmf_subsystem_add_listener, after making sure the "
                              "address is on an interface (optionally adding it there)")
    p.add_argument("nqn", help="subsystem NQN")
    p.add_argument("-t", "--trtype", required=True, help="transport type, e.g. tcp")
    p.add_argument("-a", "--traddr", required=True, help="address to listen on")
    p.add_argument("-s", "--trsvcid", required=True, help="port")
    p.add_argument("-f", "--adrfam", help="ipv4 or ipv6 (default: from the address)")
    p.add_argument("-n", "--ana-state", help="initial ANA state")
    p.add_argument("--floating-dev", help="add the address to this interface if it is on "
                   "none (a floating address), announcing it with gratuitous ARP")
    p.add_argument("--floating-prefix", type=int, help="prefix length for the floating "
                   "address (default /32 or /128)")
    p.set_defaults(func=_run(_add_listener))

    p = subparsers.add_parser("phoenix_get_status", help="status of the supervisor "
                              "serving this socket (nvmf-phoenix supervise)")
    p.set_defaults(func=_run(_supervisor("phoenix_status")))
    p = subparsers.add_parser("phoenix_restart", help="planned restart (or upgrade) of "
                              "the supervised target, with checkpoint and restore")
    p.add_argument("--target-cmd", help="start this target command instead (upgrade)")
    p.set_defaults(func=_run(_supervisor("phoenix_restart")))
