"""Run the user-facing tools as a user does: the `nvmf-phoenix` and `spdk-rpc` executables."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nvmf_phoenix.persist import shm
from nvmf_phoenix.recovery.store import CheckpointStore

BIN = Path(sys.executable).parent
PLUGIN = "nvmf_phoenix.plugin"


def phoenix(*args: str, timeout: float = 60, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "nvmf-phoenix"), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def spdk_rpc(sock: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real spdk-rpc from SPDK's PyPI package, with our plugin loaded."""
    return subprocess.run([str(BIN / "spdk-rpc"), "-s", sock, "--plugin", PLUGIN, *args],
                          capture_output=True, text=True, timeout=timeout)


def drop_region(state_dir: str | Path) -> None:
    """Remove the shared-memory region of a test's state directory (it outlives us)."""
    if not os.path.isdir(state_dir):
        return
    path = CheckpointStore.for_state_dir(str(state_dir)).region_path()
    if path:
        shm.remove(path)   # and the record of its owner
