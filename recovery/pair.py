"""The hot-standby pair: two targets, one configuration, a crash becomes a path failover.

A host connected to both members of a pair (:mod:`~.pair_view` says what each holds) sends
its I/O to the active member's ``optimized`` paths. When the active dies the host moves
its I/O to the standby's ``non_optimized`` paths by itself, at once, without waiting for
any reconnect; the supervisor then makes the standby's paths ``optimized`` (a few RPCs)
and restarts the dead member from the checkpoint as the new standby, which comes back
``inaccessible`` until restored and then ``non_optimized``: a member that died never
serves again with the ANA state it had (fencing by ANA state).

Every user change goes to the active through the write-ahead front (journaled and
checkpointed as for a single target), is read back whole, and is then *mirrored*: the
standby's view of the new configuration is planned against what the standby was last
given, and only the difference is sent, with every identity explicit. A mirror that
fails never fails the user's call: the standby is marked degraded, ended, and rebuilt
from the checkpoint. Both members dying at once falls back to the single-target path
(restart from the checkpoint as active). A supervisor that dies leaves both serving; the
next one adopts both and keeps the roles their ANA states show.
"""
from __future__ import annotations

import copy
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from nvmf_phoenix.recovery.capture import capture_config
from nvmf_phoenix.recovery.deathwatch import DeathWatch
from nvmf_phoenix.recovery.executor import execute
from nvmf_phoenix.recovery.front import Front
from nvmf_phoenix.recovery.member import Member, Proc
from nvmf_phoenix.recovery.pair_view import (
    ACTIVE,
    MEMBERS,
    ROLE_ANA_STATE,
    STANDBY,
    PairLayout,
    PairRefusal,
    for_member,
    member_view,
    peer,
    to_logical,
)
from nvmf_phoenix.recovery.planner import plan
from nvmf_phoenix.recovery.restore import restore
from nvmf_phoenix.recovery.store import lock_state_dir
from nvmf_phoenix.recovery.supervisor import checkpoint_store, resolve_pending
from nvmf_phoenix.rpc import RpcError

from nvmf_phoenix.model import TargetState

log = logging.getLogger(__name__)


@dataclass
class PairStatus:
    state: str = "starting"      # starting, ready, restarting, failed, stopped
    generation: int = 0          # bumped whenever the active member changes or restarts
    failovers: int = 0
    last_failover_s: float = 0.0     # active's death to the standby optimized
    last_redundant_s: float = 0.0    # active's death to a standby ready again
    last_error: str = ""
    degraded: str = ""           # why the standby is not ready, when it is not


