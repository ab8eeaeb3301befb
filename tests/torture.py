"""Torture run: a stream of mutating RPCs and host I/O while the target is SIGKILLed.

Used by tests/test_supervisor.py (a small kill count; ``--torture-kills N`` for more) and
by benchmarks/bench_supervisor.py (hundreds). One client drives the public socket with a
seeded random mix of mutations (subsystems, hosts, malloc bdevs with generated uuids,
namespaces with target-assigned nsids, and their removal), keeping its own model of what
the target must hold: every acknowledged call applied, nothing else. Because it is the only
mutator and waits for each answer, the model is exact, so the run checks after every
restart and at the end that the live target equals it (an acknowledged change lost, an
unacknowledged one present, or one applied twice all show up), that every call succeeded
(a call applied twice fails with "already exists"), and that identities the target
generated (bdev uuids, namespace nsid/uuid/nguid) never change. Meanwhile the project's
initiator writes random blocks to a file-backed namespace and reads them back, and at the
end every acknowledged write is read back through the target and from the file itself.
Each kill comes at a random moment, once the stream has had an answer since the previous
kill (a stream that stalls for 60 s fails the run).
"""
from __future__ import annotations

import logging
import os
import random
import signal
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nvmf_phoenix.initiator.connection import NvmeError
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.recovery.supervisor import Supervisor
from nvmf_phoenix.rpc import RpcClient, RpcError
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn

DATA_NQN = "nqn.2016-06.io.phx:torture"
PREFIX = "nqn.2016-06.io.phx:stream"
BS = 512
BLOCKS = 2048
MAX_SUBSYSTEMS, MAX_BDEVS = 6, 10


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connect(port: int, deadline: float) -> Host:
    while True:
        try:
            h = Host("127.0.0.1", port, DATA_NQN, timeout=5)
            h.create_io_queues(1)
            return h
        except (NvmeError, OSError):
            if time.monotonic() > deadline:
                raise
            threading.Event().wait(0.02)   # target restarting: retry the connect


@dataclass
class Model:
    """What the target must hold for the stream's objects (acknowledged calls only)."""

    subsystems: dict[str, dict[str, Any]] = field(default_factory=dict)
    bdevs: dict[str, str] = field(default_factory=dict)      # name -> uuid it got
    claimed: set[str] = field(default_factory=set)           # bdevs under a namespace

    def live_view(self, c: RpcClient) -> tuple[dict[str, Any], dict[str, str]]:
        subs = {s["nqn"]: {"serial": s["serial_number"],
                           "hosts": sorted(h["nqn"] for h in s["hosts"]),
                           "ns": {n["nsid"]: (n["bdev_name"], n.get("uuid"), n.get("nguid"))
                                  for n in s["namespaces"]}}
                for s in rn.nvmf_get_subsystems(c) if s["nqn"].startswith(PREFIX)}
        bdevs = {b["name"]: b["uuid"] for b in c.call("bdev_get_bdevs")
                 if b["name"].startswith("TB")}
        return subs, bdevs

    def expected(self) -> tuple[dict[str, Any], dict[str, str]]:
        subs = {n: {"serial": s["serial"], "hosts": sorted(s["hosts"]), "ns": dict(s["ns"])}
                for n, s in self.subsystems.items()}
        return subs, dict(self.bdevs)

    def check(self, c: RpcClient) -> list[str]:
        """Differences between the live target and the model (empty when equal)."""
        live, want = self.live_view(c), self.expected()
        out = []
        for what, got, exp in (("subsystem", live[0], want[0]), ("bdev", live[1], want[1])):
            for k in sorted(set(got) | set(exp)):
                if got.get(k) != exp.get(k):
                    out.append(f"{what} {k}: live {got.get(k)!r} != acknowledged "
                               f"{exp.get(k)!r}")
        return out


