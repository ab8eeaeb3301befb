"""JSON-RPC methods of the embedded target: registry, the framework's core methods, and
loading a save_config document (bdev methods are in rpc_bdev, option setters and the
scheduler in rpc_framework, nvmf methods in rpc_nvmf and rpc_nvmf_target).

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

from nvmf_phoenix.embedded.config_store import TargetCore, invalid
from nvmf_phoenix.embedded.options import SUBSYSTEMS, Options
from nvmf_phoenix.embedded.rpc_params import decode, no_params
from nvmf_phoenix.embedded.spdk_format import subsystem_config
from nvmf_phoenix.rpc import methods
from nvmf_phoenix.rpc.errors import TargetError
from nvmf_phoenix.rpc.methods import RUNTIME, STARTUP

from nvmf_phoenix import __version__

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
    # settings of SPDK modules the target does not have (no effect: embedded/options.py)
    options: Options = field(default_factory=Options)
    cpumask_locks: bool = True

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
    return [{"subsystem": name, "depends_on": list(deps)} for name, deps in SUBSYSTEMS]


@rpc("framework_get_config")
def framework_get_config(ctx: RpcContext, params: Any) -> Any:
    """One subsystem's configuration; with_batches keeps SPDK's batch arrays (nvmf
    emits its subsystems, hosts, namespaces and listeners as batches), else flattened."""
    p = decode(params, {"name": (str, True), "with_batches": (bool, False)})
    with ctx.lock:
        cfg = subsystem_config(ctx.core, p["name"], ctx.options,
                               p.get("with_batches", False))
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


def load_config(ctx: RpcContext, document: dict[str, Any]) -> list[str]:
    """Apply a save_config document as nvmf_tgt's ``-c/--json`` does: entries a method
    accepts before initialisation first, then framework_start_init, then the rest; batch
    arrays (framework_get_config with_batches) are taken entry by entry. Returns the
    errors (each names the failing entry); a failing entry does not stop the others."""
    entries = [x for s in document.get("subsystems", []) for e in (s.get("config") or [])
               for x in (e if isinstance(e, list) else [e])]
    startup = [e for e in entries if e.get("method") in METHODS and
               STARTUP in METHODS[e["method"]].phases]
    errors = []
    for phase_entries in (startup, [e for e in entries if e not in startup]):
        if phase_entries is not startup and ctx.phase == STARTUP:
            framework_start_init(ctx, None)
        for e in phase_entries:
            method = e.get("method", "")
            try:
                dispatch(ctx, method, e.get("params"))
            except TargetError as err:
                errors.append(f"{method} {json.dumps(e.get('params'))}: {err.detail}")
    return errors
