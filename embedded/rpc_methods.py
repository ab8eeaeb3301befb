"""JSON-RPC methods of the embedded target: registry, phases, framework and bdev methods.

Each handler takes the :class:`RpcContext` and the raw params, decodes them the way SPDK
does (embedded/rpc_params.py), and changes state only through TargetCore, on the data
path's thread (``ctx.mutate``), so a change takes effect on connected hosts at once and a
failed call changes nothing.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nvmf_phoenix.embedded.config_store import INTERNAL_ERROR, TargetCore, invalid
from nvmf_phoenix.embedded.rpc_params import (
    DECODE_FAILED,
    U32,
    U64,
    decode,
    decode_bdev,
    no_params,
    not_found,
)
from nvmf_phoenix.rpc.errors import TargetError

from nvmf_phoenix import __version__
from nvmf_phoenix.model import Bdev

if TYPE_CHECKING:
    from nvmf_phoenix.embedded.io_loop import DataPath

STARTUP, RUNTIME = "startup", "runtime"
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


def rpc(name: str, startup: bool = False, runtime: bool = True) -> Callable[[Handler], Handler]:
    """Register a handler with the phases it may run in (SPDK's state mask)."""
    phases = frozenset(p for p, ok in ((STARTUP, startup), (RUNTIME, runtime)) if ok)

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
@rpc("spdk_get_version", startup=True)
def spdk_get_version(ctx: RpcContext, params: Any) -> Any:
    no_params(params, "spdk_get_version method requires no parameters")
    major, minor, patch = (int(x) for x in __version__.split(".")[:3])
    return {"version": f"nvmf-phoenix v{__version__}",
            "fields": {"major": major, "minor": minor, "patch": patch,
                       "suffix": "-embedded"}}


@rpc("rpc_get_methods", startup=True)
def rpc_get_methods(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"current": (bool, False), "include_aliases": (bool, False)})
    names = list(METHODS)
    if p.get("current"):
        names = [n for n in names if ctx.phase in METHODS[n].phases]
    return names


@rpc("framework_wait_init", startup=True)
def framework_wait_init(ctx: RpcContext, params: Any) -> Any:
    # SPDK ignores any params here
    if not ctx.started.wait(3600):
        raise TargetError(-32603, "Internal error", "framework never started")
    return True


@rpc("framework_start_init", startup=True, runtime=False)
def framework_start_init(ctx: RpcContext, params: Any) -> Any:
    no_params(params, "framework_start_init requires no parameters")
    ctx.phase = RUNTIME
    ctx.started.set()
    return True


@rpc("framework_get_subsystems", startup=True)
def framework_get_subsystems(ctx: RpcContext, params: Any) -> Any:
    no_params(params, "'framework_get_subsystems' requires no arguments")
    return [{"subsystem": name, "depends_on": deps}
            for name, deps in (("keyring", []), ("bdev", ["keyring"]),
                               ("nvmf", ["bdev", "keyring"]))]


@rpc("framework_get_config", startup=True)
def framework_get_config(ctx: RpcContext, params: Any) -> Any:
    from nvmf_phoenix.embedded.spdk_format import subsystem_config

    p = decode(params, {"name": (str, True), "with_batches": (bool, False)})
    with ctx.lock:
        cfg = subsystem_config(ctx.core, p["name"])
    if cfg is None:
        raise TargetError(-32602, f"Subsystem '{p['name']}' not found")
    return cfg


@rpc("spdk_kill_instance", startup=True)
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


def _check_uuid(value: str | None, bdev: bool = False) -> str:
    """A uuid parameter; for bdevs a bad one is a decode failure (spdk_json_decode_uuid)."""
    import uuid as uuidlib

    if value is None:
        return ""
    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        if bdev:
            raise TargetError(INTERNAL_ERROR, DECODE_FAILED, f"{value!r} is not a UUID"
                              ) from None
        raise invalid(f"{value!r} is not a UUID") from None


@rpc("bdev_malloc_create")
def bdev_malloc_create(ctx: RpcContext, params: Any) -> Any:
    from nvmf_phoenix.embedded.bdev import check_geometry

    p = decode_bdev(params, MALLOC_SPEC)
    check_geometry(p["block_size"], p["num_blocks"])
    name = p.get("name") or _next_name(ctx.core, "Malloc")
    extra = {k: v for k, v in p.items() if k not in ("name", "num_blocks", "block_size",
                                                      "uuid")}
    bdev = Bdev(name=name, kind="malloc", uuid=_check_uuid(p.get("uuid"), bdev=True),
                block_size=p["block_size"], num_blocks=p["num_blocks"], params=extra)
    return ctx.mutate(lambda: ctx.core.add_bdev(bdev))


@rpc("bdev_aio_create")
def bdev_aio_create(ctx: RpcContext, params: Any) -> Any:
    p = decode_bdev(params, AIO_SPEC)
    extra = {k: p[k] for k in ("readonly", "fallocate") if k in p}
    extra["block_size_override"] = "block_size" in p
    bdev = Bdev(name=p["name"], kind="aio", uuid=_check_uuid(p.get("uuid"), bdev=True),
                block_size=p.get("block_size", 512), num_blocks=0, filename=p["filename"],
                params=extra)
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
    from nvmf_phoenix.embedded.spdk_format import bdev_info

    p = decode_bdev(params, {"name": (str, False), "timeout": (U64, False)})
    with ctx.lock:
        bdevs = list(ctx.core.state.bdevs.values())
        if "name" in p:
            bdevs = [b for b in bdevs if p["name"] in (b.name, b.uuid)]
            if not bdevs:
                raise not_found(f"no bdev named {p['name']}")
        return [bdev_info(ctx.core, b) for b in bdevs]


@rpc("bdev_set_options", startup=True, runtime=False)
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
