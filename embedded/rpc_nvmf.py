"""nvmf_* JSON-RPC methods of the embedded target, with SPDK's names, shapes and errors."""
from __future__ import annotations

import ipaddress
from typing import Any

from nvmf_phoenix.embedded.config_store import INTERNAL_ERROR, INVALID_PARAMS, invalid
from nvmf_phoenix.embedded.rpc_methods import RpcContext, rpc
from nvmf_phoenix.embedded.rpc_params import (
    ADDRESS_SPEC,
    U16,
    U32,
    U64,
    check_uuid,
    decode,
    not_found,
)
from nvmf_phoenix.embedded.spdk_format import TRANSPORT_REPORTED, listener_info, subsystem_info
from nvmf_phoenix.rpc.errors import TargetError

from nvmf_phoenix.model import (
    ANA_STATES,
    DISCOVERY_NQN,
    TRANSPORT_DEFAULTS,
    Host,
    Key,
    ListenAddress,
    Namespace,
    Referral,
    Subsystem,
)

# Each listener keeps an ANA state per possible group (one per nsid): bounded here, so a
# hostile max_namespaces (2^32 - 1) cannot make add_listener build billions of them.
MAX_NAMESPACES = 65535
SUBSYSTEM_SPEC = {"nqn": (str, True), "serial_number": (str, False),
                  "model_number": (str, False), "tgt_name": (str, False),
                  "allow_any_host": (bool, False), "max_namespaces": (U32, False),
                  "ana_reporting": (bool, False), "min_cntlid": (U16, False),
                  "max_cntlid": (U16, False), "max_discard_size_kib": (U64, False),
                  "max_write_zeroes_size_kib": (U64, False), "passthrough": (bool, False),
                  "enable_nssr": (bool, False), "dmrsl": (U32, False), "wzsl": (U32, False)}
NS_SPEC = {"bdev_name": (str, True), "nsid": (U32, False), "uuid": (str, False),
           "nguid": (str, False), "eui64": (str, False), "anagrpid": (U32, False),
           "ptpl_file": (str, False), "no_auto_visible": (bool, False),
           "hide_metadata": (bool, False)}
STARTUP_CONFIG_SPEC = {"acceptor_poll_rate": (U32, False), "conn_sched": (str, False),
                       "passthru_identify_ctrlr": (bool, False), "poll_groups_mask": (str, False),
                       "discovery_filter": (str, False), "admin_cmd_passthru": (dict, False),
                       "dhchap_digests": (list, False), "dhchap_dhgroups": (list, False),
                       "dup_host_policy": (str, False)}


def _address(raw: Any) -> ListenAddress:
    p = decode(raw, ADDRESS_SPEC)
    if p["trtype"].upper() != "TCP":
        raise invalid(f"transport {p['trtype']} is not served by the embedded target")
    try:
        ipaddress.ip_address(p["traddr"])
    except ValueError:
        raise invalid(f"{p['traddr']!r} is not an IP address") from None
    port = p.get("trsvcid", "4420")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise invalid(f"{port!r} is not a TCP port")
    return ListenAddress.make(p["traddr"], port, "TCP", p.get("adrfam"))


def _hex(value: str | None, nbytes: int, what: str) -> str | None:
    if value is None:
        return None
    text = value.replace("-", "")
    try:
        if len(text) != 2 * nbytes:
            raise ValueError
        bytes.fromhex(text)
    except ValueError:
        raise invalid(f"{what} {value!r} is not {nbytes} bytes of hex") from None
    return text.upper() if what == "nguid" else text.lower()


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
@rpc("nvmf_create_transport")
def nvmf_create_transport(ctx: RpcContext, params: Any) -> Any:
    spec: dict[str, Any] = {"trtype": (str, True), "tgt_name": (str, False)}
    spec.update({k: (bool if isinstance(v, bool) else U16 if k in U16_OPTIONS else U32,
                     False) for k, v in TRANSPORT_DEFAULTS.items()})
    p = decode(params, spec, relaxed=True)
    opts = _checked_transport(p["trtype"], {**TRANSPORT_DEFAULTS, **{
        k: v for k, v in p.items() if k not in ("trtype", "tgt_name")}})
    ctx.mutate(lambda: ctx.core.create_transport(p["trtype"], opts))
    return True


U16_OPTIONS = ("max_queue_depth", "max_io_qpairs_per_ctrlr", "kas")
MAX_IO_SIZE_LIMIT = 2 << 20   # SPDK: at most 16 data buffers of the default iobuf size


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
    out = [{"trtype": t.trtype, **{k: t.options.get(k, TRANSPORT_DEFAULTS[k])
                                   for k in TRANSPORT_REPORTED}}
           for t in ctx.core.state.transports.values()
           if "trtype" not in p or t.trtype == p["trtype"].upper()]
    if "trtype" in p and not out:
        raise not_found(f"no transport {p['trtype']}")
    return out


