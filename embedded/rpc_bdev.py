"""bdev_* JSON-RPC methods of the embedded target: malloc, aio and null bdevs, their
listing, I/O statistics and latency histograms, as SPDK's bdev layer and modules answer.

Decoding follows each SPDK module's decoder table (bdev_malloc_rpc.c, bdev_aio_rpc.c,
bdev_null_rpc.c, bdev_rpc.c): a decode failure there is -32603 "spdk_json_decode_object
failed", and a refusal of the module is the negative errno with its strerror text.
"""
from __future__ import annotations

import base64
import fcntl
import os
import stat
import struct
import threading
import time
from typing import Any

from nvmf_phoenix.embedded.bdev import check_geometry
from nvmf_phoenix.embedded.config_store import TargetCore
from nvmf_phoenix.embedded.rpc_methods import RpcContext, rpc
from nvmf_phoenix.embedded.rpc_params import (
    U32,
    U64,
    check_uuid,
    decode,
    decode_bdev,
    no_params,
    not_found,
)
from nvmf_phoenix.embedded.spdk_format import bdev_info
from nvmf_phoenix.rpc.errors import TargetError

from nvmf_phoenix.model import Bdev

EINVAL = (-22, "Invalid argument")
# What SPDK's bdev modules accept as a metadata size, and as DIF types/PI formats.
MD_SIZES = (0, 8, 16, 32, 64, 128)
DIF_TYPES = (0, 1, 2, 3)
DIF_PI_FORMATS = (0, 1, 2)
BLKSSZGET = 0x1268   # ioctl: a block device's logical sector size

# Widths as SPDK's decoders (bdev_malloc_rpc.c, bdev_aio_rpc.c, bdev_null_rpc.c) have them.
MALLOC_SPEC = {"name": (str, False), "num_blocks": (U64, True), "block_size": (U32, True),
               "physical_block_size": (U32, False), "uuid": (str, False),
               "optimal_io_boundary": (U32, False), "md_size": (U32, False),
               "md_interleave": (bool, False), "dif_type": (U32, False),
               "dif_is_head_of_md": (bool, False), "dif_pi_format": (U32, False),
               "numa_id": (int, False)}
AIO_SPEC = {"name": (str, True), "filename": (str, True), "block_size": (U32, False),
            "readonly": (bool, False), "fallocate": (bool, False), "uuid": (str, False),
            "nowait": (bool, False)}
NULL_HINTS = ("preferred_write_alignment", "preferred_write_granularity",
              "optimal_write_size", "preferred_unmap_alignment",
              "preferred_unmap_granularity")
NULL_SPEC = {"name": (str, True), "uuid": (str, False), "num_blocks": (U64, True),
             "block_size": (U32, True), "physical_block_size": (U32, False),
             "md_size": (U32, False), "dif_type": (int, False),
             "dif_is_head_of_md": (bool, False), "dif_pi_format": (U32, False),
             **{k: (U32, False) for k in NULL_HINTS}}


def check_metadata(p: dict[str, Any]) -> None:
    """SPDK's checks of a bdev's metadata/DIF options (bdev_null_create, and the same
    for malloc): a refusal there is -22. A format SPDK accepts with metadata is refused
    after them with -95: the embedded data path serves no metadata (no extended LBAs,
    no protection information), and taking the option without honouring it would show
    hosts a different namespace than asked for."""
    md, dif, pi = p.get("md_size", 0), p.get("dif_type", 0), p.get("dif_pi_format", 0)
    if md not in MD_SIZES or dif not in DIF_TYPES or pi not in DIF_PI_FORMATS or \
            (dif and md < (8 if pi == 0 else 16)):
        raise TargetError(*EINVAL, f"metadata size {md}, DIF type {dif}, PI format {pi}: "
                          "not a format SPDK accepts")
    if md or dif or p.get("md_interleave"):
        raise TargetError(-95, "Operation not supported",
                          f"metadata size {md} / DIF type {dif}: the embedded target "
                          "serves no metadata formats")


