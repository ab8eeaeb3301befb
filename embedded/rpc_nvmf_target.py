"""Target-wide nvmf_* methods of the embedded target (the target itself, its STARTUP
options, transports, statistics, discovery referrals) and the keyring, with SPDK's names,
shapes and errors. Per-subsystem methods are in rpc_nvmf.

The embedded process holds one target, named as nvmf_tgt names its default one
("nvmf_tgt"): nvmf_get_targets lists it, nvmf_create_target of another name is refused
(the state model has one target), a tgt_name naming any other is refused with the words
each SPDK method uses.
"""
from __future__ import annotations

from typing import Any

from nvmf_phoenix.embedded.config_store import INTERNAL_ERROR, INVALID_PARAMS
from nvmf_phoenix.embedded.rpc_methods import RpcContext, rpc
from nvmf_phoenix.embedded.rpc_params import (
    TARGET_NAME,
    U16,
    U32,
    check_target,
    decode,
    listen_address,
    not_found,
)
from nvmf_phoenix.embedded.spdk_format import TRANSPORT_REPORTED
from nvmf_phoenix.rpc.errors import TargetError

from nvmf_phoenix.model import DISCOVERY_NQN, TRANSPORT_DEFAULTS, Key, Referral

STARTUP_CONFIG_SPEC = {"acceptor_poll_rate": (U32, False), "conn_sched": (str, False),
                       "passthru_identify_ctrlr": (bool, False), "poll_groups_mask": (str, False),
                       "discovery_filter": (str, False), "admin_cmd_passthru": (dict, False),
                       "dhchap_digests": (list, False), "dhchap_dhgroups": (list, False),
                       "dup_host_policy": (str, False)}


# -- the target ------------------------------------------------------------------------
@rpc("nvmf_create_target")
def nvmf_create_target(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"name": (str, True), "max_subsystems": (U32, False),
                        "discovery_filter": (str, False), "dup_host_policy": (str, False)})
    if p["name"] == TARGET_NAME:
        raise TargetError(INVALID_PARAMS, "Target already exists.", f"{TARGET_NAME} exists")
    raise TargetError(INTERNAL_ERROR, "Unable to create the requested target.",
                      "the embedded target holds one target (the state model has one): "
                      f"{p['name']!r} cannot be created")


@rpc("nvmf_delete_target")
def nvmf_delete_target(ctx: RpcContext, params: Any) -> Any:
    """SPDK tears the default target down (and then answers only once its teardown
    ends, which a live target never reaches); here the one target stays: refused."""
    p = decode(params, {"name": (str, True)})
    if p["name"] != TARGET_NAME:
        raise TargetError(INVALID_PARAMS,
                          "The specified target doesn't exist, cannot delete it.",
                          f"no target named {p['name']!r}")
    raise TargetError(INTERNAL_ERROR, "Internal error",
                      "the embedded target's one target cannot be deleted")


@rpc("nvmf_get_targets")
def nvmf_get_targets(ctx: RpcContext, params: Any) -> Any:
    if params is not None:
        raise TargetError(INVALID_PARAMS, "nvmf_get_targets has no parameters.",
                          "this method takes no parameters")
    return [TARGET_NAME]


# -- STARTUP options -------------------------------------------------------------------
@rpc("nvmf_set_config")
def nvmf_set_config(ctx: RpcContext, params: Any) -> Any:
    ctx.core.state.startup.nvmf_config.update(decode(params, STARTUP_CONFIG_SPEC))
    return True


@rpc("nvmf_set_max_subsystems")
def nvmf_set_max_subsystems(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"max_subsystems": (U32, True)})
    ctx.core.state.startup.max_subsystems = p["max_subsystems"]
    return True


@rpc("nvmf_set_crdt")
def nvmf_set_crdt(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"crdt1": (U16, False), "crdt2": (U16, False), "crdt3": (U16, False)})
    ctx.core.state.startup.crdt.update(p)
    return True


# -- transports ------------------------------------------------------------------------
U16_OPTIONS = ("max_queue_depth", "max_io_qpairs_per_ctrlr", "kas")
MAX_IO_SIZE_LIMIT = 2 << 20   # SPDK: at most 16 data buffers of the default iobuf size


@rpc("nvmf_create_transport")
def nvmf_create_transport(ctx: RpcContext, params: Any) -> Any:
    spec: dict[str, Any] = {"trtype": (str, True), "tgt_name": (str, False)}
    spec.update({k: (bool if isinstance(v, bool) else U16 if k in U16_OPTIONS else U32,
                     False) for k, v in TRANSPORT_DEFAULTS.items()})
    p = decode(params, spec, relaxed=True)
    check_target(p.get("tgt_name"))
    opts = _checked_transport(p["trtype"], {**TRANSPORT_DEFAULTS, **{
        k: v for k, v in p.items() if k not in ("trtype", "tgt_name")}})
    ctx.mutate(lambda: ctx.core.create_transport(p["trtype"], opts))
    return True


