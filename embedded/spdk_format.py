"""Result shapes and configuration in SPDK's formats: get_* answers and save_config.

``subsystem_config`` renders framework_get_config for one subsystem the way nvmf_tgt
orders it (the recorded exchanges in shared/spdk-reference are the reference). Each
creating entry's params are the model object's create params
(:meth:`~nvmf_phoenix.model.Subsystem.to_create_params` and its siblings) plus what
nvmf_tgt reports besides. Pure: nothing here runs a method (loading a configuration is
``rpc_methods.load_config``).
"""
from __future__ import annotations

from typing import Any

from nvmf_phoenix.embedded.config_store import TargetCore
from nvmf_phoenix.embedded.options import Options

from nvmf_phoenix.model import TRANSPORT_DEFAULTS, Bdev, Listener, Subsystem

# Options nvmf_tgt reports for a TCP transport (io_unit_size and the shared-buffer
# settings are accepted at creation but not reported).
TRANSPORT_REPORTED = ("max_queue_depth", "max_io_qpairs_per_ctrlr", "in_capsule_data_size",
                      "max_io_size", "max_aq_depth", "iobuf_small_cache_size",
                      "iobuf_large_cache_size", "dif_insert_or_strip", "zcopy", "c2h_success",
                      "sock_priority", "abort_timeout_sec", "ack_timeout", "data_wr_pool_size",
                      "disable_command_passthru", "kas", "min_kato")
NULL_HINTS = ("preferred_write_granularity", "preferred_write_alignment", "optimal_write_size",
              "preferred_unmap_granularity", "preferred_unmap_alignment")
IO_TYPES = ("read", "write", "unmap", "flush", "reset", "nvme_admin", "nvme_io", "nvme_io_md",
            "write_zeroes", "zcopy", "get_zone_info", "zone_management", "zone_append",
            "compare", "compare_and_write", "abort", "seek_hole", "seek_data", "copy",
            "nvme_iov_md", "nvme_nssr", "write_uncorrectable")
SUPPORTED = {"malloc": {"read", "write", "unmap", "flush", "reset", "write_zeroes", "zcopy",
                        "compare", "abort", "copy"},
             "aio": {"read", "write", "flush", "reset", "write_zeroes"},
             "null": {"read", "write", "reset", "write_zeroes", "abort"}}
PRODUCT = {"malloc": "Malloc disk", "aio": "AIO disk", "null": "Null disk"}
NVMF_DEFAULT_CONFIG: dict[str, Any] = {
    "discovery_filter": "match_any",
    "admin_cmd_passthru": {k: False for k in (
        "identify_ctrlr", "identify_uuid_list", "get_log_page", "get_set_features",
        "sanitize", "security_send_recv", "fw_update", "nvme_mi", "vendor_specific")},
    "dhchap_digests": ["sha256", "sha384", "sha512"],
    "dhchap_dhgroups": ["null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144",
                        "ffdhe8192"],
    "dup_host_policy": "allow"}


def by_nqn(subs: Any) -> list[Subsystem]:
    """Subsystems in SPDK's order: it keeps them in a tree sorted by NQN (strcmp)."""
    return sorted(subs, key=lambda s: s.nqn.encode())


def newest_first(items: Any) -> list[Any]:
    """Listeners and hosts in SPDK's order: each new one goes to the head of its list
    (the model's dicts keep them oldest first)."""
    return list(reversed(list(items)))


def subsystem_info(sub: Subsystem) -> dict[str, Any]:
    """One entry of nvmf_get_subsystems."""
    out: dict[str, Any] = {"nqn": sub.nqn, "subtype": sub.subtype,
                           "listen_addresses": [a.to_dict()
                                                for a in newest_first(sub.listeners)],
                           "allow_any_host": sub.allow_any_host,
                           "hosts": [_host_info(h) for h in newest_first(sub.hosts.values())]}
    if sub.is_discovery:
        return out
    out.update(serial_number=sub.serial_number, model_number=sub.model_number,
               max_namespaces=sub.max_namespaces, passthrough=sub.passthrough,
               min_cntlid=sub.min_cntlid, max_cntlid=sub.max_cntlid, dmrsl=sub.dmrsl,
               wzsl=sub.wzsl,
               namespaces=[_ns_info(sub.namespaces[n], sub.ana_reporting)
                           for n in sorted(sub.namespaces)])
    return out