# -- malloc ----------------------------------------------------------------------------
@rpc("bdev_malloc_create")
def bdev_malloc_create(ctx: RpcContext, params: Any) -> Any:
    p = decode_bdev(params, MALLOC_SPEC)
    check_geometry(p["block_size"], p["num_blocks"])
    check_metadata(p)
    bdev = Bdev.from_create_params("malloc", {
        **p, "name": p.get("name") or _next_name(ctx.core, "Malloc"),
        "uuid": check_uuid(p.get("uuid"), bdev=True)})
    return ctx.mutate(lambda: ctx.core.add_bdev(bdev))


@rpc("bdev_malloc_delete")
def bdev_malloc_delete(ctx: RpcContext, params: Any) -> Any:
    return _delete_bdev(ctx, params, "malloc")


# -- aio -------------------------------------------------------------------------------
@rpc("bdev_aio_create")
def bdev_aio_create(ctx: RpcContext, params: Any) -> Any:
    p = decode_bdev(params, AIO_SPEC)
    entry = {**p, "uuid": check_uuid(p.get("uuid"), bdev=True)}
    if "block_size" not in p:
        detected = _detected_block_size(p["filename"])
        if detected is not None:
            entry["block_size"] = detected
    bdev = Bdev.from_create_params("aio", entry)
    bdev.params["block_size_override"] = "block_size" in p
    return ctx.mutate(lambda: ctx.core.add_bdev(bdev))


def _detected_block_size(path: str) -> int | None:
    """As bdev_aio.c: without a block size, a block device's logical sector size is
    used, and a regular file (which has none to detect) is refused with -22. A path
    that cannot be opened is left to the open, which answers with its errno."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        raise TargetError(*EINVAL, f"{path} is not a block device: its block size cannot "
                          "be detected, give block_size")
    fd = os.open(path, os.O_RDONLY)
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0])
    finally:
        os.close(fd)


@rpc("bdev_aio_rescan")
def bdev_aio_rescan(ctx: RpcContext, params: Any) -> Any:
    """Take the file's new size (a file grown or shrunk under the bdev)."""
    p = decode_bdev(params, {"name": (str, True)})
    bdev = ctx.core.state.bdevs.get(p["name"])
    if bdev is None or bdev.kind != "aio" or not bdev.filename:
        raise not_found(f"no aio bdev named {p['name']}")
    try:
        size = os.stat(bdev.filename).st_size
    except OSError as exc:
        raise TargetError(-(exc.errno or 5), os.strerror(exc.errno or 5),
                          f"{bdev.filename}: {exc.strerror}") from None
    blocks = size // bdev.block_size
    if blocks != bdev.num_blocks:
        if blocks == 0:
            raise TargetError(*EINVAL, f"{bdev.filename} is smaller than one block")
        ctx.mutate(lambda: ctx.core.resize_bdev(bdev.name, blocks))
    return True


@rpc("bdev_aio_delete")
def bdev_aio_delete(ctx: RpcContext, params: Any) -> Any:
    return _delete_bdev(ctx, params, "aio")


# -- null ------------------------------------------------------------------------------
@rpc("bdev_null_create")
def bdev_null_create(ctx: RpcContext, params: Any) -> Any:
    """bdev_null.c's checks in its order: metadata size, data block size a multiple of
    512, physical block size too, at least one block, then DIF; each refusal -22."""
    p = decode_bdev(params, NULL_SPEC)
    uuid = check_uuid(p.get("uuid"), bdev=True)
    if p.get("md_size", 0) not in MD_SIZES or p["block_size"] % 512 or \
            p.get("physical_block_size", 0) % 512 or p["num_blocks"] == 0:
        raise TargetError(*EINVAL, f"block size {p['block_size']} / {p['num_blocks']} "
                          "blocks / metadata: not a null bdev SPDK makes")
    check_metadata(p)
    check_geometry(p["block_size"], p["num_blocks"])
    entry = {"name": p["name"], "num_blocks": p["num_blocks"], "block_size": p["block_size"],
             "physical_block_size": p.get("physical_block_size") or p["block_size"],
             "md_size": 0, "dif_type": 0, "dif_is_head_of_md": False, "dif_pi_format": 0,
             "uuid": uuid, **{k: p.get(k, 0) for k in NULL_HINTS}}
    bdev = Bdev.from_create_params("null", entry)
    return ctx.mutate(lambda: ctx.core.add_bdev(bdev))


