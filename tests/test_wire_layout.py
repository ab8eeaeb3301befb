"""Declared layouts, the queue pair's phase table and the keeper's message kinds.

Offsets are checked against the specification tables (NVMe Base "Common Command Format",
"Completion Queue Entry", NVMe over Fabrics Connect and Property commands, NVMe/TCP PDU
headers), so a field moved by mistake fails here, not in a host.
"""
from __future__ import annotations

import json
import struct

import pytest
from nvmf_phoenix.embedded.controllers import Engine
from nvmf_phoenix.embedded.keeper_proto import Op, pack, unpack
from nvmf_phoenix.embedded.qpair import NEXT_PHASES, Phase, QueuePair
from nvmf_phoenix.initiator.connection import connect_data, connect_sqe, make_sqe
from nvmf_phoenix.wire import nvme, pdu
from nvmf_phoenix.wire.layout import Layout

from nvmf_phoenix.model import ListenAddress
from tests.target_fixture import HOSTNQN, NQN, build_core


def test_spec_offsets() -> None:
    assert [nvme.SQE.offset(n) for n in ("opc", "cid", "nsid", "mptr", "sgl_addr",
                                         "sgl_length", "sgl_id", "cdw10", "cdw15")] == \
        [0, 2, 4, 16, 24, 32, 39, 40, 60]
    assert nvme.SQE.size == 64 and nvme.CQE.size == 16
    assert [nvme.CQE.offset(n) for n in ("sqhd", "sqid", "cid", "status")] == [8, 10, 12, 14]
    assert [nvme.CONNECT_SQE.offset(n) for n in ("recfmt", "qid", "sqsize", "cattr",
                                                 "kato")] == [40, 42, 44, 46, 48]
    assert [nvme.PROPERTY_SQE.offset(n) for n in ("attrib", "ofst", "value")] == [40, 44, 48]
    assert [nvme.CONNECT_DATA.offset(n) for n in ("cntlid", "subnqn", "hostnqn")] == \
        [16, 256, 512]
    assert nvme.IDENTIFY_CONTROLLER.offset("subnqn") == 768
    assert nvme.IDENTIFY_CONTROLLER.offset("ioccsz") == 1792
    assert pdu.DATA_HDR.offset("datao") == 12 and pdu.TERM_HDR.offset("fei") == 10


def test_layout_by_name_and_by_position_agree() -> None:
    sqe = make_sqe(nvme.NVM_READ, 1, 0x1234, 0x5, 7)
    fields = nvme.SQE.get(sqe)
    assert (fields["opc"], fields["nsid"], fields["cdw10"], fields["cdw11"],
            fields["cdw12"]) == (nvme.NVM_READ, 1, 0x1234, 0x5, 7)
    assert nvme.SQE.unpack(bytes(sqe)) == tuple(fields.values())
    assert nvme.SQE_HEAD.unpack_from(sqe) == (nvme.NVM_READ, 0, 1)
    assert nvme.SQE.build(**fields) == sqe


def test_overlays_write_only_their_fields() -> None:
    sqe = connect_sqe(3, 127, 15000)
    assert nvme.FABRICS_FCTYPE.unpack_from(sqe) == (nvme.FCTYPE_CONNECT,)
    assert nvme.CONNECT_SQE.unpack_from(sqe) == (0, 3, 127, 0, 15000)
    assert sqe[0] == nvme.FABRICS and sqe[1] == nvme.PSDT_SGL


def test_layout_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        Layout(8, [("a", 0, "I"), ("b", 2, "H")])
    with pytest.raises(ValueError, match="beyond"):
        Layout(4, [("a", 0, "Q")])
    with pytest.raises(TypeError):
        nvme.CQE.build(nonsense=1)
    with pytest.raises(ValueError):
        nvme.SQE.reader("cdw11", "cdw10")          # not in offset order
    at, st = nvme.SQE.span("sgl_addr", "sgl_length", "sgl_id")
    assert (at, st.format) == (24, "<QI3xB")
    at, st = nvme.SQE.span("opc", "fuse_psdt", "cid")
    assert (at, st.format) == (0, "<BBH")
    assert isinstance(nvme.SQE, struct.Struct)


def _qpair() -> QueuePair:
    engine = Engine(build_core(4420, num_blocks=64))
    return QueuePair(engine, 1, ListenAddress.make("127.0.0.1", 4420), None)


def test_phases_move_only_as_the_table_says() -> None:
    assert set(NEXT_PHASES) == set(Phase)
    qp = _qpair()
    assert qp.phase is Phase.IC
    qp.receive(pdu.ic_req(), 1.0)
    assert qp.phase is Phase.CONNECT
    sqe = connect_sqe(0, 31, 0)
    nvme.SQE.put(sqe, sgl_length=nvme.CONNECT_DATA_SIZE, sgl_id=nvme.SGL_DATA_BLOCK_OFFSET)
    w = pdu.PduWriter()
    w.capsule_cmd(sqe, connect_data("6e767068-6f65-6e69-7800-000000000001", 0xFFFF, NQN,
                                    HOSTNQN))
    qp.receive(bytes(w.out), 1.0)
    assert qp.phase is Phase.READY and not qp.closing
    dumped = qp.dump()
    assert dumped["phase"] == "ready" and type(dumped["phase"]) is str   # plain data
    with pytest.raises(RuntimeError, match="no move from phase ready to connect"):
        qp.move(Phase.CONNECT)
    qp.detach()
    assert qp.phase is Phase.CLOSED
    qp.detach()                                      # closing twice is harmless
    other = _qpair()
    other.load(dumped)
    assert other.phase is Phase.READY


def test_keeper_messages_keep_their_bytes() -> None:
    """One encoding for every control message, the same JSON the keeper always spoke."""
    addr = ["127.0.0.1", "4420", "IPv4"]
    assert pack(Op.LISTEN, {"addr": addr, "id": 3}) == \
        json.dumps({"op": "listen", "addr": addr, "id": 3}).encode()
    assert unpack(pack(Op.TAKEOVER_DONE)) == (Op.TAKEOVER_DONE, {})
    assert unpack(b'{"op": "takeover-done"}')[0] is Op.TAKEOVER_DONE
    assert unpack(b'{"op": "no-such-kind", "x": 1}') == (None, {"x": 1})
    assert len(Op) == 11
