"""Protocol suite: the project's initiator against the embedded target over real TCP."""
from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest
from nvmf_phoenix.initiator.connection import NvmeError, NvmeStatusError, QueueConn
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.wire import nvme, pdu

from nvmf_phoenix.model import DISCOVERY_NQN, Bdev, ListenAddress, Namespace
from nvmf_phoenix.model import Host as HostCfg
from tests.target_fixture import HOSTNQN, NQN, running_target
from tests.waiting import wait_for

BS = 4096


@pytest.mark.parametrize("hdgst,ddgst", [(False, False), (True, True), (True, False)])
def test_identify_and_data_with_digests(hdgst: bool, ddgst: bool) -> None:
    with running_target() as rt, Host("127.0.0.1", rt.port, NQN, hdgst=hdgst,
                                      ddgst=ddgst) as h:
        ident = h.identity
        assert (ident["sn"], ident["mn"], ident["subnqn"]) == ("PHX0001", "nvmf-phoenix test",
                                                               NQN)
        assert ident["cntlid"] == h.cntlid == 1 and ident["kas"] > 0
        assert ident["ioccsz"] * 16 >= 64 and ident["iorcsz"] >= 1
        assert h.active_namespaces() == [1]
        ns = h.identify_namespace(1)
        assert ns["nsze"] == 16384 and ns["block_size"] == BS
        assert ns["uuid"] == "6f5c8e0a-7d3b-4c2e-9a1f-0b2c3d4e5f60"
        assert ns["nguid"] == "6F5C8E0A7D3B4C2E9A1F0B2C3D4E5F60"
        h.create_io_queues(2)
        small, big = os.urandom(BS), os.urandom(32 * BS)   # big goes by R2T + H2CData
        h.write(1, 7, small, BS, qid=1)
        h.write(1, 100, big, BS, qid=2)
        assert h.read(1, 7, 1, BS, qid=2) == small
        assert h.read(1, 100, 32, BS, qid=1) == big


def test_queue_depth_many_outstanding() -> None:
    with running_target() as rt, Host("127.0.0.1", rt.port, NQN) as h:
        h.create_io_queues(1)
        q = h.io[0]
        pattern = {lba: os.urandom(BS) for lba in range(64)}
        from nvmf_phoenix.initiator.connection import make_sqe
        cids = [q.submit(make_sqe(nvme.NVM_WRITE, 1, lba, 0, 0), data_out=d)
                for lba, d in pattern.items()]
        for cid in cids:
            assert q.wait(cid).status == 0
        reads = {q.submit(make_sqe(nvme.NVM_READ, 1, lba, 0, 0), data_in=BS): lba
                 for lba in pattern}
        for cid, lba in reads.items():
            assert bytes(q.wait(cid).data or b"") == pattern[lba]
        assert rt.dp.stats()["completed_nvme_io"] >= 128


def test_flush_write_zeroes_deallocate_and_bounds() -> None:
    with running_target() as rt, Host("127.0.0.1", rt.port, NQN) as h:
        h.create_io_queues(1)
        h.write(1, 0, b"\xaa" * 4 * BS, BS)
        h.write_zeroes(1, 1, 1)
        h.deallocate(1, [(2, 1)])
        h.flush(1)
        got = h.read(1, 0, 4, BS)
        assert got == b"\xaa" * BS + bytes(2 * BS) + b"\xaa" * BS
        with pytest.raises(NvmeStatusError) as err:
            h.read(1, 16383, 2, BS)
        assert err.value.status == nvme.SC_LBA_OUT_OF_RANGE
        with pytest.raises(NvmeStatusError) as err:
            h.read(5, 0, 1, BS)
        assert err.value.status == nvme.SC_INVALID_NS


def test_logs_and_features() -> None:
    with running_target() as rt, Host("127.0.0.1", rt.port, NQN) as h:
        assert len(h.get_log_page(nvme.LOG_SMART, 512)) == 512
        assert len(h.get_log_page(nvme.LOG_ERROR, 64)) == 64
        assert h.get_log_page(nvme.LOG_FW_SLOT, 512)[0] == 1
        effects = h.get_log_page(nvme.LOG_CMD_EFFECTS, 4096)
        assert struct.unpack_from("<I", effects, 1024 + 4 * nvme.NVM_WRITE)[0] & 1
        granted = h.set_features(nvme.FEAT_NUM_QUEUES, (3 << 16) | 3)
        assert granted == (3 << 16) | 3
        h.set_features(nvme.FEAT_ASYNC_EVENT, nvme.AEC_NS_ATTR)
        assert h.get_features(nvme.FEAT_ASYNC_EVENT) == nvme.AEC_NS_ATTR
        assert h.get_features(nvme.FEAT_KATO) == h.kato_ms
        h.keep_alive()
        with pytest.raises(NvmeStatusError):
            h.get_log_page(0x42, 512)


