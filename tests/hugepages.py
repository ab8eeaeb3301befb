"""Real hugepages for tests: reserve a few and mount hugetlbfs, when we are root."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def ensure_hugetlbfs(mountpoint: Path, pages: int = 64) -> str | None:
    """Mount hugetlbfs at ``mountpoint`` with ``pages`` 2 MiB pages reserved.

    Returns None on success, else the reason it cannot be done here.
    """
    if os.geteuid() != 0:
        return "not root: cannot reserve hugepages"
    nr = Path("/proc/sys/vm/nr_hugepages")
    try:
        if int(nr.read_text()) < pages:
            nr.write_text(str(pages))
        if int(nr.read_text()) < pages:
            return f"kernel granted only {nr.read_text().strip()} hugepages"
    except OSError as exc:
        return f"cannot reserve hugepages: {exc.strerror}"
    mountpoint.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["mount", "-t", "hugetlbfs", "-o", "mode=0700", "nodev",
                          str(mountpoint)], capture_output=True, text=True, timeout=30)
    if run.returncode != 0:
        return f"mount -t hugetlbfs failed: {run.stderr.strip()}"
    return None


def release(mountpoint: Path) -> None:
    subprocess.run(["umount", str(mountpoint)], capture_output=True, timeout=30)
