"""The NVMe/TCP transport's rules for a command's SGL (SQE DPTR), as SPDK enforces them.

A capsule names its data with one SGL descriptor: a transport data block (the data moves
by R2T/H2CData or C2HData later; at most ``max_io_size``, MDTS) or a data block at offset
0 whose length is exactly the in-capsule data that came with it. A command without data
has length 0. SPDK treats every other combination as a fatal transport error and sends a
C2HTermReq; so does the embedded target. Checked before the command runs, so no handler
ever sizes a buffer or a read from a length the transport did not accept.
"""
from __future__ import annotations

from nvmf_phoenix.wire import nvme, pdu

# Offsets the TermReq's FEI points at (in the capsule PDU: common header, then the SQE)
FEI_PLEN = 4
FEI_SGL_ADDRESS = pdu.CH.size + nvme.SQE.offset("sgl_addr")
FEI_SGL_ID = pdu.CH.size + nvme.SQE.offset("sgl_id")


def check_sgl(sqe: bytes, in_capsule: int, max_io_size: int, max_icd: int,
              header: bytes) -> None:
    """Raise :class:`pdu.ProtocolError` if the SGL is one the transport refuses."""
    addr, length, sgl_id = nvme.SQE_SGL.unpack_from(sqe)
    if sgl_id == nvme.SGL_TRANSPORT_DATA_BLOCK:
        if length > max_io_size:
            raise pdu.ProtocolError(f"SGL length {length} exceeds max_io_size {max_io_size}",
                                    pdu.FES_DATA_LIMIT_EXCEEDED, 0, header)
    elif sgl_id == nvme.SGL_DATA_BLOCK_OFFSET:
        if length != in_capsule:
            raise pdu.ProtocolError(f"in-capsule data of {in_capsule} bytes with an SGL of "
                                    f"{length}", pdu.FES_INVALID_HEADER_FIELD, FEI_PLEN, header)
        if addr != 0:
            raise pdu.ProtocolError(f"in-capsule data offset {addr} (must be 0)",
                                    pdu.FES_UNSUPPORTED_PARAMETER, FEI_SGL_ADDRESS, header)
        if length > max(max_icd, nvme.CONNECT_DATA_SIZE):
            raise pdu.ProtocolError(f"in-capsule data of {length} bytes exceeds "
                                    f"{max_icd}", pdu.FES_DATA_LIMIT_EXCEEDED, 0, header)
    elif length:
        raise pdu.ProtocolError(f"SGL type {sgl_id:#04x} with length {length}",
                                pdu.FES_UNSUPPORTED_PARAMETER, FEI_SGL_ID, header)
