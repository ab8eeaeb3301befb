"""Placing shared-memory files: hugetlbfs first, /dev/shm when no hugepages can be had.

A file on hugetlbfs mapped MAP_SHARED survives the SIGKILL of every process that maps it
and costs no page faults on first touch; a file on /dev/shm (tmpfs) survives the same way
with 4 KiB pages. Both the checkpoint region (persist/region.py) and the embedded target's
per-connection state (embedded/connstate.py) are placed here. Failures to use hugepages are
never silent: the fallback is logged with the reason (no mount, pool exhausted, ...).

Such files outlive every process by design, so each says who it belongs to: a small JSON
record per region or scratch directory names its owner (a state directory, or the RPC
socket of a crash-transparent target), the process that made it and when. The records
live together in /dev/shm/nvmf-phoenix/.owners/, keyed by the hash of the path they
describe: hugetlbfs holds only files that are mapped (write(2) fails there), and
a record beside each file would change what a directory of regions holds.
``persist/shm_inventory.py`` reads them to list what is left and to remove what no one
owns any more.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import mmap
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HUGEPAGE = 2 << 20
SHM_DIR = "/dev/shm"
ROOT = "nvmf-phoenix"          # our directory on each hugetlbfs mount and in /dev/shm
OWNERS = os.path.join(SHM_DIR, ROOT, ".owners")   # the owner records (see above)
OWNER_STATE_DIR = "state directory"
OWNER_SOCKET = "socket"


def hugetlbfs_mounts() -> list[str]:
    """Every hugetlbfs mount point, in /proc/mounts order."""
    try:
        with open("/proc/mounts") as f:
            return [p[1] for p in (line.split() for line in f)
                    if len(p) > 2 and p[2] == "hugetlbfs"]
    except OSError:
        return []


_preferred: str | None = None


def prefer_mount(path: str | None) -> None:
    """Use this hugetlbfs mount (SPDK's --huge-dir) rather than the first one found."""
    global _preferred
    _preferred = path


# Where hugetlbfs is mounted for applications (systemd's dev-hugepages.mount, DPDK and
# SPDK guides). A hugetlbfs mounted anywhere else belongs to someone else (a test, another
# application's private pool) and is used only when named with --huge-dir.
STANDARD_MOUNTS = ("/dev/hugepages", "/mnt/huge", "/hugepages")


def hugetlbfs_mount() -> str | None:
    if _preferred is not None:
        return _preferred if on_hugetlbfs(_preferred) else None
    mounts = hugetlbfs_mounts()
    return next((m for m in mounts if m in STANDARD_MOUNTS), None)


def on_hugetlbfs(path: str) -> bool:
    real = os.path.realpath(path)
    return any(real == m or real.startswith(m.rstrip("/") + "/")
               for m in hugetlbfs_mounts())


def round_up(n: int, unit: int) -> int:
    return (n + unit - 1) // unit * unit


def candidates(directory: str | None, sub: str = "") -> list[tuple[str, bool]]:
    """(directory, is hugetlbfs) in order of preference; an explicit directory is the
    only candidate."""
    if directory is not None:
        return [(directory, on_hugetlbfs(directory))]
    out = []
    mount = hugetlbfs_mount()
    if mount:
        out.append((os.path.join(mount, ROOT, sub), True))
    out.append((os.path.join(SHM_DIR, ROOT, sub), False))
    return out


def private_dir(path: str) -> None:
    """Create ``path`` (0700) or check it: a real directory, ours, closed to others.

    The default directory sits in world-writable /dev/shm: one another user made first
    could have our files swapped (our files are CRC-checked, not authenticated) or a
    symlink planted where we create. A directory of ours that others may read is
    tightened; one another user owns is refused."""
    Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise PermissionError(errno.EPERM, "not a directory owned by this user", path)
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def map_file(path: str, size: int, create: bool) -> mmap.mmap:
    """Map a file MAP_SHARED read-write: ours, 0600, never through a symlink, in a
    private directory. MAP_NORESERVE is never used: an exhausted hugepage pool must fail
    here (ENOMEM), not as a SIGBUS later."""
    if create:
        private_dir(str(Path(path).parent))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    else:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            raise PermissionError(errno.EPERM, "file owned by another user", path)
        if create:
            os.fchmod(fd, 0o600)   # an older file keeps its mode through O_CREAT
            os.ftruncate(fd, size)
        if size == 0:
            raise OSError(errno.EINVAL, "empty file")
        return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)


