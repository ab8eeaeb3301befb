"""A real Linux NVMe/TCP host (Debian's kernel under qemu) against the embedded target.

Marked ``realhost``; skipped only where qemu cannot run at all. Each guest run is bounded
(boot about 3 s under TCG, a whole scenario about 10 s).
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.recovery.capture import capture
from nvmf_phoenix.recovery.restore import restore
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn

from tests import realhost
from tests.target_fixture import NQN, free_port, running_target
from tests.target_process import TargetProcess

pytestmark = [pytest.mark.realhost, pytest.mark.slow,
              pytest.mark.skipif(realhost.unavailable_reason() is not None,
                                 reason=f"qemu cannot run: {realhost.unavailable_reason()}")]
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:0b0e1e2f-3a4b-4c5d-8e9f-a0b1c2d3e4f5"


def _namespaces(run: realhost.GuestRun) -> list[dict[str, str]]:
    return [m.fields for m in run.all("namespace") if re.fullmatch(r"nvme\d+n\d+",
                                                                  m.fields["dev"])]


@pytest.mark.parametrize("opts", ["", "hdr_digest,data_digest"])
def test_linux_host_discovers_connects_and_verifies_data(opts: str) -> None:
    with running_target(num_blocks=16384) as rt:
        run = realhost.boot("host", port=rt.port, nqn=NQN, hostnqn=HOSTNQN, opts=opts,
                            seconds=3, timeout=150)
    assert run.first("done") is not None, "\n".join(run.console[-30:])
    disc = run.first("discovery")
    assert disc and disc.fields["subsysnqn"] == "nqn.2014-08.org.nvmexpress.discovery"
    ident = run.first("identity")
    assert ident is not None
    assert (ident.fields["serial"], ident.fields["model"], ident.fields["subsysnqn"]) == (
        "PHX0001", "nvmf-phoenix_test", NQN)
    (ns,) = _namespaces(run)
    assert ns["nsid"] == "1" and ns["uuid"] == "6f5c8e0a-7d3b-4c2e-9a1f-0b2c3d4e5f60"
    assert int(ns["blocks"]) * 512 == 16384 * 4096
    pattern = run.first("pattern")
    assert pattern and pattern.fields["ok"] == "1"
    work = run.first("workload")
    assert work is not None and int(work.fields["ops"]) > 10
    assert (work.fields["errors"], work.fields["mismatches"]) == ("0", "0")
    assert not run.all("ioerror") and run.first("disconnected") is not None


def test_project_initiator_talks_to_kernel_nvmet() -> None:
    port = free_port()
    ready = threading.Event()
    nqn = "nqn.2016-06.io.phx:kernel"
    thread, box = realhost.boot_in_thread(
        scenario="nvmet", nqn=nqn, seconds=25, hostfwd=port, timeout=120,
        on_marker=lambda m: ready.set() if m.event == "nvmet-ready" else None)
    assert ready.wait(60), "guest nvmet never became ready"
    host = None
    for _ in range(50):   # slirp forwards before the guest listens: retry the connect
        try:
            host = Host("127.0.0.1", port, nqn, timeout=10)
            break
        except Exception:
            threading.Event().wait(0.2)
    assert host is not None, "could not connect to the guest's nvmet"
    with host:
        assert host.identity["subnqn"] == nqn and host.identity["mn"] == "Linux"
        assert host.active_namespaces() == [1]
        host.create_io_queues(1)
        data = bytes(range(256)) * 16
        host.write(1, 8, data, 512)
        assert host.read(1, 8, 8, 512) == data
    thread.join(60)
    assert box and box[0].first("done") is not None


def _configure(sock: str, image: Path, port: int) -> None:
    with RpcClient.connect(sock) as c:
        rb.bdev_aio_create(c, str(image), "Disk0", block_size=512,
                           uuid="5f3c1d2e-0000-4000-8000-00000000c0de")
        rn.nvmf_create_transport(c, "TCP")
        rn.nvmf_create_subsystem(c, NQN, serial_number="PHXCRASH", allow_any_host=True)
        rn.nvmf_subsystem_add_ns(c, NQN, "Disk0")
        addr = rn.listen_address("127.0.0.1", port)
        rn.nvmf_subsystem_add_listener(c, NQN, addr)
        rn.nvmf_subsystem_add_listener(c, "nqn.2014-08.org.nvmexpress.discovery", addr)


def test_crash_scenario_sigkill_during_verified_workload(tmp_path: Path) -> None:
    """SIGKILL the target mid-workload, restart and restore it; report what the host saw."""
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    sock = str(tmp_path / "spdk.sock")
    port = free_port()
    target = TargetProcess(sock)
    _configure(sock, image, port)
    with RpcClient.connect(sock) as c:
        saved = capture(c, runtime=False)
    events: dict[str, float] = {}
    holder = {"target": target}

    def on_marker(m: realhost.Marker) -> None:
        if m.event == "progress" and int(m.fields["ops"]) >= 10 and "killed" not in events:
            holder["target"].kill()
            events["killed"] = m.at
            fresh = TargetProcess(sock, "--wait-for-rpc")
            with RpcClient.connect(sock) as c:
                assert restore(c, saved).ok
            events["restored"] = realhost.time.monotonic()
            holder["target"] = fresh

    try:
        run = realhost.boot("host", port=port, nqn=NQN, hostnqn=HOSTNQN, seconds=10,
                            opts="reconnect_delay=1,ctrl_loss_tmo=60", timeout=150,
                            on_marker=on_marker)
    finally:
        holder["target"].stop()
    work = run.first("workload")
    assert "killed" in events and work is not None, "\n".join(run.console[-30:])
    report = {"errors": int(work.fields["errors"]), "mismatches": int(work.fields[
        "mismatches"]), "max_gap_ms": int(work.fields["max_gap_ms"]),
        "reconnected": run.reconnected(),
        "death_to_restored_ms": round((events["restored"] - events["killed"]) * 1000)}
    print(f"crash report: {report}")
    assert report["reconnected"], run.kmsg()
    assert report["errors"] == 0 and report["mismatches"] == 0, run.kmsg()


def test_supervised_target_sigkill_during_linux_host_workload(tmp_path: Path) -> None:
    """Issue 7: kill -9 under the supervisor, three times, while the Linux host runs a
    verified workload (reconnect_delay=1): zero I/O errors and mismatches; the report
    gives the longest I/O gap and, per kill, the time from death to restored target."""
    import sys
    import time

    from nvmf_phoenix.recovery.supervisor import Supervisor

    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    port = free_port()
    sup = Supervisor([sys.executable, "-m", "nvmf_phoenix.embedded"],
                     str(tmp_path / "priv.sock"), str(tmp_path / "pub.sock"),
                     str(tmp_path / "state"))
    sup.start()
    kills: list[tuple[int, float]] = []          # (host ops done at the kill, when)
    to_ready: list[float] = []                   # per kill: SIGKILL to restored target
    try:
        _configure(str(tmp_path / "pub.sock"), image, port)

        def seen() -> bool:
            """The supervisor has seen the host's queues on the current target (it looks
            once per ping): only then can it expect the host back."""
            return sup.runtime_generation == sup.generation and any(
                c.hostnqn == HOSTNQN and c.num_io_qpairs > 1 for c in sup.runtime.controllers)

        def on_marker(m: realhost.Marker) -> None:
            # Kill once the host has done 10 more operations since the last restore.
            if m.event != "progress" or len(kills) >= 3 or not sup.ready.is_set() or \
                    not seen():
                return
            ops = int(m.fields["ops"])
            if ops >= 10 + (kills[-1][0] if kills else 0) and sup.proc is not None:
                if kills:                     # the previous kill's restore is complete
                    to_ready.append(sup.status.ready_at - kills[-1][1])
                sup.proc.kill()
                kills.append((ops, time.monotonic()))

        run = realhost.boot("host", port=port, nqn=NQN, hostnqn=HOSTNQN, seconds=14,
                            opts="reconnect_delay=1,ctrl_loss_tmo=60", timeout=180,
                            on_marker=on_marker)
        status = sup.status.to_dict()
        ready_at = sup.status.ready_at
    finally:
        sup.stop()
        sup.store.region.unlink()
    work = run.first("workload")
    assert len(kills) == 3 and work is not None, "\n".join(run.console[-30:])
    to_ready.append(ready_at - kills[-1][1])
    report = {"kills": len(kills), "at_ops": [k[0] for k in kills], "ops": work.fields["ops"],
              "errors": work.fields["errors"], "mismatches": work.fields["mismatches"],
              "max_gap_ms": int(work.fields["max_gap_ms"]),
              "death_to_restored_ms": [round(t * 1000) for t in to_ready],
              "reconnected": run.reconnected(), "restarts": status["restarts"],
              "target_saw_reconnect_s": status["hosts"]["reconnected"]}
    print(f"supervised crash report: {report}")
    assert status["restarts"] == 3 and run.reconnected(), run.kmsg()
    assert [h.split()[0] for h in status["hosts"]["reconnected"]] == [HOSTNQN]
    assert status["hosts"]["missing"] == []
    assert work.fields["errors"] == "0" and work.fields["mismatches"] == "0", run.kmsg()
    assert not run.all("ioerror") and run.first("disconnected") is not None


def test_crash_transparent_target_sigkills_unseen_by_linux_host(tmp_path: Path) -> None:
    """Issue 8: the crash-transparent target's worker is SIGKILLed again and again during
    the Linux host's verified workload: zero I/O errors, and the host's kernel log shows
    no reset, no reconnect, no timeout: it never noticed."""
    from tests.transparent_target import transparent_target

    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    port = free_port()
    kills: list[float] = []
    with transparent_target(tmp_path) as t:
        _configure(t.sock, image, port)
        seen = [t.wait_standby()["takeovers"]]

        def on_marker(m: realhost.Marker) -> None:
            if m.event != "progress" or int(m.fields["ops"]) < 10 or len(kills) >= 8:
                return
            st = t.status()
            if st["takeovers"] >= seen[0] and st["ready"] and st["standby"]:
                t.kill_active()
                kills.append(m.at)
                seen[0] = st["takeovers"] + 1

        run = realhost.boot("host", port=port, nqn=NQN, hostnqn=HOSTNQN, seconds=12,
                            opts="reconnect_delay=1,ctrl_loss_tmo=60", timeout=180,
                            on_marker=on_marker)
        takeovers = t.status()["takeovers"]
    work = run.first("workload")
    assert work is not None, "\n".join(run.console[-30:])
    # What the host driver logs when it notices anything (the kernel command line, which
    # names these words as options, is not that).
    noticed = [k for k in run.kmsg() if "ommand line" not in k and re.search(
        r"reset|reconnect|timeout|I/O error|error recovery|failed", k, re.I)]
    print(f"transparent crash report: kills={len(kills)} ops={work.fields['ops']} "
          f"errors={work.fields['errors']} mismatches={work.fields['mismatches']} "
          f"max_gap_ms={work.fields['max_gap_ms']} kernel_noticed={noticed}")
    assert len(kills) >= 3 and takeovers == len(kills) + 1
    assert (work.fields["errors"], work.fields["mismatches"]) == ("0", "0"), run.kmsg()
    assert noticed == [], run.kmsg()
