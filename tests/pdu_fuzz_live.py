"""Fuzzing a live target over TCP, while a good host keeps doing verified I/O.

:class:`LiveFuzzer` sends mutated sessions (tests/pdu_fuzz.py) to any NVMe/TCP target
address, one connection per example, half-closes, and checks everything the target sends
back until it closes. It needs nothing from the target but its address and a subsystem to
aim at, so it runs as well against the embedded target's process, the crash-transparent
mode, or SPDK's nvmf_tgt. :class:`GoodHost` is the bystander: it writes random blocks to
its own subsystem, reads them back and compares, and records every latency; it must never
fail or stall (every wait is bounded by the initiator's timeout) while the fuzzing goes on.
"""
from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass, field

from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn
from nvmf_phoenix.wire import nvme

from tests.pdu_fuzz import (
    HOSTNQN,
    NQN,
    OTHER_HOSTNQN,
    OTHER_NQN,
    Mutation,
    Outcome,
    OutputChecker,
    chunks,
    mutate,
    session,
)

GOOD_BS = 4096
GOOD_BLOCKS = 256


def configure(rpc: RpcClient, port: int, fuzz_blocks: int = 1 << 17) -> None:
    """The layout the live fuzz expects: ``NQN`` open to any host (fuzzed sessions aim
    there), ``OTHER_NQN`` for ``OTHER_HOSTNQN`` only (the good host), discovery."""
    addr = rn.listen_address("127.0.0.1", port)
    rn.nvmf_create_transport(rpc, "TCP")
    rb.bdev_malloc_create(rpc, fuzz_blocks, 512, name="Fuzz0")
    rb.bdev_malloc_create(rpc, GOOD_BLOCKS, GOOD_BS, name="Good0")
    rn.nvmf_create_subsystem(rpc, NQN, allow_any_host=True)
    rn.nvmf_subsystem_add_ns(rpc, NQN, "Fuzz0")
    rn.nvmf_subsystem_add_listener(rpc, NQN, addr)
    rn.nvmf_create_subsystem(rpc, OTHER_NQN)
    rn.nvmf_subsystem_add_host(rpc, OTHER_NQN, OTHER_HOSTNQN)
    rn.nvmf_subsystem_add_ns(rpc, OTHER_NQN, "Good0")
    rn.nvmf_subsystem_add_listener(rpc, OTHER_NQN, addr)
    rn.nvmf_subsystem_add_listener(rpc, "nqn.2014-08.org.nvmexpress.discovery", addr)


@dataclass
class LiveFuzzer:
    """Sends fuzz examples to ``traddr:port``; I/O sessions join a controller it keeps."""

    traddr: str
    port: int
    subnqn: str = NQN
    hostnqn: str = HOSTNQN
    timeout: float = 10.0
    _admin: Host | None = None
    _touched: float = 0.0
    runs: int = 0

    def _controller(self) -> int:
        """The cntlid of a live controller with I/O queues granted (kept alive)."""
        if self._admin is not None and time.monotonic() - self._touched > 2.0:
            try:
                self._admin.keep_alive()
                self._touched = time.monotonic()
            except Exception:   # expired or dropped: start a new one
                self.close()
        if self._admin is None:
            self._admin = Host(self.traddr, self.port, self.subnqn, hostnqn=self.hostnqn,
                               timeout=self.timeout)
            self._admin.set_features(nvme.FEAT_NUM_QUEUES, 1 | (1 << 16))
            self._touched = time.monotonic()
        return self._admin.cntlid

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def run(self, kind: str, hdgst: bool, mutations: list[Mutation], cuts: list[int]
            ) -> Outcome:
        cntlid = self._controller() if kind == "io" else 1
        s = session(kind, hdgst, hdgst, cntlid=cntlid, subnqn=self.subnqn,
                    hostnqn=self.hostnqn)
        return self.send(chunks(mutate(s, mutations), cuts))

    def send(self, parts: list[bytes]) -> Outcome:
        """One connection: send ``parts``, half-close, read until the target closes."""
        self.runs += 1
        out = Outcome()
        check = OutputChecker(max_data=0)
        deadline = time.monotonic() + self.timeout
        with socket.create_connection((self.traddr, self.port), timeout=self.timeout) as s:
            try:
                for part in parts:
                    s.sendall(part)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass   # the target closed first (after a TermReq): what follows says why
            while True:
                s.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data = s.recv(1 << 20)
                except TimeoutError:
                    out.problems.append(f"target neither answered nor closed within "
                                        f"{self.timeout}s (local port "
                                        f"{s.getsockname()[1]})")
                    break
                except OSError:
                    break   # reset: the target closed with our bytes unread
                if not data:
                    break
                check.feed(data, whole=False)
        out.closed = True
        out.pdus_out = check.pdus
        out.problems += check.problems
        return out


@dataclass
class GoodHost:
    """A well-behaved host doing verified writes and reads on its own subsystem."""

    traddr: str
    port: int
    subnqn: str = OTHER_NQN
    hostnqn: str = OTHER_HOSTNQN
    timeout: float = 10.0
    seed: int = 0
    ops: int = 0
    mismatches: int = 0
    error: str | None = None
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> GoodHost:
        self._thread = threading.Thread(target=self._run, name="good-host", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> GoodHost:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout * 3)
        return self

    def _run(self) -> None:
        rng = random.Random(self.seed)
        try:
            with Host(self.traddr, self.port, self.subnqn, hostnqn=self.hostnqn,
                      timeout=self.timeout) as h:
                h.create_io_queues(1)
                while not self._stop.is_set():
                    n = rng.choice((1, 1, 2, 8))
                    lba = rng.randrange(GOOD_BLOCKS - n)
                    data = rng.randbytes(n * GOOD_BS)
                    t0 = time.monotonic()
                    h.write(1, lba, data, GOOD_BS)
                    back = h.read(1, lba, n, GOOD_BS)
                    self.latencies.append(time.monotonic() - t0)
                    self.ops += 1
                    self.mismatches += back != data
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies) or [0.0]
        return {"ops": self.ops, "mismatches": self.mismatches,
                "p50_ms": round(lat[len(lat) // 2] * 1e3, 2),
                "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3, 2),
                "max_ms": round(lat[-1] * 1e3, 2)}
