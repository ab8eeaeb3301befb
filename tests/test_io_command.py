"""``nvmf-phoenix io`` against real targets: the embedded one in-process, the same through
a TCP proxy that cuts every connection mid-run, and the crash-transparent one whose worker
is SIGKILLed mid-run (the README's claim, as a user checks it)."""
from __future__ import annotations

import contextlib
import json
import queue
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from nvmf_phoenix.plugin import cli
from nvmf_phoenix.plugin.io import Target, drive

from tests.phoenix_tools import BIN
from tests.target_fixture import HOSTNQN, NQN, running_target
from tests.transparent_target import transparent_target
from tests.waiting import wait_for


def test_verified_run_reports_iops_latency_and_no_errors(
        capsys: pytest.CaptureFixture[str]) -> None:
    with running_target() as rt:
        rc = cli.main(["io", "-s", str(rt.port), "-n", NQN, "-T", "1", "-q", "8", "-P", "2",
                       "-w", "randrw", "-o", "8k", "--verify", "--json", "--seed", "7"])
    out, err = capsys.readouterr()
    s = json.loads(out)
    assert rc == 0, out + err
    assert s["ios"] > 0 and s["reads"] > 0 and s["writes"] > 0
    assert s["ios"] == s["reads"] + s["writes"]
    assert s["errors"] == 0 and s["mismatches"] == 0 and s["reconnects"] == 0
    assert s["read_back"] > 0 and s["verify"] is True
    assert s["io_size"] == 8192 and s["block_size"] == 4096 and s["queue_depth"] == 8
    lat = s["latency_us"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
    assert s["iops"] > 0 and s["mib_s"] == pytest.approx(s["iops"] * 8192 / (1 << 20),
                                                         rel=0.01)
    assert "io:" in err or s["seconds"] < 1.0     # progress, once a second


def test_count_bounds_the_run_and_sequential_reads_cover_blocks(
        capsys: pytest.CaptureFixture[str]) -> None:
    with running_target() as rt:
        rc = cli.main(["io", "-s", str(rt.port), "-n", NQN, "-T", "30", "-c", "300",
                       "-w", "read", "--quiet", "--json"])
    s = json.loads(capsys.readouterr().out)
    assert rc == 0 and s["ios"] == 300 and s["reads"] == 300 and s["writes"] == 0


def test_a_mismatch_fails_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    """A block that changes under the host (written by someone else between two reads)
    is a mismatch, and a mismatch is exit 1."""
    with running_target(num_blocks=8) as rt:
        dev = rt.core.block_devices["Malloc0"]
        stop = threading.Event()

        def scribble() -> None:
            for n in range(1, 10_000):
                if stop.wait(0.02):
                    return
                block = bytes([n & 0xFF]) * 4096 * 8
                rt.call(lambda b=block: dev.write(0, b))  # type: ignore[misc]
        th = threading.Thread(target=scribble, daemon=True)
        th.start()
        try:
            rc = cli.main(["io", "-s", str(rt.port), "-n", NQN, "-T", "1", "-q", "4",
                           "-w", "randread", "--verify", "--quiet"])
        finally:
            stop.set()
            th.join(10)
    out = capsys.readouterr().out
    assert rc == 1, out
    assert re.search(r"0 errors, [1-9]\d* mismatches", out), out


def test_unreachable_target_is_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]        # bound, never listening: refused
        rc = cli.main(["io", "-s", str(port), "-T", "1", "--quiet"])
    assert rc == 3 and "cannot connect" in capsys.readouterr().err