# -- subsystems ------------------------------------------------------------------------
@rpc("nvmf_create_subsystem")
def nvmf_create_subsystem(ctx: RpcContext, params: Any) -> Any:
    sub = Subsystem.from_create_params(decode(params, SUBSYSTEM_SPEC))
    serial, model = sub.serial_number, sub.model_number
    if len(serial) > 20 or len(model) > 40 or not serial.isascii() or not model.isascii():
        # SPDK's decoders for these refuse them: a plain decode failure
        raise invalid("serial number or model number too long or not ASCII")
    sub.max_namespaces = sub.max_namespaces or Subsystem.max_namespaces   # 0: the default
    if sub.max_namespaces > MAX_NAMESPACES:   # SPDK would fail to allocate far earlier
        raise TargetError(INTERNAL_ERROR, f"Unable to create subsystem {sub.nqn}",
                          f"max_namespaces {sub.max_namespaces} is above {MAX_NAMESPACES}, "
                          "the most the embedded target supports")
    limit = ctx.core.state.startup.max_subsystems or 1024
    if len(ctx.core.state.subsystems) > limit:
        raise TargetError(INTERNAL_ERROR, f"Unable to create subsystem {sub.nqn}",
                          f"the target allows at most {limit} subsystems")
    ctx.mutate(lambda: ctx.core.create_subsystem(sub))
    return True


@rpc("nvmf_delete_subsystem")
def nvmf_delete_subsystem(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "tgt_name": (str, False)})
    ctx.mutate(lambda: ctx.core.delete_subsystem(p["nqn"]))
    return True


@rpc("nvmf_get_subsystems")
def nvmf_get_subsystems(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, False), "tgt_name": (str, False)})
    with ctx.lock:
        subs = list(ctx.core.state.subsystems.values())
        if "nqn" in p:
            subs = [s for s in subs if s.nqn == p["nqn"]]
            if not subs:
                raise not_found(f"no subsystem {p['nqn']}")
        return [subsystem_info(s) for s in subs]


@rpc("nvmf_subsystem_add_ns")
def nvmf_subsystem_add_ns(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "namespace": (dict, True),
                        "tgt_name": (str, False)})
    ns = Namespace.from_create_params(decode(p["namespace"], NS_SPEC))
    ns.nguid = _hex(ns.nguid, 16, "nguid")
    ns.eui64 = _hex(ns.eui64, 8, "eui64")
    if ns.uuid is not None:
        ns.uuid = check_uuid(ns.uuid)
    return ctx.mutate(lambda: ctx.core.add_namespace(p["nqn"], ns))


@rpc("nvmf_subsystem_remove_ns")
def nvmf_subsystem_remove_ns(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "nsid": (U32, True), "tgt_name": (str, False)})
    ctx.mutate(lambda: ctx.core.remove_namespace(p["nqn"], p["nsid"]))
    return True


# The one target nvmf_tgt creates (nvmf_tgt.c): the only tgt_name that names anything.
TARGET_NAME = "nvmf_tgt"
NS_HOST_SPEC = {"nqn": (str, True), "nsid": (U32, True), "host": (str, True),
                "tgt_name": (str, False)}


def _ns_visible(ctx: RpcContext, params: Any, visible: bool) -> Any:
    """nvmf_ns_add_host / nvmf_ns_remove_host (nvmf_rpc.c, _nvmf_rpc_ns_visible)."""
    p = decode(params, NS_HOST_SPEC)
    if p.get("tgt_name", TARGET_NAME) != TARGET_NAME:
        raise TargetError(INTERNAL_ERROR, "Unable to find a target.",
                          f"no target named {p['tgt_name']!r}")
    ctx.mutate(lambda: ctx.core.set_ns_visible(p["nqn"], p["nsid"], p["host"], visible))
    return True


@rpc("nvmf_ns_add_host")
def nvmf_ns_add_host(ctx: RpcContext, params: Any) -> Any:
    return _ns_visible(ctx, params, True)


@rpc("nvmf_ns_remove_host")
def nvmf_ns_remove_host(ctx: RpcContext, params: Any) -> Any:
    return _ns_visible(ctx, params, False)


HOST_SPEC = {"nqn": (str, True), "host": (str, True), "tgt_name": (str, False),
             "psk": (str, False), "dhchap_key": (str, False), "dhchap_ctrlr_key": (str, False)}


@rpc("nvmf_subsystem_add_host")
def nvmf_subsystem_add_host(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, HOST_SPEC)
    host = Host.from_create_params(p)
    for key in (host.psk, host.dhchap_key, host.dhchap_ctrlr_key):
        if key is not None and key not in ctx.core.state.keys:
            raise invalid(f"key {key} is not in the keyring")
    ctx.mutate(lambda: ctx.core.add_host(p["nqn"], host))
    return True


@rpc("nvmf_subsystem_remove_host")
def nvmf_subsystem_remove_host(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "host": (str, True), "tgt_name": (str, False)})
    ctx.mutate(lambda: ctx.core.remove_host(p["nqn"], p["host"]))
    return True


