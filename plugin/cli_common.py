"""What every ``nvmf-phoenix`` sub-command shares: exit codes, output, errors that help.

Exit codes (documented in ``nvmf-phoenix --help`` and the README):
  0  success
  1  the operation ran and failed (restore incomplete, hosts missing, differences found)
  2  usage error (bad arguments)
  3  the target or supervisor could not be reached on its RPC socket
  4  no usable checkpoint
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from nvmf_phoenix.plugin.ops import (
    EXIT_FAIL,
    EXIT_NO_CHECKPOINT,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    PhoenixError,
    default_state_dir,
)
from nvmf_phoenix.rpc import RpcClient, RpcConnectionError, RpcError

EXIT_CODES = (f"exit codes: {EXIT_OK} ok, {EXIT_FAIL} the operation failed, {EXIT_USAGE} "
              f"usage error, {EXIT_UNREACHABLE} target/supervisor unreachable, "
              f"{EXIT_NO_CHECKPOINT} no usable checkpoint")
DEFAULT_SOCKET = "/var/tmp/spdk.sock"


class DefaultsShown(argparse.HelpFormatter):
    """Help that ends each option with its default, when it has one worth showing (not
    for flags, nor for options that are off unless given)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) \
                or not action.option_strings or "default" in text:
            return text
        return text + " (default: %(default)s)"


def add_socket(p: argparse.ArgumentParser) -> None:
    default = os.environ.get("NVMF_PHOENIX_RPC_SOCKET", DEFAULT_SOCKET)
    p.add_argument("-s", "--rpc-socket", default=default,
                   help="the target's (or supervisor's) RPC socket (default "
                   "$NVMF_PHOENIX_RPC_SOCKET or /var/tmp/spdk.sock)")
    p.add_argument("-t", "--timeout", type=float, default=120.0, help="RPC timeout, seconds")


def add_state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--state-dir", default=default_state_dir(),
                   help="checkpoint directory (default $NVMF_PHOENIX_STATE_DIR or "
                   "/var/lib/nvmf-phoenix, the supervisor's default)")


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")


def connect(args: argparse.Namespace) -> RpcClient:
    return RpcClient.connect(args.rpc_socket, timeout=args.timeout)


def emit(args: argparse.Namespace, doc: Any, human: Callable[[Any], str]) -> None:
    """JSON for scripts (--json), a few readable lines otherwise."""
    if getattr(args, "json", False):
        print(json.dumps(doc, indent=2))
    else:
        print(human(doc))


def guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command, turning known failures into one helpful line and an exit code."""
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except PhoenixError as exc:
            print(f"nvmf-phoenix {args.command}: {exc}", file=sys.stderr)
            return exc.exit_code
        except RpcConnectionError as exc:
            sock = getattr(args, "rpc_socket", DEFAULT_SOCKET)
            print(f"nvmf-phoenix {args.command}: {exc.message}\n  start a target with "
                  f"`nvmf-phoenix target -r {sock}` (or a supervised one with "
                  f"`nvmf-phoenix supervise -s {sock}`), or point -s at the right socket",
                  file=sys.stderr)
            return EXIT_UNREACHABLE
        except RpcError as exc:
            print(f"nvmf-phoenix {args.command}: the target refused: {exc}", file=sys.stderr)
            return EXIT_FAIL
    return run


def kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"
