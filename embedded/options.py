"""Option settings of SPDK libraries and modules the embedded target does not have.

A save_config taken from a real nvmf_tgt carries them (sock, iobuf, accel, scheduler, the
bdev layer's and the nvme/raid bdev modules' options): so that ``spdk-rpc load_config``
of such a file works here, their setters are accepted in the phases SPDK accepts them,
the values are remembered, and framework_get_config reports them back in SPDK's shape.
They have NO effect on the embedded target: it has no socket implementations to tune,
no iobuf or bdev_io pools, no accel engine, no scheduler, no NVMe or RAID bdevs.

The defaults are what nvmf_tgt v26.05 reports on a fresh start (``-m 0x1``). The
crash-transparent target saves the values with its configuration (``dump``/``load``), so
the worker that takes over reports what its predecessor was told. Enabled latency
histograms (bdev_enable_histogram) are kept here too: remembered and reported, nothing
measured.
"""
from __future__ import annotations

import copy
from typing import Any

SOCK_DEFAULTS = {"recv_buf_size": 2097152, "send_buf_size": 2097152, "enable_recv_pipe": True,
                 "enable_quickack": False, "enable_placement_id": 0,
                 "enable_zerocopy_send_server": True, "enable_zerocopy_send_client": False,
                 "zerocopy_threshold": 0, "tls_version": 0, "enable_ktls": False}
SOCK_IMPLS = {"ssl": {**SOCK_DEFAULTS, "recv_buf_size": 4096, "send_buf_size": 4096},
              "posix": dict(SOCK_DEFAULTS)}
DHCHAP_DIGESTS = ["sha256", "sha384", "sha512"]
DHCHAP_DHGROUPS = ["null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192"]

# One settings object per setter: the params it was last given, over these defaults.
DEFAULTS: dict[str, dict[str, Any]] = {
    "framework_set_scheduler": {"name": "static"},
    "sock_set_default_impl": {"impl_name": "posix"},
    "iobuf_set_options": {"small_pool_count": 8192, "large_pool_count": 1024,
                          "small_bufsize": 8192, "large_bufsize": 135168,
                          "enable_numa": False},
    "accel_set_options": {"small_cache_size": 128, "large_cache_size": 16,
                          "task_count": 2048, "sequence_count": 2048, "buf_count": 2048},
    "bdev_set_options": {"bdev_io_pool_size": 65535, "bdev_io_cache_size": 256,
                         "bdev_auto_examine": True, "iobuf_small_cache_size": 128,
                         "iobuf_large_cache_size": 16},
    "bdev_raid_set_options": {"process_window_size_kb": 1024,
                              "process_max_bandwidth_mb_sec": 0},
    "bdev_nvme_set_options": {
        "action_on_timeout": "none", "timeout_us": 0, "timeout_admin_us": 0,
        "keep_alive_timeout_ms": 10000, "arbitration_burst": 0, "low_priority_weight": 0,
        "medium_priority_weight": 0, "high_priority_weight": 0,
        "nvme_adminq_poll_period_us": 10000, "nvme_ioq_poll_period_us": 0,
        "io_queue_requests": 0, "delay_cmd_submit": True, "transport_retry_count": 4,
        "bdev_retry_count": 3, "transport_ack_timeout": 0, "ctrlr_loss_timeout_sec": 0,
        "reconnect_delay_sec": 0, "fast_io_fail_timeout_sec": 0,
        "disable_auto_failback": False, "generate_uuids": False, "transport_tos": 0,
        "nvme_error_stat": False, "rdma_srq_size": 0, "io_path_stat": False,
        "allow_accel_sequence": False, "rdma_max_cq_size": 0,
        "rdma_cm_event_timeout_ms": 0, "dhchap_digests": DHCHAP_DIGESTS,
        "dhchap_dhgroups": DHCHAP_DHGROUPS, "rdma_umr_per_io": False,
        "tcp_connect_timeout_ms": 0, "enable_flush": False,
        "multipath_opts": {"policy": "active_passive"}},
    "bdev_nvme_set_hotplug": {"period_us": 100000, "enable": False},
}
# The dynamic scheduler's own options (framework_set_scheduler passes them on).
DYNAMIC_OPTS = {"load_limit": 20, "core_limit": 80, "core_busy": 95}
# framework_get_subsystems as nvmf_tgt v26.05 lists them, in its order.
SUBSYSTEMS: list[tuple[str, list[str]]] = [
    ("scheduler", []), ("vmd", []), ("sock", []), ("iobuf", []), ("keyring", []),
    ("accel", ["iobuf"]), ("bdev", ["accel", "keyring", "vmd", "sock", "iobuf"]),
    ("nvmf", ["bdev", "keyring", "sock", "accel", "iobuf"]), ("nbd", ["bdev"])]


class Options:
    """The remembered settings; see the module docstring (no effect here)."""

    def __init__(self) -> None:
        self.values = copy.deepcopy(DEFAULTS)
        self.sock_impls = copy.deepcopy(SOCK_IMPLS)
        self.dynamic = dict(DYNAMIC_OPTS)
        self.histograms: dict[str, str | None] = {}   # bdev name -> the opc it counts

    def dump(self) -> dict[str, Any]:
        """Everything remembered, as plain data (saved with the configuration)."""
        return copy.deepcopy({"values": self.values, "sock_impls": self.sock_impls,
                              "dynamic": self.dynamic, "histograms": self.histograms})

    def load(self, saved: dict[str, Any]) -> None:
        """Take back what :meth:`dump` gave, over the defaults (a setter the saving
        version did not know keeps its default)."""
        saved = copy.deepcopy(saved)
        for method, values in saved.get("values", {}).items():
            if method in self.values:
                self.values[method] = values
        self.sock_impls.update(saved.get("sock_impls", {}))
        self.dynamic.update(saved.get("dynamic", {}))
        self.histograms = dict(saved.get("histograms", {}))

    def histogram_entries(self, bdevs: list[str]) -> list[dict[str, Any]]:
        """bdev_enable_histogram entries of these bdevs, in their order, as SPDK's bdev
        layer writes them after each bdev's own entry."""
        out = []
        for name in bdevs:
            if name in self.histograms:
                opc = self.histograms[name]
                out.append({"method": "bdev_enable_histogram", "params": {
                    "name": name, "enable": True, **({"opc": opc} if opc else {})}})
        return out

    def get(self, method: str) -> dict[str, Any]:
        return dict(self.values[method])

    def put(self, method: str, params: dict[str, Any]) -> None:
        self.values[method].update(copy.deepcopy(params))

    def entry(self, method: str) -> dict[str, Any]:
        return {"method": method, "params": copy.deepcopy(self.values[method])}

    def config(self, subsystem: str) -> list[dict[str, Any]] | None:
        """framework_get_config's entries of an option-only subsystem (None: not one)."""
        if subsystem == "scheduler":
            return [self.entry("framework_set_scheduler")]
        if subsystem == "sock":
            return [self.entry("sock_set_default_impl")] + [
                {"method": "sock_impl_set_options",
                 "params": {"impl_name": name, **copy.deepcopy(opts)}}
                for name, opts in self.sock_impls.items()]
        if subsystem == "iobuf":
            return [self.entry("iobuf_set_options")]
        if subsystem == "accel":
            return [self.entry("accel_set_options")]
        if subsystem in ("vmd", "nbd"):
            return []
        return None
