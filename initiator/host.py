"""A controller as a host driver sees it: admin queue, I/O queues, the usual commands.

Mirrors the Linux host's sequence: Connect the admin queue (dynamic cntlid), read CAP,
enable the controller and wait for CSTS.RDY, Identify, ask for I/O queues with Set
Features Number of Queues, Connect each I/O queue with the cntlid the admin Connect
returned.
"""
from __future__ import annotations

import time
from typing import Any

from nvmf_phoenix.initiator.connection import (
    DEFAULT_HOSTNQN,
    NvmeError,
    NvmeStatusError,
    QueueConn,
    connect_data,
    connect_sqe,
    make_sqe,
    property_sqe,
)
from nvmf_phoenix.wire import nvme

from nvmf_phoenix.model import DISCOVERY_NQN

DEFAULT_HOSTID = "6e767068-6f65-6e69-7800-000000000001"


class Host:
    """One controller on one subsystem, from the host side."""

    def __init__(self, traddr: str, trsvcid: int | str, subnqn: str,
                 hostnqn: str = DEFAULT_HOSTNQN, hostid: str = DEFAULT_HOSTID,
                 kato_ms: int = 30000, hdgst: bool = False, ddgst: bool = False,
                 timeout: float = 10.0) -> None:
        self.traddr, self.trsvcid, self.subnqn = traddr, trsvcid, subnqn
        self.hostnqn, self.hostid, self.kato_ms = hostnqn, hostid, kato_ms
        self.hdgst, self.ddgst, self.timeout = hdgst, ddgst, timeout
        self.admin = QueueConn(traddr, trsvcid, hdgst, ddgst, timeout)
        self.io: list[QueueConn] = []
        try:
            self.cntlid = self._fabrics_connect(self.admin, 0, 31, 0xFFFF)
            self._enable()
            self.identity = nvme.parse_identify_controller(self.identify(nvme.CNS_CONTROLLER))
        except BaseException:
            self.admin.close()
            raise

    def _fabrics_connect(self, q: QueueConn, qid: int, sqsize: int, cntlid: int) -> int:
        comp = q.execute(f"Connect qid {qid}", connect_sqe(qid, sqsize, self.kato_ms),
                         connect_data(self.hostid, cntlid, self.subnqn, self.hostnqn))
        return comp.dw0 & 0xFFFF

    def _enable(self) -> None:
        self.cap = self.property_get(nvme.PROP_CAP, size8=True)
        self.property_set(nvme.PROP_CC, nvme.CC_EN | (6 << 16) | (4 << 20))
        deadline = time.monotonic() + self.timeout
        while not self.property_get(nvme.PROP_CSTS) & nvme.CSTS_RDY:
            if time.monotonic() > deadline:
                raise NvmeError("controller did not become ready")

    @property
    def is_discovery(self) -> bool:
        return self.subnqn == DISCOVERY_NQN

    def property_get(self, offset: int, size8: bool = False) -> int:
        comp = self.admin.execute("Property Get",
                                  property_sqe(nvme.FCTYPE_PROPERTY_GET, offset, 0, size8))
        return comp.dw0 | (comp.dw1 << 32)

    def property_set(self, offset: int, value: int) -> None:
        self.admin.execute("Property Set",
                           property_sqe(nvme.FCTYPE_PROPERTY_SET, offset, value))

    # -- admin -------------------------------------------------------------------------
    def identify(self, cns: int, nsid: int = 0) -> bytes:
        comp = self.admin.execute(f"Identify CNS {cns}",
                                  make_sqe(nvme.ADM_IDENTIFY, nsid, cdw10=cns), data_in=4096)
        return bytes(comp.data or b"")

    def identify_namespace(self, nsid: int) -> dict[str, Any]:
        info = nvme.parse_identify_namespace(self.identify(nvme.CNS_NAMESPACE, nsid))
        descs = nvme.parse_ns_descriptors(self.identify(nvme.CNS_NS_DESC_LIST, nsid))
        if nvme.NIDT_UUID in descs:
            import uuid as uuidlib

            info["uuid"] = str(uuidlib.UUID(bytes=descs[nvme.NIDT_UUID]))
        return info

    def active_namespaces(self) -> list[int]:
        data = self.identify(nvme.CNS_ACTIVE_NS_LIST)
        return nvme.parse_ns_list(data)

    def get_log_page(self, lid: int, length: int, lsp: int = 0, offset: int = 0,
                     rae: bool = False) -> bytes:
        numd = length // 4 - 1
        cdw10 = lid | (lsp << 8) | ((1 << 15) if rae else 0) | ((numd & 0xFFFF) << 16)
        comp = self.admin.execute(f"Get Log Page {lid:#x}", make_sqe(
            nvme.ADM_GET_LOG_PAGE, 0xFFFFFFFF, cdw10, numd >> 16, offset & 0xFFFFFFFF,
            offset >> 32), data_in=length)
        return bytes(comp.data or b"")

    def discover(self) -> tuple[int, list[dict[str, object]]]:
        """Read the whole discovery log (header first, then all records)."""
        head = self.get_log_page(nvme.LOG_DISCOVERY, 1024)
        _gen, numrec, _ = nvme.DISC_HDR.unpack_from(head)
        return nvme.parse_discovery_log(self.get_log_page(nvme.LOG_DISCOVERY,
                                                          1024 * (numrec + 1)))

    def set_features(self, fid: int, cdw11: int) -> int:
        return self.admin.execute(f"Set Features {fid:#x}",
                                  make_sqe(nvme.ADM_SET_FEATURES, 0, fid, cdw11)).dw0

    def get_features(self, fid: int) -> int:
        return self.admin.execute(f"Get Features {fid:#x}",
                                  make_sqe(nvme.ADM_GET_FEATURES, 0, fid)).dw0

    def keep_alive(self) -> None:
        self.admin.execute("Keep Alive", make_sqe(nvme.ADM_KEEP_ALIVE))

    def submit_aer(self) -> int:
        return self.admin.submit(make_sqe(nvme.ADM_AER))

    def wait_aer(self, cid: int, timeout: float) -> int:
        comp = self.admin.wait(cid, timeout)
        if comp.status:
            raise NvmeStatusError("AER", comp.status)
        return comp.dw0

    # -- I/O queues --------------------------------------------------------------------
    def create_io_queues(self, count: int, sqsize: int = 127) -> None:
        granted = self.set_features(nvme.FEAT_NUM_QUEUES, (count - 1) | ((count - 1) << 16))
        n = min(count, (granted & 0xFFFF) + 1)
        sqsize = min(sqsize, self.cap & 0xFFFF)   # CAP.MQES bounds every queue
        for qid in range(1, n + 1):
            q = QueueConn(self.traddr, self.trsvcid, self.hdgst, self.ddgst, self.timeout)
            self._fabrics_connect(q, qid, sqsize, self.cntlid)
            q.icd_size = max(0, int(self.identity["ioccsz"]) * 16 - 64)
            self.io.append(q)

    def _io(self, qid: int) -> QueueConn:
        if not self.io:
            raise NvmeError("no I/O queue: call create_io_queues first")
        return self.io[(qid - 1) % len(self.io)]

    def read(self, nsid: int, slba: int, nlb: int, block_size: int, qid: int = 1) -> bytes:
        sqe = make_sqe(nvme.NVM_READ, nsid, slba & 0xFFFFFFFF, slba >> 32, nlb - 1)
        comp = self._io(qid).execute("Read", sqe, data_in=nlb * block_size)
        return bytes(comp.data or b"")

    def write(self, nsid: int, slba: int, data: bytes, block_size: int, qid: int = 1) -> None:
        nlb = len(data) // block_size
        sqe = make_sqe(nvme.NVM_WRITE, nsid, slba & 0xFFFFFFFF, slba >> 32, nlb - 1)
        self._io(qid).execute("Write", sqe, data_out=data)

    def flush(self, nsid: int, qid: int = 1) -> None:
        self._io(qid).execute("Flush", make_sqe(nvme.NVM_FLUSH, nsid))

    def write_zeroes(self, nsid: int, slba: int, nlb: int, qid: int = 1) -> None:
        self._io(qid).execute("Write Zeroes", make_sqe(nvme.NVM_WRITE_ZEROES, nsid,
                                                       slba & 0xFFFFFFFF, slba >> 32, nlb - 1))

    def deallocate(self, nsid: int, ranges: list[tuple[int, int]], qid: int = 1) -> None:
        data = b"".join(nvme.DSM_RANGE.build(nlb=n, slba=slba) for slba, n in ranges)
        self._io(qid).execute("Dataset Management", make_sqe(
            nvme.NVM_DSM, nsid, len(ranges) - 1, nvme.DSM_ATTR_DEALLOCATE), data_out=data)

    def close(self) -> None:
        for q in self.io:
            q.close()
        self.io.clear()
        self.admin.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