class CuttingProxy:
    """Forwards TCP to a target; :meth:`cut` drops every connection at once, as a target
    that dies (or a network that fails) does."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.forwarded = 0
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, fn: object, *args: object) -> None:
        th = threading.Thread(target=fn, args=args, daemon=True)  # type: ignore[arg-type]
        th.start()
        self.threads.append(th)

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.pairs.append((a, b))
            self._spawn(self._pipe, a, b)
            self._spawn(self._pipe, b, a)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                self.forwarded += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> int:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for a, b in pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        return len(pairs)

    def close(self) -> None:
        self.lsock.close()
        self.cut()
        for th in self.threads:
            th.join(10)


def test_dropped_connections_are_reconnected_and_outstanding_commands_resent() -> None:
    with running_target() as rt:
        proxy = CuttingProxy(rt.port)
        result: list[dict] = []
        failed: list[BaseException] = []

        def run() -> None:
            try:
                result.append(drive(Target("127.0.0.1", str(proxy.port), NQN, HOSTNQN,
                                           queues=2), None, 4096, 16, "randrw", 50,
                                    verify=True, seconds=2.5, count=None, seed=3))
            except BaseException as exc:
                failed.append(exc)
        th = threading.Thread(target=run, daemon=True)
        th.start()
        try:
            wait_for(lambda: proxy.forwarded > 1 << 20, timeout=20, what="I/O flowing")
            assert proxy.cut() == 3          # admin queue and two I/O queues
            th.join(60)
        finally:
            proxy.close()
    assert not th.is_alive() and not failed, failed
    s = result[0]
    assert s["reconnects"] == 1, s
    assert s["errors"] == 0 and s["mismatches"] == 0, s
    assert s["longest_stall_ms"] > 0
    assert all(st["ms"] >= 10 for st in s["stalls"])   # over 10 ms, rounded to 0.1
    assert len(s["stalls"]) == s["stalls_over_10ms"] or len(s["stalls"]) == 1000


def test_kill_9_of_the_crash_transparent_worker_costs_no_errors(tmp_path: Path) -> None:
    """What the README promises a user: a verified run across a kill -9 of the worker
    serving it sees no error, no mismatch, no reconnect; only a stall, which is printed."""
    with transparent_target(tmp_path) as t:
        t.configure()
        before = t.wait_standby()["takeovers"]
        proc = subprocess.Popen(
            [str(BIN / "nvmf-phoenix"), "io", "-s", str(t.port), "-n", NQN, "--hostnqn",
             HOSTNQN, "-T", "4", "-q", "16", "-P", "2", "--verify"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue[str] = queue.Queue()
        def read_progress() -> None:
            for line in proc.stderr or ():
                lines.put(line)
        reader = threading.Thread(target=read_progress, daemon=True)
        reader.start()
        try:
            first = lines.get(timeout=30)       # the first progress line: I/O is flowing
            assert first.startswith("io:"), first
            t.kill_active()
            t.wait_standby(before + 1)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        reader.join(10)
    assert proc.returncode == 0, out
    m = re.search(r"0 errors, 0 mismatches, 0 reconnects, longest stall ([\d.]+) ms", out)
    assert m, out
    assert float(m.group(1)) > 0


def test_ctrl_c_ends_the_run_with_a_summary() -> None:
    """As with perf: Ctrl-C stops submitting, lets what is outstanding complete, and
    prints the summary of what ran."""
    import signal

    with running_target() as rt:
        proc = subprocess.Popen(
            [str(BIN / "nvmf-phoenix"), "io", "-s", str(rt.port), "-n", NQN, "-T", "120",
             "--verify", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline()      # the first progress line, after 1 s
            assert first.startswith("io:"), first
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    s = json.loads(out)
    assert proc.returncode == 0 and s["seconds"] < 60 and s["ios"] > 0
    assert s["errors"] == 0 and s["mismatches"] == 0


def test_a_target_that_never_comes_back_is_an_error_after_ctrl_loss_tmo() -> None:
    with running_target() as rt:
        proxy = CuttingProxy(rt.port)
        result: list[dict] = []
        th = threading.Thread(target=lambda: result.append(drive(
            Target("127.0.0.1", str(proxy.port), NQN, HOSTNQN), None, 4096, 8, "randrw",
            50, verify=True, seconds=30, count=None, ctrl_loss_tmo=1.0)), daemon=True)
        th.start()
        try:
            wait_for(lambda: proxy.forwarded > 1 << 18, timeout=20, what="I/O flowing")
            proxy.lsock.close()              # no new connection gets through
            proxy.cut()
            th.join(60)
        finally:
            proxy.close()
    assert not th.is_alive() and result
    s = result[0]
    assert s["reconnects"] == 1 and s["errors"] >= 1 and "could not reconnect" in s["failure"]
    assert s["seconds"] < 30


def test_the_soak_script_runs_and_finds_nothing_wrong() -> None:
    """benchmarks/soak_io.py, as RELIABILITY.md's long runs use it, with two kills."""
    import sys

    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, str(root / "benchmarks" / "soak_io.py"),
                          "--kills", "2", "--max-delay", "0.2"],
                         capture_output=True, text=True, timeout=300, cwd=root)
    assert run.returncode == 0, run.stdout + run.stderr
    s = json.loads(run.stdout)
    assert s["kills"] == 2 and s["errors"] == 0 and s["mismatches"] == 0
    assert s["reconnects"] == 0 and s["ios"] > 0
