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