def place(name: str, size: int, directory: str | None = None, sub: str = ""
          ) -> tuple[str, mmap.mmap, bool]:
    """Create ``name`` of at least ``size`` bytes where it can live; (path, map, huge)."""
    problems: list[str] = []
    for base, huge in candidates(directory, sub):
        path = os.path.join(base, name)
        try:
            mm = map_file(path, round_up(size, HUGEPAGE) if huge else size, create=True)
        except OSError as exc:
            why = f"{base}: {exc.strerror or os.strerror(exc.errno or 0)}"
            log.warning("cannot place %s on %s (%s)", name, why,
                        "hugetlbfs" if huge else "tmpfs")
            problems.append(why)
            if not isinstance(exc, PermissionError):   # never touch what is not ours
                with contextlib.suppress(OSError):     # no half-made file left behind
                    os.unlink(path)
            continue
        return path, mm, huge
    raise OSError(errno.ENOSPC, "; ".join(problems) or "no hugetlbfs mount or /dev/shm")


def find(name: str, directory: str | None = None, sub: str = "") -> str | None:
    """The existing file ``name`` among the candidates, or None."""
    for base, _ in candidates(directory, sub):
        path = os.path.join(base, name)
        if os.path.exists(path):
            return path
    return None


def wipe(sub: str) -> None:
    """Remove a scratch directory (every candidate location), what is in it, and the
    record of its owner."""
    for base, _ in candidates(None, sub):
        shutil.rmtree(base, ignore_errors=True)
        forget_owner(base)


def remove(path: str) -> None:
    """Remove a region (or scratch directory) and the record of its owner."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)
    forget_owner(path)


# -- owners ------------------------------------------------------------------------------
def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), to tell it from a later process
    given the same number; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _record_path(path: str) -> str:
    real = os.path.abspath(path.rstrip("/"))
    return os.path.join(OWNERS, hashlib.sha1(real.encode()).hexdigest()[:24] + ".json")


def record_owner(path: str, owner: str, kind: str) -> None:
    """Record who ``path`` (a region or scratch directory) belongs to, and which process
    (with its start time) made it. Best effort: a listing without it only shows the
    owner as unknown."""
    pid = os.getpid()
    doc = {"path": os.path.abspath(path.rstrip("/")), "owner": owner, "kind": kind,
           "pid": pid, "pid_start": process_start(pid), "created": time.time()}
    target = _record_path(path)
    tmp = f"{target}.tmp.{pid}"
    try:
        private_dir(OWNERS)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.rename(tmp, target)
    except OSError as exc:
        log.warning("cannot record the owner of %s: %s", path, exc.strerror)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def owner_tag(owner: str) -> str:
    """A short name for an owner path, the same in every process: its absolute path's
    hash (names of state-directory regions and crash-transparent scratch directories)."""
    return hashlib.sha1(os.path.abspath(owner).encode()).hexdigest()[:12]


def _read_record(record: str) -> dict[str, Any] | None:
    try:
        with open(record) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(doc, dict) and all(isinstance(doc.get(k), str) for k in ("owner", "path"))
    return doc if ok else None


def read_owner(path: str) -> dict[str, Any] | None:
    """The owner record of ``path``, or None."""
    doc = _read_record(_record_path(path))
    return doc if doc and doc["path"] == os.path.abspath(path.rstrip("/")) else None


def forget_owner(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(_record_path(path))


def owner_records() -> list[dict[str, Any]]:
    """Every owner record (with the path it describes, which may be gone)."""
    try:
        names = sorted(os.listdir(OWNERS))
    except OSError:
        return []
    docs = (_read_record(os.path.join(OWNERS, n)) for n in names if n.endswith(".json"))
    return [d for d in docs if d]


def claim(sub: str, owner: str, kind: str = OWNER_SOCKET) -> None:
    """Record the owner of scratch directory ``sub`` wherever its files may be placed
    (each file goes to hugetlbfs or, when that fails, to /dev/shm)."""
    for base, _ in candidates(None, sub):
        record_owner(base, owner, kind)


def where() -> str:
    """Where new shared memory goes, and why, for the log."""
    mount = hugetlbfs_mount()
    if mount:
        return f"hugepages (hugetlbfs at {mount}; /dev/shm if its pool runs out)"
    if _preferred is not None:
        return f"{SHM_DIR} (4 KiB pages): --huge-dir {_preferred} is not a hugetlbfs mount"
    return (f"{SHM_DIR} (4 KiB pages): no hugetlbfs mounted at "
            f"{' or '.join(STANDARD_MOUNTS)} (mount one, or name one with --huge-dir)")