class PairSupervisor:
    """Runs members a and b (``cmds``, ``socks``) behind one public socket."""

    def __init__(self, cmds: tuple[list[str], list[str]], socks: tuple[str, str],
                 public_sock: str, state_dir: str, layout: PairLayout | None = None,
                 ping_interval: float = 0.5, misses: int = 4, max_restarts: int = 10,
                 restart_window: float = 60.0, mirror_timeout: float = 5.0) -> None:
        self.state_dir = state_dir
        self.store = checkpoint_store(state_dir)
        self.layout = layout or PairLayout()
        self.members = {n: Member(n, list(cmd), sock, os.path.join(state_dir,
                                                                   f"target-{n}.log"))
                        for n, cmd, sock in zip(MEMBERS, cmds, socks, strict=True)}
        self.active = "a"
        self.ping_interval, self.misses = ping_interval, misses
        self.max_restarts, self.restart_window = max_restarts, restart_window
        self.mirror_timeout = mirror_timeout
        self.status = PairStatus()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._roles = threading.Lock()        # who is active: one decision at a time
        self._mirror = threading.Lock()       # the standby's configuration: one writer
        self.front = Front(public_sock, socks[0], self.store, self.ready,
                           control=self._control, generation=lambda: self.status.generation,
                           notice_s=max(1.0, ping_interval * 2),
                           gave_up=lambda: self.status.last_error
                           if self.status.state == "failed" else None)
        self.front.pair = self
        self._watcher = threading.Thread(target=self._watch, name="pair", daemon=True)
        # A killed member's connections end at the kill, not ~40 ms later (deathwatch.py).
        self.deathwatch = DeathWatch()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, adopt: bool = False) -> None:
        """Adopt the members already serving their sockets (keeping the roles their ANA
        states show), start the others, and serve the public socket."""
        self._lock_fd: int | None = lock_state_dir(self.store.directory)
        pending = self.store.unresolved()
        live: dict[str, TargetState] = {}
        for m in self.members.values():
            if (adopt or os.path.exists(m.sock)) and m.alive():
                m.adopt()
                with m.client() as c:
                    live[m.name] = capture_config(c)
                log.info("adopted target %s on %s (pid %d)", m.name, m.sock, m.proc.pid
                         if m.proc else -1)
        optimized = [n for n, st in live.items() if _serves_optimized(st)]
        self.active = (optimized or list(live) or ["a"])[0]
        saved = self.store.load().state
        act = self.members[self.active]
        if self.active in live:
            logical = to_logical(live[self.active], self.layout, self.active, saved)
            self.store.save(logical)            # the running target is the truth now
            self._restore(act, ACTIVE, adopted=True)
        else:
            self._bring_up(act, ACTIVE)
            if saved is None:
                with act.client() as c:
                    self.store.save(to_logical(capture_config(c), self.layout, act.name))
        with act.client() as c:
            resolve_pending(self.store, pending,
                            to_logical(capture_config(c), self.layout, act.name))
        act.role, act.state = ACTIVE, "ready"
        self.front.private_sock = act.sock
        sb = self.members[peer(self.active)]
        try:
            if sb.name in live:
                self._restore(sb, STANDBY, adopted=True)
            else:
                self._bring_up(sb, STANDBY)
            sb.state = "ready"
        except (RpcError, OSError) as exc:
            self._degraded(sb, f"standby did not come up: {exc}")
        for m in self.members.values():
            if m.proc is not None:
                self._reap_in_background(m, m.proc)
        self.status.generation += 1
        self.status.state = "ready"
        self.ready.set()
        self.front.start()
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        self.front.close()
        with self._roles:
            for m in self.members.values():
                m.end(planned=True)
        self._watcher.join(timeout=5)
        self.deathwatch.close()
        self.status.state = "stopped"
        self.store.close()
        fd = getattr(self, "_lock_fd", None)
        if fd is not None:
            os.close(fd)
            self._lock_fd = None

    def _bring_up(self, m: Member, role: str) -> None:
        """Start ``m`` and restore the checkpoint into it as ``role``."""
        m.state, m.role = "starting", role
        m.launch(self._stop).close()
        self._restore(m, role)

    def _restore(self, m: Member, role: str, adopted: bool = False) -> None:
        """Make ``m`` hold the checkpoint's view for ``role`` (a started target is
        restored from nothing; an adopted one is brought in line, extra objects pruned)."""
        start = time.monotonic()
        with self.store.lock:
            desired = member_view(self.store.current or self.store.load().state or
                                  TargetState.empty(), self.layout, m.name, role)
        with m.client() as c:
            report = restore(c, desired, prune=adopted)
        m.last_restore_s = time.monotonic() - start
        if not report.ok:
            raise RpcError(-32603, f"restore of target {m.name} incomplete: " + "; ".join(
                [str(f) for f in report.execution.failures] + report.plan.conflicts +
                report.differences)[:2000])
        m.applied, m.role = desired, role

    # -- the front's hooks (PairHooks) ----------------------------------------------------
    def for_active(self, method: str, params: Any) -> Any:
        try:
            out = for_member(method, params, self.layout, self.active)
        except PairRefusal as exc:
            raise RpcError(-1, f"Operation not permitted: {exc}", method) from None
        if method == "nvmf_create_subsystem" and isinstance(params, dict) and \
                not params.get("ana_reporting"):
            log.info("%s: ANA reporting turned on (pair mode: hosts tell the two paths "
                     "apart by their ANA states)", params.get("nqn"))
        return out

    def to_logical(self, live: TargetState) -> TargetState:
        return to_logical(live, self.layout, self.active, self.store.current)

    def mirror(self) -> None:
        """Send the standby what changed since it was last given its view."""
        with self._mirror:
            self._refer_active()
            sb = self.members[peer(self.active)]
            if sb.state != "ready" or sb.applied is None or self.store.current is None:
                return        # being rebuilt: its restore or catch-up brings the change
            self._catch_up(sb)

    def _refer_active(self) -> None:
        """The one thing the user's own call does not give the active: referrals from its
        discovery service to the standby's, which follow the discovery listeners."""
        act = self.members[self.active]
        desired = member_view(self.store.current or TargetState.empty(), self.layout,
                              act.name, ACTIVE)
        had = act.applied.referrals if act.applied is not None else []
        calls = [("nvmf_discovery_add_referral", r.to_create_params())
                 for r in desired.referrals if r not in had] + \
                [("nvmf_discovery_remove_referral", r.to_create_params())
                 for r in had if r not in desired.referrals]
        act.applied = desired
        if not calls:
            return
        try:
            with act.client(self.mirror_timeout) as c:
                for method, params in calls:
                    c.call(method, params)
        except RpcError as exc:     # the next restore of it brings them; hosts lose a hint
            log.warning("target %s: referrals to the standby not updated: %s", act.name, exc)

    def _catch_up(self, sb: Member) -> None:
        """(Caller holds the mirror lock.) Plan the standby's view against what it was
        last given and send the difference; a failure degrades and rebuilds it."""
        desired = member_view(self.store.current or TargetState.empty(), self.layout,
                              sb.name, STANDBY)
        steps = plan(desired, sb.applied or TargetState.empty(), prune=True)
        if not steps.calls and not steps.conflicts:
            return
        try:
            if steps.conflicts:
                raise RpcError(-32603, "; ".join(steps.conflicts))
            with sb.client(self.mirror_timeout) as c:
                report = execute(c, steps)
            if not report.ok:
                raise RpcError(-32603, "; ".join([str(f) for f in report.failures] +
                                                 report.skipped))
            sb.applied = desired
        except (RpcError, OSError) as exc:
            self._degraded(sb, f"mirror failed: {exc}")
            sb.end(planned=False)         # its reaper rebuilds it from the checkpoint

    def _degraded(self, m: Member, why: str) -> None:
        m.state, m.last_error = "down", why
        self.status.degraded = f"target {m.name}: {why}"
        log.warning("pair degraded: %s", self.status.degraded)

    # -- deaths ------------------------------------------------------------------------------
    def _reap_in_background(self, m: Member, proc: Proc) -> None:
        self.deathwatch.watch(proc.pid)
        threading.Thread(target=self._reap, args=(m, proc), name=f"reaper-{m.name}",
                         daemon=True).start()

    def _reap(self, m: Member, proc: Proc) -> None:
        status = proc.wait()
        died_at = time.monotonic()
        self.deathwatch.unwatch(proc.pid)
        if self._stop.is_set() or m.proc is not proc:
            return
        self._died(m, died_at, f"target {m.name} exited (status {status})")

    def _died(self, m: Member, died_at: float, why: str) -> None:
        with self._roles:
            if self._stop.is_set():
                return
            was_active = m.name == self.active
            m.state = "down"
            m.last_error = why
            log.warning("%s (%s)", why, m.role)
            other = self.members[peer(m.name)]
            if was_active and other.state == "ready" and self._promote(other, died_at):
                pass
            elif was_active:
                self.ready.clear()
                self.status.state = "restarting"
                self.status.last_error = f"{why}; no standby ready: restoring it as active"
                log.warning(self.status.last_error)
                self._start_thread(m, ACTIVE, died_at)
                return
            self.status.degraded = f"target {m.name}: {why}; restarting as standby"
            self._start_thread(m, STANDBY, died_at)

    def _promote(self, sb: Member, died_at: float) -> bool:
        """(Caller holds the roles lock.) Turn the standby's paths optimized and serve
        the public socket from it. False if it cannot be done (it died too)."""
        with self.store.lock:
            self.ready.clear()         # a save from the dead active must not land now
            logical = copy.deepcopy(self.store.current or TargetState.empty())
        with self._mirror:
            desired = member_view(logical, self.layout, sb.name, ACTIVE)
            steps = plan(desired, sb.applied or TargetState.empty())
            try:
                with sb.client(self.mirror_timeout) as c:
                    report = execute(c, steps)
            except (RpcError, OSError) as exc:
                report, why = None, str(exc)
            if report is None or not report.ok:
                why = why if report is None else "; ".join(str(f) for f in report.failures)
                self._degraded(sb, f"promotion failed: {why}")
                sb.end(planned=False)
                return False
            sb.applied, sb.role = desired, ACTIVE
            self.members[peer(sb.name)].role = STANDBY
            self.active = sb.name
        self.front.private_sock = sb.sock
        self.status.failovers += 1
        self.status.last_failover_s = time.monotonic() - died_at
        self.status.generation += 1
        self.status.state = "ready"
        self.ready.set()
        log.warning("failover: target %s is active (%s) %.1f ms after the death",
                    sb.name, ROLE_ANA_STATE[ACTIVE], self.status.last_failover_s * 1e3)
        return True

    def _start_thread(self, m: Member, role: str, died_at: float) -> None:
        threading.Thread(target=self._rebuild, args=(m, role, died_at),
                         name=f"rebuild-{m.name}", daemon=True).start()

    def _rebuild(self, m: Member, role: str, died_at: float) -> None:
        """Restart ``m`` from the checkpoint as ``role``; retried with back-off."""
        while not self._stop.is_set():
            if not self._may_restart(m):
                return
            try:
                self._bring_up(m, role)
                break
            except Exception as exc:  # whatever it was, count it and try again
                m.last_error = f"restart failed: {exc}"
                log.error("target %s: %s", m.name, m.last_error,
                          exc_info=not isinstance(exc, (RpcError, OSError)))
                m.end(planned=False)
        if self._stop.is_set() or m.proc is None:
            return
        m.restarts += 1
        self._reap_in_background(m, m.proc)
        with self._roles:
            if role == ACTIVE:
                self.active = m.name
                self.front.private_sock = m.sock
                m.state = "ready"
                self.status.generation += 1
                self.status.state = "ready"
                self.ready.set()
                return
        with self._mirror:
            self._catch_up(m)       # changes made while it was restored
            if m.state == "starting":
                m.state = "ready"
                self.status.degraded = ""
                self.status.last_redundant_s = time.monotonic() - died_at
                log.info("pair redundant again: target %s is standby (%s), %.2f s after "
                         "the death", m.name, ROLE_ANA_STATE[STANDBY],
                         self.status.last_redundant_s)

    def _may_restart(self, m: Member) -> bool:
        """Crash-loop guard per member: back off, give up past the limit."""
        now = time.monotonic()
        m.restart_times = [t for t in m.restart_times if now - t < self.restart_window]
        m.restart_times.append(now)
        n = len(m.restart_times)
        if n > self.max_restarts:
            m.last_error = f"crash loop: {n} restarts in {self.restart_window:.0f} s"
            self._degraded(m, m.last_error + "; giving up on it")
            if m.name == self.active or self.members[peer(m.name)].state == "down":
                self.status.state = "failed"
                self.status.last_error = m.last_error
            return False
        if n > 3:
            self._stop.wait(min(0.1 * 2 ** (n - 3), 5.0))
        return not self._stop.is_set()

    def _watch(self) -> None:
        """Ping both members; one that misses ``misses`` pings in a row is killed (its
        reaper then handles it like any death)."""
        missed = {n: 0 for n in MEMBERS}
        while not self._stop.wait(self.ping_interval):
            for m in self.members.values():
                if m.state != "ready":
                    missed[m.name] = 0
                    continue
                missed[m.name] = 0 if m.alive(self.ping_interval) else missed[m.name] + 1
                if missed[m.name] >= self.misses and not self._stop.is_set():
                    log.warning("target %s missed %d pings in a row: killing it", m.name,
                                self.misses)
                    missed[m.name] = 0
                    m.end(planned=False)

    # -- status and control --------------------------------------------------------------
    def status_dict(self) -> dict[str, Any]:
        logical = self.store.current or TargetState.empty()
        members = {}
        for n, m in self.members.items():
            view = member_view(logical, self.layout, n, m.role)
            members[n] = m.to_dict(sorted(f"{a.traddr}:{a.trsvcid}" for s in
                                          view.subsystems.values() for a in s.listeners))
        sb = self.members[peer(self.active)]
        return {"mode": "pair", "state": self.status.state,
                "generation": self.status.generation, "active": self.active,
                "redundant": sb.state == "ready", "failovers": self.status.failovers,
                "last_failover_s": round(self.status.last_failover_s, 4),
                # What a host waits for after a death: the standby's paths optimized.
                "last_death_to_ready_s": round(self.status.last_failover_s, 4),
                "last_redundant_s": round(self.status.last_redundant_s, 3),
                "restarts": sum(m.restarts for m in self.members.values()),
                "last_restore_s": round(self.members[self.active].last_restore_s, 4),
                "last_error": self.status.last_error, "degraded": self.status.degraded,
                "layout": self.layout.to_dict(), "members": members}

    def _control(self, method: str, params: Any) -> Any:
        if method == "phoenix_status":
            return self.status_dict()
        if method == "phoenix_restart":
            raise RpcError(-1, "Operation not permitted: in pair mode, restart one member at "
                           "a time: kill the active (its standby takes over) or the "
                           "standby; the supervisor restores it as the new standby")
        raise RpcError(-32601, "Method not found", method)


def _serves_optimized(state: TargetState) -> bool:
    return any(s == "optimized" for sub in state.subsystems.values() if sub.ana_reporting
               for ls in sub.listeners.values() for s in ls.ana_states.values())
