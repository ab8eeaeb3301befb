"""JSON-RPC methods of the embedded target: registry, framework and bdev methods, and
loading a save_config document.

Each handler takes the :class:`RpcContext` and the raw params, decodes them the way SPDK
does (embedded/rpc_params.py), and changes state only through TargetCore, on the data
path's thread (``ctx.mutate``), so a change takes effect on connected hosts at once and a
failed call changes nothing. What a method means (the phases it runs in, read-only or
not) is declared once in :mod:`nvmf_phoenix.rpc.methods`; handlers register under the
declared names.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nvmf_phoenix.embedded.bdev import check_geometry
from nvmf_phoenix.embedded.config_store import TargetCore, invalid
from nvmf_phoenix.embedded.rpc_params import (
    U32,
    U64,
    check_uuid,
    decode,
    decode_bdev,
    no_params,
    not_found,
)
from nvmf_phoenix.embedded.spdk_format import bdev_info, subsystem_config
from nvmf_phoenix.rpc import methods
from nvmf_phoenix.rpc.errors import TargetError
from nvmf_phoenix.rpc.methods import RUNTIME, STARTUP

from nvmf_phoenix import __version__
from nvmf_phoenix.model import Bdev

if TYPE_CHECKING:
    from nvmf_phoenix.embedded.io_loop import DataPath

__all__ = ["METHODS", "RUNTIME", "STARTUP", "RpcContext", "dispatch", "load_config", "rpc"]

ERR_STATE = -1
MSG_BEFORE_INIT = ("Method may only be called before framework is initialized. Use "
                   "--wait-for-rpc command line parameter and then issue this RPC before "
                   "the framework_start_init RPC.")
MSG_AFTER_INIT = ("Method may only be called after framework is initialized using "
                  "framework_start_init RPC.")
Handler = Callable[["RpcContext", Any], Any]


@dataclass
class Method:
    handler: Handler
    phases: frozenset[str]


METHODS: dict[str, Method] = {}


def rpc(name: str) -> Callable[[Handler], Handler]:
    """Register the handler of method ``name``, which runs in the phases the method's
    declaration gives (SPDK's state mask); a method not declared is an error here."""
    phases = methods.METHODS[name].phases

    def deco(fn: Handler) -> Handler:
        METHODS[name] = Method(fn, phases)
        return fn
    return deco


@dataclass
class RpcContext:
    core: TargetCore
    datapath: DataPath | None = None
    phase: str = RUNTIME
    started: threading.Event = field(default_factory=threading.Event)
    on_kill: Callable[[str], None] = lambda sig: None
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        if self.phase == RUNTIME:
            self.started.set()

    def mutate(self, fn: Callable[[], Any]) -> Any:
        """Run a change on the data path's thread (or under the lock when there is none)."""
        with self.lock:
            if self.datapath is not None:
                return self.datapath.run_in_loop(fn)
            return fn()


def dispatch(ctx: RpcContext, method: str, params: Any) -> Any:
    """Run one method; raises TargetError with SPDK's code and message on failure."""
    m = METHODS.get(method)
    if m is None:
        raise TargetError(-32601, "Method not found", f"unknown method {method!r}")
    if ctx.phase not in m.phases:
        raise TargetError(ERR_STATE, MSG_AFTER_INIT if ctx.phase == STARTUP
                          else MSG_BEFORE_INIT)
    return m.handler(ctx, params)


# -- framework -------------------------------------------------------------------------
@rpc("spdk_get_version")
def spdk_get_version(ctx: RpcContext, params: Any) -> Any:
    no_params(params, "spdk_get_version method requires no parameters")
    major, minor, patch = (int(x) for x in __version__.split(".")[:3])
    return {"version": f"nvmf-phoenix v{__version__}",
            "fields": {"major": major, "minor": minor, "patch": patch,
                       "suffix": "-embedded"}}


@rpc("rpc_get_methods")
def rpc_get_methods(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"current": (bool, False), "include_aliases": (bool, False)})
    names = list(METHODS)
    if p.get("current"):
        names = [n for n in names if ctx.phase in METHODS[n].phases]
    return names


@rpc("framework_wait_init")
def framework_wait_init(ctx: RpcContext, params: Any) -> Any:
    # SPDK ignores any params here
    if not ctx.started.wait(3600):
        raise TargetError(-32603, "Internal error", "framework never started")
    return True


@rpc("framework_start_init")
def framework_start_init(ctx: RpcContext, params: Any) -> Any:
    no_params(params, "framework_start_init requires no parameters")
    ctx.phase = RUNTIME
    ctx.started.set()
    return True


@rpc("framework_get_subsystems")
def framework_get_subsystems(ctx: RpcContext, params: Any) -> Any:
    no_params(params, "'framework_get_subsystems' requires no arguments")
    return [{"subsystem": name, "depends_on": deps}
            for name, deps in (("keyring", []), ("bdev", ["keyring"]),
                               ("nvmf", ["bdev", "keyring"]))]


@rpc("framework_get_config")
def framework_get_config(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"name": (str, True), "with_batches": (bool, False)})
    with ctx.lock:
        cfg = subsystem_config(ctx.core, p["name"])
    if cfg is None:
        raise TargetError(-32602, f"Subsystem '{p['name']}' not found")
    return cfg


@rpc("spdk_kill_instance")
def spdk_kill_instance(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"sig_name": (str, True)})
    sig = p["sig_name"].upper()
    sig = sig if sig.startswith("SIG") else "SIG" + sig
    if sig not in ("SIGINT", "SIGTERM", "SIGQUIT", "SIGKILL"):
        raise invalid(f"unsupported signal {p['sig_name']}")
    ctx.on_kill(sig)
    return True


