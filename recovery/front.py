"""The write-ahead RPC front: the socket users and tools talk to, in front of the target.

Read-only calls pass straight through. A mutating call is journaled (intent, fsync)
before it is forwarded; once the target answers, the configuration is captured and
checkpointed, then the outcome is journaled, and only then is the client answered. So an
acknowledged change is always in the checkpoint, and a change whose outcome was never
recorded was never acknowledged. Calls that arrive, or were in flight, while the target
restarts wait (bounded) for the restore to finish and are then served.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from nvmf_phoenix.recovery.capture import capture_config
from nvmf_phoenix.recovery.journal import KIND_INTENT, KIND_OUTCOME
from nvmf_phoenix.recovery.store import CheckpointStore
from nvmf_phoenix.rpc import RpcClient, RpcConnectionError, RpcError
from nvmf_phoenix.target.rpc_server import RpcServer

log = logging.getLogger(__name__)
READ_ONLY_PREFIXES = ("spdk_get_version", "rpc_get_methods", "framework_wait_init",
                      "framework_get_", "bdev_get_", "nvmf_get_", "keyring_get_",
                      "nvmf_subsystem_get_", "nvmf_discovery_get_", "save_config")


def is_read_only(method: str) -> bool:
    return method.startswith(READ_ONLY_PREFIXES)


class Front:
    """Serves ``public_sock``; forwards to the target at ``private_sock``."""

    def __init__(self, public_sock: str, private_sock: str, store: CheckpointStore,
                 ready: threading.Event, wait_s: float = 60.0,
                 control: Callable[[str, Any], Any] | None = None,
                 generation: Callable[[], int] = lambda: 0, notice_s: float = 1.0) -> None:
        self.private_sock = private_sock
        self.store = store
        self.ready = ready
        self.wait_s = wait_s
        self.control = control
        self.generation = generation
        self.notice_s = notice_s
        self.lock = threading.Lock()        # one mutation at a time: journal order
        self.local = threading.local()
        self.stats = {"forwarded": 0, "mutations": 0, "retried": 0}
        self.server = RpcServer(_Dispatch(self), public_sock,
                                _dispatch)

    def start(self) -> None:
        self.server.start()

    def close(self) -> None:
        self.server.close()

    def _client(self) -> RpcClient:
        c = getattr(self.local, "client", None)
        if c is None:
            c = RpcClient.connect(self.private_sock, timeout=30)
            self.local.client = c
        return c

    def _drop_client(self) -> None:
        c = getattr(self.local, "client", None)
        if c is not None:
            c.close()
        self.local.client = None

    def forward(self, method: str, params: Any) -> Any:
        """Forward once the target is ready; retry across a restart (bounded)."""
        deadline = time.monotonic() + self.wait_s
        while True:
            if not self.ready.wait(max(0.0, deadline - time.monotonic())):
                raise RpcConnectionError("target did not come back in time", method)
            try:
                self.stats["forwarded"] += 1
                return self._client().call(method, params)
            except RpcConnectionError:
                self._drop_client()
                if time.monotonic() >= deadline:
                    raise
                self.stats["retried"] += 1
                self._await_restart(deadline)

    def _await_restart(self, deadline: float) -> None:
        """After a lost connection: never retry against a target that is still being
        restored. Give the watcher a moment to notice a death (ready is cleared); if it
        does not, the error was transient and the caller retries at once."""
        gen = self.generation()
        notice_by = min(deadline, time.monotonic() + self.notice_s)
        while self.ready.is_set() and self.generation() == gen and \
                time.monotonic() < notice_by:
            threading.Event().wait(0.005)

    def mutate(self, method: str, params: Any) -> Any:
        with self.lock:
            journal = self.store.journal
            seq = journal.append(KIND_INTENT, json.dumps(
                {"method": method, "params": params}).encode(), sync=True)
            outcome: dict[str, Any] = {"intent": seq}
            try:
                result = self._apply_and_checkpoint(method, params)
                outcome.update(ok=True)
                return result
            except RpcError as err:
                outcome.update(ok=False, code=err.code, message=err.message)
                raise
            finally:
                journal.append(KIND_OUTCOME, json.dumps(outcome).encode(), sync=True)
                self.stats["mutations"] += 1

    def _apply_and_checkpoint(self, method: str, params: Any) -> Any:
        """Forward, then checkpoint. If the target dies between the two, the restored
        target (from the previous checkpoint) never saw the call: run it again there."""
        deadline = time.monotonic() + self.wait_s
        while True:
            result = self.forward(method, params)
            try:
                self.checkpoint()
                return result
            except RpcConnectionError:
                self._drop_client()
                if time.monotonic() >= deadline:
                    raise
                self._await_restart(deadline)

    def checkpoint(self) -> None:
        """Capture the configuration and save it (the caller holds the lock)."""
        state = capture_config(self._client())
        self.store.save(state)


class _Dispatch:
    """Adapter giving RpcServer the (ctx, method, params) dispatch it expects."""

    def __init__(self, front: Front) -> None:
        self.front = front


def _dispatch(ctx: Any, method: str, params: Any) -> Any:
    from nvmf_phoenix.target.core import TargetError

    front: Front = ctx.front
    try:
        if method.startswith("phoenix_") and front.control is not None:
            return front.control(method, params)
        if is_read_only(method):
            return front.forward(method, params)
        return front.mutate(method, params)
    except RpcError as err:
        raise TargetError(err.code if err.code is not None else -32603,
                          err.message if err.code is not None else
                          f"nvmf-phoenix: {err.message}") from None
