"""``nvmf-phoenix shm list|clean``: what is left in shared memory, whose, and reclaiming it.

Regions (a state directory's checkpoint) and scratch directories (a crash-transparent
target's live state) are meant to outlive processes, so a deleted state directory or a
target killed with its keeper leaves hugepages taken until the next boot. ``list`` shows
each with its owner, size, age and whether the owner is alive; ``clean`` removes those
whose owner is gone, never a live one (see :mod:`nvmf_phoenix.persist.shm_inventory`).
"""
from __future__ import annotations

import argparse
from typing import Any

from nvmf_phoenix.persist import shm_inventory
from nvmf_phoenix.plugin import ops
from nvmf_phoenix.plugin.cli_common import add_json, emit, guarded, kib


def _known(args: argparse.Namespace) -> list[str]:
    """State directories whose regions may predate owner records."""
    return [*args.state_dir, ops.default_state_dir()]


def _alive(e: dict[str, Any]) -> str:
    return {True: "alive", False: "ORPHAN", None: "unknown"}[e["alive"]]


def _age(s: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= n:
            return f"{s / n:.0f} {unit}"
    return f"{s:.0f} s"


def _human_list(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "nothing in shared memory (no region, no scratch directory)"
    lines = []
    for e in rows:
        where = "hugepages" if e["hugepages"] else "/dev/shm"
        owner = f"{e['owner_kind']} {e['owner']}" if e["owner"] else "owner unknown"
        lines.append(f"{_alive(e):7} {e['kind']:8} {kib(e['size']):>10}  {_age(e['age_s']):>6}"
                     f"  {e['path']} ({where})\n        {owner}: {e['why']}")
    total = sum(e["size"] for e in rows)
    orphans = [e for e in rows if e["alive"] is False]
    lines.append(f"{len(rows)} entries, {kib(total)}; {len(orphans)} orphaned "
                 f"({kib(sum(e['size'] for e in orphans))}): `nvmf-phoenix shm clean` "
                 "removes them")
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    rows = [e.to_dict() for e in shm_inventory.inventory(_known(args), args.root)]
    emit(args, rows, _human_list)
    return ops.EXIT_OK


def _clean(args: argparse.Namespace) -> int:
    gone = [e.to_dict() for e in shm_inventory.clean(_known(args), unknown=args.unknown,
                                                      dry_run=args.dry_run, where=args.root)]
    verb = "would remove" if args.dry_run else "removed"
    emit(args, {"dry_run": args.dry_run, "removed": gone},
         lambda d: "\n".join([f"{verb} {e['path']} ({kib(e['size'])}; {e['why']})"
                              for e in gone]
                             + [f"{verb} {len(gone)} entries, "
                                f"{kib(sum(e['size'] for e in gone))}"]))
    return ops.EXIT_OK


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("shm", help="list the shared memory nvmf-phoenix holds (regions, "
                       "scratch directories) and remove what no one owns")
    shs = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, fn, text in (
            ("list", _list, "every region and scratch directory: owner, size, age, "
             "owner alive?"),
            ("clean", _clean, "remove those whose owner is gone (never a live one)")):
        q = shs.add_parser(name, help=text)
        q.add_argument("-d", "--state-dir", action="append", default=[], metavar="DIR",
                       help="a state directory whose region an older version made "
                       "(repeatable; the default state directory is always known)")
        q.add_argument("--root", action="append", metavar="DIR", help="look only in DIR "
                       "(repeatable; default: nvmf-phoenix/ on every hugetlbfs mount and "
                       "in /dev/shm)")
        add_json(q)
        q.set_defaults(func=guarded(fn))
        if name == "clean":
            q.add_argument("--dry-run", action="store_true", help="say what would go")
            q.add_argument("--unknown", action="store_true", help="also remove entries "
                           "whose owner cannot be told and that no process maps")
