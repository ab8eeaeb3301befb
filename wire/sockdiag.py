"""The kernel's socket diagnostics (NETLINK_SOCK_DIAG, linux/inet_diag.h), for TCP only:
list a network namespace's TCP sockets with their inodes, and destroy one (SOCK_DESTROY,
CONFIG_INET_DIAG_DESTROY: the kernel aborts it and sends the peer a reset, as ``ss -K``).

Declared here once with the kernel's field names; recovery/deathwatch.py uses it to end
a dying process's connections."""
from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import threading
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
ALL_STATES = 0xFFFFFFFF
NLMSGHDR = struct.Struct("=IHHII")          # nlmsg_len, nlmsg_type, flags, seq, pid
# inet_diag_req_v2: sdiag_family, sdiag_protocol, idiag_ext, pad, idiag_states, id
REQ_V2 = struct.Struct("=BBBxI")
SOCKID_SIZE = 48                            # inet_diag_sockid: ports, addresses, if, cookie
# inet_diag_msg: idiag_family, state, timer, retrans, id, expires, rqueue, wqueue, uid, inode
MSG_HEAD = struct.Struct("=BBBB")
MSG_TAIL = struct.Struct("=IIIII")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class TcpSocket:
    family: int
    sockid: bytes          # inet_diag_sockid as the kernel gave it (cookie included)
    inode: int


def open_diag(netns_path: str | None = None) -> socket.socket:
    """A sock_diag socket in the network namespace at ``netns_path`` (ours if None or
    the same). A socket belongs to the namespace it was created in, so a short-lived
    thread enters the other namespace, creates it and ends."""
    if netns_path is None or os.stat(netns_path).st_ino == os.stat("/proc/self/ns/net").st_ino:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    box: list[socket.socket | OSError] = []

    def enter_and_open() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns_path}")
            finally:
                os.close(fd)
            box.append(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG))
        except OSError as exc:
            box.append(exc)

    t = threading.Thread(target=enter_and_open, name="sockdiag-netns")
    t.start()
    t.join()
    if isinstance(box[0], OSError):
        raise box[0]
    return box[0]


def _request(kind: int, flags: int, family: int, sockid: bytes = bytes(SOCKID_SIZE)) -> bytes:
    body = REQ_V2.pack(family, socket.IPPROTO_TCP, 0, ALL_STATES) + sockid
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, 0, 0) + body


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    out, at = [], 0
    while at + NLMSGHDR.size <= len(data):
        length, kind, _f, _s, _p = NLMSGHDR.unpack_from(data, at)
        if length < NLMSGHDR.size:
            break
        out.append((kind, data[at + NLMSGHDR.size:at + length]))
        at += (length + 3) & ~3
    return out


def tcp_sockets(nl: socket.socket) -> list[TcpSocket]:
    """Every TCP socket (IPv4 and IPv6, any state) of the namespace ``nl`` is in."""
    found: list[TcpSocket] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        nl.send(_request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, family))
        done = False
        while not done:
            for kind, payload in _messages(nl.recv(1 << 16)):
                if kind in (NLMSG_DONE, NLMSG_ERROR):
                    done = True
                    break
                if kind != SOCK_DIAG_BY_FAMILY:
                    continue
                sockid = payload[MSG_HEAD.size:MSG_HEAD.size + SOCKID_SIZE]
                inode = MSG_TAIL.unpack_from(payload, MSG_HEAD.size + SOCKID_SIZE)[4]
                found.append(TcpSocket(payload[0], sockid, inode))
    return found


def destroy(nl: socket.socket, sock: TcpSocket) -> int:
    """Abort one socket; 0 or the kernel's errno (EOPNOTSUPP without
    CONFIG_INET_DIAG_DESTROY, ENOENT if it went away meanwhile)."""
    nl.send(_request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, sock.family, sock.sockid))
    for kind, payload in _messages(nl.recv(1 << 16)):
        if kind == NLMSG_ERROR:
            return -struct.unpack_from("=i", payload)[0]
    return 0


def destroy_inodes(nl: socket.socket, inodes: set[int]) -> int:
    """Abort the TCP sockets with these inodes; how many were aborted."""
    done = 0
    for s in tcp_sockets(nl):
        if s.inode in inodes:
            with contextlib.suppress(OSError):
                done += destroy(nl, s) == 0
    return done
