"""Ending a killed target's TCP connections the moment it is killed, not when it is gone.

A process killed by a signal closes its sockets only late in its exit, after the kernel
has torn down its memory. For SPDK's nvmf_tgt with aio bdevs that teardown waits for
every AIO context to be freed (an RCU grace period each): measured here, SIGKILL to the
connections' FIN takes about 40 ms, while the process's first thread has finished
exiting 0.2 ms after the signal. A host of a hot-standby pair can only move its I/O to
the standby once it sees the connection end, so those 40 ms are 40 ms of stalled I/O on
every failover, and a keep-alive the host sends into the dying process in that window
costs it a keep-alive timeout (5 s) before its error recovery completes.

So the pair supervisor listens to the kernel's process events (the netlink process
connector: root, initial namespaces), and when a thread of a member exits by a fatal
signal (the whole process is then dying) it aborts the member's TCP sockets itself (the
kernel's SOCK_DESTROY, as ``ss -K``: the host gets a reset), found through a thread that
still holds the file table. The host sees the connection end within milliseconds of the
kill. Where the connector or SOCK_DESTROY is not available (not root, in a container, a
kernel without CONFIG_INET_DIAG_DESTROY) nothing changes: the connections end when the
kernel closes them.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable

from nvmf_phoenix.wire.sockdiag import NLMSG_DONE, NLMSGHDR, destroy_inodes, open_diag

log = logging.getLogger(__name__)

# linux/connector.h and linux/cn_proc.h: the process connector's channel and messages.
NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_EVENT_EXIT = 0x80000000
CN_MSG = struct.Struct("=IIIIHH")         # idx, val, seq, ack, len, flags
PROC_EVENT = struct.Struct("=IIQ")        # what, cpu, timestamp_ns
EXIT_EVENT = struct.Struct("=IIII")       # process_pid, process_tgid, exit_code, exit_signal
EVENT_AT = NLMSGHDR.size + CN_MSG.size


def killed_by(exit_code: int) -> int:
    """The fatal signal in a thread's wait status (0 if it exited normally)."""
    return exit_code & 0x7F


def release_sockets(pid: int) -> int:
    """Abort every TCP socket process ``pid`` holds; the number aborted.

    Meant for a process that is already dying: its peers get a reset now. The threads
    share one file table and namespace; the first thread that still has them serves (one
    that finished exiting lists no files). Sockets are found by inode in the thread's
    network namespace and destroyed there (wire/sockdiag.py)."""
    for tid in _threads(pid):
        base = f"/proc/{pid}/task/{tid}"
        inodes = _socket_inodes(f"{base}/fd")
        if not inodes:
            continue
        try:
            with open_diag(f"{base}/ns/net") as nl:
                return destroy_inodes(nl, inodes)
        except OSError as exc:
            log.info("cannot end the connections of dying process %d: %s", pid, exc)
            return 0
    return 0


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _socket_inodes(fd_dir: str) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for name in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                link = os.readlink(f"{fd_dir}/{name}")
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
    return inodes


def _listen_message() -> bytes:
    op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
    cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
    return NLMSGHDR.pack(NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn


def parse_exit(message: bytes) -> tuple[int, int, int] | None:
    """(tid, tgid, exit_code) of a process-connector exit event, None for other events."""
    if len(message) < EVENT_AT + PROC_EVENT.size + EXIT_EVENT.size:
        return None
    what, _cpu, _ts = PROC_EVENT.unpack_from(message, EVENT_AT)
    if what != PROC_EVENT_EXIT:
        return None
    tid, tgid, code, _sig = EXIT_EVENT.unpack_from(message, EVENT_AT + PROC_EVENT.size)
    return tid, tgid, code


class DeathWatch:
    """Calls ``on_killed(pid)`` once when a watched process starts dying of a signal.

    One listener thread; ``watch``/``unwatch`` a process by pid. ``available`` is False
    (and every call a no-op) where the process connector cannot be opened."""

    def __init__(self, on_killed: Callable[[int], object] = release_sockets) -> None:
        self.on_killed = on_killed
        self._pids: set[int] = set()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.why_not = ""
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
            s.bind((0, CN_IDX_PROC))
            s.send(_listen_message())
            self._sock = s
        except OSError as exc:
            self.why_not = f"process events unavailable ({exc.strerror or exc})"
            log.info("%s: a killed target's connections end when the kernel closes them",
                     self.why_not)
            return
        threading.Thread(target=self._run, name="deathwatch", daemon=True).start()

    @property
    def available(self) -> bool:
        return self._sock is not None

    def watch(self, pid: int) -> None:
        with self._lock:
            self._pids.add(pid)

    def unwatch(self, pid: int) -> None:
        with self._lock:
            self._pids.discard(pid)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _run(self) -> None:
        while (sock := self._sock) is not None:
            try:
                message = sock.recv(4096)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:    # events were dropped; go on
                    continue
                return
            if not message:
                return
            event = parse_exit(message)
            if event is None or not killed_by(event[2]):
                continue
            with self._lock:
                if event[1] not in self._pids:
                    continue
                self._pids.discard(event[1])  # once per process
            pid, sig = event[1], killed_by(event[2])
            try:
                result = self.on_killed(pid)
                log.info("process %d killed by signal %d: %s", pid, sig,
                         f"{result} TCP connections aborted"
                         if isinstance(result, int) else "handled")
            except Exception:                 # never let one failure stop the watch
                log.exception("releasing the connections of dying process %d", pid)