@rpc("bdev_null_delete")
def bdev_null_delete(ctx: RpcContext, params: Any) -> Any:
    return _delete_bdev(ctx, params, "null")


@rpc("bdev_null_resize")
def bdev_null_resize(ctx: RpcContext, params: Any) -> Any:
    """new_size is in MiB and may not be below the current size (SPDK's rule)."""
    p = decode_bdev(params, {"name": (str, True), "new_size": (U64, True)})
    bdev = ctx.core.state.bdevs.get(p["name"])
    if bdev is None:
        raise not_found(f"no bdev named {p['name']}")
    blocks = p["new_size"] * (1 << 20) // bdev.block_size
    if bdev.kind != "null" or p["new_size"] < bdev.block_size * bdev.num_blocks >> 20 or \
            blocks == 0:
        raise TargetError(*EINVAL, f"{p['name']}: not a null bdev, or {p['new_size']} MiB "
                          "is below its size")
    ctx.mutate(lambda: ctx.core.resize_bdev(p["name"], blocks))
    return True


def _delete_bdev(ctx: RpcContext, params: Any, kind: str) -> Any:
    p = decode_bdev(params, {"name": (str, True)})
    bdev = ctx.core.state.bdevs.get(p["name"])
    if bdev is None or bdev.kind != kind:
        raise not_found(f"no {kind} bdev named {p['name']}")
    ctx.mutate(lambda: ctx.core.delete_bdev(p["name"]))
    with ctx.lock:   # its histogram goes with it, as in SPDK
        ctx.options.histograms.pop(p["name"], None)
    return True


def _next_name(core: TargetCore, prefix: str) -> str:
    i = 0
    while f"{prefix}{i}" in core.state.bdevs:
        i += 1
    return f"{prefix}{i}"


# -- listing, statistics ---------------------------------------------------------------
@rpc("bdev_get_bdevs")
def bdev_get_bdevs(ctx: RpcContext, params: Any) -> Any:
    """With a name and a timeout (ms), waits that long for the bdev to appear, and
    answers -110 if it does not, as SPDK does."""
    p = decode_bdev(params, {"name": (str, False), "timeout": (U64, False)})
    deadline = time.monotonic() + p.get("timeout", 0) / 1000
    while True:
        with ctx.lock:
            bdevs = list(ctx.core.state.bdevs.values())
            if "name" in p:
                bdevs = [b for b in bdevs if p["name"] in (b.name, b.uuid)]
            if bdevs or "name" not in p:
                return [bdev_info(ctx.core, b) for b in bdevs]
        if not p.get("timeout"):
            raise not_found(f"no bdev named {p['name']}")
        if time.monotonic() >= deadline:
            raise TargetError(-110, "Connection timed out",
                              f"no bdev named {p['name']} within {p['timeout']} ms")
        _POLL.wait(min(0.01, max(0.0, deadline - time.monotonic())))


_POLL = threading.Event()   # never set: a bounded pause between looks for a bdev


IOSTAT_FIELDS = ("bytes_read", "num_read_ops", "bytes_written", "num_write_ops",
                 "bytes_unmapped", "num_unmap_ops", "bytes_copied", "num_copy_ops",
                 *(f"{pre}{op}_latency_ticks" for op in ("read", "write", "unmap", "copy")
                   for pre in ("", "max_", "min_")))


@rpc("bdev_get_iostat")
def bdev_get_iostat(ctx: RpcContext, params: Any) -> Any:
    """SPDK's shape (tick rate, ticks, one entry per bdev). The embedded data path does
    not count I/O per bdev, so every counter is 0: the answer says what exists, not how
    busy it is (nvmf_get_stats has the per-target I/O count)."""
    p = decode_bdev(params, {"names": (list, False), "per_channel": (bool, False),
                             "reset_mode": (str, False)})
    names = p.get("names")
    if p.get("reset_mode", "none") not in ("none", "all", "maxmin") or \
            (names is not None and not all(isinstance(n, str) for n in names)):
        raise TargetError(-32603, "spdk_json_decode_object failed", "bad names/reset_mode")
    if p.get("per_channel") and (names is None or len(names) != 1):
        raise TargetError(*EINVAL, "per_channel needs exactly one bdev in names")
    with ctx.lock:
        bdevs = ctx.core.state.bdevs
        for n in names or ():
            if n not in bdevs:
                raise not_found(f"no bdev named {n}")
        chosen = [bdevs[n] for n in names] if names is not None else list(bdevs.values())
    ticks = os.times().elapsed
    stats = [{"name": b.name, **dict.fromkeys(IOSTAT_FIELDS, 0), "io_error": {}}
             for b in chosen]
    out: dict[str, Any] = {"tick_rate": TICK_RATE, "ticks": int(ticks * TICK_RATE)}
    if p.get("per_channel"):   # no I/O channels are kept per thread here
        out.update(name=chosen[0].name, channels=[])
    else:
        out["bdevs"] = stats
    return out


