"""Per-subsystem nvmf_* JSON-RPC methods of the embedded target (subsystems, namespaces,
hosts, listeners, ANA), with SPDK's names, shapes and errors.

Importing this module registers every method of the embedded target: the target-wide
nvmf ones (rpc_nvmf_target), bdevs (rpc_bdev) and framework options (rpc_framework).
"""
from __future__ import annotations

from typing import Any

from nvmf_phoenix.embedded import rpc_bdev, rpc_framework, rpc_nvmf_target  # noqa: F401
from nvmf_phoenix.embedded.config_store import INTERNAL_ERROR, INVALID_PARAMS, invalid
from nvmf_phoenix.embedded.nqn import nqn_problem
from nvmf_phoenix.embedded.rpc_methods import RpcContext, rpc
from nvmf_phoenix.embedded.rpc_params import (
    U16,
    U32,
    U64,
    check_target,
    check_uuid,
    decode,
    listen_address,
    not_found,
)
from nvmf_phoenix.embedded.spdk_format import by_nqn, listener_info, subsystem_info
from nvmf_phoenix.rpc.errors import TargetError

from nvmf_phoenix.model import Host, Namespace, Subsystem

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
# What SPDK reports when a subsystem is created without these (nvmf_tgt v26.05); the
# embedded data path advertises these limits, so it takes no others (see create).
DEFAULT_LIMITS = {"dmrsl": Subsystem.dmrsl, "wzsl": Subsystem.wzsl,
                  "max_discard_size_kib": 1048576, "max_write_zeroes_size_kib": 16384,
                  "passthrough": Subsystem.passthrough, "enable_nssr": Subsystem.enable_nssr}
# The ANA states a listener may be put in by RPC (change and persistent_loss are not).
SETTABLE_ANA_STATES = ("optimized", "non_optimized", "inaccessible")


def _hex(value: str | None, nbytes: int, what: str) -> str | None:
    """An NGUID/EUI-64 given in hex (dashes allowed), kept in upper case as SPDK prints."""
    if value is None:
        return None
    text = value.replace("-", "")
    try:
        if len(text) != 2 * nbytes:
            raise ValueError
        bytes.fromhex(text)
    except ValueError:
        raise invalid(f"{what} {value!r} is not {nbytes} bytes of hex") from None
    return text.upper()


def _printable(text: str) -> bool:
    """SPDK's serial/model decoders take printable ASCII only (0x20-0x7e)."""
    return all(" " <= c <= "~" for c in text)


# -- subsystems ------------------------------------------------------------------------
@rpc("nvmf_create_subsystem")
def nvmf_create_subsystem(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, SUBSYSTEM_SPEC)
    sub = Subsystem.from_create_params(p)
    serial, model = sub.serial_number, sub.model_number
    if len(serial) > 20 or len(model) > 40 or not _printable(serial + model):
        # SPDK's decoders for these refuse them: a plain decode failure
        raise invalid("serial number or model number too long or not printable ASCII")
    check_target(p.get("tgt_name"), f"Unable to find target {p.get('tgt_name')}")
    kib = p.get("max_write_zeroes_size_kib")
    if kib is not None and kib != 0 and (kib < 8 or kib & (kib - 1)):
        raise TargetError(INVALID_PARAMS, f"Invalid max_write_zeroes_size_kib {kib}",
                          "0 or a power of 2 of at least 8")
    unserved = {k: v for k, v in p.items() if k in DEFAULT_LIMITS and v != DEFAULT_LIMITS[k]}
    if unserved:   # taken by SPDK; refused rather than ignored (hosts would see others)
        raise TargetError(INTERNAL_ERROR, f"Unable to create subsystem {sub.nqn}",
                          f"{unserved}: the embedded target serves only {DEFAULT_LIMITS}")
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
    """The discovery subsystem may be deleted too, as in SPDK (hosts then find none)."""
    p = decode(params, {"nqn": (str, True), "tgt_name": (str, False)})
    check_target(p.get("tgt_name"))
    ctx.mutate(lambda: ctx.core.delete_subsystem(p["nqn"]))
    return True


@rpc("nvmf_get_subsystems")
def nvmf_get_subsystems(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, False), "tgt_name": (str, False)})
    check_target(p.get("tgt_name"))
    with ctx.lock:
        subs = by_nqn(ctx.core.state.subsystems.values())
        if "nqn" in p:
            subs = [s for s in subs if s.nqn == p["nqn"]]
            if not subs:
                raise not_found(f"no subsystem {p['nqn']}")
        return [subsystem_info(s) for s in subs]


