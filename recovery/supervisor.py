"""The supervisor: keeps a target alive and its configuration intact across any death.

It starts the target (SPDK's nvmf_tgt or the embedded one) on a private RPC socket with
--wait-for-rpc and restores the last checkpoint into it, or adopts one already running;
serves the public socket through the write-ahead :class:`~.front.Front`; and watches: a
process exit is noticed at once, and a target that stops answering on a separate
connection is declared dead only after ``misses`` missed answers in a row (a slow but alive
target is never killed). Crash loops back off exponentially and end in a clear final
status.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from nvmf_phoenix.recovery.capture import capture_config
from nvmf_phoenix.recovery.front import Front
from nvmf_phoenix.recovery.restore import restore
from nvmf_phoenix.recovery.store import CheckpointStore
from nvmf_phoenix.rpc import RpcClient, RpcConnectionError, RpcError

from nvmf_phoenix.model import TargetState

log = logging.getLogger(__name__)


@dataclass
class Status:
    state: str = "starting"        # starting, ready, restarting, failed, stopped
    restarts: int = 0
    last_restore_s: float = 0.0
    last_death_to_ready_s: float = 0.0
    last_error: str = ""
    restart_times: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "restarts": self.restarts,
                "last_restore_s": round(self.last_restore_s, 4),
                "last_death_to_ready_s": round(self.last_death_to_ready_s, 4),
                "last_error": self.last_error}


class Supervisor:
    def __init__(self, target_cmd: list[str], private_sock: str, public_sock: str,
                 state_dir: str, ping_interval: float = 0.5, misses: int = 4,
                 max_restarts: int = 10, restart_window: float = 60.0,
                 drift_interval: float = 10.0) -> None:
        self.target_cmd = list(target_cmd)
        self.private_sock = private_sock
        # The region's name follows the state directory, so a restarted supervisor finds
        # the shared memory its predecessor left.
        tag = hashlib.sha1(os.path.abspath(state_dir).encode()).hexdigest()[:12]
        self.store = CheckpointStore(state_dir, name=f"supervisor-{tag}", region_dir=None)
        self.ping_interval = ping_interval
        self.misses = misses
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.drift_interval = drift_interval
        self.ready = threading.Event()
        self.status = Status()
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._restart_lock = threading.Lock()
        self.generation = 0   # bumped each time a (re)started target is ready
        self.front = Front(public_sock, private_sock, self.store, self.ready,
                           control=self._control, generation=lambda: self.generation,
                           notice_s=max(1.0, ping_interval * 2))
        self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, adopt: bool = False) -> None:
        if adopt and self._alive():
            with RpcClient.connect(self.private_sock, timeout=10) as c:
                self.store.save(capture_config(c))
            log.info("adopted the target on %s", self.private_sock)
        else:
            self._launch_and_restore()
        self.status.state = "ready"
        self.ready.set()
        self.front.start()
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        self.front.close()
        self._terminate()
        self._watcher.join(timeout=5)
        self.status.state = "stopped"
        self.store.close()

    def _launch_and_restore(self, cmd: list[str] | None = None) -> float:
        """Start the target with --wait-for-rpc and restore the checkpoint into it."""
        if os.path.exists(self.private_sock):
            with contextlib.suppress(OSError):   # a dead target's socket file
                os.unlink(self.private_sock)
        self.proc = subprocess.Popen([*(cmd or self.target_cmd), "-r", self.private_sock,
                                      "--wait-for-rpc"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        loaded = self.store.load()
        desired = loaded.state or TargetState.empty()
        start = time.monotonic()
        with self._connect_new(self.proc) as c:
            report = restore(c, desired)
            if not report.ok:
                self.status.last_error = "; ".join(
                    [str(f) for f in report.execution.failures] + report.plan.conflicts
                    + report.differences)[:2000]
                log.warning("restore incomplete: %s", self.status.last_error)
            if loaded.state is None:
                self.store.save(capture_config(c))
        self.status.last_restore_s = time.monotonic() - start
        log.info("target restored from %s in %.3f s", loaded.source,
                 self.status.last_restore_s)
        return self.status.last_restore_s

    def _connect_new(self, proc: subprocess.Popen[bytes], limit: float = 30.0) -> RpcClient:
        """Connect to a target just started; fail at once if it exits instead."""
        deadline = time.monotonic() + limit
        while True:
            if proc.poll() is not None:
                raise RpcConnectionError(f"target exited with status {proc.returncode} "
                                         "during start-up", address=self.private_sock)
            try:
                return RpcClient.connect(self.private_sock, timeout=60)
            except RpcConnectionError:
                if time.monotonic() > deadline:
                    raise
            self._stop.wait(0.005)

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    # -- watching ------------------------------------------------------------------------
    def _alive(self, timeout: float = 1.0) -> bool:
        try:
            with RpcClient.connect(self.private_sock, timeout=timeout) as c:
                c.call("spdk_get_version")
            return True
        except RpcError:
            return False

    def _watch(self) -> None:
        missed = 0
        pinged: subprocess.Popen[bytes] | None = None
        last_drift = time.monotonic()
        while not self._stop.wait(self.ping_interval / 4):
            if self.status.state == "failed":
                return
            # One process per round: the restart below must name the process that was
            # found dead or silent, not whichever one is current by then.
            proc = self.proc
            died = proc is not None and proc.poll() is not None
            if proc is not pinged:      # a new target (restarted by anyone): count afresh
                missed, pinged = 0, proc
            # No pings while a restart is under way: the target being replaced does not
            # answer, and those misses must not count against its successor. (After a
            # failed restart nothing is under way: a silent leftover is still replaced.)
            if not died and not self._restart_lock.locked() and not self._stop.is_set():
                missed = 0 if self._alive(self.ping_interval) else missed + 1
                died = missed >= self.misses
            if died and not self._stop.is_set():
                missed = 0
                self._restart(time.monotonic(), "target died" if proc is None or
                              proc.poll() is not None else "target stopped answering",
                              seen=proc)
            elif time.monotonic() - last_drift >= self.drift_interval:
                last_drift = time.monotonic()
                self._check_drift()

    def _restart(self, died_at: float, why: str, cmd: list[str] | None = None,
                 seen: subprocess.Popen[bytes] | None = None, planned: bool = False) -> None:
        """Replace the target. ``seen`` is the process found dead: if it is no longer
        the current one, another restart already replaced it and there is nothing to do.
        ``planned`` stops the current target gracefully under the same lock: stopped
        outside it, the watcher could be starting a replacement that the stop then hit."""
        with self._restart_lock:
            if seen is not None and self.proc is not seen:
                return
            self.ready.clear()
            self.status.state = "restarting"
            log.warning("%s: restarting", why)
            now = time.monotonic()
            self.status.restart_times = [t for t in self.status.restart_times
                                         if now - t < self.restart_window] + [now]
            if len(self.status.restart_times) > self.max_restarts:
                self.status.state = "failed"
                self.status.last_error = (f"crash loop: {len(self.status.restart_times)} "
                                          f"restarts in {self.restart_window:.0f} s; giving up")
                log.error(self.status.last_error)
                return
            backoff = min(0.1 * 2 ** max(0, len(self.status.restart_times) - 3), 5.0)
            if len(self.status.restart_times) > 3:
                self._stop.wait(backoff)
            if planned:
                self._terminate()
            elif self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(timeout=10)
            try:
                self._launch_and_restore(cmd)
            except RpcError as exc:
                self.status.last_error = f"restart failed: {exc}"
                log.error(self.status.last_error)
                return
            if cmd:
                self.target_cmd = list(cmd)
            self.status.restarts += 1
            self.status.last_death_to_ready_s = time.monotonic() - died_at
            self.status.state = "ready"
            self.generation += 1
            self.ready.set()

    def _check_drift(self) -> None:
        """Changes made on the private socket behind our back: capture them, warn.

        Skipped while a mutation holds the front's lock: that mutation checkpoints anyway,
        and the watcher must never wait for it - a mutation whose target died waits for
        the watcher to notice the death (seen with SPDK: a 60 s stall until the front's
        deadline, as every mutation there takes tens of milliseconds)."""
        if not self.front.lock.acquire(blocking=False):
            return
        try:
            try:
                with RpcClient.connect(self.private_sock, timeout=10) as c:
                    live = capture_config(c)
            except RpcError:
                return
            from nvmf_phoenix.recovery.diff import diff

            saved = self.store.load().state
            if saved is not None and diff(saved, live):
                log.warning("configuration changed behind the supervisor's back: %s",
                            "; ".join(diff(saved, live)[:5]))
                self.store.save(live)
        finally:
            self.front.lock.release()

    # -- control methods on the public socket ----------------------------------------------
    def _control(self, method: str, params: Any) -> Any:
        if method == "phoenix_status":
            return self.status.to_dict()
        if method == "phoenix_restart":
            cmd = (params or {}).get("target_cmd")
            with self.front.lock:
                self.front.checkpoint()
                self._restart(time.monotonic(), "planned restart", cmd, planned=True)
            return self.status.to_dict()
        raise RpcError(-32601, "Method not found", method)
