"""Owning a Unix socket path the way nvmf_tgt does: an flock on ``<path>.lock``.

A second target refuses to start while the lock is held; a socket file whose lock is free
is stale (its target died) and is removed. Shared by the JSON-RPC server and the socket
keeper, which binds the RPC path on behalf of its workers.
"""
from __future__ import annotations

import fcntl
import logging
import os

log = logging.getLogger(__name__)


class SocketInUse(RuntimeError):
    """Another live target owns the RPC socket."""


def take_lock(path: str) -> int:
    """flock ``<path>.lock``; remove a stale socket; refuse if a live target holds it."""
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SocketInUse(f"RPC socket {path} is in use by another target "
                          f"(lock {path}.lock is held)") from None
    if os.path.exists(path):
        log.warning("removing stale RPC socket %s", path)
        os.unlink(path)
    return fd
