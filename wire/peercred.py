"""The kernel's ``struct ucred``, as SO_PEERCRED reports the process behind a Unix socket.

Declared once for both of its readers: the supervisor (recovery/process.py) finds a
target it did not start through its RPC socket, and the socket keeper
(embedded/keeper.py) lets only its own user's processes onto its control socket. Native
byte order and int size: this is the running kernel's structure, not a wire format.
"""
from __future__ import annotations

import socket
import struct
from typing import NamedTuple

UCRED = struct.Struct("3i")          # pid, uid, gid


class PeerCred(NamedTuple):
    pid: int
    uid: int
    gid: int


def peer_cred(sock: socket.socket) -> PeerCred:
    """Who is at the other end of the connected Unix socket ``sock``."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
    return PeerCred(*UCRED.unpack(raw))
