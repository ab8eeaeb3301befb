"""Run the embedded target as a real process (``python -m nvmf_phoenix.embedded``)."""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import wait_for


def target_command(kind: str = "embedded") -> list[str]:
    """The command for a target: the embedded one, or SPDK's nvmf_tgt named by
    $SPDK_NVMF_TGT (extra flags in $SPDK_NVMF_TGT_ARGS, e.g. "-m 0x1 --no-huge -s 1024").

    --num-trace-entries 0 by default: every nvmf_tgt otherwise creates a 3.4 MB
    /dev/shm/nvmf_trace.pid<PID> that SPDK keeps after a crash, and these tests SIGKILL
    targets by the dozen."""
    if kind == "spdk":
        return [os.environ["SPDK_NVMF_TGT"], *shlex.split(
            os.environ.get("SPDK_NVMF_TGT_ARGS", "-m 0x1 --num-trace-entries 0"))]
    return [sys.executable, "-m", "nvmf_phoenix.embedded"]


# Parametrize a test over these to run it on SPDK too; `pytest -m spdk` selects just those.
TARGET_KINDS: list[Any] = ["embedded"] + (
    [pytest.param("spdk", marks=pytest.mark.spdk)] if os.environ.get("SPDK_NVMF_TGT") else [])


class TargetProcess:
    def __init__(self, sock: str, *args: str, kind: str = "embedded") -> None:
        self.sock = sock
        self.proc = subprocess.Popen(
            [*target_command(kind), "-r", sock, *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # An exit ends the wait at once (wait_for would retry a raised error until its
        # deadline and lose the output): e.g. SPDK refusing a core another nvmf_tgt locked.
        try:
            wait_for(lambda: self.proc.poll() is not None or self._listening(), timeout=20,
                     what=f"target RPC socket {sock}")
        except AssertionError:
            self.stop()   # alive but deaf: do not leave it running
            raise
        if self.proc.poll() is not None:
            out = self.proc.stdout.read() if self.proc.stdout else ""
            raise AssertionError(f"target exited with {self.proc.returncode}: {out}")

    def _listening(self) -> bool:
        if not os.path.exists(self.sock):
            return False
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(self.sock)   # a stale file from a killed target refuses
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()
        return self.proc.returncode


@contextmanager
def target_process(tmp_path: Path, *args: str, name: str = "spdk.sock",
                   kind: str = "embedded") -> Iterator[TargetProcess]:
    tp = TargetProcess(str(tmp_path / name), *args, kind=kind)
    try:
        yield tp
    finally:
        tp.stop()
