"""A target process the supervisor did not start but adopted.

Found through the kernel's credentials of the peer on its RPC socket (SO_PEERCRED), and
watched through a pidfd, so an adopted target's death is noticed as fast as a child's and
a hung one can be killed. Offers the part of ``subprocess.Popen`` the supervisor uses.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess

from nvmf_phoenix.rpc import RpcClient, RpcError
from nvmf_phoenix.wire.peercred import peer_cred


def socket_owner(path: str) -> int:
    """The pid of the process serving the Unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        return peer_cred(s).pid


class Adopted:
    """Popen-like handle on a process that is not our child (exit status unknowable)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.args = [f"pid {pid}"]
        self._fd = os.pidfd_open(pid)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._fd], [], [], 0)[0]:
            self._exited()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not select.select([self._fd], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self._exited()
        return -1

    def _exited(self) -> None:
        self.returncode = -1             # only a parent could learn how it ended

    def __del__(self) -> None:
        # Closed only here: the reaper and a stopping supervisor may both select on it.
        os.close(self._fd)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            signal.pidfd_send_signal(self._fd, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def answers(sock: str, timeout: float = 1.0) -> bool:
    """Whether a target serves JSON-RPC on ``sock`` (one spdk_get_version)."""
    try:
        with RpcClient.connect(sock, timeout=timeout) as c:
            c.call("spdk_get_version")
        return True
    except RpcError:
        return False


def end_process(proc: subprocess.Popen[bytes] | Adopted | None, planned: bool) -> None:
    """Stop a target process: SIGTERM and a grace period when planned, else SIGKILL (a
    target declared dead gets no say)."""
    if proc is None or proc.poll() is not None:
        return
    if planned:
        proc.terminate()
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait(timeout=10)