def test_discovery_log_and_generation_counter() -> None:
    with running_target() as rt, Host("127.0.0.1", rt.port, DISCOVERY_NQN) as d:
        assert d.identity["cntrltype"] == nvme.CNTRLTYPE_DISCOVERY
        gen, entries = d.discover()
        assert [(e["subtype"], e["subnqn"]) for e in entries] == [
            (nvme.SUBTYPE_CURRENT_DISCOVERY, DISCOVERY_NQN), (nvme.SUBTYPE_NVME, NQN)]
        assert entries[1]["trsvcid"] == str(rt.port) and entries[1]["traddr"] == \
                "127.0.0.1"
        from nvmf_phoenix.model import Subsystem
        rt.call(lambda: rt.core.create_subsystem(Subsystem(nqn="nqn.2016-06.io.spdk:c2",
                                                           allow_any_host=True)))
        rt.call(lambda: rt.core.add_listener("nqn.2016-06.io.spdk:c2", rt.address))
        gen2, entries2 = d.discover()
        assert gen2 > gen and len(entries2) == 3
        # A subsystem the host may not use is not shown to it.
        rt.call(lambda: rt.core.allow_any_host("nqn.2016-06.io.spdk:c2", False))
        assert len(d.discover()[1]) == 2


def test_host_not_allowed_is_refused_and_hidden() -> None:
    allowed = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"
    with running_target(hosts=[allowed]) as rt:
        with pytest.raises(NvmeStatusError) as err:
            Host("127.0.0.1", rt.port, NQN, hostnqn=HOSTNQN)
        assert err.value.status == nvme.SC_CONNECT_INVALID_HOST
        with Host("127.0.0.1", rt.port, NQN, hostnqn=allowed) as h:
            assert h.cntlid == 1
        with Host("127.0.0.1", rt.port, DISCOVERY_NQN, hostnqn=HOSTNQN) as d:
            assert [e["subnqn"] for e in d.discover()[1]] == [DISCOVERY_NQN]
        with pytest.raises(NvmeStatusError) as err:
            Host("127.0.0.1", rt.port, "nqn.2016-06.io.spdk:nosuch", hostnqn=allowed)
        assert err.value.status == nvme.SC_CONNECT_INVALID_PARAMETERS


def test_removed_host_is_disconnected() -> None:
    with running_target(hosts=[HOSTNQN]) as rt, Host("127.0.0.1", rt.port, NQN) as h:
        rt.call(lambda: rt.core.remove_host(NQN, HOSTNQN))
        with pytest.raises(NvmeError):
            h.keep_alive()
        assert rt.dp.controllers(NQN) == []


def test_keep_alive_timeout_enforced_by_target() -> None:
    with running_target() as rt, Host("127.0.0.1", rt.port, NQN, kato_ms=300) as h:
        assert len(rt.dp.controllers(NQN)) == 1
        wait_for(lambda: rt.dp.controllers(NQN) == [], timeout=5, what="KATO expiry")
        with pytest.raises(NvmeError):
            h.keep_alive()