class RpcStream:
    """The mutating client: picks a valid next call from the model, applies acks to it."""

    def __init__(self, public: str, seed: int) -> None:
        self.public, self.rng = public, random.Random(seed)
        self.model = Model()
        self.acked = 0
        self.failed: list[str] = []
        self.mismatches: list[str] = []
        self.checks = 0
        self.n = 0

    def next_call(self) -> tuple[str, dict[str, Any]]:
        m, r, self.n = self.model, self.rng, self.n + 1
        subs = list(m.subsystems)
        free = [b for b in m.bdevs if b not in m.claimed]
        choices: list[tuple[str, dict[str, Any]]] = []
        if len(subs) < MAX_SUBSYSTEMS:
            nqn = f"{PREFIX}{self.n:06d}"
            choices.append(("nvmf_create_subsystem", {"nqn": nqn,
                                                      "serial_number": f"T{self.n:06d}"}))
        if len(m.bdevs) < MAX_BDEVS:
            choices.append(("bdev_malloc_create", {"name": f"TB{self.n:06d}",
                                                   "num_blocks": 64, "block_size": 512}))
        if subs:
            nqn = r.choice(subs)
            choices.append(("nvmf_subsystem_add_host",
                            {"nqn": nqn, "host": f"nqn.2014-08.org.h:{self.n}"}))
            if m.subsystems[nqn]["hosts"]:
                choices.append(("nvmf_subsystem_remove_host", {"nqn": nqn, "host": r.choice(
                    sorted(m.subsystems[nqn]["hosts"]))}))
            if free:
                choices.append(("nvmf_subsystem_add_ns", {"nqn": nqn, "namespace": {
                    "bdev_name": r.choice(free)}}))
            if m.subsystems[nqn]["ns"]:
                choices.append(("nvmf_subsystem_remove_ns", {"nqn": nqn, "nsid": r.choice(
                    sorted(m.subsystems[nqn]["ns"]))}))
            if len(subs) > MAX_SUBSYSTEMS // 2:
                choices.append(("nvmf_delete_subsystem", {"nqn": r.choice(subs)}))
        if free and len(m.bdevs) > MAX_BDEVS // 2:
            choices.append(("bdev_malloc_delete", {"name": r.choice(free)}))
        return r.choice(choices)

    def acknowledge(self, c: RpcClient, method: str, p: dict[str, Any], result: Any) -> None:
        m = self.model
        if method == "nvmf_create_subsystem":
            m.subsystems[p["nqn"]] = {"serial": p["serial_number"], "hosts": set(), "ns": {}}
        elif method == "bdev_malloc_create":
            (info,) = c.call("bdev_get_bdevs", {"name": p["name"]})
            m.bdevs[p["name"]] = info["uuid"]       # generated: must never change
        elif method == "nvmf_subsystem_add_host":
            m.subsystems[p["nqn"]]["hosts"].add(p["host"])
        elif method == "nvmf_subsystem_remove_host":
            m.subsystems[p["nqn"]]["hosts"].discard(p["host"])
        elif method == "nvmf_subsystem_add_ns":
            (sub,) = rn.nvmf_get_subsystems(c, p["nqn"])
            (ns,) = [n for n in sub["namespaces"] if n["nsid"] == result]
            bdev = p["namespace"]["bdev_name"]
            m.subsystems[p["nqn"]]["ns"][result] = (bdev, ns.get("uuid"), ns.get("nguid"))
            m.claimed.add(bdev)
        elif method == "nvmf_subsystem_remove_ns":
            bdev = m.subsystems[p["nqn"]]["ns"].pop(p["nsid"])[0]
            m.claimed.discard(bdev)
        elif method == "nvmf_delete_subsystem":
            for bdev, *_ in m.subsystems.pop(p["nqn"])["ns"].values():
                m.claimed.discard(bdev)
        elif method == "bdev_malloc_delete":
            del m.bdevs[p["name"]]

    def run(self, stop: threading.Event) -> None:
        with RpcClient.connect(self.public, timeout=120) as c:
            seen_gen = c.call("phoenix_status")["generation"]
            while not stop.is_set():
                method, p = self.next_call()
                try:
                    result = c.call(method, p)
                except RpcError as err:
                    self.failed.append(f"{method} {p}: {err}")
                    continue
                self.acked += 1
                self.acknowledge(c, method, p, result)
                gen = c.call("phoenix_status")["generation"]
                if gen != seen_gen:                 # restored since the last call: check
                    seen_gen = gen
                    self.checks += 1
                    self.mismatches += self.model.check(c)
            self.checks += 1
            self.mismatches += self.model.check(c)


