"""What nvmf-phoenix left in shared memory, whose it is, and removing what no one owns.

Regions and scratch directories outlive their processes on purpose (that is how a
restarted target finds its state), so nothing removes them by itself when their owner is
gone for good: a state directory deleted, a crash-transparent target killed together with
its keeper. This module finds every one of them under our directory on each hugetlbfs
mount and in /dev/shm, reads its owner record (shm.record_owner) and decides whether the
owner is alive:

- any process maps one of its files: alive, whatever the record says;
- a state directory's region: alive while the directory exists;
- a crash-transparent target's scratch directory: alive while the keeper that claimed it
  runs (its PID and start time, so a recycled PID does not count);
- no record (made by an older version): unknown, unless it is a state-directory region
  whose name matches one of the directories the caller knows of.

:func:`clean` removes the entries whose owner is dead, never a live one; unknown ones
only when asked to, and forgets the records of paths that are gone.
"""
from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from nvmf_phoenix.persist.shm import (
    OWNER_SOCKET,
    OWNER_STATE_DIR,
    ROOT,
    SHM_DIR,
    forget_owner,
    hugetlbfs_mounts,
    on_hugetlbfs,
    owner_records,
    owner_tag,
    process_start,
    read_owner,
    remove,
)

LEGACY_REGION = re.compile(r"supervisor-([0-9a-f]{12})\.region$")


@dataclass
class Entry:
    path: str
    kind: str                 # "region", "scratch" or "file"
    size: int                 # bytes (all files, for a directory)
    age_s: float
    owner: str | None
    owner_kind: str | None    # "state directory", "socket" or None (unknown)
    alive: bool | None        # None: cannot tell
    why: str
    hugepages: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def roots() -> list[tuple[str, bool]]:
    """Our directory on every hugetlbfs mount and in /dev/shm, where it exists."""
    out = [(os.path.join(m, ROOT), True) for m in hugetlbfs_mounts()]
    out.append((os.path.join(SHM_DIR, ROOT), False))
    unique = {r: h for r, h in reversed(out) if os.path.isdir(r)}   # first one wins
    return [(r, unique[r]) for r, _ in out if r in unique]


def mapped(prefixes: Iterable[str]) -> dict[str, set[int]]:
    """Files under ``prefixes`` mapped by a process we may look at: path -> PIDs."""
    prefixes = tuple(p.rstrip("/") + "/" for p in prefixes)
    out: dict[str, set[int]] = {}
    for maps in glob.glob("/proc/[0-9]*/maps"):
        pid = int(maps.split("/")[2])
        try:
            with open(maps) as f:
                for line in f:
                    fields = line.split(maxsplit=5)
                    path = fields[5].rstrip("\n") if len(fields) == 6 else ""
                    if path.startswith(prefixes) and not path.endswith(" (deleted)"):
                        out.setdefault(path, set()).add(pid)
        except OSError:
            continue          # gone meanwhile, or not ours to read
    return out


def _size(path: str) -> int:
    if not os.path.isdir(path):
        return os.lstat(path).st_size
    return sum(os.lstat(os.path.join(d, f)).st_size
               for d, _, files in os.walk(path) for f in files)


def _users(path: str, maps: dict[str, set[int]]) -> set[int]:
    if not os.path.isdir(path):
        return set(maps.get(path, ()))
    inside = path.rstrip("/") + "/"
    return {pid for p, pids in maps.items() if p.startswith(inside) for pid in pids}


def _judge(path: str, record: dict[str, object] | None, users: set[int],
           known: dict[str, str]) -> tuple[str | None, str | None, bool | None, str]:
    """(owner, owner kind, alive, why) of one entry."""
    owner = str(record["owner"]) if record else None
    kind = str(record.get("kind")) if record else None
    if record is None:
        m = LEGACY_REGION.search(path)
        if m and m.group(1) in known:
            owner, kind = known[m.group(1)], OWNER_STATE_DIR
    if users:
        return owner, kind, True, "in use by pid " + ", ".join(map(str, sorted(users)))
    if owner is None:
        return None, None, None, "no owner record (left by an older version)"
    if kind == OWNER_STATE_DIR:
        if os.path.isdir(owner):
            return owner, kind, True, "state directory exists"
        return owner, kind, False, "state directory gone"
    if kind == OWNER_SOCKET and record is not None:
        pid, start = record.get("pid"), record.get("pid_start")
        if isinstance(pid, int) and start is not None and process_start(pid) == start:
            return owner, kind, True, f"target pid {pid} running"
        return owner, kind, False, f"target pid {pid} gone"
    return owner, kind, None, f"owner of unknown kind {kind!r}"


def inventory(known_state_dirs: Iterable[str] = (), where: Iterable[str] | None = None
              ) -> list[Entry]:
    """Every region and scratch directory (and stray file), with its owner's state.
    ``known_state_dirs`` name the owners of regions made before owner records; ``where``
    replaces the usual places (each hugetlbfs mount's directory and /dev/shm's)."""
    known = {owner_tag(d): os.path.abspath(d) for d in known_state_dirs}
    found = roots() if where is None else [(r, on_hugetlbfs(r)) for r in where
                                           if os.path.isdir(r)]
    maps = mapped(r for r, _ in found)
    now = time.time()
    out = []
    for root, huge in found:
        for name in sorted(os.listdir(root)):
            if name.startswith("."):
                continue              # the owner records
            path = os.path.join(root, name)
            if ".tmp." in name:
                kind = "file"
            else:
                kind = "scratch" if os.path.isdir(path) else \
                    "region" if name.endswith(".region") else "file"
            record = read_owner(path)
            try:
                st, size = os.lstat(path), _size(path)
            except OSError:
                continue              # removed meanwhile
            owner, okind, alive, why = _judge(path, record, _users(path, maps), known)
            created = record.get("created") if record else None
            age = now - (created if isinstance(created, (int, float)) else st.st_mtime)
            out.append(Entry(path, kind, size, round(max(0.0, age), 1), owner, okind,
                             alive, why, huge))
    return out


def clean(known_state_dirs: Iterable[str] = (), unknown: bool = False,
          dry_run: bool = False, where: Iterable[str] | None = None) -> list[Entry]:
    """Remove the entries whose owner is gone (and, with ``unknown``, those whose owner
    cannot be told and that no process maps); never one whose owner is alive. Returns
    what was (or, with ``dry_run``, would be) removed."""
    doomed = [e for e in inventory(known_state_dirs, where)
              if e.alive is False or (unknown and e.alive is None)]
    if not dry_run:
        for e in doomed:
            remove(e.path)
        # Records of what is gone (removed by hand, claimed but never made) whose owner
        # is gone too.
        known = {owner_tag(d): os.path.abspath(d) for d in known_state_dirs}
        for doc in owner_records():
            if not os.path.lexists(doc["path"]) and \
                    _judge(doc["path"], doc, set(), known)[2] is False:
                forget_owner(doc["path"])
    return doomed
