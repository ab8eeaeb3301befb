"""A client that keeps changing a cluster's configuration, and the check that none of what
it was told was done got lost.

Change ``i`` adds host ``host(i)`` to the lab's subsystem; each add is followed by the
removal of the host added ``window`` changes before (if that add was acknowledged), so
the configuration stays small however long the run. Every call goes to the public socket
of the node etcd names as the owner, as a user's tooling would: a refusal (a standby's
"not the owner", a node that is restoring) means the change was not made, so it is sent
again, to whoever owns the group by then; a connection that breaks after the call was
sent, or an owner's "not committed to etcd" (it applied the change but etcd did not
confirm it in time), leaves the change *unknown* (it may or may not have been applied)
and it is not resent. At the end, in the configuration as loaded from etcd: every
acknowledged add whose host was not removed since must be there; every acknowledged
remove must have stayed removed.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from nvmf_phoenix.persist.etcd import EtcdError
from nvmf_phoenix.recovery.etcd_store import EtcdGroupStore
from nvmf_phoenix.rpc import RpcClient, RpcError
from nvmf_phoenix.rpc.errors import RpcConnectionError

from tests.cluster_lab import GROUP, NQN, ClusterLab, node_number
from tests.waiting import wait_for

# Pacing between attempts at one change (bounded by its give-up deadline), as a client
# backs off: not a synchronisation point. Not the stop event: a change under way when the
# client is stopped must still get its answer (tests assert none was given up).
RETRY_S = 0.05


def host(i: int) -> str:
    return f"nqn.2014-08.io.phx:churn-{i:06d}"


@dataclass
class ChurnLog:
    acked_add: set[int] = field(default_factory=set)
    acked_remove: set[int] = field(default_factory=set)
    unknown: set[tuple[str, int]] = field(default_factory=set)
    failed: set[tuple[str, int]] = field(default_factory=set)   # refused until the deadline
    refusals: dict[str, int] = field(default_factory=dict)       # message head -> count
    refused: set[tuple[str, int]] = field(default_factory=set)   # refused at least once
    latencies: list[float] = field(default_factory=list)         # acknowledged calls
    # every answer: (monotonic time, method, i, node, "ack"|"refused"|"unknown", message)
    events: list[tuple[float, str, int, str, str, str]] = field(default_factory=list)


class ConfigChurn:
    """Runs in a thread from :meth:`start` to :meth:`stop`."""

    def __init__(self, lab: ClusterLab, interval: float = 0.05, window: int = 32,
                 give_up: float = 15.0) -> None:
        self.lab, self.interval, self.window, self.give_up = lab, interval, window, give_up
        self.log = ChurnLog()
        self._stop = threading.Event()
        self._go = threading.Event()
        self._go.set()
        self._idle = threading.Event()     # paused, no call under way
        self._thread = threading.Thread(target=self._run, daemon=True, name="churn")
        self.error: BaseException | None = None

    def start(self) -> ConfigChurn:
        self._thread.start()
        return self

    def stop(self, timeout: float = 120.0) -> ChurnLog:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("the configuration client did not stop")
        if self.error is not None:
            raise AssertionError(f"the configuration client failed: {self.error!r}")
        return self.log

    def pause(self, timeout: float = 60.0) -> None:
        """Stop sending after the change under way (bounded); :meth:`resume` goes on."""
        self._go.clear()
        if not self._idle.wait(timeout):
            raise AssertionError("the configuration client did not pause")

    def resume(self) -> None:
        self._idle.clear()
        self._go.set()

    def acked(self) -> int:
        return len(self.log.acked_add) + len(self.log.acked_remove)

    def _run(self) -> None:
        try:
            i = 0
            while not self._stop.is_set():
                if not self._go.is_set():
                    self._idle.set()
                    self._go.wait(0.1)
                    continue
                self._change("nvmf_subsystem_add_host", i, self.log.acked_add)
                if i - self.window in self.log.acked_add:
                    self._change("nvmf_subsystem_remove_host", i - self.window,
                                 self.log.acked_remove)
                i += 1
                self._stop.wait(self.interval)
        except BaseException as exc:     # reported by stop()
            self.error = exc

    def _change(self, method: str, i: int, acked: set[int]) -> None:
        params = {"nqn": NQN, "host": host(i)}
        deadline = time.monotonic() + self.give_up
        while time.monotonic() < deadline:
            node = self._owner()
            if node is None:
                time.sleep(RETRY_S)       # a takeover is under way: ask again
                continue
            try:
                c = RpcClient.connect(self.lab.nodes[node].sock, timeout=20)
            except (RpcError, OSError):
                time.sleep(RETRY_S)       # never sent: ask again
                continue
            start = time.monotonic()
            try:
                with c:
                    c.call(method, params)
            except RpcConnectionError as err:
                self._note(method, i, node, "unknown", err.message)
                self.log.unknown.add((method, i))
                return
            except RpcError as err:
                if err.message.startswith("not committed to etcd"):
                    # The owner applied it but could not commit it (etcd did not answer,
                    # or not in time): it may be in etcd already, and the owner's next
                    # commit carries it anyway. Not a refusal: unknown.
                    self._note(method, i, node, "unknown", err.message)
                    self.log.unknown.add((method, i))
                    return
                self._note(method, i, node, "refused", err.message)
                self.log.refused.add((method, i))
                head = err.message[:60]
                self.log.refusals[head] = self.log.refusals.get(head, 0) + 1
                time.sleep(RETRY_S)
                continue
            self._note(method, i, node, "ack", "")
            self.log.latencies.append(time.monotonic() - start)
            acked.add(i)
            return
        self.log.failed.add((method, i))

    def _note(self, method: str, i: int, node: int, outcome: str, message: str) -> None:
        self.log.events.append((round(time.monotonic(), 4), method, i, f"n{node}", outcome,
                                message))

    def _owner(self) -> int | None:
        try:
            owner = self.lab.owner()
        except EtcdError:
            return None
        return node_number(owner) if owner is not None else None


def target_hosts(lab: ClusterLab, k: int) -> set[str]:
    """The subsystem's hosts on node ``k``'s target as it runs (its private socket)."""
    with RpcClient.connect(lab.nodes[k].target_sock, timeout=10) as c:
        subs = c.call("nvmf_get_subsystems")
    return {h["nqn"] for s in subs if s["nqn"] == NQN for h in s.get("hosts", [])}


def divergence(lab: ClusterLab, timeout: float = 20.0) -> dict[str, Any]:
    """Wait (bounded) for every node's target to hold the hosts etcd holds; what still
    differs then, per node: {"nK": {"extra": [...], "missing": [...]}} (empty: none)."""
    def differences() -> dict[str, Any]:
        stored = stored_hosts(lab)
        out: dict[str, Any] = {}
        for k in lab.nodes:
            try:
                live = target_hosts(lab, k)
            except (RpcError, OSError) as exc:
                out[f"n{k}"] = {"error": str(exc)}
                continue
            if live != stored:
                out[f"n{k}"] = {"extra": sorted(live - stored),
                                "missing": sorted(stored - live)}
        return out
    with contextlib.suppress(AssertionError):     # still differing: said by the return
        wait_for(lambda: not differences(), timeout=timeout, interval=0.2,
                 what="every target holding etcd's hosts")
    return differences()


def stored_hosts(lab: ClusterLab) -> set[str]:
    """The subsystem's hosts in the configuration as loaded from etcd."""
    loaded = EtcdGroupStore(lab.client, lab.keys.group(GROUP)).load()
    assert loaded.state is not None, "nothing stored in etcd"
    sub = loaded.state.subsystems.get(NQN)
    return set(sub.hosts) if sub is not None else set()


def lost_changes(log: ChurnLog, stored: set[str]) -> dict[str, list[int]]:
    """Acknowledged changes the stored configuration does not reflect. An acknowledged
    add counts as lost unless an acknowledged or unknown remove explains its absence: a
    *refused* remove does not (the user was told it was not done)."""
    maybe_removed = log.acked_remove | {i for m, i in log.unknown
                                         if m == "nvmf_subsystem_remove_host"}
    adds = sorted(i for i in log.acked_add if i not in maybe_removed and host(i) not in stored)
    removes = sorted(i for i in log.acked_remove if host(i) in stored)
    return {"adds": adds, "removes": removes}


def summary(log: ChurnLog, lost: dict[str, list[int]]) -> dict[str, Any]:
    lat = sorted(log.latencies)

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else 0.0
    return {"acknowledged": len(log.acked_add) + len(log.acked_remove),
            "lost": len(lost["adds"]) + len(lost["removes"]), "lost_detail": lost,
            "unknown": len(log.unknown), "gave_up": len(log.failed),
            "refusals": log.refusals, "ack_latency_ms": {"median": pct(0.5),
                                                         "p90": pct(0.9), "max": pct(1.0)}}
