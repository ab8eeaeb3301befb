"""NVM I/O commands: Read, Write, Flush, Write Zeroes, Dataset Management.

This is the hot path: one struct unpack per command, one bounds check, a memoryview of
the block device, and one PDU out (a C2HData that doubles as the completion).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from nvmf_phoenix.wire import nvme

if TYPE_CHECKING:
    from nvmf_phoenix.embedded.qpair import QueuePair

# The fields of the SQE a read or write needs, one precompiled unpack: SGL length,
# cdw10/cdw11 (SLBA low/high; DSM: number of ranges, attributes), cdw12 (NLB, 0-based)
RW = nvme.SQE.reader("sgl_length", "cdw10", "cdw11", "cdw12")
_ANA_ERR = {"inaccessible": nvme.SC_ANA_INACCESSIBLE,
            "persistent_loss": nvme.SC_ANA_PERSISTENT_LOSS, "change": nvme.SC_ANA_TRANSITION}


def execute_io(qp: QueuePair, sqe: bytes, opcode: int, cid: int, nsid: int,
               data: memoryview | bytes | None) -> None:
    engine = qp.engine
    ctrl = qp.ctrl
    assert ctrl is not None
    sub = engine.core.state.subsystems.get(ctrl.nqn)
    ns = sub.namespaces.get(nsid) if sub is not None else None
    if ns is None or sub is None or not ns.visible_to(ctrl.hostnqn):
        qp.complete(cid, nvme.SC_INVALID_NS)
        return
    if sub.ana_reporting:
        listener = sub.listeners.get(qp.listen)
        state = listener.ana_states.get(ns.anagrpid or nsid) if listener else "inaccessible"
        err = _ANA_ERR.get(state or "optimized")
        if err:
            qp.complete(cid, err)
            return
    dev = engine.core.block_devices.get(ns.bdev_name)
    if dev is None:
        qp.complete(cid, nvme.SC_NS_NOT_READY)
        return
    sgl_len, lo, hi, cdw12 = RW.unpack_from(sqe)
    bs = dev.block_size
    if opcode == nvme.NVM_FLUSH:
        dev.flush()
        qp.complete(cid, nvme.SC_SUCCESS)
        return
    if opcode == nvme.NVM_DSM:
        _dsm(qp, dev, cid, lo & 0xFF, hi, data)
        return
    slba = lo | (hi << 32)
    nlb = (cdw12 & 0xFFFF) + 1
    if slba + nlb > dev.num_blocks:
        qp.complete(cid, nvme.SC_LBA_OUT_OF_RANGE)
        return
    offset, length = slba * bs, nlb * bs
    stats = engine.stats
    if opcode == nvme.NVM_READ:
        if sgl_len < length:
            qp.complete(cid, nvme.SC_DATA_TRANSFER_ERROR)
            return
        qp.send_data(cid, dev.read(offset, length), status_follows=False)
        if not engine.opts.c2h_success:
            qp.complete(cid, nvme.SC_SUCCESS)
        stats.bytes_read += length
    elif opcode == nvme.NVM_WRITE:
        if data is None or len(data) != length:
            qp.complete(cid, nvme.SC_DATA_TRANSFER_ERROR)
            return
        dev.write(offset, data)
        stats.bytes_written += length
        qp.complete(cid, nvme.SC_SUCCESS)
    elif opcode == nvme.NVM_WRITE_ZEROES:
        dev.write_zeroes(offset, length)
        qp.complete(cid, nvme.SC_SUCCESS)
    else:
        qp.complete(cid, nvme.SC_INVALID_OPCODE)
        return
    stats.completed_nvme_io += 1


def _dsm(qp: QueuePair, dev: object, cid: int, nr: int, cdw11: int,
         data: memoryview | bytes | None) -> None:
    """Dataset Management: only the deallocate attribute does anything."""
    count = nr + 1
    if data is None or len(data) < count * nvme.DSM_RANGE.size:
        qp.complete(cid, nvme.SC_DATA_TRANSFER_ERROR)
        return
    if cdw11 & nvme.DSM_ATTR_DEALLOCATE:
        ranges = [nvme.DSM_RANGE.unpack_from(data, i * nvme.DSM_RANGE.size) for i in range(count)]
        bs, nblocks = dev.block_size, dev.num_blocks   # type: ignore[attr-defined]
        if any(slba + n > nblocks for _, n, slba in ranges):
            qp.complete(cid, nvme.SC_LBA_OUT_OF_RANGE)
            return
        for _, n, slba in ranges:
            dev.discard(slba * bs, n * bs)   # type: ignore[attr-defined]
    qp.complete(cid, nvme.SC_SUCCESS)
