"""Prometheus metrics, scraped over real HTTP from the CLI's exporters."""
from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.plugin.metrics import HostTracker
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn
from prometheus_client.parser import text_string_to_metric_families

from tests.phoenix_tools import BIN, drop_region, phoenix
from tests.target_fixture import free_port
from tests.target_process import TargetProcess
from tests.waiting import wait_for

NQN = "nqn.2016-06.io.phx:metrics"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:6e767068-6f65-6e69-7800-0000000000b1"


def scrape(port: int) -> dict[str, float]:
    """Samples by name (labels folded in as name{k=v}; poll-group series summed too)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
            if s.labels:
                out[s.name] = out.get(s.name, 0) + s.value
    return out


def scrape_until(port: int, pred: Callable[[dict[str, float]], bool], timeout: float,
                 what: str) -> dict[str, float]:
    seen: list[dict[str, float]] = []

    def check() -> bool:
        seen.append(scrape(port))
        return pred(seen[-1])

    wait_for(check, timeout, interval=0.1, what=what)
    return seen[-1]


def configure(sock: str, port: int) -> None:
    with RpcClient.connect(sock) as c:
        rn.nvmf_create_transport(c, "TCP")
        rb.bdev_malloc_create(c, 64, 512, name="M0", uuid="bbbbbbbb-0000-4000-8000-000000000001")
        rn.nvmf_create_subsystem(c, NQN, serial_number="MET1")
        rn.nvmf_subsystem_add_ns(c, NQN, "M0")
        rn.nvmf_subsystem_add_host(c, NQN, HOSTNQN)
        rn.nvmf_subsystem_add_listener(c, NQN, rn.listen_address("127.0.0.1", port))


def child_target(pid: int) -> int:
    """The target process the supervisor started (its child running nvmf_phoenix.embedded)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"nvmf_phoenix.embedded" in cmd:
            return int(entry)
    raise AssertionError("no target child")


def test_supervisor_metrics_follow_a_kill_and_the_host_coming_back(tmp_path: Path) -> None:
    pub, priv, state = str(tmp_path / "pub.sock"), str(tmp_path / "priv.sock"), \
        str(tmp_path / "state")
    mport, tport = free_port(), free_port()
    proc = subprocess.Popen([str(BIN / "nvmf-phoenix"), "supervise", "-s", pub,
                             "--target-socket", priv, "--state-dir", state,
                             "--ping-interval", "0.2", "--metrics-port", str(mport),
                             "--metrics-address", "127.0.0.1", "--metrics-hosts-interval",
                             "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert f"metrics=http://127.0.0.1:{mport}/metrics" in proc.stdout.readline()
        configure(pub, tport)
        m = scrape(mport)
        assert m["nvmf_phoenix_target_up"] == 1 and m["nvmf_phoenix_restarts_total"] == 0
        assert m["nvmf_phoenix_supervisor_state{state=ready}"] == 1
        assert m["nvmf_phoenix_checkpoint_present"] == 1
        assert m["nvmf_phoenix_checkpoint_bytes"] > 500 and m["nvmf_phoenix_journal_bytes"] > 0
        assert 0 <= m["nvmf_phoenix_checkpoint_age_seconds"] < 60
        assert m["nvmf_phoenix_subsystems"] == 1 and m["nvmf_phoenix_namespaces"] == 1
        with Host("127.0.0.1", tport, NQN, hostnqn=HOSTNQN) as h:
            h.create_io_queues(2)
            for lba in range(8):
                h.write(1, lba, bytes([lba]) * 512, 512)
            m = scrape(mport)
            assert m["nvmf_phoenix_nvmf_current_io_qpairs"] == 2
            assert m["nvmf_phoenix_nvmf_current_admin_qpairs"] == 1
            assert m["nvmf_phoenix_nvmf_completed_nvme_io_total"] >= 8
            assert m["nvmf_phoenix_hosts_expected"] == 1
            os.kill(child_target(proc.pid), signal.SIGKILL)
            m = scrape_until(mport, lambda s: s["nvmf_phoenix_restarts_total"] == 1 and
                             s["nvmf_phoenix_target_up"] == 1, 30, "restart in the metrics")
        assert m["nvmf_phoenix_hosts_expected"] == 1 and m["nvmf_phoenix_hosts_missing"] == 1
        assert m["nvmf_phoenix_restore_seconds"] > 0
        assert m["nvmf_phoenix_death_to_ready_seconds"] >= m["nvmf_phoenix_restore_seconds"]
        assert m["nvmf_phoenix_nvmf_completed_nvme_io_total"] == 0    # a new target's count
        with Host("127.0.0.1", tport, NQN, hostnqn=HOSTNQN) as h:
            m = scrape_until(mport, lambda s: s["nvmf_phoenix_hosts_reconnected"] == 1, 10,
                             "host back in metrics")
            assert m["nvmf_phoenix_hosts_missing"] == 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        drop_region(state)


def test_metrics_command_for_an_unsupervised_target(tmp_path: Path) -> None:
    sock, state, mport = str(tmp_path / "t.sock"), str(tmp_path / "state"), free_port()
    tp = TargetProcess(sock)
    exporter = None
    try:
        configure(sock, free_port())
        assert phoenix("checkpoint", "now", "-s", sock, "--state-dir", state).returncode == 0
        run = phoenix("restore", "-s", sock, "--state-dir", state)
        assert run.returncode == 0, run.stderr
        exporter = subprocess.Popen([str(BIN / "nvmf-phoenix"), "metrics", "-s", sock,
                                     "--state-dir", state, "--port", str(mport),
                                     "--address", "127.0.0.1"], stdout=subprocess.PIPE,
                                    text=True)
        assert exporter.stdout is not None
        assert f"127.0.0.1:{mport}/metrics" in exporter.stdout.readline()
        m = scrape(mport)
        assert m["nvmf_phoenix_target_up"] == 1 and "nvmf_phoenix_restarts_total" not in m
        assert m["nvmf_phoenix_last_restore_ok"] == 1 and m["nvmf_phoenix_restore_seconds"] > 0
        assert m["nvmf_phoenix_checkpoint_seq"] == 1
        run = phoenix("metrics", "--port", str(mport), "--address", "127.0.0.1")
        assert run.returncode == 1 and "choose another --port" in run.stderr
        tp.stop()
        m = scrape(mport)
        assert m["nvmf_phoenix_target_up"] == 0 and m["nvmf_phoenix_checkpoint_present"] == 1
    finally:
        tp.stop()
        if exporter is not None:
            exporter.terminate()
            assert exporter.wait(timeout=30) == 0
        drop_region(state)


def test_a_restart_seen_twice_keeps_the_hosts_expected() -> None:
    """The restart count changes, then a scrape finds the target still restoring: the
    second sighting must not turn 'expected back' into nobody (a race seen under load)."""
    tracker = HostTracker()
    host = ("nqn.2014-08.org.nvmexpress:uuid:h1", NQN)
    tracker.observe({host})
    tracker.restarted()
    tracker.observe(set())
    tracker.restarted()
    assert tracker.counts() == (1, 0, 1)
    tracker.observe({host})
    assert tracker.counts() == (1, 1, 0)