# -- namespaces ------------------------------------------------------------------------
@rpc("nvmf_subsystem_add_ns")
def nvmf_subsystem_add_ns(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "namespace": (dict, True),
                        "tgt_name": (str, False)})
    ns = Namespace.from_create_params(decode(p["namespace"], NS_SPEC))
    ns.nguid = _hex(ns.nguid, 16, "nguid")
    ns.eui64 = _hex(ns.eui64, 8, "eui64")
    if ns.uuid is not None:
        ns.uuid = check_uuid(ns.uuid)
    check_target(p.get("tgt_name"))
    sub = ctx.core.state.subsystems.get(p["nqn"])
    if ns.anagrpid and sub is not None and ns.anagrpid > sub.max_namespaces:
        raise invalid(f"ANA group {ns.anagrpid} is above max_namespaces "
                      f"{sub.max_namespaces} of {p['nqn']}")
    ns.anagrpid = ns.anagrpid or None   # 0: the default, the nsid's group
    return ctx.mutate(lambda: ctx.core.add_namespace(p["nqn"], ns))


@rpc("nvmf_subsystem_remove_ns")
def nvmf_subsystem_remove_ns(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "nsid": (U32, True), "tgt_name": (str, False)})
    check_target(p.get("tgt_name"))
    ctx.mutate(lambda: ctx.core.remove_namespace(p["nqn"], p["nsid"]))
    return True


@rpc("nvmf_subsystem_set_ns_ana_group")
def nvmf_subsystem_set_ns_ana_group(ctx: RpcContext, params: Any) -> Any:
    """Move a namespace to another ANA group (1..max_namespaces); hosts get a namespace
    attribute and an ANA change notice. SPDK allows it on any subsystem."""
    p = decode(params, {"nqn": (str, True), "nsid": (U32, True), "anagrpid": (U32, True),
                        "tgt_name": (str, False)})
    check_target(p.get("tgt_name"))
    ctx.mutate(lambda: ctx.core.set_ns_ana_group(p["nqn"], p["nsid"], p["anagrpid"]))
    return True


NS_HOST_SPEC = {"nqn": (str, True), "nsid": (U32, True), "host": (str, True),
                "tgt_name": (str, False)}


def _ns_visible(ctx: RpcContext, params: Any, visible: bool) -> Any:
    """nvmf_ns_add_host / nvmf_ns_remove_host (nvmf_rpc.c, _nvmf_rpc_ns_visible)."""
    p = decode(params, NS_HOST_SPEC)
    check_target(p.get("tgt_name"))
    ctx.mutate(lambda: ctx.core.set_ns_visible(p["nqn"], p["nsid"], p["host"], visible))
    return True


@rpc("nvmf_ns_add_host")
def nvmf_ns_add_host(ctx: RpcContext, params: Any) -> Any:
    return _ns_visible(ctx, params, True)


@rpc("nvmf_ns_remove_host")
def nvmf_ns_remove_host(ctx: RpcContext, params: Any) -> Any:
    return _ns_visible(ctx, params, False)


# -- hosts -----------------------------------------------------------------------------
HOST_SPEC = {"nqn": (str, True), "host": (str, True), "tgt_name": (str, False),
             "psk": (str, False), "dhchap_key": (str, False), "dhchap_ctrlr_key": (str, False)}


@rpc("nvmf_subsystem_add_host")
def nvmf_subsystem_add_host(ctx: RpcContext, params: Any) -> Any:
    """SPDK decodes these params relaxed (unknown keys are ignored); a host NQN that is
    not valid, or a PSK not in the keyring, is "Internal error", an unknown DH-HMAC-CHAP
    key "Invalid parameters"."""
    p = decode(params, HOST_SPEC, relaxed=True)
    check_target(p.get("tgt_name"))
    host = Host.from_create_params(p)
    why = nqn_problem(host.nqn)
    if why:
        raise TargetError(INTERNAL_ERROR, "Internal error", why)
    if host.psk is not None and host.psk not in ctx.core.state.keys:
        raise TargetError(INTERNAL_ERROR, "Internal error", f"key {host.psk} is not in the "
                          "keyring")
    _check_keys(ctx, host.dhchap_key, host.dhchap_ctrlr_key)
    ctx.mutate(lambda: ctx.core.add_host(p["nqn"], host))
    return True


def _check_keys(ctx: RpcContext, *keys: str | None) -> None:
    for key in keys:
        if key is not None and key not in ctx.core.state.keys:
            raise invalid(f"key {key} is not in the keyring")


@rpc("nvmf_subsystem_remove_host")
def nvmf_subsystem_remove_host(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "host": (str, True), "tgt_name": (str, False)})
    check_target(p.get("tgt_name"))
    ctx.mutate(lambda: ctx.core.remove_host(p["nqn"], p["host"]))
    return True