class HostIo:
    """Writes random 4 KiB extents, reads some back; survives target restarts."""

    def __init__(self, port: int, seed: int) -> None:
        self.port, self.rng = port, random.Random(seed)
        self.expected: dict[int, bytes] = {}
        self.acked = self.mismatches = self.reconnects = 0
        self.identity: dict[str, Any] | None = None
        self.identity_changes: list[str] = []
        self.last_done = time.monotonic()
        self.gaps: list[tuple[float, float]] = []   # (at, length) of gaps over 10 ms

    def _open(self) -> Host:
        deadline = time.monotonic() + 60
        while True:
            h = _connect(self.port, deadline)
            try:
                ident = h.identify_namespace(1)
                break
            except (NvmeError, OSError):
                h.close()       # killed between the Connect and the Identify: again
                if time.monotonic() > deadline:
                    raise
        seen = {"uuid": ident.get("uuid"), "nguid": ident.get("nguid"),
                "sn": h.identity["sn"]}
        if self.identity is None:
            self.identity = seen
        elif seen != self.identity:
            self.identity_changes.append(f"{self.identity} -> {seen}")
        return h

    def run(self, stop: threading.Event) -> None:
        h = self._open()
        while not stop.is_set():
            blk = self.rng.randrange(BLOCKS // 8) * 8
            data = os.urandom(8 * BS)
            while True:
                try:
                    h.write(1, blk, data, BS)
                    self.expected[blk] = data
                    if self.acked % 4 == 0:
                        back = self.rng.choice(list(self.expected))
                        if h.read(1, back, 8, BS) != self.expected[back]:
                            self.mismatches += 1
                    break
                except (NvmeError, OSError):
                    h.close()       # the write may or may not have landed: write it again
                    self.reconnects += 1
                    h = self._open()
            self.acked += 1
            now = time.monotonic()
            if now - self.last_done > 0.010:
                self.gaps.append((now, now - self.last_done))
            self.last_done = now
        h.close()

    def stall(self, killed_at: float) -> float:
        """How long the host waited across a kill: the gap between acknowledged writes
        that spans it (10 ms when none over 10 ms does)."""
        return max((g for at, g in self.gaps if at - g <= killed_at <= at), default=0.010)


class _Incomplete(logging.Handler):
    """Collects the supervisor's "restore incomplete" warnings: each restore must be whole."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "restore incomplete" in record.getMessage():
            self.seen.append(record.getMessage()[:300])


def run_torture(tmp: Path, kills: int, seed: int = 0,
                target_cmd: list[str] | None = None) -> dict[str, Any]:
    """``target_cmd`` defaults to the embedded target; SPDK's nvmf_tgt works the same."""
    incomplete = _Incomplete()
    logging.getLogger("nvmf_phoenix.recovery.supervisor").addHandler(incomplete)
    try:
        return _run(tmp, kills, seed, incomplete,
                    target_cmd or [sys.executable, "-m", "nvmf_phoenix.embedded"])
    finally:
        logging.getLogger("nvmf_phoenix.recovery.supervisor").removeHandler(incomplete)


def _run(tmp: Path, kills: int, seed: int, incomplete: _Incomplete, target_cmd: list[str]
         ) -> dict[str, Any]:
    rng = random.Random(seed)
    port = _port()
    image = tmp / "torture.img"
    with open(image, "wb") as f:
        f.truncate(BLOCKS * BS)
    # Kills come faster than any real crash loop: no crash-loop guard or backoff.
    sup = Supervisor(target_cmd, str(tmp / "priv.sock"),
                     str(tmp / "pub.sock"), str(tmp / "state"), ping_interval=0.5,
                     max_restarts=100_000, restart_window=1e-3)
    sup.start()
    public = str(tmp / "pub.sock")
    with RpcClient.connect(public) as c:
        rn.nvmf_create_transport(c, "TCP")
        rb.bdev_aio_create(c, str(image), "D0", block_size=BS)
        rn.nvmf_create_subsystem(c, DATA_NQN, allow_any_host=True, serial_number="TORTURE")
        rn.nvmf_subsystem_add_ns(c, DATA_NQN, "D0")
        rn.nvmf_subsystem_add_listener(c, DATA_NQN, rn.listen_address("127.0.0.1", port))
    stop = threading.Event()
    stream, io = RpcStream(public, seed), HostIo(port, seed + 1)
    errors: list[str] = []

    def guarded(name: str, fn: Any) -> threading.Thread:
        def run() -> None:
            try:
                fn(stop)
            except Exception as exc:      # a worker dying is a failed run, not a hang
                errors.append(f"{name}: {exc!r}")
                stop.set()
        return threading.Thread(target=run, name=name)

    workers = [guarded("rpc-stream", stream.run), guarded("host-io", io.run)]
    for w in workers:
        w.start()
    done, to_ready, acked_at_kill, kill_times = 0, [], 0, []
    start = time.monotonic()
    try:
        while done < kills and not stop.is_set():
            stop.wait(rng.uniform(0.02, 0.3))          # a random moment of the workload
            # Each kill lands on a running workload: the RPC stream has had an answer since
            # the last kill (a slow target, SPDK on a loaded machine, fits few in between).
            progress_by = time.monotonic() + 60
            while stream.acked <= acked_at_kill and time.monotonic() < progress_by:
                if stop.wait(0.005):
                    break
            if stop.is_set():
                break
            if stream.acked <= acked_at_kill:
                errors.append(f"kill {done + 1}: the RPC stream made no progress in 60 s")
                break
            acked_at_kill = stream.acked
            if not sup.ready.wait(60) or sup.proc is None:
                errors.append(f"target not ready after kill {done}: {sup.status.to_dict()}")
                break
            gen = sup.generation
            killed_at = time.monotonic()
            kill_times.append(killed_at)
            sup.proc.send_signal(signal.SIGKILL)
            done += 1
            deadline = killed_at + 60
            while sup.generation == gen and time.monotonic() < deadline:
                stop.wait(0.001)                        # bounded by the deadline
            if sup.generation == gen:
                errors.append(f"kill {done}: not restored within 60 s")
                break
            to_ready.append(sup.status.ready_at - killed_at)
    finally:
        stop.set()
        for w in workers:
            w.join(180)
    elapsed = time.monotonic() - start
    h = _connect(port, time.monotonic() + 30)
    bad = sum(1 for blk, data in io.expected.items() if h.read(1, blk, 8, BS) != data)
    h.close()
    status = sup.status.to_dict()
    front_stats = dict(sup.front.stats)
    sup.stop()
    sup.store.region.unlink()
    disk = image.read_bytes()
    bad_file = sum(1 for blk, data in io.expected.items()
                   if disk[blk * BS:blk * BS + len(data)] != data)
    stalls = [io.stall(k) for k in kill_times]
    to_ready.sort()
    return {"kills": done, "restarts": status["restarts"], "state": status["state"],
            "seconds": round(elapsed, 1), "errors": errors,
            "rpc_acked": stream.acked, "rpc_failed": stream.failed,
            "state_checks": stream.checks, "state_mismatches": stream.mismatches,
            "front": front_stats, "restores_incomplete": incomplete.seen,
            "io_acked": io.acked, "io_mismatches": io.mismatches + bad,
            "file_mismatches": bad_file, "io_reconnects": io.reconnects,
            "identity_changes": io.identity_changes,
            "kill_to_ready_median_s": round(statistics.median(to_ready), 3)
            if to_ready else None,
            "kill_to_ready_p90_s": round(to_ready[int(len(to_ready) * 0.9)], 3)
            if to_ready else None,
            "kill_to_ready_worst_s": round(to_ready[-1], 3) if to_ready else None,
            "to_ready_s": to_ready, "host_stalls_s": stalls}
