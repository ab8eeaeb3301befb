"""framework_*, sock_*, iobuf_*, accel_* and bdev module option methods of the embedded
target: what a save_config from a real nvmf_tgt carries besides nvmf, bdevs and keys.

These setters are accepted in the phases SPDK accepts them, their values are checked as
SPDK checks them, remembered (embedded/options.py) and reported back by
framework_get_config and the matching getters. They have NO effect here: the embedded
target runs one I/O thread of its own, has no socket implementations, iobuf pools, accel
engine, scheduler, CPU core locks, NVMe or RAID bdevs. Each refusal carries the code and
message SPDK answers with (some are odd, e.g. -32700 for a decode failure in
accel_set_options: they are SPDK's).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

from nvmf_phoenix.embedded.options import DYNAMIC_OPTS
from nvmf_phoenix.embedded.rpc_methods import RpcContext, rpc
from nvmf_phoenix.embedded.rpc_params import U32, U64, decode, no_params
from nvmf_phoenix.rpc.errors import TargetError

INVALID_PARAMS, INTERNAL_ERROR, PARSE_ERROR = -32602, -32603, -32700
DECODE_FAILED = "spdk_json_decode_object failed"
EINVAL = (-22, "Invalid argument")
TICK_RATE = 1_000_000_000
_STARTED = time.monotonic()


def _decode(params: Any, spec: dict[str, Any], code: int, message: str) -> dict[str, Any]:
    """Decode as SPDK does, answering a failure with this method's own code/message."""
    try:
        return decode(params, spec)
    except TargetError as err:
        raise TargetError(code, message, err.detail) from None


def _spec_of(defaults: dict[str, Any]) -> dict[str, Any]:
    """A decoder table from the defaults' types (SPDK's are bool, uint32/64, string)."""
    return {k: (bool if isinstance(v, bool) else str if isinstance(v, str) else
                list if isinstance(v, list) else dict if isinstance(v, dict) else U64, False)
            for k, v in defaults.items()}


# -- scheduler, reactors, core locks ----------------------------------------------------
SCHEDULERS = ("static", "dynamic", "gscheduler")


@rpc("framework_set_scheduler")
def framework_set_scheduler(ctx: RpcContext, params: Any) -> Any:
    """Remembered only: the embedded target moves no threads between cores."""
    if not isinstance(params, dict) or not isinstance(params.get("name"), str) or \
            not isinstance(params.get("period", 0), int):
        raise TargetError(INVALID_PARAMS, "Invalid parameters", "name (and period) needed")
    name, extra = params["name"], {k: v for k, v in params.items()
                                   if k not in ("name", "period")}
    if name not in SCHEDULERS or (extra and name != "dynamic") or \
            not set(extra) <= set(DYNAMIC_OPTS):
        raise TargetError(INTERNAL_ERROR, "Unknown error -22",
                          f"no scheduler {name!r}, or options it does not take: {extra}")
    opts = ctx.options.values["framework_set_scheduler"]
    period = params.get("period") or opts.get("period") or 1_000_000
    opts.clear()
    opts["name"] = name
    if name != "static":    # the static scheduler turns periodic scheduling off
        opts["period"] = period
    ctx.options.dynamic.update(extra)
    return True


@rpc("framework_get_scheduler")
def framework_get_scheduler(ctx: RpcContext, params: Any) -> Any:
    no_params(params, "'rpc_get_scheduler' requires no arguments")
    opts = ctx.options.values["framework_set_scheduler"]
    out: dict[str, Any] = {"scheduler_name": opts["name"],
                           "scheduler_period": opts.get("period", 0),
                           "isolated_core_mask": "0", "scheduling_core": 0}
    if opts["name"] == "dynamic":
        out.update(ctx.options.dynamic)
    return out


@rpc("framework_get_reactors")
def framework_get_reactors(ctx: RpcContext, params: Any) -> Any:
    """One reactor (core 0) with SPDK's two threads: the app thread (RPC) and the poll
    group (the embedded data path), timed from this process's clocks."""
    no_params(params, "`framework_get_reactors` requires no arguments")
    times, ticks = os.times(), int((time.monotonic() - _STARTED) * TICK_RATE)
    hz = os.sysconf("SC_CLK_TCK")
    return {"tick_rate": TICK_RATE, "pid": os.getpid(), "reactors": [{
        "lcore": 0, "numa_id": 0, "tid": threading.get_native_id(), "busy": 0,
        "idle": ticks, "in_interrupt": False, "irq": 0, "sys": int(times.system * hz),
        "usr": int(times.user * hz), "lw_threads": [
            {"name": "app_thread", "id": 1, "cpumask": "1", "elapsed": ticks},
            {"name": "nvmf_tgt_poll_group_000", "id": 2, "cpumask": "1",
             "elapsed": ticks}]}]}


@rpc("framework_get_governor")
def framework_get_governor(ctx: RpcContext, params: Any) -> Any:
    """No CPU frequency governor is in use (as with nvmf_tgt's static scheduler)."""
    no_params(params, "'rpc_get_governor' requires no arguments")
    return {}


@rpc("framework_get_pci_devices")
def framework_get_pci_devices(ctx: RpcContext, params: Any) -> Any:
    """The embedded target attaches no PCI devices."""
    return []


