"""Controllers: registers, features, keep-alive, asynchronous events, admin commands.

A controller is created by an admin-queue Connect (dynamic model: the target picks the
cntlid within the subsystem's range) and joined by I/O-queue Connects. Everything here is
plain state driven by method calls with the current time passed in; the I/O loop decides
when bytes move.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nvmf_phoenix.wire import nvme

from nvmf_phoenix.model import Subsystem

if TYPE_CHECKING:
    from nvmf_phoenix.embedded.config_store import TargetCore

FIRMWARE = "phx0.1"
MODEL_DISCOVERY = "nvmf-phoenix discovery"
MAX_AER = 4

# Admin result: (status code, dw0, data to return to the host or None)
Result = tuple[int, int, bytes | None]


@dataclass
class Controller:
    """One host's controller on one subsystem."""

    nqn: str
    cntlid: int
    hostnqn: str
    hostid: str
    discovery: bool
    kato_ms: int
    last_seen: float
    cc: int = 0
    csts: int = 0
    features: dict[int, int] = field(default_factory=dict)
    aer_cids: list[int] = field(default_factory=list)
    pending_events: list[int] = field(default_factory=list)      # dw0 values not yet sent
    changed_nsids: set[int] = field(default_factory=set)
    io_queues: set[int] = field(default_factory=set)
    num_io_queues: int = 0   # granted by Set Features Number of Queues (0-based + 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a successor process; I/O queues are re-derived from the queue
        pairs themselves, and last_seen restarts (a restart counts as activity)."""
        return {"nqn": self.nqn, "cntlid": self.cntlid, "hostnqn": self.hostnqn,
                "hostid": self.hostid, "discovery": self.discovery, "kato_ms": self.kato_ms,
                "cc": self.cc, "csts": self.csts,
                "features": [[k, v] for k, v in self.features.items()],
                "aer_cids": self.aer_cids, "pending_events": self.pending_events,
                "changed_nsids": sorted(self.changed_nsids),
                "num_io_queues": self.num_io_queues}

    @classmethod
    def from_dict(cls, d: dict[str, Any], now: float) -> Controller:
        return cls(nqn=d["nqn"], cntlid=int(d["cntlid"]), hostnqn=d["hostnqn"],
                   hostid=d["hostid"], discovery=bool(d["discovery"]),
                   kato_ms=int(d["kato_ms"]), last_seen=now, cc=int(d["cc"]),
                   csts=int(d["csts"]), features={int(k): int(v) for k, v in d["features"]},
                   aer_cids=[int(c) for c in d["aer_cids"]],
                   pending_events=[int(e) for e in d["pending_events"]],
                   changed_nsids={int(n) for n in d["changed_nsids"]},
                   num_io_queues=int(d["num_io_queues"]))

    @property
    def enabled(self) -> bool:
        return bool(self.csts & nvme.CSTS_RDY)

    def touch(self, now: float) -> None:
        self.last_seen = now

    def expired(self, now: float) -> bool:
        """Keep-alive expiry; the target enforces KATO itself (0 disables it)."""
        return self.kato_ms > 0 and (now - self.last_seen) * 1000 > self.kato_ms

    # -- properties ----------------------------------------------------------------------
    def property_get(self, offset: int, mqes: int) -> int | None:
        if offset == nvme.PROP_CAP:
            # MQES, CQR, TO (x500 ms), CSS NVM (bit 37), MPSMIN/MPSMAX 4 KiB
            return mqes | (1 << 16) | (30 << 24) | (1 << 37)
        if offset == nvme.PROP_VS:
            return nvme.NVME_VS_1_3
        if offset == nvme.PROP_CC:
            return self.cc
        if offset == nvme.PROP_CSTS:
            return self.csts
        return None

    def property_set(self, offset: int, value: int) -> bool:
        """CC writes enable, disable and shut down the controller at once."""
        if offset != nvme.PROP_CC:
            return False
        self.cc = value & 0xFFFFFFFF
        if self.cc & nvme.CC_SHN_MASK:
            self.csts = (self.csts & ~(0x3 << 2)) | nvme.CSTS_SHST_COMPLETE
        if self.cc & nvme.CC_EN:
            self.csts |= nvme.CSTS_RDY
        else:
            self.csts &= ~nvme.CSTS_RDY
        return True

    # -- asynchronous events -------------------------------------------------------------
    def post_event(self, dw0: int) -> None:
        """Queue an event unless one of the same kind is already waiting to be read."""
        if dw0 not in self.pending_events:
            self.pending_events.append(dw0)

    def take_aer_completions(self) -> list[tuple[int, int]]:
        """(cid, dw0) pairs ready to complete: an outstanding AER met a pending event."""
        out = []
        while self.aer_cids and self.pending_events:
            out.append((self.aer_cids.pop(0), self.pending_events.pop(0)))
        return out

    def aen_enabled(self, mask: int) -> bool:
        return bool(self.features.get(nvme.FEAT_ASYNC_EVENT, 0) & mask)


class AdminHandler:
    """Executes admin commands for a controller against the target's configuration."""

    def __init__(self, core: TargetCore, mqes: int, icd_size: int,
                 discovery_log: Callable[[Controller], bytes],
                 ana_log: Callable[[Controller, bool], bytes]) -> None:
        self.core = core
        self.mqes = mqes
        self.icd_size = icd_size
        self.discovery_log = discovery_log
        self.ana_log = ana_log

    def identify(self, ctrl: Controller, sub: Subsystem, cns: int, nsid: int) -> Result:
        if cns == nvme.CNS_CONTROLLER:
            return nvme.SC_SUCCESS, 0, self.identify_controller(ctrl, sub)
        if ctrl.discovery:
            return nvme.SC_INVALID_FIELD, 0, None
        # A namespace this host may not see is inactive to its controllers (SPDK).
        active = {n: ns for n, ns in sub.namespaces.items() if ns.visible_to(ctrl.hostnqn)}
        if cns == nvme.CNS_ACTIVE_NS_LIST:
            return nvme.SC_SUCCESS, 0, nvme.ns_list(active, nsid)
        if cns in (nvme.CNS_CS_CONTROLLER, nvme.CNS_CS_ACTIVE_NS_LIST):
            data = nvme.ns_list(active, nsid) if cns == nvme.CNS_CS_ACTIVE_NS_LIST \
                else bytes(nvme.IDENTIFY_SIZE)
            return nvme.SC_SUCCESS, 0, data
        ns = active.get(nsid)
        if cns in (nvme.CNS_NAMESPACE, nvme.CNS_NS_DESC_LIST, nvme.CNS_CS_NAMESPACE):
            if ns is None:
                # An inactive but valid nsid gets zeroes; an invalid one an error.
                if cns == nvme.CNS_NAMESPACE and 0 < nsid <= sub.max_namespaces:
                    return nvme.SC_SUCCESS, 0, bytes(nvme.IDENTIFY_SIZE)
                return nvme.SC_INVALID_NS | 0, 0, None
            if cns == nvme.CNS_CS_NAMESPACE:
                return nvme.SC_SUCCESS, 0, bytes(nvme.IDENTIFY_SIZE)
            if cns == nvme.CNS_NS_DESC_LIST:
                return nvme.SC_SUCCESS, 0, nvme.ns_descriptors(uuid=ns.uuid, nguid=ns.nguid,
                                                               eui64=ns.eui64)
            dev = self.core.block_devices.get(ns.bdev_name)
            bdev = self.core.state.bdevs[ns.bdev_name]
            nsze = dev.num_blocks if dev else bdev.num_blocks
            return nvme.SC_SUCCESS, 0, nvme.identify_namespace(
                nsze=nsze, lbads=bdev.block_size.bit_length() - 1, nguid=ns.nguid,
                eui64=ns.eui64, anagrpid=ns.anagrpid or 0)
        return nvme.SC_INVALID_FIELD, 0, None

    def identify_controller(self, ctrl: Controller, sub: Subsystem) -> bytes:
        return nvme.identify_controller(
            cntlid=ctrl.cntlid, serial=sub.serial_number if not ctrl.discovery else "",
            model=sub.model_number if not ctrl.discovery else MODEL_DISCOVERY,
            firmware=FIRMWARE, subnqn=sub.nqn, mqes=self.mqes,
            nn=sub.max_namespaces, kas=10,
            cntrltype=nvme.CNTRLTYPE_DISCOVERY if ctrl.discovery else nvme.CNTRLTYPE_IO,
            ioccsz_bytes=64 + self.icd_size, ana_reporting=sub.ana_reporting,
            anagrpmax=sub.max_namespaces)

    def get_log_page(self, ctrl: Controller, sub: Subsystem, lid: int, lsp: int, rae: bool,
                     offset: int, length: int) -> Result:
        if lid == nvme.LOG_DISCOVERY and ctrl.discovery:
            page = self.discovery_log(ctrl)
        elif ctrl.discovery:
            return nvme.SC_INVALID_LOG_PAGE, 0, None
        elif lid == nvme.LOG_ERROR:
            page = bytes(64)
        elif lid == nvme.LOG_SMART:
            page = nvme.smart_log()
        elif lid == nvme.LOG_FW_SLOT:
            page = nvme.firmware_slot_log(FIRMWARE)
        elif lid == nvme.LOG_CHANGED_NS:
            page = nvme.changed_ns_log(ctrl.changed_nsids)
            if not rae:
                ctrl.changed_nsids.clear()
        elif lid == nvme.LOG_CMD_EFFECTS:
            page = nvme.cmd_effects_log(ADMIN_OPCODES, IO_OPCODES)
        elif lid == nvme.LOG_ANA and sub.ana_reporting:
            page = self.ana_log(ctrl, bool(lsp & 1))
        else:
            return nvme.SC_INVALID_LOG_PAGE, 0, None
        chunk = page[offset:offset + length]
        return nvme.SC_SUCCESS, 0, chunk.ljust(length, b"\0")

    def set_features(self, ctrl: Controller, fid: int, cdw11: int, max_io: int) -> Result:
        if fid == nvme.FEAT_NUM_QUEUES:
            if (cdw11 & 0xFFFF) == 0xFFFF or (cdw11 >> 16) == 0xFFFF:
                return nvme.SC_INVALID_FIELD, 0, None
            granted = min(max(cdw11 & 0xFFFF, cdw11 >> 16) + 1, max_io)
            ctrl.num_io_queues = granted
            ctrl.features[fid] = (granted - 1) | ((granted - 1) << 16)
            return nvme.SC_SUCCESS, ctrl.features[fid], None
        if fid == nvme.FEAT_KATO:
            ctrl.kato_ms = cdw11
            return nvme.SC_SUCCESS, 0, None
        if fid in SETTABLE_FEATURES:
            ctrl.features[fid] = cdw11
            return nvme.SC_SUCCESS, 0, None
        return nvme.SC_INVALID_FIELD, 0, None

    def get_features(self, ctrl: Controller, fid: int) -> Result:
        if fid == nvme.FEAT_KATO:
            return nvme.SC_SUCCESS, ctrl.kato_ms, None
        if fid == nvme.FEAT_VOLATILE_WC:
            return nvme.SC_SUCCESS, ctrl.features.get(fid, 1), None
        if fid in SETTABLE_FEATURES or fid == nvme.FEAT_NUM_QUEUES:
            return nvme.SC_SUCCESS, ctrl.features.get(fid, 0), None
        return nvme.SC_INVALID_FIELD, 0, None


SETTABLE_FEATURES = frozenset({nvme.FEAT_ARBITRATION, nvme.FEAT_POWER_MGMT,
                               nvme.FEAT_TEMP_THRESHOLD, nvme.FEAT_ERROR_RECOVERY,
                               nvme.FEAT_VOLATILE_WC, nvme.FEAT_IRQ_COALESCE,
                               nvme.FEAT_IRQ_CONFIG, nvme.FEAT_WRITE_ATOMIC,
                               nvme.FEAT_ASYNC_EVENT, nvme.FEAT_AUTO_PST,
                               nvme.FEAT_TIMESTAMP, nvme.FEAT_HOST_ID})
ADMIN_OPCODES = (nvme.ADM_GET_LOG_PAGE, nvme.ADM_IDENTIFY, nvme.ADM_ABORT,
                 nvme.ADM_SET_FEATURES, nvme.ADM_GET_FEATURES, nvme.ADM_AER,
                 nvme.ADM_KEEP_ALIVE)
IO_OPCODES = (nvme.NVM_FLUSH, nvme.NVM_WRITE, nvme.NVM_READ, nvme.NVM_WRITE_ZEROES,
              nvme.NVM_DSM)
