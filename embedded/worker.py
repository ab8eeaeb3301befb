"""A crash-transparent worker: waits as a standby, then serves what the keeper hands it.

The keeper (embedded/keeper.py) starts workers with everything imported and waiting, so a
takeover costs no process start. On takeover the worker reads the configuration its
predecessor saved in shared memory (a Region in the target's scratch directory), maps the
RAM bdevs' shared memory, resumes every connection from its shared state
(embedded/transparent.py) and serves the JSON-RPC listening socket the keeper owns. The
configuration is saved after every batch of mutating calls and before they are answered,
so an acknowledged change survives the next kill.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from nvmf_phoenix.embedded.bdev import SharedBdevs
from nvmf_phoenix.embedded.config_file import ConfigFileError, read_config
from nvmf_phoenix.embedded.config_store import TargetCore
from nvmf_phoenix.embedded.io_loop import DataPath
from nvmf_phoenix.embedded.keeper_client import KeeperClient
from nvmf_phoenix.embedded.keeper_proto import Op
from nvmf_phoenix.embedded.rpc_methods import (
    RUNTIME,
    STARTUP,
    RpcContext,
    dispatch,
    load_config,
)
from nvmf_phoenix.embedded.transparent import KeptTransport
from nvmf_phoenix.persist import shm
from nvmf_phoenix.persist.region import Region, RegionError, read_latest
from nvmf_phoenix.persist.shm import find
from nvmf_phoenix.rpc.methods import is_read_only
from nvmf_phoenix.rpc.server import RpcServer

from nvmf_phoenix.model import TargetState

# Importing registers the nvmf_* methods.
from nvmf_phoenix.embedded import rpc_nvmf  # noqa: F401  isort: skip

log = logging.getLogger("nvmf_phoenix.embedded.worker")
CONFIG_REGION = "config"


class ConfigKeeper:
    """The worker's configuration in shared memory, saved before answers go out."""

    def __init__(self, scratch: str, ctx: RpcContext, dp: DataPath) -> None:
        self.ctx = ctx
        self.dp = dp
        self.local = threading.local()
        path = find(CONFIG_REGION, None, scratch)
        region = None
        with contextlib.suppress(RegionError):   # damaged: replaced by a new one
            region = Region.open(path) if path else None
        self.region = region or Region.create(CONFIG_REGION, 8 << 20, sub=scratch)

    @staticmethod
    def load(scratch: str) -> tuple[dict[str, Any] | None, str | None]:
        """(saved document, None), (None, None) on a first start, or (None, what is
        wrong) when a saved configuration exists but cannot be trusted."""
        path = find(CONFIG_REGION, None, scratch)
        if path is None:
            return None, None
        try:
            doc = json.loads(read_latest(path))
            TargetState.from_dict(doc["state"])
            return doc, None
        except (RegionError, ValueError, KeyError, TypeError) as exc:
            return None, str(exc)

    def dispatch(self, ctx: RpcContext, method: str, params: Any) -> Any:
        result = dispatch(ctx, method, params)
        if not is_read_only(method):
            self.local.dirty = True
        return result

    def after_batch(self) -> None:
        if getattr(self.local, "dirty", False):
            self.local.dirty = False
            self.save()

    def save(self) -> None:
        """Snapshot on the data path's thread, so the state is never half-changed."""
        def write() -> None:
            eng = self.dp.engine
            doc = {"phase": self.ctx.phase, "discovery_genctr": eng.discovery_genctr,
                   "ana_chgcnt": eng.ana_chgcnt, "state": self.ctx.core.state.to_dict(),
                   "options": self.ctx.options.dump()}
            self.region.write_snapshot(json.dumps(doc, separators=(",", ":")).encode())
        self.ctx.mutate(write)


def run(args: argparse.Namespace) -> int:
    """Standby until the keeper says take over; then serve until stopped."""
    keeper = KeeperClient(args.worker)
    stop = threading.Event()
    # A standby holds nothing yet: told to stop, it just goes. The keeper decides when
    # workers stop, so an interrupt from the terminal is not for us.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    take = keeper.wait_takeover()
    if take is None:
        return 0
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    started = time.monotonic()
    log.info("shared memory: %s", shm.where())
    doc, problem = ConfigKeeper.load(args.scratch)
    if problem is not None:
        # Connections without the configuration they were made under cannot be served
        # correctly: close them (hosts reconnect) and start empty, for a supervisor to
        # restore from its durable journal.
        log.error("saved configuration unusable (%s): closing every connection and "
                  "starting empty", problem)
    core, unopened = _saved_core(args.scratch, doc)
    phase = STARTUP if args.wait_for_rpc or args.config else RUNTIME
    if doc is not None:
        phase = doc["phase"]
    kept = KeptTransport(keeper, args.scratch, args.inflight, on_keeper_lost=stop.set)
    dp = DataPath(core, transport=kept)
    if doc is not None:
        dp.engine.discovery_genctr = int(doc["discovery_genctr"])
        dp.engine.ana_chgcnt = int(doc["ana_chgcnt"])
    ctx = RpcContext(core, dp, phase=phase,
                     on_kill=lambda sig: keeper.send(Op.SHUTDOWN))
    if doc is not None:   # option values too: the successor answers as its predecessor
        ctx.options.load(doc.get("options", {}))
    # A saved bdev that cannot be opened again resets the connections too.
    reset = take.reset or problem is not None or bool(unopened)
    report = kept.resume(take.conns, reset, take.listeners)
    dp.start_in_thread()
    config = ConfigKeeper(args.scratch, ctx, dp)
    if doc is None:
        if args.config:
            try:   # the keeper checked it; this is for a file changed since
                errors = load_config(ctx, read_config(args.config))
            except ConfigFileError as exc:
                errors = [str(exc)]
            for e in errors:
                print(f"config error: {e}", file=sys.stderr)
            if errors:   # the target stops, and exits 1 as nvmf_tgt does
                keeper.send(Op.SHUTDOWN, exit=1)
                return 1
        config.save()
    server = RpcServer(ctx, args.rpc_socket, dispatch=config.dispatch, sock=take.rpc_sock,
                       after_batch=config.after_batch)
    server.start()
    keeper.send(Op.READY)
    log.info("worker %d took over in %.1f ms: %s", os.getpid(),
             (time.monotonic() - started) * 1000, report)
    return _serve(stop, dp, server)


def _saved_core(scratch: str, doc: dict[str, Any] | None) -> tuple[TargetCore, list[str]]:
    """The configuration store: the predecessor's configuration when one was saved (its
    RAM bdevs attached to their shared memory, not made anew), else empty; and the saved
    bdevs that could not be opened."""
    opener = SharedBdevs(scratch)
    core = TargetCore(bdev_opener=opener)
    if doc is None:
        return core, []
    opener.attach = True
    unopened = core.adopt(TargetState.from_dict(doc["state"]))
    opener.attach = False
    for problem in unopened:
        log.error("resuming: %s", problem)
    return core, unopened


def _serve(stop: threading.Event, dp: DataPath, server: RpcServer) -> int:
    # A worker whose data path died serves nobody: leave, so a standby takes over from
    # the last commit (the keeper notices at once) instead of every host hanging.
    while not stop.wait(0.2):
        if not dp.alive:
            log.error("the data path stopped: exiting so a standby takes over")
            os._exit(3)
    server.close()
    dp.stop()
    return 0
