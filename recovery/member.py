"""One target process of a hot-standby pair: how it is started, adopted, pinged, ended.

The supervisor of a single target does the same for its one process inline; a pair has
two, each with its own private socket, command (CPU mask, binary) and log, and each
restarted on its own while the other serves.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from nvmf_phoenix.recovery.pair_view import STANDBY
from nvmf_phoenix.recovery.process import Adopted, answers, end_process, socket_owner
from nvmf_phoenix.rpc import RpcClient, RpcConnectionError

from nvmf_phoenix.model import TargetState

Proc: TypeAlias = "subprocess.Popen[bytes] | Adopted"


@dataclass
class Member:
    """``state``: down (no process), starting (started, being restored), ready (serving
    its role). ``applied`` is what it holds as far as the pair knows: the last view
    restored or mirrored into it, which the next mirror is planned against."""

    name: str
    cmd: list[str]
    sock: str
    log_path: str
    role: str = STANDBY
    state: str = "down"
    proc: Proc | None = None
    applied: TargetState | None = None
    restarts: int = 0
    last_restore_s: float = 0.0
    last_error: str = ""
    restart_times: list[float] = field(default_factory=list)

    def launch(self, stop: threading.Event, limit: float = 30.0) -> RpcClient:
        """Start the process with --wait-for-rpc and connect to it; fail at once if it
        exits instead of answering."""
        with contextlib.suppress(OSError):     # a dead predecessor's socket file
            os.unlink(self.sock)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([*self.cmd, "-r", self.sock, "--wait-for-rpc"],
                                         stdout=out, stderr=out)
        self.state = "starting"
        deadline = time.monotonic() + limit
        while True:
            if self.proc.poll() is not None:
                raise RpcConnectionError(f"target {self.name} exited with status "
                                         f"{self.proc.returncode} during start-up",
                                         address=self.sock)
            if stop.is_set():
                raise RpcConnectionError("supervisor stopping", address=self.sock)
            try:
                return RpcClient.connect(self.sock, timeout=60)
            except RpcConnectionError:
                if time.monotonic() > deadline:
                    raise
            stop.wait(0.005)

    def adopt(self) -> None:
        self.proc = Adopted(socket_owner(self.sock))

    def alive(self, timeout: float = 1.0) -> bool:
        return answers(self.sock, timeout)

    def client(self, timeout: float = 10.0) -> RpcClient:
        return RpcClient.connect(self.sock, timeout=timeout)

    def end(self, planned: bool) -> None:
        end_process(self.proc, planned)

    def to_dict(self, listeners: list[str]) -> dict[str, Any]:
        return {"role": self.role, "state": self.state,
                "pid": self.proc.pid if self.proc is not None and self.proc.poll() is None
                else None,
                "socket": self.sock, "command": " ".join(self.cmd), "listeners": listeners,
                "restarts": self.restarts, "last_restore_s": round(self.last_restore_s, 4),
                "last_error": self.last_error}