@rpc("nvmf_subsystem_set_keys")
def nvmf_subsystem_set_keys(ctx: RpcContext, params: Any) -> Any:
    """Replace a host's DH-HMAC-CHAP keys (none given: none kept), as SPDK does for
    re-keying; a host not on the subsystem's list is -22."""
    p = decode(params, {"nqn": (str, True), "host": (str, True), "tgt_name": (str, False),
                        "dhchap_key": (str, False), "dhchap_ctrlr_key": (str, False)})
    check_target(p.get("tgt_name"), "Invalid parameters")
    _check_keys(ctx, p.get("dhchap_key"), p.get("dhchap_ctrlr_key"))
    sub = ctx.core.state.subsystems.get(p["nqn"])
    if sub is None:
        raise invalid(f"subsystem {p['nqn']} does not exist")
    ctx.mutate(lambda: ctx.core.set_host_keys(p["nqn"], p["host"], p.get("dhchap_key"),
                                              p.get("dhchap_ctrlr_key")))
    return True


@rpc("nvmf_subsystem_allow_any_host")
def nvmf_subsystem_allow_any_host(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "allow_any_host": (bool, True),
                        "tgt_name": (str, False)})
    check_target(p.get("tgt_name"))
    ctx.mutate(lambda: ctx.core.allow_any_host(p["nqn"], p["allow_any_host"]))
    return True


# -- listeners and ANA -----------------------------------------------------------------
LISTENER_SPEC = {"nqn": (str, True), "listen_address": (dict, True), "tgt_name": (str, False),
                 "ana_state": (str, False), "secure_channel": (bool, False),
                 "sock_impl": (str, False)}


@rpc("nvmf_subsystem_add_listener")
def nvmf_subsystem_add_listener(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, LISTENER_SPEC)
    addr = listen_address(p["listen_address"])
    state = p.get("ana_state", "optimized")
    if state not in SETTABLE_ANA_STATES:
        raise invalid(f"ANA state {state} cannot be set")
    check_target(p.get("tgt_name"))
    impl = p.get("sock_impl")
    if impl is not None and impl not in ctx.options.sock_impls:
        raise invalid(f"no socket implementation {impl!r}")
    ctx.mutate(lambda: ctx.core.add_listener(p["nqn"], addr, state,
                                             p.get("secure_channel", False), impl))
    return True


@rpc("nvmf_subsystem_remove_listener")
def nvmf_subsystem_remove_listener(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "listen_address": (dict, True),
                        "tgt_name": (str, False)})
    addr = listen_address(p["listen_address"])
    check_target(p.get("tgt_name"))
    ctx.mutate(lambda: ctx.core.remove_listener(p["nqn"], addr))
    return True


@rpc("nvmf_subsystem_listener_set_ana_state")
def nvmf_subsystem_listener_set_ana_state(ctx: RpcContext, params: Any) -> Any:
    """anagrpid 0 (or none) sets every group, as in SPDK."""
    p = decode(params, {"nqn": (str, True), "listen_address": (dict, True),
                        "ana_state": (str, True), "anagrpid": (U32, False),
                        "tgt_name": (str, False)})
    addr = listen_address(p["listen_address"])
    if p["ana_state"] not in SETTABLE_ANA_STATES:
        raise invalid(f"ANA state {p['ana_state']} cannot be set")
    check_target(p.get("tgt_name"))
    ctx.mutate(lambda: ctx.core.set_ana_state(p["nqn"], addr, p["ana_state"],
                                              p.get("anagrpid") or None))
    return True


@rpc("nvmf_subsystem_get_listeners")
def nvmf_subsystem_get_listeners(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "tgt_name": (str, False)})
    check_target(p.get("tgt_name"), "Unable to find a target")
    with ctx.lock:
        sub = ctx.core.subsystem(p["nqn"])
        return [listener_info(ls, sub.ana_reporting)
                for ls in reversed(list(sub.listeners.values()))]


@rpc("nvmf_subsystem_get_controllers")
def nvmf_subsystem_get_controllers(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "tgt_name": (str, False)})
    check_target(p.get("tgt_name"), "Unable to find a target")
    ctx.core.subsystem(p["nqn"])
    facts = ctx.datapath.controllers(p["nqn"]) if ctx.datapath else []
    # num_io_qpairs as SPDK counts it (the admin queue pair included): see controller_facts
    return [{"cntlid": c.cntlid, "cntrltype": "io", "hostnqn": c.hostnqn, "hostid": c.hostid,
             "num_io_qpairs": c.num_io_qpairs} for c in facts]


@rpc("nvmf_subsystem_get_qpairs")
def nvmf_subsystem_get_qpairs(ctx: RpcContext, params: Any) -> Any:
    p = decode(params, {"nqn": (str, True), "tgt_name": (str, False)})
    check_target(p.get("tgt_name"), "Unable to find a target")
    ctx.core.subsystem(p["nqn"])
    facts = ctx.datapath.qpairs(p["nqn"]) if ctx.datapath else []
    return [{"cntlid": q.cntlid, "qid": q.qid, "state": q.state,
             "thread": "nvmf_tgt_poll_group_000", "hostnqn": q.hostnqn,
             "listen_address": q.listen_address.to_dict(),
             "peer_address": q.peer_address.to_dict() if q.peer_address else None}
            for q in facts]