def _core_locks(name: str, enable: bool) -> Any:
    def handler(ctx: RpcContext, params: Any) -> Any:
        """Remembered only: the embedded target claims no CPU core lock files."""
        no_params(params, f"{name}requires no arguments")   # SPDK's words, run together
        ctx.cpumask_locks = enable
        return True
    return rpc(name)(handler)


framework_enable_cpumask_locks = _core_locks("framework_enable_cpumask_locks", True)
framework_disable_cpumask_locks = _core_locks("framework_disable_cpumask_locks", False)


# -- sock ------------------------------------------------------------------------------
SOCK_SPEC = {"impl_name": (str, True), **{k: (bool, False) if isinstance(v, bool) else
                                          (U32, False) for k, v in {
    "recv_buf_size": 0, "send_buf_size": 0, "enable_recv_pipe": True, "enable_quickack": True,
    "enable_placement_id": 0, "enable_zerocopy_send_server": True,
    "enable_zerocopy_send_client": True, "zerocopy_threshold": 0, "tls_version": 0,
    "enable_ktls": True}.items()}}


@rpc("sock_impl_set_options")
def sock_impl_set_options(ctx: RpcContext, params: Any) -> Any:
    p = _decode(params, SOCK_SPEC, INVALID_PARAMS, "Invalid parameters")
    impl = ctx.options.sock_impls.get(p.pop("impl_name"))
    if impl is None:
        raise TargetError(INVALID_PARAMS, "Invalid parameters", "no such socket implementation")
    impl.update(p)
    return True


@rpc("sock_impl_get_options")
def sock_impl_get_options(ctx: RpcContext, params: Any) -> Any:
    p = _decode(params, {"impl_name": (str, True)}, INVALID_PARAMS, "Invalid parameters")
    impl = ctx.options.sock_impls.get(p["impl_name"])
    if impl is None:
        raise TargetError(INVALID_PARAMS, "Invalid parameters", "no such socket implementation")
    return dict(impl)


@rpc("sock_set_default_impl")
def sock_set_default_impl(ctx: RpcContext, params: Any) -> Any:
    p = _decode(params, {"impl_name": (str, True)}, INVALID_PARAMS, "Invalid parameters")
    if p["impl_name"] not in ctx.options.sock_impls:
        raise TargetError(INVALID_PARAMS, "Invalid parameters", "no such socket implementation")
    ctx.options.put("sock_set_default_impl", p)
    return True


@rpc("sock_get_default_impl")
def sock_get_default_impl(ctx: RpcContext, params: Any) -> Any:
    return ctx.options.get("sock_set_default_impl")


# -- iobuf, accel ----------------------------------------------------------------------
IOBUF_MIN = {"small_pool_count": 64, "large_pool_count": 8, "small_bufsize": 4096,
             "large_bufsize": 8192}


@rpc("iobuf_set_options")
def iobuf_set_options(ctx: RpcContext, params: Any) -> Any:
    p = _decode(params, _spec_of(ctx.options.get("iobuf_set_options")), INVALID_PARAMS,
                DECODE_FAILED)
    opts = {**ctx.options.get("iobuf_set_options"), **p}
    if any(opts[k] < least for k, least in IOBUF_MIN.items()):
        raise TargetError(*EINVAL, f"iobuf pools or buffers below SPDK's minimum {IOBUF_MIN}")
    ctx.options.put("iobuf_set_options", p)
    return True


@rpc("iobuf_get_stats")
def iobuf_get_stats(ctx: RpcContext, params: Any) -> Any:
    """The modules that hold iobuf channels in nvmf_tgt, all counters 0 (no pools)."""
    pool = {"cache": 0, "main": 0, "retry": 0, "cache_size": 0}
    return [{"module": m, "small_pool": dict(pool), "large_pool": dict(pool)}
            for m in ("accel", "bdev")]


@rpc("accel_set_options")
def accel_set_options(ctx: RpcContext, params: Any) -> Any:
    p = _decode(params, _spec_of(ctx.options.get("accel_set_options")), PARSE_ERROR,
                DECODE_FAILED)
    ctx.options.put("accel_set_options", p)
    return True


# -- bdev modules' options -------------------------------------------------------------
@rpc("bdev_nvme_set_options")
def bdev_nvme_set_options(ctx: RpcContext, params: Any) -> Any:
    p = _decode(params, _spec_of(ctx.options.get("bdev_nvme_set_options")), INTERNAL_ERROR,
                DECODE_FAILED)
    ctx.options.put("bdev_nvme_set_options", p)
    return True


@rpc("bdev_nvme_set_hotplug")
def bdev_nvme_set_hotplug(ctx: RpcContext, params: Any) -> Any:
    p = _decode(params, {"enable": (bool, True), "period_us": (U64, False)}, INTERNAL_ERROR,
                DECODE_FAILED)
    ctx.options.put("bdev_nvme_set_hotplug", p)
    return True


@rpc("bdev_raid_set_options")
def bdev_raid_set_options(ctx: RpcContext, params: Any) -> Any:
    p = _decode(params, {"process_window_size_kb": (U32, False),
                         "process_max_bandwidth_mb_sec": (U32, False)}, PARSE_ERROR,
                DECODE_FAILED)
    ctx.options.put("bdev_raid_set_options", p)
    return True
