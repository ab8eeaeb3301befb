"""The embedded target as a drop-in nvmf_tgt v26.05: methods, refusals, shapes, orders.

Every expected answer here is what a real nvmf_tgt v26.05 (``-m 0x1``) answered to the
same request (recorded while writing them); run with $SPDK_NVMF_TGT set (``-m spdk``) the
same tables are checked against that target, so they cannot drift from SPDK's behaviour.

JSON-RPC framing and loading a real save_config are in test_parity_config.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.rawrpc import Raw, outcome
from tests.target_fixture import free_port
from tests.target_process import TARGET_KINDS, target_process

N1, N2 = "nqn.2016-06.io.spdk:p1", "nqn.2016-06.io.spdk:p2"
DISC = "nqn.2014-08.org.nvmexpress.discovery"


# -- methods that were missing, and refusals beyond the conformance recordings --------
# (method, params, expected): expected is the result, or (code, message). In order on
# one fresh target with a TCP transport, a malloc bdev M0, an ANA subsystem P1 (4
# namespaces) with a listener and namespace 1 on M0, and a plain subsystem P2.
ADDR = {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "PORT"}
RUNTIME_CASES: list[tuple[str, Any, Any]] = [
    # null bdevs
    ("bdev_null_create", {"name": "N0", "num_blocks": 1024, "block_size": 512}, "N0"),
    ("bdev_null_create", {"name": "N0", "num_blocks": 16, "block_size": 512},
     (-17, "File exists")),
    ("bdev_null_create", {"name": "N3", "num_blocks": 1024, "block_size": 520},
     (-22, "Invalid argument")),
    ("bdev_null_create", {"name": "N5", "num_blocks": 0, "block_size": 512},
     (-22, "Invalid argument")),
    ("bdev_null_create", {"num_blocks": 16, "block_size": 512},
     (-32603, "spdk_json_decode_object failed")),
    ("bdev_null_create", {"name": "N6", "num_blocks": 16, "block_size": 512, "bogus": 1},
     (-32603, "spdk_json_decode_object failed")),
    ("bdev_null_create", {"name": "N7", "num_blocks": 16, "block_size": 512, "dif_type": 1},
     (-22, "Invalid argument")),
    ("bdev_null_create", {"name": "N9", "num_blocks": 16, "block_size": 512, "md_size": 7},
     (-22, "Invalid argument")),
    ("bdev_null_resize", {"name": "N0", "new_size": 2}, True),
    ("bdev_null_resize", {"name": "N0", "new_size": 1}, (-22, "Invalid argument")),
    ("bdev_null_resize", {"name": "nope", "new_size": 2}, (-19, "No such device")),
    ("bdev_null_delete", {"name": "nope"}, (-19, "No such device")),
    ("bdev_null_delete", {}, (-32603, "spdk_json_decode_object failed")),
    # statistics, waits, rescans
    ("bdev_get_iostat", {"name": "N0"}, (-32603, "spdk_json_decode_object failed")),
    ("bdev_get_iostat", {"names": ["N0", "nope"]}, (-19, "No such device")),
    ("bdev_get_iostat", {"per_channel": True}, (-22, "Invalid argument")),
    ("bdev_reset_iostat", None, True),
    ("bdev_get_bdevs", {"name": "nope", "timeout": 200}, (-110, "Connection timed out")),
    ("bdev_aio_rescan", {"name": "nope"}, (-19, "No such device")),
    ("bdev_aio_rescan", {"name": "M0"}, (-19, "No such device")),
    ("bdev_get_histogram", {"name": "N0"}, (-12, "Cannot allocate memory")),
    ("bdev_enable_histogram", {"name": "N0", "enable": True}, True),
    ("bdev_enable_histogram", {"name": "nope", "enable": True}, (-19, "No such device")),
    ("bdev_get_histogram", {"name": "nope"}, (-19, "No such device")),
    # targets
    ("nvmf_get_targets", None, ["nvmf_tgt"]),
    ("nvmf_get_targets", {"x": 1}, (-32602, "nvmf_get_targets has no parameters.")),
    ("nvmf_create_target", {"name": "nvmf_tgt"}, (-32602, "Target already exists.")),
    ("nvmf_create_target", {"name": "t4", "bogus": 1}, (-32602, "Invalid parameters")),
    ("nvmf_delete_target", {"name": "nope"},
     (-32602, "The specified target doesn't exist, cannot delete it.")),
    # framework, mDNS
    ("framework_get_governor", None, {}),
    ("framework_get_pci_devices", None, []),
    ("nvmf_publish_mdns_prr", None, (-95, "Operation not supported")),
    ("nvmf_stop_mdns_prr", None, True),
    ("nvmf_get_stats", {"x": 1}, (-32602, "Invalid parameters")),
    ("spdk_get_version", {}, (-32602, "spdk_get_version method requires no parameters")),
    ("framework_get_reactors", {"x": 1},
     (-32602, "`framework_get_reactors` requires no arguments")),
    ("framework_get_scheduler", {"x": 1}, (-32602, "'rpc_get_scheduler' requires no arguments")),
    ("framework_set_scheduler", {"name": "nope"}, (-32603, "Unknown error -22")),
    ("framework_enable_cpumask_locks", {"x": 1},
     (-32602, "framework_enable_cpumask_locksrequires no arguments")),
    ("framework_disable_cpumask_locks", None, True),
    ("framework_set_scheduler", {"name": "dynamic"}, True),
    ("framework_get_scheduler", None, {"scheduler_name": "dynamic",
                                       "scheduler_period": 1000000,
                                       "isolated_core_mask": "0", "scheduling_core": 0,
                                       "load_limit": 20, "core_limit": 80, "core_busy": 95}),
    ("framework_set_scheduler", {"name": "static"}, True),
    ("framework_get_scheduler", None, {"scheduler_name": "static", "scheduler_period": 0,
                                       "isolated_core_mask": "0", "scheduling_core": 0}),
    ("bdev_wait_for_examine", {}, (-32602, "bdev_wait_for_examine requires no parameters")),
    ("bdev_nvme_set_options", {"bogus": 1}, (-32603, "spdk_json_decode_object failed")),
    ("bdev_raid_set_options", {"bogus": 1}, (-32700, "spdk_json_decode_object failed")),
    ("bdev_nvme_set_hotplug", {"enable": False}, True),
    ("sock_impl_set_options", {"impl_name": "posix"},
     (-1, "Method may only be called before framework is initialized. Use --wait-for-rpc "
          "command line parameter and then issue this RPC before the framework_start_init "
          "RPC.")),
    # unknown target names, in each method's own words
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:a", "tgt_name": "nope"},
     (-32603, "Unable to find target nope")),
    ("nvmf_get_subsystems", {"tgt_name": "nope"}, (-32603, "Unable to find a target.")),
    ("nvmf_get_stats", {"tgt_name": "nope"}, (-32603, "Unable to find a target.")),
    ("nvmf_discovery_get_referrals", {"tgt_name": "nope"},
     (-32603, "Unable to find a target")),
    ("nvmf_subsystem_get_listeners", {"nqn": N1, "tgt_name": "nope"},
     (-32603, "Unable to find a target")),
    ("nvmf_subsystem_add_ns", {"nqn": N1, "namespace": {"bdev_name": "N0"},
                               "tgt_name": "nope"}, (-32603, "Unable to find a target.")),
    ("nvmf_subsystem_set_keys", {"nqn": N1, "host": "nqn.2016-06.io.spdk:h",
                                 "tgt_name": "nope"}, (-32603, "Invalid parameters")),
    # NQNs as nvmf_nqn_is_valid judges them
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-6.io.spdk:a"},
     (-32603, "Unable to create subsystem nqn.2016-6.io.spdk:a")),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-13.io.spdk:a"}, True),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk-:a"},
     (-32603, "Unable to create subsystem nqn.2016-06.io.spdk-:a")),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:"},
     (-32603, "Unable to create subsystem nqn.2016-06.io.spdk:")),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io..spdk:a"},
     (-32603, "Unable to create subsystem nqn.2016-06.io..spdk:a")),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk.:a"}, True),
    ("nvmf_create_subsystem",
     {"nqn": "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-55555555555"},
     (-32603, "Unable to create subsystem "
              "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-55555555555")),
    ("nvmf_create_subsystem",
     {"nqn": "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"}, True),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:" + "a" * 204},
     (-32603, "Unable to create subsystem nqn.2016-06.io.spdk:" + "a" * 204)),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:b", "serial_number": "SN\x01x"},
     (-32602, "Invalid parameters")),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:b", "model_number": "M\x7fx"},
     (-32602, "Invalid parameters")),
    ("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:d2",
                               "max_write_zeroes_size_kib": 7},
     (-32602, "Invalid max_write_zeroes_size_kib 7")),
    # listeners: address family, port, ANA states
    ("nvmf_subsystem_add_listener", {"nqn": N1, "listen_address": {**ADDR, "adrfam": "ipv5"}},
     (-32602, "Invalid parameters")),
    ("nvmf_subsystem_add_listener", {"nqn": N1, "listen_address": {
        "trtype": "tcp", "traddr": "127.0.0.1", "adrfam": "IPv4"}},
     (-32602, "Invalid parameters")),
    ("nvmf_subsystem_add_listener", {"nqn": N1, "listen_address": {**ADDR, "adrfam": "ipv6"}},
     (-32602, "Invalid parameters")),
    ("nvmf_subsystem_add_listener", {"nqn": N1, "listen_address": {**ADDR, "trsvcid": "0"}},
     (-32602, "Invalid parameters")),
    ("nvmf_subsystem_add_listener", {"nqn": N1, "listen_address": ADDR,
                                     "ana_state": "change"}, (-32602, "Invalid parameters")),
    ("nvmf_subsystem_add_listener", {"nqn": N1, "listen_address": ADDR,
                                     "ana_state": "persistent_loss"},
     (-32602, "Invalid parameters")),
    ("nvmf_subsystem_listener_set_ana_state", {"nqn": N1, "listen_address": ADDR,
                                               "ana_state": "change"},
     (-32602, "Invalid parameters")),
    ("nvmf_subsystem_listener_set_ana_state", {"nqn": N1, "listen_address": ADDR,
                                               "ana_state": "inaccessible", "anagrpid": 0},
     True),
    ("nvmf_subsystem_listener_set_ana_state", {"nqn": N1, "listen_address": ADDR,
                                               "ana_state": "inaccessible", "anagrpid": 5},
     (-32603, "error setting ANA state: -22")),
    # hosts
    ("nvmf_subsystem_add_host", {"nqn": N1, "host": "not-an-nqn"}, (-32603, "Internal error")),
    ("nvmf_subsystem_add_host", {"nqn": N1, "host": "nqn.2016-06.io.spdk:h1", "bogus": 1},
     True),
    ("nvmf_subsystem_add_host", {"nqn": N1, "host": "nqn.2016-06.io.spdk:h2"}, True),
    ("nvmf_subsystem_add_host", {"nqn": N1, "host": "nqn.2016-06.io.spdk:h3", "psk": "nokey"},
     (-32603, "Internal error")),
    ("nvmf_subsystem_add_host", {"nqn": N1, "host": "nqn.2016-06.io.spdk:h4",
                                 "dhchap_key": "nokey"}, (-32602, "Invalid parameters")),
    ("nvmf_subsystem_remove_host", {"nqn": N1, "host": "nqn.2016-06.io.spdk:h1", "bogus": 1},
     (-32602, "Invalid parameters")),
    ("nvmf_subsystem_set_keys", {"nqn": N1, "host": "nqn.2016-06.io.spdk:h2"}, True),
    ("nvmf_subsystem_set_keys", {"nqn": N1, "host": "nqn.2016-06.io.spdk:h9"},
     (-22, "Invalid argument")),
    ("nvmf_subsystem_set_keys", {"nqn": N1, "host": "nqn.2016-06.io.spdk:h2",
                                 "dhchap_key": "nokey"}, (-32602, "Invalid parameters")),
    ("nvmf_subsystem_set_keys", {"nqn": N1}, (-32602, "Invalid parameters")),
    # namespaces and ANA groups
    ("nvmf_subsystem_add_ns", {"nqn": N1, "namespace": {"bdev_name": "N0", "anagrpid": 7}},
     (-32602, "Invalid parameters")),
    ("nvmf_subsystem_add_ns", {"nqn": N1, "namespace": {"bdev_name": "N0", "anagrpid": 0}},
     2),
    ("nvmf_subsystem_set_ns_ana_group", {"nqn": N1, "nsid": 1, "anagrpid": 2}, True),
    ("nvmf_subsystem_set_ns_ana_group", {"nqn": N1, "nsid": 1, "anagrpid": 9},
     (-32602, "Invalid parameters")),
    ("nvmf_subsystem_set_ns_ana_group", {"nqn": N1, "nsid": 5, "anagrpid": 2},
     (-32602, "Invalid parameters")),
    ("nvmf_subsystem_set_ns_ana_group", {"nqn": N1, "nsid": 1, "anagrpid": 0},
     (-32602, "Invalid parameters")),
    ("nvmf_subsystem_set_ns_ana_group", {"nqn": N1, "nsid": 1},
     (-32602, "Invalid parameters")),
    ("nvmf_subsystem_set_ns_ana_group", {"nqn": N2, "nsid": 1, "anagrpid": 1},
     (-32602, "Invalid parameters")),
    ("bdev_aio_create", {"name": "A0", "filename": "REGULAR_FILE"}, (-22, "Invalid argument")),
    ("keyring_get_keys", {"x": 1}, []),
    # the discovery subsystem may be deleted
    ("nvmf_delete_subsystem", {"nqn": DISC}, True),
]


def _substitute(obj: Any, subst: dict[str, str]) -> Any:
    if isinstance(obj, dict):
        return {k: _substitute(v, subst) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, subst) for v in obj]
    return subst.get(obj, obj) if isinstance(obj, str) else obj


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_runtime_methods_answer_as_nvmf_tgt(tmp_path: Path, kind: str) -> None:
    regular = tmp_path / "regular.img"
    regular.write_bytes(bytes(1 << 20))
    subst = {"PORT": str(free_port()), "REGULAR_FILE": str(regular)}
    with target_process(tmp_path, kind=kind) as tp:
        s = Raw(tp.sock)
        for method, params in (
                ("nvmf_create_transport", {"trtype": "TCP"}),
                ("bdev_malloc_create", {"name": "M0", "num_blocks": 64, "block_size": 512}),
                ("nvmf_create_subsystem", {"nqn": N1, "ana_reporting": True,
                                           "max_namespaces": 4}),
                ("nvmf_create_subsystem", {"nqn": N2}),
                ("nvmf_subsystem_add_listener", {"nqn": N1, "listen_address": ADDR}),
                ("nvmf_subsystem_add_ns", {"nqn": N1, "namespace": {"bdev_name": "M0"}})):
            assert "result" in s.call(method, _substitute(params, subst)), method
        got = [(m, p, outcome(s.call(m, _substitute(p, subst), i)))
               for i, (m, p, _) in enumerate(RUNTIME_CASES, 10)]
    assert [g for g, (_, _, want) in zip(got, RUNTIME_CASES, strict=True)
            if g[2] != want] == []


def _shape(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shape(obj[0])] if obj else []
    return type(obj).__name__


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_result_shapes_and_orders_are_nvmf_tgts(tmp_path: Path, kind: str) -> None:
    """Subsystems sorted by NQN, listeners and hosts newest first, EUI-64 upper case,
    no anagrpid where ANA is not reported, keyring_get_keys with module and refcnt, and
    the shapes of the statistics methods."""
    key = tmp_path / "key0"
    key.write_text("NVMeTLSkey-1:01:MDAxMTIyMzM0NDU1NjY3Nzg4OTlhYWJiY2NkZGVlZmZwJEiQ:\n")
    key.chmod(0o600)
    p1, p2 = str(free_port()), str(free_port())
    with target_process(tmp_path, kind=kind) as tp:
        s = Raw(tp.sock)
        for method, params in (
                ("nvmf_create_transport", {"trtype": "TCP"}),
                ("keyring_file_add_key", {"name": "key0", "path": str(key)}),
                ("bdev_null_create", {"name": "N0", "num_blocks": 64, "block_size": 512,
                                      "uuid": "0a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9"}),
                ("nvmf_create_subsystem", {"nqn": N2}),
                ("nvmf_create_subsystem", {"nqn": N1}),
                ("nvmf_subsystem_add_ns", {"nqn": N2, "namespace": {
                    "bdev_name": "N0", "eui64": "aabbccddeeff0011"}}),
                ("nvmf_subsystem_add_host", {"nqn": N2, "host": "nqn.2016-06.io.spdk:h1"}),
                ("nvmf_subsystem_add_host", {"nqn": N2, "host": "nqn.2016-06.io.spdk:h2",
                                             "dhchap_key": "key0"}),
                ("nvmf_subsystem_add_listener", {"nqn": N2, "listen_address": {
                    **ADDR, "trsvcid": p1}}),
                ("nvmf_subsystem_add_listener", {"nqn": N2, "listen_address": {
                    **ADDR, "trsvcid": p2}})):
            assert "result" in s.call(method, params), method
        subs = s.call("nvmf_get_subsystems")["result"]
        listeners = s.call("nvmf_subsystem_get_listeners", {"nqn": N2})["result"]
        keys = s.call("keyring_get_keys")["result"]
        iostat = s.call("bdev_get_iostat")["result"]
        reactors = s.call("framework_get_reactors")["result"]
        scheduler = s.call("framework_get_scheduler")["result"]
        bdev = s.call("bdev_get_bdevs", {"name": "N0"})["result"]
        s.call("bdev_enable_histogram", {"name": "N0", "enable": True})
        histogram = s.call("bdev_get_histogram", {"name": "N0"})["result"]
    assert [x["nqn"] for x in subs] == [DISC, N1, N2]
    (sub2,) = [x for x in subs if x["nqn"] == N2]
    assert [h["nqn"] for h in sub2["hosts"]] == ["nqn.2016-06.io.spdk:h2",
                                                 "nqn.2016-06.io.spdk:h1"]
    assert [a["trsvcid"] for a in sub2["listen_addresses"]] == [p2, p1]
    assert [x["address"]["trsvcid"] for x in listeners] == [p2, p1]
    (ns,) = sub2["namespaces"]
    assert ns["eui64"] == "AABBCCDDEEFF0011" and "anagrpid" not in ns
    assert keys == [{"name": "key0", "module": "keyring_file", "removed": False,
                     "probed": False, "refcnt": 2, "path": str(key)}]
    assert _shape(iostat) == {"tick_rate": "int", "ticks": "int", "bdevs": [{
        "name": "str", **{k: "int" for k in (
            "bytes_read", "num_read_ops", "bytes_written", "num_write_ops", "bytes_unmapped",
            "num_unmap_ops", "bytes_copied", "num_copy_ops", "read_latency_ticks",
            "max_read_latency_ticks", "min_read_latency_ticks", "write_latency_ticks",
            "max_write_latency_ticks", "min_write_latency_ticks", "unmap_latency_ticks",
            "max_unmap_latency_ticks", "min_unmap_latency_ticks", "copy_latency_ticks",
            "max_copy_latency_ticks", "min_copy_latency_ticks")}, "io_error": {}}]}
    assert _shape(reactors) == {"tick_rate": "int", "pid": "int", "reactors": [{
        "lcore": "int", "numa_id": "int", "tid": "int", "busy": "int", "idle": "int",
        "in_interrupt": "bool", "irq": "int", "sys": "int", "usr": "int",
        "lw_threads": [{"name": "str", "id": "int", "cpumask": "str", "elapsed": "int"}]}]}
    assert scheduler == {"scheduler_name": "static", "scheduler_period": 0,
                         "isolated_core_mask": "0", "scheduling_core": 0}
    assert bdev[0]["product_name"] == "Null disk" and "numa_id" not in bdev[0]
    assert {k: v for k, v in bdev[0]["supported_io_types"].items() if v} == {
        "read": True, "write": True, "reset": True, "write_zeroes": True, "abort": True}
    assert sorted(histogram) == ["granularity", "histogram", "max_range", "min_range",
                                 "tsc_rate"]


# Where the embedded target answers differently on purpose: SPDK accepts these, the
# embedded target cannot honour them and refuses rather than ignores them (the option
# would otherwise be silently lost: hosts would see a different device than asked for).
REFUSED_NOT_IGNORED: list[tuple[str, Any, Any]] = [
    ("bdev_malloc_create", {"name": "Md", "num_blocks": 64, "block_size": 512,
                            "md_size": 8}, (-95, "Operation not supported")),
    ("bdev_null_create", {"name": "Nd", "num_blocks": 64, "block_size": 512, "md_size": 8,
                          "dif_type": 1}, (-95, "Operation not supported")),
    ("bdev_null_create", {"name": "Nd", "num_blocks": 64, "block_size": 512,
                          "md_size": 8, "dif_type": 4}, (-22, "Invalid argument")),
    ("nvmf_create_subsystem", {"nqn": N1, "dmrsl": 5},
     (-32603, f"Unable to create subsystem {N1}")),
    ("nvmf_create_subsystem", {"nqn": N1, "enable_nssr": True},
     (-32603, f"Unable to create subsystem {N1}")),
    ("nvmf_create_subsystem", {"nqn": N1, "dmrsl": 2097152, "wzsl": 12}, True),
    ("nvmf_create_target", {"name": "t2"}, (-32603, "Unable to create the requested target.")),
    ("nvmf_delete_target", {"name": "nvmf_tgt"}, (-32603, "Internal error")),
    ("nvmf_get_targets", None, ["nvmf_tgt"]),
]


def test_what_the_embedded_target_cannot_honour_is_refused(tmp_path: Path) -> None:
    with target_process(tmp_path) as tp:
        s = Raw(tp.sock)
        got = [(m, p, outcome(s.call(m, p, i)))
               for i, (m, p, _) in enumerate(REFUSED_NOT_IGNORED, 1)]
        bdevs = s.call("bdev_get_bdevs")["result"]
    assert [g for g, (_, _, want) in zip(got, REFUSED_NOT_IGNORED, strict=True)
            if g[2] != want] == []
    assert bdevs == []


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_a_null_bdev_reads_zeroes_and_drops_writes(tmp_path: Path, kind: str) -> None:
    """A host sees a null bdev's namespace at its size; what it writes is dropped; after
    bdev_null_resize the namespace is the new size. What it reads is undefined on SPDK
    (the null bdev leaves the read buffer as it was: whatever the pool held); the
    embedded target answers zeroes."""
    from nvmf_phoenix.initiator.host import Host

    port = free_port()
    with target_process(tmp_path, kind=kind) as tp:
        s = Raw(tp.sock)
        for method, params in (
                ("nvmf_create_transport", {"trtype": "TCP"}),
                ("bdev_null_create", {"name": "N0", "num_blocks": 2048, "block_size": 512}),
                ("nvmf_create_subsystem", {"nqn": N1, "allow_any_host": True}),
                ("nvmf_subsystem_add_ns", {"nqn": N1, "namespace": {"bdev_name": "N0"}}),
                ("nvmf_subsystem_add_listener", {"nqn": N1, "listen_address": {
                    **ADDR, "trsvcid": str(port)}})):
            assert "result" in s.call(method, params), method
        with Host("127.0.0.1", port, N1) as h:
            h.create_io_queues(1)
            assert h.identify_namespace(1)["nsze"] == 2048
            h.write(1, 8, b"\xa5" * 1024, 512)
            data = h.read(1, 8, 2, 512)
            assert data != b"\xa5" * 1024
            assert kind != "embedded" or data == bytes(1024)
            assert s.call("bdev_null_resize", {"name": "N0", "new_size": 2})["result"]
            assert h.identify_namespace(1)["nsze"] == 4096


@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_set_keys_replaces_a_hosts_keys(tmp_path: Path, kind: str) -> None:
    """nvmf_subsystem_set_keys replaces both DH-HMAC-CHAP keys: one left out is none."""
    keys = []
    for name in ("key0", "key1", "ckey0"):
        path = tmp_path / name
        path.write_text("DHHC-1:00:MDAxMTIyMzM0NDU1NjY3Nzg4OTlhYWJiY2NkZGVlZmZwJEiQ:\n")
        path.chmod(0o600)
        keys.append(("keyring_file_add_key", {"name": name, "path": str(path)}))
    host = "nqn.2016-06.io.spdk:h1"
    with target_process(tmp_path, kind=kind) as tp:
        s = Raw(tp.sock)
        for method, params in (*keys, ("nvmf_create_subsystem", {"nqn": N1}),
                               ("nvmf_subsystem_add_host", {
                                   "nqn": N1, "host": host, "dhchap_key": "key0",
                                   "dhchap_ctrlr_key": "ckey0"}),
                               ("nvmf_subsystem_set_keys", {"nqn": N1, "host": host,
                                                            "dhchap_key": "key1"})):
            assert "result" in s.call(method, params), (method, s.buf)
        (sub,) = s.call("nvmf_get_subsystems", {"nqn": N1})["result"]
    assert sub["hosts"] == [{"nqn": host, "dhchap_key": "key1"}]