# -- bdev ------------------------------------------------------------------------------
# Widths as SPDK's decoders (bdev_malloc_rpc.c, bdev_aio_rpc.c) have them.
MALLOC_SPEC = {"name": (str, False), "num_blocks": (U64, True), "block_size": (U32, True),
               "physical_block_size": (U32, False), "uuid": (str, False),
               "optimal_io_boundary": (U32, False), "md_size": (U32, False),
               "md_interleave": (bool, False), "dif_type": (U32, False),
               "dif_is_head_of_md": (bool, False), "dif_pi_format": (U32, False),
               "numa_id": (int, False)}
AIO_SPEC = {"name": (str, True), "filename": (str, True), "block_size": (U32, False),
            "readonly": (bool, False), "fallocate": (bool, False), "uuid": (str, False),
            "nowait": (bool, False)}


@rpc("bdev_malloc_create")
def bdev_malloc_create(ctx: RpcContext, params: Any) -> Any:
    p = decode_bdev(params, MALLOC_SPEC)
    check_geometry(p["block_size"], p["num_blocks"])
    bdev = Bdev.from_create_params("malloc", {
        **p, "name": p.get("name") or _next_name(ctx.core, "Malloc"),
        "uuid": check_uuid(p.get("uuid"), bdev=True)})
    return ctx.mutate(lambda: ctx.core.add_bdev(bdev))


@rpc("bdev_aio_create")
def bdev_aio_create(ctx: RpcContext, params: Any) -> Any:
    p = decode_bdev(params, AIO_SPEC)
    bdev = Bdev.from_create_params("aio", {**p, "uuid": check_uuid(p.get("uuid"), bdev=True)})
    bdev.params["block_size_override"] = "block_size" in p
    return ctx.mutate(lambda: ctx.core.add_bdev(bdev))


def _delete_bdev(ctx: RpcContext, params: Any, kind: str) -> Any:
    p = decode_bdev(params, {"name": (str, True)})
    bdev = ctx.core.state.bdevs.get(p["name"])
    if bdev is None or bdev.kind != kind:
        raise not_found(f"no {kind} bdev named {p['name']}")
    ctx.mutate(lambda: ctx.core.delete_bdev(p["name"]))
    return True


@rpc("bdev_malloc_delete")
def bdev_malloc_delete(ctx: RpcContext, params: Any) -> Any:
    return _delete_bdev(ctx, params, "malloc")


@rpc("bdev_aio_delete")
def bdev_aio_delete(ctx: RpcContext, params: Any) -> Any:
    return _delete_bdev(ctx, params, "aio")


@rpc("bdev_get_bdevs")
def bdev_get_bdevs(ctx: RpcContext, params: Any) -> Any:
    p = decode_bdev(params, {"name": (str, False), "timeout": (U64, False)})
    with ctx.lock:
        bdevs = list(ctx.core.state.bdevs.values())
        if "name" in p:
            bdevs = [b for b in bdevs if p["name"] in (b.name, b.uuid)]
            if not bdevs:
                raise not_found(f"no bdev named {p['name']}")
        return [bdev_info(ctx.core, b) for b in bdevs]


@rpc("bdev_set_options")
def bdev_set_options(ctx: RpcContext, params: Any) -> Any:
    """STARTUP-only, as in SPDK. save_config emits it, so ``spdk-rpc load_config`` checks
    that the target knows it; there are no bdev_io pools or iobuf caches here to size."""
    decode(params, {"bdev_io_pool_size": (U32, False), "bdev_io_cache_size": (U32, False),
                    "bdev_auto_examine": (bool, False), "iobuf_small_cache_size": (U32, False),
                    "iobuf_large_cache_size": (U32, False)})
    return True


@rpc("bdev_wait_for_examine")
def bdev_wait_for_examine(ctx: RpcContext, params: Any) -> Any:
    no_params(params, "bdev_wait_for_examine requires no parameters")
    return True


def _next_name(core: TargetCore, prefix: str) -> str:
    i = 0
    while f"{prefix}{i}" in core.state.bdevs:
        i += 1
    return f"{prefix}{i}"


def load_config(ctx: RpcContext, document: dict[str, Any]) -> list[str]:
    """Apply a save_config document as nvmf_tgt's ``-c/--json`` does: STARTUP-phase
    entries first, then framework_start_init, then the rest. Returns the errors (each
    names the failing entry); a failing entry does not stop the others."""
    entries = [e for s in document.get("subsystems", []) for e in (s.get("config") or [])]
    startup = [e for e in entries if e.get("method") in METHODS and
               STARTUP in METHODS[e["method"]].phases]
    errors = []
    for phase_entries in (startup, [e for e in entries if e not in startup]):
        if phase_entries is not startup and ctx.phase == STARTUP:
            framework_start_init(ctx, None)
        for e in phase_entries:
            method = e.get("method", "")
            if method in _IGNORED_ON_LOAD or (phase_entries is not startup and
                                              e in startup):
                continue
            try:
                dispatch(ctx, method, e.get("params"))
            except TargetError as err:
                errors.append(f"{method} {json.dumps(e.get('params'))}: {err.detail}")
    return errors


# Option setters for SPDK modules the embedded target does not have: accepted, no effect.
_IGNORED_ON_LOAD = frozenset({"bdev_set_options", "bdev_raid_set_options",
                              "bdev_nvme_set_options", "bdev_nvme_set_hotplug",
                              "bdev_wait_for_examine", "sock_set_default_impl",
                              "sock_impl_set_options", "iobuf_set_options",
                              "accel_set_options", "vmd_enable"})