@rpc("bdev_reset_iostat")
def bdev_reset_iostat(ctx: RpcContext, params: Any) -> Any:
    """Nothing to reset: no counters are kept (see bdev_get_iostat)."""
    p = decode_bdev(params, {"name": (str, False), "mode": (str, False)})
    if "name" in p and p["name"] not in ctx.core.state.bdevs:
        raise not_found(f"no bdev named {p['name']}")
    return True


TICK_RATE = 1_000_000_000
# A histogram as SPDK keeps it (spdk_histogram_data): 2^granularity buckets per range
# between min_range and max_range (powers of two of TSC ticks).
HISTOGRAM = {"granularity": 7, "min_range": 5, "max_range": 27}


@rpc("bdev_enable_histogram")
def bdev_enable_histogram(ctx: RpcContext, params: Any) -> Any:
    p = decode_bdev(params, {"name": (str, True), "enable": (bool, True), "opc": (str, False),
                             "granularity": (int, False), "min_nsec": (U64, False),
                             "max_nsec": (U64, False)})
    bdev = ctx.core.state.bdevs.get(p["name"])
    if bdev is None:
        raise not_found(f"no bdev named {p['name']}")
    with ctx.lock:
        if p["enable"]:
            ctx.options.histograms[bdev.name] = p.get("opc")
        else:
            ctx.options.histograms.pop(bdev.name, None)
    return True


@rpc("bdev_get_histogram")
def bdev_get_histogram(ctx: RpcContext, params: Any) -> Any:
    """An all-zero histogram of SPDK's layout (no latencies are measured here); a bdev
    whose histogram was not enabled answers -12, as SPDK does."""
    p = decode_bdev(params, {"name": (str, True)})
    if p["name"] not in ctx.core.state.bdevs:
        raise not_found(f"no bdev named {p['name']}")
    if p["name"] not in ctx.options.histograms:
        raise TargetError(-12, "Cannot allocate memory", f"{p['name']}: histogram not enabled")
    h = HISTOGRAM
    buckets = (h["max_range"] - h["min_range"]) << h["granularity"]
    return {"histogram": base64.b64encode(bytes(8 * buckets)).decode(), **h,
            "tsc_rate": TICK_RATE}


# -- options ---------------------------------------------------------------------------
@rpc("bdev_set_options")
def bdev_set_options(ctx: RpcContext, params: Any) -> Any:
    """STARTUP-only, as in SPDK; remembered and reported by framework_get_config. There
    are no bdev_io pools or iobuf caches here to size: the values have no effect."""
    p = decode(params, {"bdev_io_pool_size": (U32, False), "bdev_io_cache_size": (U32, False),
                        "bdev_auto_examine": (bool, False),
                        "iobuf_small_cache_size": (U32, False),
                        "iobuf_large_cache_size": (U32, False)})
    opts = {**ctx.options.get("bdev_set_options"), **p}
    if opts["bdev_io_pool_size"] < opts["bdev_io_cache_size"] * 2:   # SPDK: one cache
        raise TargetError(-32602, f"Pool size {opts['bdev_io_pool_size']} too small for "
                          f"cache size {opts['bdev_io_cache_size']}")
    ctx.options.put("bdev_set_options", p)
    return True


@rpc("bdev_wait_for_examine")
def bdev_wait_for_examine(ctx: RpcContext, params: Any) -> Any:
    no_params(params, "bdev_wait_for_examine requires no parameters")
    return True