def _host_info(h: Any) -> dict[str, Any]:
    return {k: v for k, v in (("nqn", h.nqn), ("psk", h.psk), ("dhchap_key", h.dhchap_key),
                              ("dhchap_ctrlr_key", h.dhchap_ctrlr_key)) if v is not None}


def _ns_info(ns: Any, ana_reporting: bool) -> dict[str, Any]:
    """As SPDK: EUI-64 in upper-case hex, anagrpid only where ANA is reported."""
    out: dict[str, Any] = {"nsid": ns.nsid, "bdev_name": ns.bdev_name, "name": ns.bdev_name,
                           "nguid": ns.nguid}
    if ns.eui64:
        out["eui64"] = ns.eui64.upper()
    out["uuid"] = ns.uuid
    if ana_reporting:
        out["anagrpid"] = ns.anagrpid
    return out


def _ns_params(ns: Any, ana_reporting: bool) -> dict[str, Any]:
    p = ns.to_create_params()
    if p.get("eui64"):
        p["eui64"] = p["eui64"].upper()
    if not ana_reporting:
        p.pop("anagrpid", None)
    return p


def listener_info(ls: Listener, ana_reporting: bool) -> dict[str, Any]:
    """One entry of nvmf_subsystem_get_listeners: SPDK lists ana_states only for a
    subsystem created with ANA reporting (and omits the key otherwise)."""
    out: dict[str, Any] = {"address": ls.address.to_dict()}
    if ana_reporting:
        out["ana_states"] = [{"ana_group": g, "ana_state": s}
                             for g, s in sorted(ls.ana_states.items())]
    return out


