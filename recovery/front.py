"""The write-ahead RPC front: the socket users and tools talk to, in front of the target.

Read-only calls pass straight through. A mutating call's intent is journaled before it is
forwarded (written: it outlives the front, which is what it is for); once the target
answers, the change is checkpointed, then the outcome is journaled with one fsync that
makes both durable, and only then is the client answered. So an acknowledged change is
always in the checkpoint, and a change whose outcome was never recorded was never
acknowledged. Mutations run one at a time (``lock``), so the checkpoint before a call
never contains it.

How the change is checkpointed: for the calls :mod:`~.changes` models (subsystems,
namespaces, hosts, listeners, ANA, bdevs, keys) the front reads back the few facts the
target chose itself and journals the change alone, in time independent of the size of
the configuration; for any other call it captures the whole configuration and saves it.

A mutating call whose answer is lost (the target died, or the connection dropped, at any
point between forwarding and checkpointing) is never sent again blindly: the front waits
for the target to be back, captures its live configuration and asks
:mod:`~.inflight` whether the call's effect is there. If it is, the call is answered as
done; if not, it is sent once to the target as it is now. Calls that arrive, or were in
flight, while the target restarts wait (bounded) for the restore to finish and are then
served.

With a cluster store (the local store's ``replica``, etcd) an acknowledged change is also
committed there before the client is answered; when that commit fails the client gets an
error saying the target has the change but the cluster store does not.
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from nvmf_phoenix.recovery import changes, inflight
from nvmf_phoenix.recovery.capture import capture_config
from nvmf_phoenix.recovery.carry import Carried, overlay
from nvmf_phoenix.recovery.diff import diff
from nvmf_phoenix.recovery.journal import KIND_INTENT, KIND_OUTCOME
from nvmf_phoenix.recovery.store import CheckpointStore
from nvmf_phoenix.rpc import RpcClient, RpcConnectionError, RpcError, RpcTimeout
from nvmf_phoenix.rpc.client import call_all
from nvmf_phoenix.rpc.errors import TargetError
from nvmf_phoenix.rpc.methods import is_read_only
from nvmf_phoenix.rpc.server import RpcServer

from nvmf_phoenix.model import TargetState

log = logging.getLogger(__name__)


# Sent through the front these would end the target the supervisor then restores; a
# lost answer would even be resent (a kill loop). Refused, with what to do instead.
REFUSED = {"spdk_kill_instance": "the target is supervised: stop the supervisor (it stops "
                                 "the target) or use phoenix_restart (nvmf-phoenix restart)"}


class PairHooks(Protocol):
    """What a hot-standby pair (:mod:`~.pair`) adds to the front: the user's call as the
    active member must receive it (raises RpcError for a call a pair cannot serve), a
    member's capture in the pair's logical form, and the mirror of an acknowledged change
    onto the standby (never fails the user's call)."""

    def for_active(self, method: str, params: Any) -> Any: ...

    def to_logical(self, live: TargetState) -> TargetState: ...

    def mirror(self) -> None: ...


class Front:
    """Serves ``public_sock``; forwards to the target at ``private_sock``.

    ``generation()`` counts completed (re)starts of the target; ``gave_up()`` returns the
    supervisor's final error once it stopped restarting (calls then fail at once).
    ``failpoint``, when set, is called with the name of each step of a mutation
    ("after-intent", "after-forward", "after-capture", "after-checkpoint") and the method:
    tests use it to kill the target, or the supervisor itself, at an exact moment.
    """

    def __init__(self, public_sock: str, private_sock: str, store: CheckpointStore,
                 ready: threading.Event, wait_s: float = 60.0,
                 control: Callable[[str, Any], Any] | None = None,
                 generation: Callable[[], int] = lambda: 0, notice_s: float = 1.0,
                 gave_up: Callable[[], str | None] = lambda: None) -> None:
        self.private_sock = private_sock
        self.store = store
        self.ready = ready
        self.wait_s = wait_s
        self.control = control
        self.generation = generation
        self.gave_up = gave_up
        self.notice_s = notice_s
        self.failpoint: Callable[[str, str], None] | None = None
        self.pair: PairHooks | None = None
        self.carried = Carried()     # what the last restore could not bring back (carry.py)
        self.lock = threading.Lock()        # one mutation at a time: journal order
        self.local = threading.local()
        self.stats = {"forwarded": 0, "mutations": 0, "retried": 0, "resolved_applied": 0,
                      "resolved_resent": 0, "changes": 0, "whole": 0}
        self.server = RpcServer(_Dispatch(self), public_sock, _dispatch)

    def start(self) -> None:
        self.server.start()

    def close(self) -> None:
        self.server.close()

    # -- the connection to the target, one per serving thread ----------------------------
    def _client(self) -> RpcClient:
        """This thread's connection, renewed when the target has been replaced since."""
        gen = self.generation()
        c = getattr(self.local, "client", None)
        if c is not None and self.local.gen != gen:
            self._drop_client()
            c = None
        if c is None:
            c = RpcClient.connect(self.private_sock, timeout=self.wait_s)
            self.local.client, self.local.gen = c, gen
        return c

    def _drop_client(self) -> None:
        c = getattr(self.local, "client", None)
        if c is not None:
            c.close()
        self.local.client = None

    def _serving(self, gen: int) -> bool:
        """Target generation ``gen`` is the one serving, ready (not being replaced)."""
        return self.ready.is_set() and self.generation() == gen

    def stable_capture(self, client: RpcClient | None = None,
                       gen: int | None = None) -> TargetState:
        """The live configuration, only from a target that was ready before and after
        it was read, and of generation ``gen`` when given: a capture that overlaps a
        restart could see a target half-way through its restore, and one from a later
        target than the call went to lacks the call; checkpointing either loses changes."""
        gen = self.generation() if gen is None else gen
        if not self._serving(gen):
            raise RpcConnectionError("target restarting or replaced: not captured")
        st = capture_config(client or self._client())
        if self.pair is not None:
            st = self.pair.to_logical(st)
        if not self._serving(gen):
            raise RpcConnectionError("target restarted during the capture: discarded")
        return st

    def wait_ready(self, timeout: float) -> None:
        self._wait_ready(time.monotonic() + timeout, "")

    def _wait_ready(self, deadline: float, method: str) -> None:
        while not self.ready.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            why = self.gave_up()
            if why:
                raise RpcConnectionError(f"the supervisor gave up on the target: {why}",
                                         method)
            if time.monotonic() >= deadline:
                raise RpcConnectionError(f"target did not come back within "
                                         f"{self.wait_s:.0f} s", method)

    def _await_restart(self, gen: int, deadline: float) -> None:
        """After a lost connection: give the supervisor a moment to notice a death (it
        clears ``ready``, then bumps the generation once restored). If nothing happens
        within ``notice_s`` the target is alive and the error was the connection's."""
        notice_by = min(deadline, time.monotonic() + self.notice_s)
        while self.ready.is_set() and self.generation() == gen and \
                time.monotonic() < notice_by:
            threading.Event().wait(0.002)

    # -- read-only calls -----------------------------------------------------------------
    def forward(self, method: str, params: Any) -> Any:
        """Forward once the target is ready; retry across a restart (bounded)."""
        deadline = time.monotonic() + self.wait_s
        while True:
            self._wait_ready(deadline, method)
            gen = self.generation()
            try:
                self.stats["forwarded"] += 1
                return self._client().call(method, params)
            except RpcConnectionError:
                self._drop_client()
                if time.monotonic() >= deadline:
                    raise
                self.stats["retried"] += 1
                self._await_restart(gen, deadline)

    # -- mutating calls ------------------------------------------------------------------
    def mutate(self, method: str, params: Any) -> Any:
        with self.lock:
            if self.pair is None:
                return self._mutate(method, params)
            self.pair.for_active(method, params)     # refused before it is journaled
            result = self._mutate(method, params)
            self.pair.mirror()
            return result

    def _mutate(self, method: str, params: Any) -> Any:
        self._whole_before(method, params)
        journal = self.store.journal
        seq = journal.append(KIND_INTENT, json.dumps(
            {"method": method, "params": params}).encode())
        journal.write()
        outcome: dict[str, Any] = {"intent": seq}
        try:
            result, how = self._apply(method, params, seq)
            outcome.update(ok=True, how=how)
        except RpcError as err:
            outcome.update(ok=False, code=err.code, message=err.message)
            raise
        finally:
            # Also makes the checkpoint taken in _apply durable: one fsync for both.
            journal.append(KIND_OUTCOME, json.dumps(outcome).encode(), sync=True)
            self.stats["mutations"] += 1
        if self.store.replica_error:
            # Acknowledged only once the cluster's copy has it too (other nodes restore
            # from that one): the client must know this change is on this node only.
            raise RpcError(None, f"the target has the change, but the cluster store "
                           f"does not ({self.store.replica_error}); the next change "
                           "commits the whole configuration to it", method)
        return result

    def _whole_before(self, method: str, params: Any) -> None:
        """Before a call whose change is not modelled: if changes were journaled since
        the last whole state, save a whole one, so that resolving a lost answer (which
        compares whole configurations) starts from what the target really has."""
        if self.store.pending and not changes.is_modelled(
                method, params, self.store.current or TargetState.empty()):
            with contextlib.suppress(RpcConnectionError):
                self.checkpoint(durable=False)

    def _fail(self, step: str, method: str) -> None:
        if self.failpoint is not None:
            self.failpoint(step, method)

    def _apply(self, method: str, params: Any, intent: int) -> tuple[Any, str]:
        """Forward, then checkpoint from the same target generation; an answer lost on
        the way is resolved by looking. ``on`` is the generation known to hold the change
        (None: not applied anywhere that still exists)."""
        deadline = time.monotonic() + self.wait_s
        on: int | None = None
        result, how = None, "answered"
        while True:
            self._wait_ready(deadline, method)
            if on is not None and self.generation() != on:
                on = None                 # restarted since: the restored target lacks it
            if on is None:
                gen = self.generation()
                try:
                    self._fail("after-intent", method)
                    client = self._client()
                    sent = params if self.pair is None else \
                        self.pair.for_active(method, params)
                    result = client.call(method, sent)
                    self._fail("after-forward", method)
                    on, how = gen, "answered"
                except RpcConnectionError as exc:
                    self._drop_client()
                    on, result = self._resolve(method, params, gen, deadline, exc)
                    if on is None:
                        continue                       # send it to the target as it is now
                    how = "lost answer; change found on the target"
                except RpcError:
                    self._check_unchanged(method)
                    raise
            try:
                self._checkpoint_call(method, params, result, on, intent, how)
                self._fail("after-checkpoint", method)
                return result, how
            except RpcConnectionError as exc:
                # The target died (or was replaced) before the checkpoint: a restored
                # target comes from the previous one and lacks the change.
                self._drop_client()
                found, value = self._resolve(method, params, on, deadline, exc)
                if found is not None and how != "answered":
                    result = value
                on = found

    def _checkpoint_call(self, method: str, params: Any, result: Any, gen: int,
                         intent: int, how: str) -> None:
        """Checkpoint what the call did on target generation ``gen``: its change alone
        when it is modelled and was answered, else the whole configuration."""
        model = self.store.current
        # A pair checkpoints whole states: a change's read-back is in the active member's
        # form, which only a whole capture turns into the logical one.
        if how == "answered" and model is not None and self.pair is None and \
                changes.is_modelled(method, params, model):
            if not self._serving(gen):
                raise RpcConnectionError("target restarted before the read-back")
            try:
                calls = changes.readback(method, params, result, model)
                answers = call_all(self._client(), list(calls)) if calls else []
                self._fail("after-capture", method)
                ops = changes.ops_for(method, params, result, answers, model)
                with self.store.lock:
                    if not self._serving(gen):
                        raise RpcConnectionError("target restarted before the change "
                                                 "was journaled")
                    self.store.record(intent, ops, replicate=False)
                self.store.replicate(ops)     # (outside the lock: see save_if_current)
                self.stats["changes"] += 1
                return
            except RpcConnectionError:
                raise
            except (RpcError, changes.NotModelled, KeyError, TypeError,
                    ValueError) as exc:
                log.warning("%s: change not journaled on its own (%s); saving the whole "
                            "configuration", method, exc)
        self.stats["whole"] += 1
        self.checkpoint(durable=False, gen=gen, method=method)

    def _resolve(self, method: str, params: Any, gen: int, deadline: float,
                 exc: RpcConnectionError) -> tuple[int | None, Any]:
        """The outcome of ``method`` is unknown: compare the live target with the last
        checkpoint. Returns (generation holding the change or None, result); never sends
        the call itself."""
        self._await_restart(gen, deadline)
        while True:
            self._wait_ready(deadline, method)
            seen = self.generation()
            try:
                live = overlay(self.stable_capture(gen=seen), self.carried)[0]
                break
            except RpcConnectionError:
                self._drop_client()
                if time.monotonic() >= deadline:
                    raise
                self._await_restart(seen, deadline)
        before = self.store.current or self.store.load().state or TargetState.empty()
        if inflight.effect_present(method, params, before, live):
            self.stats["resolved_applied"] += 1
            log.warning("%s: answer lost (%s); the target has the change, not sending it "
                        "again", method, exc.message)
            return seen, inflight.result_of(method, params, before, live)
        if isinstance(exc, RpcTimeout) and seen == gen:
            # Still the same, live target: the call may yet complete there. Sending it
            # again could apply it twice, so say so instead.
            raise RpcConnectionError(f"no answer from the target within {self.wait_s:.0f}"
                                     " s and no change yet; not sent again", method)
        self.stats["resolved_resent"] += 1
        log.warning("%s: answer lost (%s); the target does not have the change, sending "
                    "it again", method, exc.message)
        return None, None

    def _check_unchanged(self, method: str) -> None:
        """A call the target refused should have changed nothing; if it did, keep what
        the target now has (and say so) rather than lose it at the next restart."""
        try:
            live = self.with_carried(self.stable_capture())
        except RpcConnectionError:
            self._drop_client()
            return
        saved = self.store.current
        if saved is not None and diff(saved, live, desired=True):
            log.warning("%s failed but changed the configuration; checkpointing it", method)
            with contextlib.suppress(RpcConnectionError):
                self.save_if_current(live, self.generation(), durable=False)

    def with_carried(self, live: TargetState) -> TargetState:
        """``live`` plus what a restore could not bring back and is still missing."""
        if not self.carried:
            return live
        state, still = overlay(live, self.carried)
        gone = set(self.carried.describe()) - set(still.describe())
        if gone:
            log.warning("no longer carried over from an incomplete restore (the target "
                        "has them again, or their subsystem was deleted): %s",
                        "; ".join(sorted(gone)))
        self.carried = still
        return state

    def checkpoint(self, durable: bool = True, gen: int | None = None,
                   method: str = "") -> None:
        """Capture the configuration and save it (the caller holds the lock)."""
        gen = self.generation() if gen is None else gen
        state = self.with_carried(self.stable_capture(gen=gen))
        self._fail("after-capture", method)
        self.save_if_current(state, gen, durable)

    def save_if_current(self, state: TargetState, gen: int, durable: bool = True) -> None:
        """Save ``state`` (captured from target generation ``gen``) unless a restart has
        begun since. A restart clears ``ready`` before it loads the checkpoint, under the
        store's lock: so either this save lands first and the restart restores it, or
        the restart comes first and this save must not claim what the restored target
        lacks (RpcConnectionError: the caller resolves by looking)."""
        with self.store.lock:
            if not self._serving(gen):
                raise RpcConnectionError("target restarted before the checkpoint was saved")
            self.store.save(state, durable=durable, replicate=False)
        # The cluster store's commit waits for a network quorum: a restart (which loads
        # the local checkpoint under the lock) must not wait for it.
        self.store.replicate(None)


class _Dispatch:
    """Adapter giving RpcServer the (ctx, method, params) dispatch it expects."""

    def __init__(self, front: Front) -> None:
        self.front = front


def _dispatch(ctx: Any, method: str, params: Any) -> Any:
    front: Front = ctx.front
    try:
        if method.startswith("phoenix_") and front.control is not None:
            return front.control(method, params)
        if method in REFUSED:
            raise RpcError(-1, f"Operation not permitted: {REFUSED[method]}", method)
        if is_read_only(method):
            return front.forward(method, params)
        return front.mutate(method, params)
    except RpcError as err:
        raise TargetError(err.code if err.code is not None else -32603,
                          err.message if err.code is not None else
                          f"nvmf-phoenix: {err.message}") from None