def test_namespace_added_raises_notice(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(1 << 20))
    with running_target() as rt, Host("127.0.0.1", rt.port, NQN) as h:
        h.set_features(nvme.FEAT_ASYNC_EVENT, nvme.AEC_NS_ATTR)
        cid = h.submit_aer()
        rt.call(lambda: rt.core.add_bdev(Bdev(name="Aio0", kind="aio", uuid="",
                                              block_size=512, num_blocks=0,
                                              filename=str(img))))
        nsid = rt.call(lambda: rt.core.add_namespace(NQN, Namespace(nsid=0, bdev_name="Aio0")))
        dw0 = h.wait_aer(cid, timeout=5)
        assert (dw0 & 7, (dw0 >> 8) & 0xFF, (dw0 >> 16) & 0xFF) == (
            nvme.AER_TYPE_NOTICE, nvme.AER_NOTICE_NS_ATTR_CHANGED, nvme.LOG_CHANGED_NS)
        changed = struct.unpack("<4I", h.get_log_page(nvme.LOG_CHANGED_NS, 16))
        assert changed[0] == nsid == 2
        assert h.active_namespaces() == [1, 2]
        h.create_io_queues(1)
        h.write(2, 3, b"\x5a" * 512, 512)
        assert h.read(2, 3, 1, 512) == b"\x5a" * 512
    assert img.read_bytes()[3 * 512:4 * 512] == b"\x5a" * 512


def test_ana_change_notice_and_path_status() -> None:
    with running_target(ana_reporting=True) as rt, Host("127.0.0.1", rt.port, NQN) as h:
        h.set_features(nvme.FEAT_ASYNC_EVENT, nvme.AEC_ANA_CHANGE)
        h.create_io_queues(1)
        h.read(1, 0, 1, BS)
        cid = h.submit_aer()
        rt.call(lambda: rt.core.set_ana_state(NQN, rt.address, "inaccessible", 1))
        dw0 = h.wait_aer(cid, timeout=5)
        assert (dw0 >> 8) & 0xFF == nvme.AER_NOTICE_ANA_CHANGE
        _, groups = nvme.parse_ana_log(h.get_log_page(nvme.LOG_ANA, 4096))
        assert groups[1] == (nvme.ANA_STATE_CODES["inaccessible"], [1])
        with pytest.raises(NvmeStatusError) as err:
            h.read(1, 0, 1, BS)
        assert err.value.status == nvme.SC_ANA_INACCESSIBLE


def _raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _read_pdu(sock: socket.socket) -> pdu.Pdu | None:
    reader = pdu.PduReader()
    while (p := reader.next()) is None:
        data = sock.recv(65536)
        if not data:
            return None
        reader.feed(data)
    return p


@pytest.mark.parametrize("junk", [
    b"\xff" * 8,                                        # unknown PDU type
    pdu.CH.pack(pdu.ICREQ, 0, 64, 0, 128) + bytes(120),  # wrong hlen
    pdu.CH.pack(pdu.CAPSULE_CMD, 0, 72, 0, 1 << 30),    # absurd plen
])
def test_malformed_pdu_ends_only_that_connection(junk: bytes) -> None:
    with running_target() as rt, Host("127.0.0.1", rt.port, NQN) as h:
        bad = _raw(rt.port)
        bad.sendall(junk)
        term = _read_pdu(bad)
        assert term is not None and term.type == pdu.C2H_TERM_REQ
        assert _read_pdu(bad) is None   # then the target closes it
        bad.close()
        h.keep_alive()                  # the other connection is untouched


def test_command_before_connect_and_digest_error() -> None:
    with running_target() as rt:
        q = QueueConn("127.0.0.1", rt.port)
        from nvmf_phoenix.initiator.connection import make_sqe
        comp = q.wait(q.submit(make_sqe(nvme.ADM_IDENTIFY, 0, 1), data_in=4096))
        assert comp.status == nvme.SC_CMD_SEQUENCE_ERROR
        q.close()
        q = QueueConn("127.0.0.1", rt.port, hdgst=True)
        q.writer.capsule_cmd(make_sqe(nvme.ADM_KEEP_ALIVE))
        raw = bytearray(q.writer.take())
        raw[-1] ^= 0xFF   # corrupt the header digest
        q.sock.sendall(raw)
        with pytest.raises(NvmeError, match="C2HTermReq fes=0x3"):
            q.wait(0, timeout=5)
        q.close()


def test_listener_on_unbindable_address_is_refused_and_not_half_applied() -> None:
    from nvmf_phoenix.rpc.errors import TargetError
    with running_target() as rt:
        bad = ListenAddress.make("192.0.2.1", 4420)   # TEST-NET: not on this machine
        with pytest.raises(TargetError):
            rt.call(lambda: rt.core.add_listener(NQN, bad))
        assert bad not in rt.core.state.subsystems[NQN].listeners
        rt.call(lambda: rt.core.add_host(NQN, HostCfg(nqn=HOSTNQN)))