def _checked_transport(trtype: str, opts: dict[str, Any]) -> dict[str, Any]:
    """What SPDK checks when it creates a TCP transport (transport.c, tcp.c): refusals
    answer "create failed"; out-of-range depths and capsule sizes are set to what SPDK
    would use, so the data path never sees a queue depth of 0 or a negative MDTS."""
    mio = opts["max_io_size"]
    why = ("max_io_size must be a power of 2 and at least 8 KiB" if mio and
           (mio & (mio - 1) or mio < 8192) else
           f"max_io_size above {MAX_IO_SIZE_LIMIT}" if mio > MAX_IO_SIZE_LIMIT else
           "kas and min_kato cannot be 0" if not opts["kas"] or not opts["min_kato"] else "")
    if why:
        raise TargetError(INTERNAL_ERROR, f"Transport type '{trtype}' create failed", why)
    out = dict(opts)
    out["in_capsule_data_size"] = min(opts["in_capsule_data_size"], mio)
    if opts["max_queue_depth"] < 2:
        out["max_queue_depth"] = TRANSPORT_DEFAULTS["max_queue_depth"]
    aq = max(opts["max_aq_depth"], 32)   # the NVMe-oF minimum admin queue size
    out["max_aq_depth"] = aq if aq <= 4096 else TRANSPORT_DEFAULTS["max_aq_depth"]
    return out


@rpc("nvmf_get_transports")
def nvmf_get_transports(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"trtype": (str, False), "tgt_name": (str, False)})
    check_target(p.get("tgt_name"))
    out = [{"trtype": t.trtype, **{k: t.options.get(k, TRANSPORT_DEFAULTS[k])
                                   for k in TRANSPORT_REPORTED}}
           for t in ctx.core.state.transports.values()
           if "trtype" not in p or t.trtype == p["trtype"].upper()]
    if "trtype" in p and not out:
        raise not_found(f"no transport {p['trtype']}")
    return out


@rpc("nvmf_get_stats")
def nvmf_get_stats(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"tgt_name": (str, False)})
    check_target(p.get("tgt_name"))
    stats = ctx.datapath.stats() if ctx.datapath else {
        k: 0 for k in ("admin_qpairs", "io_qpairs", "current_admin_qpairs",
                       "current_io_qpairs", "current_unassociated_qpairs", "pending_bdev_io",
                       "completed_nvme_io")}
    return {"tick_rate": 1_000_000_000, "poll_groups": [
        {"name": "nvmf_tgt_poll_group_000", **stats,
         "transports": [{"trtype": t} for t in ctx.core.state.transports]}]}


# -- discovery referrals ---------------------------------------------------------------
REFERRAL_SPEC = {"address": (dict, True), "subnqn": (str, False),
                 "secure_channel": (bool, False), "tgt_name": (str, False)}


@rpc("nvmf_discovery_add_referral")
def nvmf_discovery_add_referral(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, REFERRAL_SPEC)
    check_target(p.get("tgt_name"))
    ref = Referral(address=listen_address(p["address"]),
                   subnqn=p.get("subnqn") or DISCOVERY_NQN,
                   secure_channel=p.get("secure_channel", False))
    ctx.mutate(lambda: ctx.core.add_referral(ref))
    return True


@rpc("nvmf_discovery_remove_referral")
def nvmf_discovery_remove_referral(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, REFERRAL_SPEC)
    check_target(p.get("tgt_name"))
    addr = listen_address(p["address"])
    ctx.mutate(lambda: ctx.core.remove_referral(addr, p.get("subnqn")))
    return True


@rpc("nvmf_discovery_get_referrals")
def nvmf_discovery_get_referrals(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"tgt_name": (str, False)})
    check_target(p.get("tgt_name"), "Unable to find a target")
    return [r.to_dict() for r in ctx.core.state.referrals]


# -- keyring ---------------------------------------------------------------------------
@rpc("keyring_file_add_key")
def keyring_file_add_key(ctx: RpcContext, params: Any) -> Any:
    try:   # SPDK decodes relaxed here and words a failure "Invalid argument"
        p = decode(params, {"name": (str, True), "path": (str, True)}, relaxed=True)
    except TargetError as err:
        raise TargetError(INVALID_PARAMS, "Invalid argument", err.detail) from None
    ctx.mutate(lambda: ctx.core.add_key(Key.from_create_params(p)))
    return True


@rpc("keyring_file_remove_key")
def keyring_file_remove_key(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"name": (str, True)})
    ctx.mutate(lambda: ctx.core.remove_key(p["name"]))
    return True


@rpc("keyring_get_keys")
def keyring_get_keys(ctx: RpcContext, params: Any) -> Any:
    """As keyring_dump_key_info: refcnt is the keyring's own reference plus one per
    host that names the key (as PSK or DH-HMAC-CHAP key). SPDK ignores any params."""
    with ctx.lock:
        users: dict[str, int] = {}
        for sub in ctx.core.state.subsystems.values():
            for h in sub.hosts.values():
                for k in (h.psk, h.dhchap_key, h.dhchap_ctrlr_key):
                    if k is not None:
                        users[k] = users.get(k, 0) + 1
        return [{"name": k.name, "module": "keyring_file", "removed": False, "probed": False,
                 "refcnt": 1 + users.get(k.name, 0), "path": k.path}
                for k in ctx.core.state.keys.values()]


# -- mDNS pull registration requests ---------------------------------------------------
@rpc("nvmf_publish_mdns_prr")
def nvmf_publish_mdns_prr(ctx: RpcContext, params: Any) -> Any:
    """As an nvmf_tgt built without avahi: mDNS publishing is not supported."""
    p = decode(params, {"tgt_name": (str, False)})
    check_target(p.get("tgt_name"))
    raise TargetError(-95, "Operation not supported", "no mDNS support in the embedded target")


@rpc("nvmf_stop_mdns_prr")
def nvmf_stop_mdns_prr(ctx: RpcContext, params: Any) -> Any:
    """Nothing was published: stopping succeeds, as on nvmf_tgt."""
    p = decode(params, {"tgt_name": (str, False)})
    check_target(p.get("tgt_name"))
    return True
