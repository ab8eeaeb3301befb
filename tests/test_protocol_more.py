"""Protocol suite, continued: the issue-3 commands and faults the first suite left out
(Abort, controller shutdown, data digest alone, the cntlid range, a bad H2CData offset)."""
from __future__ import annotations

import os
import time

import pytest
from nvmf_phoenix.initiator.connection import NvmeStatusError, make_sqe
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.wire import nvme, pdu

from nvmf_phoenix.model import Bdev, ListenAddress, Namespace, Subsystem
from tests.target_fixture import NQN, running_target

BS = 4096


def test_abort_is_answered_and_the_command_completes() -> None:
    with running_target() as rt, Host("127.0.0.1", rt.port, NQN) as h:
        h.create_io_queues(1)
        cid = h.io[0].submit(make_sqe(nvme.NVM_READ, 1, 0, 0, 0), data_in=BS)
        comp = h.admin.execute("Abort", make_sqe(nvme.ADM_ABORT, 0, 1 | (cid << 16)))
        assert comp.dw0 & 1 == 1                # "not aborted": it had already run
        assert h.io[0].wait(cid).status == 0


def test_controller_shutdown_reports_shst_complete() -> None:
    with running_target() as rt, Host("127.0.0.1", rt.port, NQN) as h:
        h.property_set(nvme.PROP_CC, nvme.CC_EN | (1 << 14))     # SHN = normal shutdown
        assert (h.property_get(nvme.PROP_CSTS) >> 2) & 0x3 == 0x2  # SHST = complete


def test_data_digest_alone() -> None:
    with running_target() as rt, Host("127.0.0.1", rt.port, NQN, ddgst=True) as h:
        h.create_io_queues(1)
        data = os.urandom(16 * BS)              # R2T + H2CData with data digests
        h.write(1, 40, data, BS)
        assert h.read(1, 40, 16, BS) == data


def test_controller_ids_stay_within_the_subsystems_range() -> None:
    nqn = "nqn.2016-06.io.spdk:range"
    with running_target() as rt:
        rt.call(lambda: rt.core.create_subsystem(Subsystem(
            nqn=nqn, allow_any_host=True, min_cntlid=5, max_cntlid=6)))
        rt.call(lambda: rt.core.add_bdev(Bdev(name="R0", kind="malloc", uuid="", block_size=512,
                                              num_blocks=64)))
        rt.call(lambda: rt.core.add_namespace(nqn, Namespace(nsid=1, bdev_name="R0")))
        rt.call(lambda: rt.core.add_listener(nqn, ListenAddress.make("127.0.0.1", rt.port)))
        with Host("127.0.0.1", rt.port, nqn) as a, Host("127.0.0.1", rt.port, nqn) as b:
            assert sorted([a.cntlid, b.cntlid]) == [5, 6]
            with pytest.raises(NvmeStatusError):
                Host("127.0.0.1", rt.port, nqn)     # the range is used up
        with Host("127.0.0.1", rt.port, nqn) as c:  # and freed again on disconnect
            assert c.cntlid in (5, 6)


def test_h2c_data_at_the_wrong_offset_ends_only_that_connection() -> None:
    with running_target() as rt, Host("127.0.0.1", rt.port, NQN) as h:
        h.create_io_queues(1)
        q = h.io[0]
        data = os.urandom(32 * BS)              # larger than in-capsule data: R2T path
        cid = q.submit(make_sqe(nvme.NVM_WRITE, 1, 0, 0, 31), data_out=data)
        r2t = q._next_pdu(time.monotonic() + 5)
        kind, (cccid, ttag, r2to, _) = r2t.type, pdu.parse_data_hdr(r2t)
        del r2t                                 # it views the reader's buffer
        assert kind == pdu.R2T and cccid == cid
        q.writer.h2c_data(cid, ttag, r2to + 512, data[:4096], False)
        q.sock.sendall(q.writer.take())
        term = q._next_pdu(time.monotonic() + 5)
        assert term.type == pdu.C2H_TERM_REQ
        h.keep_alive()                          # the admin queue is untouched
