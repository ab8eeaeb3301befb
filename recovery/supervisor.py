"""The supervisor: keeps a target alive and its configuration intact across any death.

It starts the target (SPDK's nvmf_tgt or the embedded one) on a private RPC socket with
--wait-for-rpc and restores the last checkpoint into it, or adopts one already running;
serves the public socket through the write-ahead :class:`~.front.Front`; and watches:

- a process exit is noticed at once: one thread per target process waits for it and
  starts the restart from there, so nothing else the supervisor does can delay it;
- a target that stops answering on a separate connection is declared dead only after
  ``misses`` missed answers in a row, one every ``ping_interval`` (a slow but alive target
  is never killed);
- the configuration is compared with the checkpoint every ``drift_interval`` seconds, to
  catch changes made behind the front's back on the private socket.

Crash loops back off exponentially and end in a clear final status. A planned restart
(``phoenix_restart`` on the public socket, ``nvmf-phoenix restart``) checkpoints, stops
the target, starts it (optionally a new command: an upgrade) and restores; a new command
that does not come up is rolled back to the old one.

With a cluster store (``cluster_store``, the group's checkpoint in etcd) every checkpoint
is committed there too (the local store's replica), and at start the cluster's
checkpoint is the authority: the target is restored from it when it has one (a new node,
or one whose disk was lost), and a local checkpoint it lacks is committed to it first (a
node moving to a cluster store). A cluster store that cannot be read stops the start:
serving a configuration that may be older than the cluster's would be worse.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from nvmf_phoenix.recovery import inflight
from nvmf_phoenix.recovery.capture import capture_config, capture_runtime
from nvmf_phoenix.recovery.carry import Carried, missing
from nvmf_phoenix.recovery.diff import diff
from nvmf_phoenix.recovery.etcd_store import EtcdGroupStore, EtcdStoreError
from nvmf_phoenix.recovery.front import Front
from nvmf_phoenix.recovery.journal import KIND_OUTCOME
from nvmf_phoenix.recovery.process import Adopted, answers, end_process, socket_owner
from nvmf_phoenix.recovery.restore import restore
from nvmf_phoenix.recovery.store import CheckpointStore, lock_state_dir
from nvmf_phoenix.recovery.verify import Expectation, expectations, verify_reconnect
from nvmf_phoenix.rpc import RpcClient, RpcConnectionError, RpcError

from nvmf_phoenix.model import Runtime, TargetState

log = logging.getLogger(__name__)
Proc: TypeAlias = "subprocess.Popen[bytes] | Adopted"


@dataclass
class Status:
    state: str = "starting"        # starting, ready, restarting, failed, stopped
    restarts: int = 0
    generation: int = 0            # bumped each time a (re)started target is ready
    last_start_s: float = 0.0      # process start to its RPC socket answering
    last_restore_s: float = 0.0    # from there to restored and verified
    last_death_to_ready_s: float = 0.0
    last_error: str = ""
    ready_at: float = 0.0          # time.monotonic() when the target was last ready
    restart_times: list[float] = field(default_factory=list)
    # After the last restart: hosts that had queues and came back (seconds after ready),
    # hosts still awaited, and whether the verification is still running.
    reconnected: dict[str, float] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    verifying: bool = False
    checkpoint: dict[str, Any] = field(default_factory=dict)   # what the last restore used

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "restarts": self.restarts,
                "generation": self.generation,
                "last_start_s": round(self.last_start_s, 4),
                "last_restore_s": round(self.last_restore_s, 4),
                "last_death_to_ready_s": round(self.last_death_to_ready_s, 4),
                "last_error": self.last_error,
                "hosts": {"reconnected": {h: round(t, 3) for h, t in self.reconnected.items()},
                          "missing": self.missing, "verifying": self.verifying},
                "checkpoint": self.checkpoint}


def checkpoint_store(state_dir: str) -> CheckpointStore:
    """The supervisor's checkpoints. The region's name follows the state directory, so a
    restarted supervisor finds the shared memory its predecessor left (and a clean-up
    finds it too: it outlives the supervisor on purpose)."""
    return CheckpointStore.for_state_dir(state_dir, region_dir=None)


def _who(e: Expectation) -> str:
    # The count is SPDK's num_io_qpairs, which includes the admin queue pair.
    return f"{e.hostnqn} on {e.nqn} ({e.io_queues} queue pairs)"


def resolve_pending(store: CheckpointStore, pending: list[Any], live: TargetState) -> None:
    """Calls the previous front journaled but never answered (it died): look whether
    the target has them, record the verdict, apply nothing (nobody awaits it)."""
    for p in pending:
        before = p.before or store.load().state or TargetState.empty()
        applied = inflight.effect_present(p.method, p.params, before, live)
        verdict = "applied" if applied else "not applied"
        log.warning("call in flight when the supervisor died: %s %s: %s (never "
                    "acknowledged; not sent again)", p.method, json.dumps(p.params), verdict)
        store.journal.append(KIND_OUTCOME, json.dumps(
            {"intent": p.seq, "resolved": verdict, "at": "start"}).encode())
    if pending:
        store.journal.sync()


class ClusterStoreError(Exception):
    """The cluster store could not be read (or written) at start: nothing is served."""


class UpgradeFailed(RpcError):
    """A planned restart with a new command failed; the old command was started again."""


class Supervisor:
    def __init__(self, target_cmd: list[str], private_sock: str, public_sock: str,
                 state_dir: str, ping_interval: float = 0.5, misses: int = 4,
                 max_restarts: int = 10, restart_window: float = 60.0,
                 drift_interval: float = 10.0, reconnect_deadline: float = 60.0,
                 cluster_store: EtcdGroupStore | None = None) -> None:
        self.target_cmd = list(target_cmd)
        self.cluster_store = cluster_store
        self.private_sock = private_sock
        self.state_dir = state_dir
        self.store = checkpoint_store(state_dir)
        self.ping_interval = ping_interval
        self.misses = misses
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.drift_interval = drift_interval
        self.reconnect_deadline = reconnect_deadline
        self.runtime = Runtime()        # who was connected, as last seen (every ping)
        self.runtime_generation = 0     # the target generation it was seen on
        self._qpairs_seen: object = None
        self._awaited: list[Expectation] = []
        self.ready = threading.Event()
        self.status = Status()
        self.proc: Proc | None = None
        self._stop = threading.Event()
        self._restart_lock = threading.Lock()
        self.front = Front(public_sock, private_sock, self.store, self.ready,
                           control=self._control, generation=lambda: self.status.generation,
                           notice_s=max(1.0, ping_interval * 2),
                           gave_up=lambda: self.status.last_error
                           if self.status.state == "failed" else None)
        self._watcher = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    def status_dict(self) -> dict[str, Any]:
        d = self.status.to_dict()
        if self.cluster_store is not None:
            d["store"] = {**self.cluster_store.describe(), "behind": self.store.replica_error}
        return d

    @property
    def generation(self) -> int:
        return self.status.generation

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, adopt: bool = False) -> None:
        """Start (or, with ``adopt``, take over) the target; serve the public socket.

        A live target already answering on the private socket is always adopted, never
        replaced: starting a second one would fight it for the listeners. One writer per
        state directory: raises StateDirBusy when another process holds it.
        """
        self._lock_fd: int | None = lock_state_dir(self.store.directory)
        if self.cluster_store is not None:
            self._join_cluster_store(self.cluster_store)
        pending = self.store.unresolved()
        if (adopt or os.path.exists(self.private_sock)) and self._alive():
            with RpcClient.connect(self.private_sock, timeout=10) as c:
                live = capture_config(c)
            self._resolve_pending(pending, live)
            self.store.save(live)         # the running target is the truth now
            proc = Adopted(socket_owner(self.private_sock))
            self._watch_process(proc)
            log.info("adopted the target on %s (pid %d)", self.private_sock, proc.pid)
        else:
            self._launch_and_restore()
            if pending:
                with RpcClient.connect(self.private_sock, timeout=10) as c:
                    self._resolve_pending(pending, capture_config(c))
        self._set_ready(None)
        self.front.start()
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        self.front.close()
        with self._restart_lock:     # a restart in progress sees _stop and ends
            self._end_target(planned=True)
        self._watcher.join(timeout=5)
        self.status.state = "stopped"
        self.store.close()
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)
            self._lock_fd = None

    def _join_cluster_store(self, cluster: EtcdGroupStore) -> None:
        """Make the local store agree with the cluster's checkpoint, then replicate every
        checkpoint to it. Raises ClusterStoreError when it cannot be read or written."""
        try:
            got = cluster.load()
            local = self.store.load()
            if got.state is not None:
                if local.state is None or diff(local.state, got.state):
                    log.info("restoring the cluster store's checkpoint (seq %d; the local "
                             "one is %s)", got.seq, "different" if local.state else "none")
                    self.store.save(got.state)
            elif local.state is not None:
                log.info("the cluster store has no checkpoint: committing the local one")
                cluster.commit_state(local.state)
        except EtcdStoreError as exc:
            raise ClusterStoreError(
                f"cluster store {','.join(cluster.where['endpoints'])} "
                f"({cluster.where['keys']}): {exc}") from exc
        self.store.replica = cluster

    def _resolve_pending(self, pending: list[Any], live: TargetState) -> None:
        resolve_pending(self.store, pending, live)

    def _launch_and_restore(self, cmd: list[str] | None = None) -> float:
        """Start the target with --wait-for-rpc and restore the checkpoint into it."""
        if os.path.exists(self.private_sock):
            with contextlib.suppress(OSError):   # a dead target's socket file
                os.unlink(self.private_sock)
        loaded = self.store.load()
        self.status.checkpoint = {"source": loaded.source, "seq": loaded.seq,
                                  "reason": loaded.reason, "problems": loaded.problems}
        if loaded.problems:   # no region at all is the normal first start or reboot
            serious = any(not p.startswith("no shared-memory region") for p in loaded.problems)
            (log.warning if serious else log.info)("checkpoint: %s; problems: %s",
                                                   loaded.reason, "; ".join(loaded.problems))
        desired = loaded.state or TargetState.empty()
        start = time.monotonic()
        with open(os.path.join(self.state_dir, "target.log"), "ab") as out:
            proc = subprocess.Popen([*(cmd or self.target_cmd), "-r", self.private_sock,
                                     "--wait-for-rpc"], stdout=out, stderr=out)
        self._watch_process(proc)
        with self._connect_new(proc) as c:
            answering = time.monotonic()
            report = restore(c, desired)
            if loaded.state is None:
                self.store.save(capture_config(c))
            self.front.carried = Carried()
            if not report.ok:
                self.status.last_error = "restore incomplete: " + "; ".join(
                    [str(f) for f in report.execution.failures] + report.plan.conflicts
                    + report.differences)[:2000]
                log.warning(self.status.last_error)
                # Keep what failed in every checkpoint until it can come back.
                self.front.carried = missing(desired, capture_config(c))
                if self.front.carried:
                    log.warning("kept in the checkpoint until they can be restored: %s",
                                "; ".join(self.front.carried.describe()))
        self.status.last_start_s = answering - start
        self.status.last_restore_s = time.monotonic() - answering
        log.info("target answering %.3f s after start; restored from %s in %.3f s",
                 self.status.last_start_s, loaded.source, self.status.last_restore_s)
        return self.status.last_restore_s

    def _watch_process(self, proc: Proc) -> None:
        self.proc = proc
        threading.Thread(target=self._reap, args=(proc,), name="reaper", daemon=True).start()

    def _connect_new(self, proc: Proc, limit: float = 30.0) -> RpcClient:
        """Connect to a target just started; fail at once if it exits instead."""
        deadline = time.monotonic() + limit
        while True:
            if proc.poll() is not None:
                raise RpcConnectionError(f"target exited with status {proc.returncode} "
                                         "during start-up", address=self.private_sock)
            if self._stop.is_set():
                raise RpcConnectionError("supervisor stopping", address=self.private_sock)
            try:
                return RpcClient.connect(self.private_sock, timeout=60)
            except RpcConnectionError:
                if time.monotonic() > deadline:
                    raise
            self._stop.wait(0.005)

    def _end_target(self, planned: bool) -> None:
        end_process(self.proc, planned)

    def _set_ready(self, died_at: float | None) -> None:
        now = time.monotonic()
        if died_at is not None:
            self.status.last_death_to_ready_s = now - died_at
        self.status.ready_at = now
        self.status.generation += 1
        self.status.state = "ready"
        self.ready.set()

    # -- watching ------------------------------------------------------------------------
    def _reap(self, proc: Proc) -> None:
        """Wait for ``proc`` to exit; if it was the live target, replace it at once."""
        status = proc.wait()
        died_at = time.monotonic()
        if not self._stop.is_set() and self.proc is proc:
            self._restart(died_at, f"target exited (status {status})", seen=proc)

    def _alive(self, timeout: float = 1.0) -> bool:
        return answers(self.private_sock, timeout)

    def _watch(self) -> None:
        """Liveness pings and drift checks; process exits are the reapers' business."""
        missed, counted = 0, None     # consecutive misses, and the process they are of
        last_drift = time.monotonic()
        while not self._stop.wait(self.ping_interval):
            if self.status.state == "failed":
                return
            if not self.ready.is_set():
                missed = 0                       # a restart is under way
                continue
            seen = self.proc
            if seen is not counted:
                # Misses are a process's own: a ping lost to a restart that ended before
                # this round was the old target's, never held against its successor.
                missed, counted = 0, seen
            missed = 0 if self._alive(self.ping_interval) else missed + 1
            if not missed:
                self._track_runtime()
            if missed >= self.misses and not self._stop.is_set():
                missed = 0
                self._restart(time.monotonic(), f"target missed {self.misses} pings in a "
                              "row", seen=seen, must_match=True)
            elif time.monotonic() - last_drift >= self.drift_interval:
                last_drift = time.monotonic()
                self._check_drift()

    def _restart(self, died_at: float, why: str, cmd: list[str] | None = None,
                 seen: Proc | None = None, planned: bool = False,
                 must_match: bool = False) -> None:
        """Replace the target. ``seen`` is the process found dead: if it is no longer
        the current one, another restart already replaced it and there is nothing to do.
        With ``cmd`` (an upgrade) a command that does not come up is rolled back; the
        rollback raises :class:`UpgradeFailed` once the old command is up again."""
        with self._restart_lock:
            if self._stop.is_set() or self.status.state in ("starting", "failed"):
                return
            if (seen is not None or must_match) and self.proc is not seen:
                return
            self.ready.clear()
            self.status.state = "restarting"
            # A planned restart (an upgrade, a restart asked for) is routine; a target
            # that died or hung is for an operator to look into.
            (log.info if planned else log.warning)("%s: restarting", why)
            self._awaited = sorted(set(expectations(self.runtime)) | set(self._awaited),
                                   key=lambda e: (e.nqn, e.hostnqn))
            self._end_target(planned)
            attempt, upgrade_error = list(cmd or self.target_cmd), ""
            counted = not planned
            while True:
                if counted and not self._may_restart():
                    return
                counted = True
                try:
                    self._launch_and_restore(attempt)
                    break
                except Exception as exc:   # whatever it was, count it and try again
                    self.status.last_error = f"restart failed: {exc}"
                    log.error(self.status.last_error, exc_info=not isinstance(
                        exc, (RpcError, OSError)))
                    self._end_target(planned=False)
                    if cmd and attempt == list(cmd) and attempt != self.target_cmd:
                        upgrade_error = f"{' '.join(cmd)} did not come up ({exc})"
                        attempt = list(self.target_cmd)    # roll back to what ran before
                        counted = False
            self.target_cmd = attempt
            self.status.restarts += 1
            self._set_ready(died_at)
            self._verify_hosts()
        if upgrade_error:
            self.status.last_error = f"upgrade failed: {upgrade_error}; rolled back"
            raise UpgradeFailed(-32603, self.status.last_error)

    def _may_restart(self) -> bool:
        """Crash-loop guard: count this attempt, back off, give up past the limit."""
        now = time.monotonic()
        self.status.restart_times = [t for t in self.status.restart_times
                                     if now - t < self.restart_window] + [now]
        n = len(self.status.restart_times)
        if n > self.max_restarts:
            self.status.state = "failed"
            self.status.last_error = (f"crash loop: {n} restarts in "
                                      f"{self.restart_window:.0f} s; giving up")
            log.error(self.status.last_error)
            return False
        if n > 3:
            self._stop.wait(min(0.1 * 2 ** (n - 3), 5.0))
        return not self._stop.is_set()

    def _track_runtime(self) -> None:
        """Who is connected. Reading it pauses subsystems, so it is re-read only when the
        queue-pair counts in nvmf_get_stats (which pauses nothing) change."""
        try:
            with RpcClient.connect(self.private_sock, timeout=self.ping_interval) as c:
                groups = c.call("nvmf_get_stats").get("poll_groups", [])
                counts = [(g.get("current_admin_qpairs"), g.get("current_io_qpairs"))
                          for g in groups]
                # Same counts on the same target: nothing to re-read. A restarted target
                # is always read once: hosts that reconnect before the first look leave
                # the counts as they were on the dead one.
                if counts == self._qpairs_seen and \
                        self.runtime_generation == self.status.generation:
                    return
                saved, gen = self.store.current, self.status.generation
                runtime = capture_runtime(c, list(saved.subsystems) if saved else [])
                if not self.ready.is_set() or self.status.generation != gen:
                    return                  # overlapped a restart: not this target's
                self.runtime, self.runtime_generation = runtime, gen
                self._qpairs_seen = counts
        except (RpcError, AttributeError):
            return

    def _verify_hosts(self) -> None:
        """In the background: every host that had queues before the death must come back
        with as many queue pairs; record how long each took, and who did not."""
        awaited, gen = list(self._awaited), self.status.generation
        self.status.reconnected, self.status.missing = {}, [_who(e) for e in awaited]
        self.status.verifying = bool(awaited)

        def run() -> None:
            try:
                with RpcClient.connect(self.private_sock, timeout=10) as c:
                    report = verify_reconnect(c, awaited, self.reconnect_deadline,
                                              sleep=self._stop.wait)
            except RpcError:
                return                  # the target died again: the next restart verifies
            if self.status.generation != gen:
                return
            self.status.reconnected = {_who(e): t for e, t in report.reconnected.items()}
            self.status.missing = [_who(e) for e in report.missing]
            self._awaited = list(report.missing)
            self.status.verifying = False
            if report.missing:
                log.warning("hosts that did not come back within %.0f s: %s",
                            self.reconnect_deadline, "; ".join(self.status.missing))

        if awaited:
            threading.Thread(target=run, name="verify-hosts", daemon=True).start()

    def _check_drift(self) -> None:
        """Changes made on the private socket behind our back: capture them, warn. Also
        the compaction of journaled changes: the capture replaces them with a whole
        state, read from the target rather than built up from calls. Skipped while a
        mutation holds the front (it checkpoints anyway)."""
        if not self.front.lock.acquire(blocking=False):
            return
        try:
            gen = self.status.generation
            with RpcClient.connect(self.private_sock, timeout=10) as c:
                live = self.front.with_carried(self.front.stable_capture(c, gen))
            saved = self.store.current or self.store.load().state
            # Options the target filled in with defaults are not a change of its own.
            changes = diff(saved, live, desired=True) if saved is not None \
                else ["no checkpoint"]
            if changes:
                log.warning("configuration changed behind the supervisor's back: %s",
                            "; ".join(changes[:5]))
            # (a cluster store that is behind catches up here too, not only at the
            # next user call)
            if changes or self.store.pending or self.store.replica_error:
                self.front.save_if_current(live, gen)
        except RpcError:
            return
        finally:
            self.front.lock.release()

    # -- control methods on the public socket ----------------------------------------------
    def _control(self, method: str, params: Any) -> Any:
        if method == "phoenix_status":
            return self.status_dict()
        if method == "phoenix_restart":
            cmd = (params or {}).get("target_cmd")
            if cmd is not None and (not isinstance(cmd, list) or not cmd or
                                    not all(isinstance(a, str) for a in cmd)):
                raise RpcError(-32602, "target_cmd must be a non-empty list of strings")
            with self.front.lock:
                with contextlib.suppress(RpcConnectionError):   # dead: the last one stands
                    self.front.wait_ready(self.front.wait_s)    # a restart under way ends
                    self.front.checkpoint()
                self._restart(time.monotonic(), "planned restart", cmd, planned=True)
            return self.status.to_dict()
        raise RpcError(-32601, "Method not found", method)
