"""Admin command dispatch for a queue pair (qid 0): decode cdwords, call the handler."""
from __future__ import annotations

from typing import TYPE_CHECKING

from nvmf_phoenix.embedded.controller import MAX_AER
from nvmf_phoenix.wire import nvme

if TYPE_CHECKING:
    from nvmf_phoenix.embedded.qpair import QueuePair


def execute_admin(qp: QueuePair, sqe: bytes, opcode: int, cid: int, nsid: int,
                  now: float) -> None:
    """Run one admin command and queue its completion (AERs complete later)."""
    ctrl, engine = qp.ctrl, qp.engine
    assert ctrl is not None
    sub = engine.core.state.subsystems.get(ctrl.nqn)
    if sub is None:
        qp.complete(cid, nvme.SC_INTERNAL)
        return
    cdw10, cdw11, cdw12, cdw13, _cdw14, _cdw15 = nvme.SQE_CDWS.unpack_from(sqe)
    handler = engine.admin
    if opcode == nvme.ADM_KEEP_ALIVE:
        ctrl.touch(now)
        qp.complete(cid, nvme.SC_SUCCESS)
        return
    if opcode == nvme.ADM_AER:
        if cid in ctrl.aer_cids:
            return   # already outstanding (a successor replaying the same capsule)
        if len(ctrl.aer_cids) >= MAX_AER:
            qp.complete(cid, nvme.SC_AER_LIMIT_EXCEEDED)
            return
        ctrl.aer_cids.append(cid)
        engine.flush_aers(ctrl)
        return
    if opcode == nvme.ADM_IDENTIFY:
        status, dw0, data = handler.identify(ctrl, sub, cdw10 & 0xFF, nsid)
    elif opcode == nvme.ADM_GET_LOG_PAGE:
        numd = ((cdw11 & 0xFFFF) << 16 | cdw10 >> 16) + 1
        offset = cdw12 | (cdw13 << 32)
        if not _log_page_fits(sqe, offset, numd * 4, engine.opts.max_io_size):
            qp.complete(cid, nvme.SC_INVALID_FIELD)
            return
        status, dw0, data = handler.get_log_page(ctrl, sub, cdw10 & 0xFF, (cdw10 >> 8) & 0xF,
                                                 bool(cdw10 & (1 << 15)), offset, numd * 4)
    elif opcode == nvme.ADM_SET_FEATURES:
        status, dw0, data = handler.set_features(ctrl, cdw10 & 0xFF, cdw11,
                                                 engine.opts.max_io_qpairs_per_ctrlr)
    elif opcode == nvme.ADM_GET_FEATURES:
        status, dw0, data = handler.get_features(ctrl, cdw10 & 0xFF)
    elif opcode == nvme.ADM_ABORT:
        status, dw0, data = nvme.SC_SUCCESS, 1, None   # bit 0 set: command not aborted
    else:
        status, dw0, data = nvme.SC_INVALID_OPCODE, 0, None
    if data is not None and status == nvme.SC_SUCCESS:
        qp.send_data(cid, data, status_follows=False)
        if not engine.opts.c2h_success:
            qp.complete(cid, status, dw0)
        return
    qp.complete(cid, status, dw0)


def _log_page_fits(sqe: bytes, offset: int, length: int, max_io_size: int) -> bool:
    """SPDK's checks before building a log page: a dword-aligned offset, and no more
    than the host's buffer (the SGL length), which itself stays within MDTS. Without
    them NUMD (up to 2^32 dwords) would make us build 16 GiB of zeroes."""
    sgl_len = nvme.SQE.field(sqe, "sgl_length")
    return not offset & 3 and length <= sgl_len <= max(max_io_size, nvme.IDENTIFY_SIZE)
