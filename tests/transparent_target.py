"""The crash-transparent embedded target as a real process tree, for tests and benchmarks.

``python -m nvmf_phoenix.embedded --crash-transparent`` starts the socket keeper, which runs
the target in worker processes. :meth:`TransparentTarget.kill_active` SIGKILLs the worker
serving right now, as a crash would; the keeper's status says who that is and whether a
standby is ready.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nvmf_phoenix.embedded.app import scratch_name
from nvmf_phoenix.embedded.keeper_client import keeper_status
from nvmf_phoenix.persist import shm
from nvmf_phoenix.rpc import RpcClient

from tests.target_fixture import HOSTNQN, NQN, free_port
from tests.waiting import wait_for


class TransparentTarget:
    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.sock = str(workdir / "spdk.sock")
        self.log_path = workdir / "target.log"
        self.log = open(self.log_path, "w")   # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nvmf_phoenix.embedded", "--crash-transparent", "-r",
             self.sock, "--log-level", "INFO", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.port = 0
        wait_for(lambda: self._serving(), timeout=30, what="crash-transparent target")

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"target exited with {self.proc.returncode}: "
                                 f"{self.log_path.read_text()}")
        try:
            return bool(self.status()["ready"])
        except OSError:
            return False

    def status(self) -> dict[str, Any]:
        return keeper_status(self.sock + ".keeper")

    def rpc(self, timeout: float = 30.0) -> RpcClient:
        return RpcClient.connect(self.sock, timeout=timeout)

    def configure(self, blocks: int = 16384, block_size: int = 4096, **transport: Any) -> None:
        """One RAM namespace on NQN, listening on a free loopback port (and discovery)."""
        self.port = free_port()
        addr = {"trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": str(self.port),
                "adrfam": "IPv4"}
        with self.rpc() as c:
            c.call("nvmf_create_transport", {"trtype": "TCP", **transport})
            c.call("bdev_malloc_create", {"name": "Malloc0", "num_blocks": blocks,
                                          "block_size": block_size})
            c.call("nvmf_create_subsystem", {"nqn": NQN, "serial_number": "PHX0001",
                                             "model_number": "nvmf-phoenix transparent"})
            c.call("nvmf_subsystem_add_host", {"nqn": NQN, "host": HOSTNQN})
            c.call("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Malloc0"}})
            c.call("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": addr})

    def wait_standby(self, takeovers: int = 0, timeout: float = 30.0) -> dict[str, Any]:
        """Until at least ``takeovers`` takeovers happened, the active worker has resumed
        and a standby waits behind it."""
        box: dict[str, Any] = {}

        def ready() -> bool:
            box["st"] = st = self.status()
            return bool(st["takeovers"] >= takeovers and st["ready"] and st["standby"])
        wait_for(ready, timeout=timeout, interval=0.01, what="a ready standby worker")
        return box["st"]

    def state_file(self, name: str) -> Path:
        """A file of the target's shared state (``config``, ``conn-N``, ``bdev-...``)."""
        found = shm.find(name, None, scratch_name(self.sock))
        assert found is not None, f"no {name} in the target's shared memory"
        return Path(found)

    def conn_ids(self) -> list[int]:
        """The connections that have shared state now, oldest first."""
        return sorted(int(p.name[5:]) for base, _ in shm.candidates(None, scratch_name(
            self.sock)) for p in Path(base).glob("conn-*"))

    def kill_active(self) -> int:
        pid = int(self.status()["active"])
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        # A keeper that ends normally wipes its shared state; one a test SIGKILLed cannot,
        # and a test run must not leave RAM bdevs behind in /dev/shm.
        shm.wipe(scratch_name(self.sock))
        return int(self.proc.returncode)


@contextmanager
def transparent_target(workdir: Path, *args: str, env: dict[str, str] | None = None
                       ) -> Iterator[TransparentTarget]:
    t = TransparentTarget(workdir, *args, env=env)
    try:
        yield t
    finally:
        t.stop()


def torture(t: TransparentTarget, kills: int, qd: int = 32, queues: int = 2,
            max_nlb: int = 4, max_delay: float = 0.2, kato_ms: int = 4000,
            seed: int = 1, digests: bool = False, gap_threshold: float = 0.010,
            after_takeover: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Verified mixed I/O at ``qd`` while the serving worker is SIGKILLed ``kills`` times,
    each at a random moment after a standby is ready. Keep-alives keep flowing on the
    admin queue (a controller expired by the restarts would fail the run). Returns the
    workload's findings plus the host-visible stall around each kill;
    ``after_takeover(n)`` runs (on another thread) once the n-th successor is ready."""
    import random
    import threading
    import time

    from nvmf_phoenix.initiator.host import Host
    from nvmf_phoenix.initiator.workload import VerifiedWorkload

    rng = random.Random(seed)
    host = Host("127.0.0.1", t.port, NQN, hostnqn=HOSTNQN, kato_ms=kato_ms, hdgst=digests,
                ddgst=digests)
    host.create_io_queues(queues)
    work = VerifiedWorkload(host.io, 1, 4096, 4096, qd=qd, max_nlb=max_nlb, seed=seed,
                            gap_threshold=gap_threshold)
    killed_at: list[float] = []
    failure: list[BaseException] = []
    done = threading.Event()

    def killer() -> None:
        try:
            seen = t.wait_standby()["takeovers"]
            for _ in range(kills):
                done.wait(rng.uniform(0.0, max_delay))   # a random moment, not a sync
                killed_at.append(time.monotonic())
                t.kill_active()
                seen = t.wait_standby(seen + 1)["takeovers"]
                if after_takeover is not None:
                    after_takeover(len(killed_at))
        except BaseException as exc:
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=killer, daemon=True)
    start = time.monotonic()
    thread.start()
    next_ka = 0.0
    try:
        while not done.is_set():
            work.step(0.05)
            if time.monotonic() >= next_ka:
                host.keep_alive()
                next_ka = time.monotonic() + kato_ms / 4000
        work.run(0.5)
        work.drain()
        host.keep_alive()
        unreadable = work.verify_all(lambda lba, n: host.read(1, lba, n, 4096))
        status = t.status()   # while the host is still connected
    finally:
        done.set()
        thread.join(30)
        host.close()
    if failure:
        raise failure[0]
    # The host-visible stall of a kill: the gap between completions that spans it (gaps
    # under the threshold are not recorded: those kills count as the threshold).
    stalls = [max((g for at, g in work.stats.gaps if at - g <= k <= at),
                  default=gap_threshold) for k in killed_at]
    return {**work.stats.summary(), "kills": len(killed_at), "unreadable": len(unreadable),
            "verified": len(work.expected),   # the read-backs: one 1-block read each
            "seconds": round(time.monotonic() - start, 1), "stalls": stalls,
            "outstanding": sum(len(f) for f in work.inflight), "status": status}
