"""Resources: idle floods, hosts that never send or never read, and the good host beside
them. Memory is read from /proc; bounds here are generous sanity limits that catch a
leak (benchmarks/bench_abuse.py measures the real figures for RELIABILITY.md).
The RPC server's slow clients are in tests/test_rpc_hostile.py.
"""
from __future__ import annotations

import resource
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from nvmf_phoenix.initiator.connection import NvmeError
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import nvmf as rn
from nvmf_phoenix.wire import nvme, pdu

from tests.pdu_fuzz import PduBuilder, session
from tests.pdu_fuzz_live import GoodHost, configure
from tests.target_fixture import NQN, free_port, running_target
from tests.target_process import target_process
from tests.waiting import wait_for


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@contextmanager
def descriptors(n: int) -> Iterator[None]:
    """Raise this process's descriptor limit for a flood of n connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n + 256))
    if want < n + 64:
        pytest.skip(f"descriptor limit {hard} is too low for {n} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def closed(s: socket.socket) -> bool:
    """True once the peer has closed ``s`` (bounded: the caller waits with wait_for)."""
    s.settimeout(0.01)
    try:
        return s.recv(1 << 16) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_two_thousand_idle_connections_cost_little_and_starve_nobody(tmp_path: Path) -> None:
    n = 2000
    with descriptors(n), target_process(tmp_path) as tp:
        port = free_port()
        with RpcClient.connect(tp.sock) as c:
            configure(c, port, fuzz_blocks=1024)
            good = GoodHost("127.0.0.1", port).start()
            wait_for(lambda: good.ops > 20, timeout=10, what="good host started")
            before = rss_mib(tp.proc.pid)
            flood = []
            for i in range(n):   # bare TCP, an ICReq only, or half a PDU
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall([b"", pdu.ic_req(), pdu.ic_req()[:70]][i % 3])
                flood.append(s)
            wait_for(lambda: rn.nvmf_get_stats(c)["poll_groups"][0][
                "current_unassociated_qpairs"] >= n, timeout=30, what="all accepted")
            grown = rss_mib(tp.proc.pid) - before
            ops = good.ops
            wait_for(lambda: good.ops > ops + 50, timeout=10, what="good host keeps going")
            good.stop()
            for s in flood:
                s.close()
        assert good.error is None and good.mismatches == 0
        assert grown < 64, f"{n} idle connections grew the target by {grown:.1f} MiB"


def test_connections_that_never_connect_are_closed_connected_ones_kept() -> None:
    with running_target() as rt:
        rt.dp.engine.connect_timeout = 0.3
        idle = [socket.create_connection(("127.0.0.1", rt.port)) for _ in range(30)]
        for s in idle[::2]:
            s.sendall(pdu.ic_req())   # past ICReq, never a Connect
        with Host("127.0.0.1", rt.port, NQN) as h:   # connected, then silent
            h.create_io_queues(1)
            wait_for(lambda: all(closed(s) for s in idle), timeout=10,
                     what="idle connections closed")
            h.write(1, 0, b"\x44" * 4096, 4096)    # the connected host never noticed
            assert h.read(1, 0, 1, 4096) == b"\x44" * 4096
        for s in idle:
            s.close()


def test_over_the_budget_the_oldest_unconnected_make_room() -> None:
    with running_target() as rt:
        rt.dp.engine.max_connections = 20
        idle = [socket.create_connection(("127.0.0.1", rt.port)) for _ in range(40)]
        wait_for(lambda: sum(closed(s) for s in idle) >= 20, timeout=10,
                 what="excess connections closed")
        assert all(closed(s) for s in idle[:20]) and not any(closed(s) for s in idle[-5:])
        with Host("127.0.0.1", rt.port, NQN) as h:   # a real host still gets in
            h.create_io_queues(1)
            assert h.read(1, 0, 1, 4096) is not None
        for s in idle:
            s.close()


def _deaf_io_queue(port: int, cntlid: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"".join(f.encode(False, False) for f in
                       session("io", cntlid=cntlid).frames[:2]))
    return s


def test_a_host_that_never_reads_is_cut_off_and_its_buffers_freed() -> None:
    """Reads of 64 KiB sent without ever reading the data: once 30,000 of them held
    hundreds of MiB in the target; now a queue ignoring its depth is dropped, and one
    that paces itself is simply no longer read once 4 MiB wait for it."""
    with running_target(num_blocks=1 << 15) as rt, Host("127.0.0.1", rt.port, NQN) as good:
        good.set_features(nvme.FEAT_NUM_QUEUES, 1 | (1 << 16))
        good.create_io_queues(1)
        b = PduBuilder(False, False)
        b.raw = bytearray()
        for _ in range(30):
            b.io(nvme.NVM_READ, 1, 0, 16, data_in=16 * 4096)
        deaf = _deaf_io_queue(rt.port, good.cntlid)
        deaf.settimeout(5)
        with pytest.raises(OSError):   # dropped (reset), or not read any more (timeout)
            for _ in range(3000):
                deaf.sendall(bytes(b.raw))
        buffered = rt.call(lambda: sum(len(c.out) for c in rt.dp.conns.values()))
        assert buffered <= (4 << 20) + 128 * (128 << 10)
        good.write(1, 9, b"\x55" * 4096, 4096)
        assert good.read(1, 9, 1, 4096) == b"\x55" * 4096
        wait_for(lambda: rt.call(lambda: sum(len(c.out) for c in rt.dp.conns.values()))
                 < (1 << 20), timeout=10, what="the deaf queue's buffer freed")
        deaf.close()


def test_a_host_that_opens_queues_and_goes_silent_loses_them_at_keep_alive() -> None:
    with running_target() as rt:
        silent = Host("127.0.0.1", rt.port, NQN, kato_ms=500)
        silent.create_io_queues(2)
        queues = [silent.admin.sock] + [q.sock for q in silent.io]
        with Host("127.0.0.1", rt.port, NQN) as good:
            wait_for(lambda: all(closed(s) for s in queues), timeout=10,
                     what="every queue of the silent controller closed")
            good.create_io_queues(1)
            good.write(1, 1, b"\x66" * 4096, 4096)
            assert good.read(1, 1, 1, 4096) == b"\x66" * 4096
        with pytest.raises(NvmeError):
            silent.keep_alive()
        silent.close()
