"""Driver for the real Linux NVMe/TCP host (Debian's kernel under qemu, TCG).

``prepare()`` builds or reuses the cached kernel and initramfs (vagrant/realhost/
prepare.py); ``boot()`` runs one scenario and returns the guest's marker lines, calling
``on_marker`` for each as it arrives (that is where crash tests kill and restart the
target while the guest's workload runs). Every run is bounded by a timeout.
NVMF_PHOENIX_REALHOST_SUITE picks the guest kernel's Debian suite (prepare.py).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREPARE = ROOT / "vagrant" / "realhost" / "prepare.py"
MARK = "@@PHX "


@dataclass
class Marker:
    event: str
    fields: dict[str, str]
    text: str
    at: float   # host monotonic time of arrival


@dataclass
class GuestRun:
    markers: list[Marker] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    returncode: int | None = None
    seconds: float = 0.0

    def all(self, event: str) -> list[Marker]:
        return [m for m in self.markers if m.event == event]

    def first(self, event: str) -> Marker | None:
        found = self.all(event)
        return found[0] if found else None

    def kmsg(self) -> list[str]:
        return [m.text for m in self.all("kmsg")]

    def reconnected(self) -> bool:
        return any("reconnect" in k.lower() or "Successfully reconnected" in k
                   for k in self.kmsg())


def unavailable_reason() -> str | None:
    """Why qemu cannot run here at all (None when it can)."""
    for exe in ("qemu-system-x86_64", "busybox", "cpio"):
        if shutil.which(exe) is None:
            return f"{exe} is not installed (run .ci/install-system-deps as root)"
    return None


_prepared: dict[bool, dict[str, str]] = {}


def prepare(tools: bool = False) -> dict[str, str]:
    """Kernel and initramfs paths; ``tools`` adds the initramfs with fio and nvme-cli
    (fetched only when a test needs it, so the other tests do not depend on it)."""
    if tools not in _prepared:
        run = subprocess.run([sys.executable, str(PREPARE), *(["--tools"] if tools else [])],
                             capture_output=True, text=True, timeout=1200)
        if run.returncode != 0:
            raise RuntimeError(f"realhost prepare failed: {run.stderr.strip()}")
        _prepared[tools] = json.loads(run.stdout.strip().splitlines()[-1])
    return _prepared[tools]


def parse(line: str, now: float) -> Marker | None:
    line = line.strip()
    if not line.startswith(MARK):
        return None
    event, _, rest = line[len(MARK):].partition(" ")
    fields: dict[str, str] = {}
    if event != "kmsg":
        for tok in rest.split():
            k, _, v = tok.partition("=")
            fields[k] = v
    return Marker(event, fields, rest, now)


def qemu_pinning() -> list[str]:
    """$PHX_QEMU_CPUS (a taskset CPU list) pins the guest to its own CPUs: on a small
    machine that stands in for a host on another machine, so the targets' work (a
    restart, a restore) does not steal the emulated CPU's time. Unset: not pinned."""
    cpus = os.environ.get("PHX_QEMU_CPUS", "")
    return ["taskset", "-c", cpus] if cpus else []


def pin_guest(cpu: int) -> None:
    """The guest on ``cpu`` alone, this process (and the targets it starts) on the
    others: what benchmarks' --guest-cpu does."""
    others = os.sched_getaffinity(0) - {cpu}
    if cpu not in os.sched_getaffinity(0) or not others:
        raise SystemExit(f"--guest-cpu {cpu}: needs that CPU and at least one other")
    os.environ["PHX_QEMU_CPUS"] = str(cpu)
    os.sched_setaffinity(0, others)


def boot(scenario: str, port: int = 0, nqn: str = "", hostnqn: str = "", opts: str = "",
         seconds: int = 5, hostfwd: int | None = None, timeout: float = 180,
         on_marker: Callable[[Marker], None] | None = None, addr: str = "",
         tools: bool = False, extra: dict[str, str] | None = None) -> GuestRun:
    """``tools`` boots the initramfs with fio and nvme-cli (the pair scenario); ``addr``
    is the target's address as the guest sees it (10.0.2.2 by default); ``extra`` adds
    phx.KEY=VALUE arguments a scenario reads."""
    paths = prepare(tools)
    cmdline = (f"console=ttyS0 quiet panic=-1 nvme_core.admin_timeout=5 "
               f"phx.scenario={scenario} phx.port={port} phx.nqn={nqn} "
               f"phx.seconds={seconds}")
    if hostnqn:
        cmdline += f" phx.hostnqn={hostnqn}"
    if opts:
        cmdline += f" phx.opts={opts}"
    if addr:
        cmdline += f" phx.addr={addr}"
    cmdline += "".join(f" phx.{k}={v}" for k, v in (extra or {}).items())
    net = "user,id=n0" + (f",hostfwd=tcp:127.0.0.1:{hostfwd}-:4420" if hostfwd else "")
    cmd = ["timeout", "-s", "KILL", str(int(timeout)), *qemu_pinning(), "qemu-system-x86_64",
           "-accel", "tcg",
           "-cpu", "max", "-m", "1024" if tools else "512", "-smp", "1", "-display", "none",
           "-monitor", "none", "-serial", "stdio", "-no-reboot", "-kernel", paths["kernel"],
           "-initrd", paths["initrd_tools" if tools else "initrd"], "-append", cmdline,
           "-netdev", net,
           "-device", "virtio-net-pci,netdev=n0,romfile="]
    result = GuestRun()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip("\r\n")
        result.console.append(line)
        marker = parse(line, time.monotonic())
        if marker is None:
            continue
        result.markers.append(marker)
        if on_marker is not None:
            on_marker(marker)
        if marker.event == "done":
            break
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    result.returncode = proc.returncode
    result.seconds = time.monotonic() - start
    return result


def boot_in_thread(**kwargs: object) -> tuple[threading.Thread, list[GuestRun]]:
    """Run ``boot`` in a thread (for a guest that serves while the test drives it)."""
    box: list[GuestRun] = []
    t = threading.Thread(target=lambda: box.append(boot(**kwargs)),  # type: ignore[arg-type]
                         daemon=True)
    t.start()
    return t, box