def bdev_info(core: TargetCore, b: Bdev) -> dict[str, Any]:
    """One entry of bdev_get_bdevs."""
    claimed = any(ns.bdev_name == b.name for s in core.state.subsystems.values()
                  for ns in s.namespaces.values())
    out: dict[str, Any] = {"name": b.name, "aliases": [b.uuid],
                           "product_name": PRODUCT[b.kind],
                           "block_size": b.block_size, "num_blocks": b.num_blocks}
    for k in ("preferred_write_alignment", "preferred_write_granularity", "optimal_write_size",
              "preferred_unmap_alignment", "preferred_unmap_granularity"):
        out[k] = b.params.get(k, 0) if b.kind == "null" else 0
    out["uuid"] = b.uuid
    if b.kind == "malloc":
        out["numa_id"] = -1
    out["assigned_rate_limits"] = {"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0,
                                   "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0}
    out.update(claimed=claimed, zoned=False)
    if claimed:
        out["claim_type"] = "exclusive_write"
    out["supported_io_types"] = {t: t in SUPPORTED[b.kind] for t in IO_TYPES}
    out["driver_specific"] = {} if b.kind != "aio" else {"aio": {
        "filename": b.filename, "block_size_override": bool(b.params.get(
            "block_size_override", True)), "readonly": bool(b.params.get("readonly", False)),
        "fallocate": bool(b.params.get("fallocate", False)), "nowait": False}}
    return out


def _bdev_create(b: Bdev) -> dict[str, Any]:
    # SPDK reports interleaved metadata inside the block size (a null bdev's always is)
    md = b.params.get("md_size", 0) if b.kind == "null" or b.params.get("md_interleave") else 0
    if b.kind == "malloc":
        params = {"name": b.name, "num_blocks": b.num_blocks, "block_size": b.block_size + md,
                  "physical_block_size": b.params.get("physical_block_size", b.block_size),
                  "uuid": b.uuid, "optimal_io_boundary": b.params.get("optimal_io_boundary", 0),
                  "md_size": b.params.get("md_size", 0), "dif_type": b.params.get("dif_type", 0),
                  "dif_is_head_of_md": b.params.get("dif_is_head_of_md", False),
                  "dif_pi_format": b.params.get("dif_pi_format", 0),
                  "numa_id": b.params.get("numa_id", -1)}
        return {"method": "bdev_malloc_create", "params": params}
    if b.kind == "null":   # the params bdev_null_create stored, all of them, in its order
        return {"method": "bdev_null_create", "params": {
            "name": b.name, "num_blocks": b.num_blocks, "block_size": b.block_size + md,
            **{k: v for k, v in b.params.items() if k not in NULL_HINTS}, "uuid": b.uuid,
            **{k: b.params.get(k, 0) for k in NULL_HINTS}}}
    return {"method": "bdev_aio_create", "params": {
        "name": b.name, "block_size": b.block_size, "filename": b.filename,
        "readonly": bool(b.params.get("readonly", False)),
        "fallocate": bool(b.params.get("fallocate", False)), "uuid": b.uuid, "nowait": False}}


def _bdev_config(core: TargetCore, options: Options, with_batches: bool) -> list[Any]:
    """In nvmf_tgt's order: the bdev layer's options, then each module's options and
    bdevs in module order (raid, malloc, null, nvme, aio), then the examine barrier.
    The malloc, null and nvme modules write their bdevs as batches (nvme's is empty
    here); aio writes each bdev on its own."""
    bdevs = list(core.state.bdevs.values())

    def batch(kind: str) -> list[Any]:
        made = [_bdev_create(b) for b in bdevs if b.kind == kind]
        return [made] if with_batches else made
    return [options.entry("bdev_set_options"), options.entry("bdev_raid_set_options"),
            *batch("malloc"), *batch("null"), options.entry("bdev_nvme_set_options"),
            *batch("nvme"), options.entry("bdev_nvme_set_hotplug"),
            *[_bdev_create(b) for b in bdevs if b.kind == "aio"],
            *options.histogram_entries([b.name for b in bdevs]),
            {"method": "bdev_wait_for_examine"}]


def _nvmf_config(core: TargetCore, with_batches: bool) -> list[Any]:
    """As spdk_nvmf_tgt_write_config_json: target options, transports, referrals, then
    batches of subsystems, hosts, namespaces, namespace hosts and listeners, each in
    NQN order (hosts only of NVM subsystems). Batches flattened unless asked for."""
    st = core.state
    out: list[Any] = [
        {"method": "nvmf_set_config", "params": {**NVMF_DEFAULT_CONFIG,
                                                 **st.startup.nvmf_config}},
        {"method": "nvmf_set_max_subsystems",
         "params": {"max_subsystems": st.startup.max_subsystems or 1024}},
        {"method": "nvmf_set_crdt", "params": {"crdt1": 0, "crdt2": 0, "crdt3": 0,
                                               **st.startup.crdt}}]
    for t in st.transports.values():
        opts = {k: t.options.get(k, TRANSPORT_DEFAULTS[k]) for k in TRANSPORT_REPORTED}
        out.append({"method": "nvmf_create_transport", "params": {"trtype": t.trtype, **opts}})
    for r in st.referrals:
        out.append({"method": "nvmf_discovery_add_referral",
                    "params": r.to_create_params()})
    subs = by_nqn(st.subsystems.values())
    nvm = [s for s in subs if not s.is_discovery]
    batches: list[list[dict[str, Any]]] = [
        [{"method": "nvmf_create_subsystem", "params": {
            **s.to_create_params()}} for s in nvm],
        [{"method": "nvmf_subsystem_add_host", "params": h.to_create_params(s.nqn)}
         for s in nvm for h in newest_first(s.hosts.values())],
        [{"method": "nvmf_subsystem_add_ns", "params": {
            "nqn": s.nqn, "namespace": _ns_params(s.namespaces[nsid], s.ana_reporting)}}
         for s in nvm for nsid in sorted(s.namespaces)],
        [{"method": "nvmf_ns_add_host", "params": {"nqn": s.nqn, "nsid": nsid, "host": h}}
         for s in nvm for nsid in sorted(s.namespaces) for h in s.namespaces[nsid].hosts],
        # nvmf_tgt reports secure_channel even when off
        [{"method": "nvmf_subsystem_add_listener", "params": {
            **ls.to_create_params(s.nqn), "secure_channel": ls.secure_channel}}
         for s in subs for ls in newest_first(s.listeners.values())]]
    for batch in batches:
        if with_batches:
            out.append(batch)
        else:
            out.extend(batch)
    return out


def subsystem_config(core: TargetCore, name: str, options: Options | None = None,
                     with_batches: bool = False) -> list[Any] | None:
    """framework_get_config(name); None for a subsystem nvmf_tgt does not have."""
    options = options if options is not None else Options()
    if name == "bdev":
        return _bdev_config(core, options, with_batches)
    if name == "nvmf":
        return _nvmf_config(core, with_batches)
    if name == "keyring":
        return [{"method": "keyring_file_add_key", "params": k.to_create_params()}
                for k in core.state.keys.values()]
    return options.config(name)