@rpc("nvmf_subsystem_allow_any_host")
def nvmf_subsystem_allow_any_host(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "allow_any_host": (bool, True),
                        "tgt_name": (str, False)})
    ctx.mutate(lambda: ctx.core.allow_any_host(p["nqn"], p["allow_any_host"]))
    return True


LISTENER_SPEC = {"nqn": (str, True), "listen_address": (dict, True), "tgt_name": (str, False),
                 "ana_state": (str, False), "secure_channel": (bool, False),
                 "sock_impl": (str, False)}


@rpc("nvmf_subsystem_add_listener")
def nvmf_subsystem_add_listener(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, LISTENER_SPEC)
    addr = _address(p["listen_address"])
    state = p.get("ana_state", "optimized")
    if state not in ANA_STATES:
        raise invalid(f"unknown ANA state {state}")
    ctx.mutate(lambda: ctx.core.add_listener(p["nqn"], addr, state,
                                             p.get("secure_channel", False)))
    return True


@rpc("nvmf_subsystem_remove_listener")
def nvmf_subsystem_remove_listener(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "listen_address": (dict, True),
                        "tgt_name": (str, False)})
    addr = _address(p["listen_address"])
    ctx.mutate(lambda: ctx.core.remove_listener(p["nqn"], addr))
    return True


@rpc("nvmf_subsystem_listener_set_ana_state")
def nvmf_subsystem_listener_set_ana_state(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "listen_address": (dict, True),
                        "ana_state": (str, True), "anagrpid": (U32, False),
                        "tgt_name": (str, False)})
    addr = _address(p["listen_address"])
    ctx.mutate(lambda: ctx.core.set_ana_state(p["nqn"], addr, p["ana_state"],
                                              p.get("anagrpid")))
    return True


@rpc("nvmf_subsystem_get_listeners")
def nvmf_subsystem_get_listeners(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "tgt_name": (str, False)})
    with ctx.lock:
        sub = ctx.core.subsystem(p["nqn"])
        return [listener_info(ls, sub.ana_reporting) for ls in sub.listeners.values()]


@rpc("nvmf_subsystem_get_controllers")
def nvmf_subsystem_get_controllers(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "tgt_name": (str, False)})
    ctx.core.subsystem(p["nqn"])
    facts = ctx.datapath.controllers(p["nqn"]) if ctx.datapath else []
    # num_io_qpairs as SPDK counts it (the admin queue pair included): see controller_facts
    return [{"cntlid": c.cntlid, "cntrltype": "io", "hostnqn": c.hostnqn, "hostid": c.hostid,
             "num_io_qpairs": c.num_io_qpairs} for c in facts]


@rpc("nvmf_subsystem_get_qpairs")
def nvmf_subsystem_get_qpairs(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "tgt_name": (str, False)})
    ctx.core.subsystem(p["nqn"])
    facts = ctx.datapath.qpairs(p["nqn"]) if ctx.datapath else []
    return [{"cntlid": q.cntlid, "qid": q.qid, "state": q.state,
             "thread": "nvmf_tgt_poll_group_000", "hostnqn": q.hostnqn,
             "listen_address": q.listen_address.to_dict(),
             "peer_address": q.peer_address.to_dict() if q.peer_address else None}
            for q in facts]


@rpc("nvmf_get_stats")
def nvmf_get_stats(ctx: RpcContext, params: Any) -> Any:
    decode(params, {"tgt_name": (str, False)})
    stats = ctx.datapath.stats() if ctx.datapath else {
        k: 0 for k in ("admin_qpairs", "io_qpairs", "current_admin_qpairs",
                       "current_io_qpairs", "current_unassociated_qpairs", "pending_bdev_io",
                       "completed_nvme_io")}
    return {"tick_rate": 1_000_000_000, "poll_groups": [
        {"name": "nvmf_tgt_poll_group_000", **stats,
         "transports": [{"trtype": t} for t in ctx.core.state.transports]}]}


REFERRAL_SPEC = {"address": (dict, True), "subnqn": (str, False),
                 "secure_channel": (bool, False), "tgt_name": (str, False)}


@rpc("nvmf_discovery_add_referral")
def nvmf_discovery_add_referral(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, REFERRAL_SPEC)
    ref = Referral(address=_address(p["address"]), subnqn=p.get("subnqn") or DISCOVERY_NQN,
                   secure_channel=p.get("secure_channel", False))
    ctx.mutate(lambda: ctx.core.add_referral(ref))
    return True


@rpc("nvmf_discovery_remove_referral")
def nvmf_discovery_remove_referral(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, REFERRAL_SPEC)
    addr = _address(p["address"])
    ctx.mutate(lambda: ctx.core.remove_referral(addr, p.get("subnqn")))
    return True


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
    # SPDK ignores any params here
    return [{"name": k.name, "path": k.path, "removed": False, "probed": True}
            for k in ctx.core.state.keys.values()]


@rpc("nvmf_discovery_get_referrals")
def nvmf_discovery_get_referrals(ctx: RpcContext, params: Any) -> Any:
    decode(params, {"tgt_name": (str, False)})
    return [r.to_dict() for r in ctx.core.state.referrals]
