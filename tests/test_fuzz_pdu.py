"""Malformed PDUs: the protocol core fuzzed directly, and a live target over TCP.

Level 1 drives QueuePair + Engine without sockets (tests/pdu_fuzz.py): thousands of
mutated sessions and arbitrary byte streams, each on a fresh target. Every one must end
in well-formed answers or a clean close (a C2HTermReq at most, last), with no exception
escaping and no block-device access outside the namespace. Level 2 sends mutated sessions
to a live target process while a good host keeps doing verified I/O on another subsystem.
Bounded for CI; benchmarks/fuzz_pdu.py runs the same checks for as long as you like.
"""
from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nvmf_phoenix.embedded.qpair import QueuePair
from nvmf_phoenix.initiator.connection import NvmeError
from nvmf_phoenix.initiator.host import Host
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import nvmf as rn
from nvmf_phoenix.wire import nvme, pdu

from tests.pdu_fuzz import (
    BS,
    FRAME_OPS,
    INTERESTING,
    KINDS,
    STREAM_OPS,
    Mutation,
    OutputChecker,
    PduBuilder,
    session,
)
from tests.pdu_fuzz_live import GoodHost, LiveFuzzer, configure
from tests.pdu_fuzz_sansio import SansIoTarget, run_case, run_sansio
from tests.target_fixture import NQN, free_port, running_target
from tests.target_process import target_process

FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)

mutations = st.lists(st.builds(
    Mutation,
    op=st.sampled_from(("field",) * 5 + FRAME_OPS + STREAM_OPS),
    index=st.integers(0, 1 << 16), which=st.integers(0, 255),
    value=st.one_of(st.integers(0, len(INTERESTING) - 1), st.integers(0, (1 << 64) - 1)),
    blob=st.one_of(st.just(b""), st.binary(max_size=160))), min_size=1, max_size=5)
cuts = st.lists(st.integers(0, 1 << 16), max_size=8)


def _answers(kind: str, digests: bool) -> OutputChecker:
    t = SansIoTarget()
    t.prepare(kind, digests, digests)
    qp = t.open()
    check = OutputChecker(max_data=t.engine.opts.max_io_size)
    check.feed(t.feed(qp, session(kind, digests, digests).encode()))
    assert qp.closing is None and t.faults == []
    t.shutdown()
    return check


@pytest.mark.parametrize("digests", [False, True])
@pytest.mark.parametrize("kind,answers", [("admin", 17), ("io", 12), ("discovery", 6),
                                          ("raw", 2)])
def test_valid_sessions_are_answered_in_full(kind: str, answers: int, digests: bool) -> None:
    """The fuzzer's starting points work: every command answered, nothing refused."""
    check = _answers(kind, digests)
    assert check.problems == [] and not check.term
    assert check.pdus == answers


@pytest.mark.slow
@settings(FUZZ, max_examples=3000)
@given(st.sampled_from(KINDS), st.booleans(), mutations, cuts)
def test_mutated_sessions_end_cleanly(kind: str, digests: bool, muts: list[Mutation],
                                      cut: list[int]) -> None:
    out = run_case(kind, digests, muts, cut)
    assert out.crash is None, out.crash
    assert out.problems == []


@settings(FUZZ, max_examples=1000)
@given(st.integers(0, 2), st.binary(min_size=1, max_size=600), cuts)
def test_arbitrary_bytes_end_cleanly(prefix: int, junk: bytes, cut: list[int]) -> None:
    """Random bytes from the start, after an ICReq, or after ICReq + admin Connect."""
    valid = b"".join(f.encode(False, False) for f in session("raw").frames[:prefix])
    out = run_sansio("raw", [valid] + [junk[i:j] for i, j in zip([0, *cut], [*cut, None],
                                                                  strict=False) if junk[i:j]])
    assert out.crash is None, out.crash
    assert out.problems == []


# -- bugs the fuzzer found (regressions) ----------------------------------------------------
def _io_target() -> tuple[SansIoTarget, QueuePair, PduBuilder]:
    t = SansIoTarget()
    t.prepare("io", False, False)
    qp = t.open()
    t.feed(qp, b"".join(f.encode(False, False) for f in session("io").frames[:2]))
    b = PduBuilder(False, False)
    b.raw = bytearray()
    return t, qp, b


def _pdus(raw: bytes) -> list[pdu.Pdu]:
    r = pdu.PduReader(max_plen=1 << 26)
    r.feed(raw)
    out = []
    while (p := r.next()) is not None:
        out.append(p)
    return out


def test_log_page_longer_than_the_buffer_is_refused() -> None:
    """NUMD of 2^32 dwords once made the target build a 16 GiB page."""
    t = SansIoTarget()
    qp = t.open()
    t.feed(qp, b"".join(f.encode(False, False) for f in session("raw").frames))
    b = PduBuilder(False, False)
    b.raw = bytearray()
    b.admin(nvme.ADM_GET_LOG_PAGE, 0, nvme.LOG_SMART | (0xFFFF << 16), 0xFFFF, data_in=512)
    b.admin(nvme.ADM_GET_LOG_PAGE, 0, nvme.LOG_SMART | (127 << 16), data_in=512)
    resp, data = _pdus(t.feed(qp, bytes(b.raw)))
    assert resp.type == pdu.CAPSULE_RESP
    assert nvme.status_code(nvme.CQE.unpack_from(resp.header, 8)[5]) == nvme.SC_INVALID_FIELD
    assert data.type == pdu.C2H_DATA and len(data.data) == 512   # the sane one still works


@pytest.mark.parametrize("sgl,length,fes", [
    (nvme.SGL_TRANSPORT_DATA_BLOCK, 769 * BS, pdu.FES_DATA_LIMIT_EXCEEDED),   # past MDTS
    (nvme.SGL_DATA_BLOCK_OFFSET, 769 * BS, pdu.FES_INVALID_HEADER_FIELD),     # no data came
    (0x00, 769 * BS, pdu.FES_UNSUPPORTED_PARAMETER),                          # not TCP's
])
def test_read_with_an_sgl_the_transport_refuses_ends_the_connection(sgl: int, length: int,
                                                                     fes: int) -> None:
    """A read of 769 blocks once came back as one 393,728-byte C2HData, past MDTS."""
    t, qp, b = _io_target()
    b.cmd(nvme.SQE.pack(nvme.NVM_READ, 0, 0, 1, 0, 0, 0, 0, length, sgl, 0, 0, 768, 0, 0, 0))
    (term,) = _pdus(t.feed(qp, bytes(b.raw)))
    assert term.type == pdu.C2H_TERM_REQ and pdu.parse_term(term)[0] == fes
    assert qp.closing


def test_writes_beyond_the_queue_depth_close_the_queue() -> None:
    """5000 R2T writes without data once held 628 MiB (128 KiB reserved for each)."""
    t, qp, b = _io_target()
    for _ in range(40):
        b.io(nvme.NVM_WRITE, 1, 0, 256, r2t=256 * BS)
    answers = _pdus(t.feed(qp, bytes(b.raw)))
    assert qp.closing and "queue depth" in qp.closing
    assert len(answers) == 32 and {p.type for p in answers} == {pdu.R2T}   # sqsize 31
    assert [len(w.buf) for w in qp.pending.values()] == [0] * 32   # nothing reserved


def test_an_internal_error_costs_one_connection_only() -> None:
    """A bug in a command handler (injected here) closes that connection; the loop, and
    every other host, carry on."""
    with running_target() as rt, Host("127.0.0.1", rt.port, NQN) as good:
        good.create_io_queues(1)
        victim = Host("127.0.0.1", rt.port, NQN)

        def broken(*args: object) -> object:
            raise RuntimeError("injected bug")

        rt.dp.engine.admin.identify = broken
        with pytest.raises(NvmeError, match="closed"):
            victim.identify(nvme.CNS_CONTROLLER)
        victim.close()
        good.write(1, 5, b"\x42" * 4096, 4096)
        assert good.read(1, 5, 1, 4096) == b"\x42" * 4096
        assert rt.dp.engine.stats.internal_errors == 1


# -- a live target -------------------------------------------------------------------------
@pytest.mark.slow
def test_live_target_fuzzed_while_a_good_host_does_verified_io(tmp_path: Path) -> None:
    port = free_port()
    with target_process(tmp_path) as tp, RpcClient.connect(tp.sock) as rpc:
        configure(rpc, port)
        good = GoodHost("127.0.0.1", port).start()
        fuzzer = LiveFuzzer("127.0.0.1", port)
        found: list[str] = []

        @settings(FUZZ, max_examples=1000)
        @given(st.sampled_from(KINDS), st.booleans(), mutations, cuts)
        def fuzz(kind: str, digests: bool, muts: list[Mutation], cut: list[int]) -> None:
            found.extend(fuzzer.run(kind, digests, muts, cut).problems)

        try:
            fuzz()
            junk = socket.create_connection(("127.0.0.1", port))   # raw garbage, too
            junk.sendall(bytes(range(256)) * 64)
            junk.close()
        finally:
            fuzzer.close()
            good.stop()
        assert found == []
        assert good.error is None and good.mismatches == 0 and good.ops > 0
        assert tp.proc.poll() is None   # still running, still serving:
        with Host("127.0.0.1", port, NQN) as h:
            h.create_io_queues(1)
            h.write(1, 3, b"\x17" * 512, 512)
            assert h.read(1, 3, 1, 512) == b"\x17" * 512
        assert rn.nvmf_get_subsystems(rpc, NQN)[0]["nqn"] == NQN
        assert fuzzer.runs >= 500


@pytest.mark.slow
def test_live_fuzz_across_kills_with_the_keeper(tmp_path: Path,
                                               request: pytest.FixtureRequest) -> None:
    """The crash-transparent target fuzzed while its serving worker is SIGKILLed again
    and again: fuzzed connections handed to a successor mid-PDU still end in well-formed
    answers or a clean close, the good host sees no disconnect and no mismatch, and the
    target keeps serving."""
    import random
    import threading

    from tests.transparent_target import transparent_target

    examples = int(request.config.getoption("--keeper-fuzz-examples"))
    max_kills = int(request.config.getoption("--keeper-fuzz-kills"))
    port = free_port()
    with transparent_target(tmp_path) as t:
        with t.rpc() as rpc:
            configure(rpc, port)
        seen = t.wait_standby()["takeovers"]
        good = GoodHost("127.0.0.1", port).start()
        fuzzer = LiveFuzzer("127.0.0.1", port)
        found: list[str] = []
        done, kills, rng = threading.Event(), [0], random.Random(5)

        def killer() -> None:
            nonlocal seen
            while not done.wait(rng.uniform(0.05, 0.3)) and kills[0] < max_kills:
                t.kill_active()
                kills[0] += 1
                seen = t.wait_standby(seen + 1)["takeovers"]

        @settings(FUZZ, max_examples=examples)
        @given(st.sampled_from(KINDS), st.booleans(), mutations, cuts)
        def fuzz(kind: str, digests: bool, muts: list[Mutation], cut: list[int]) -> None:
            found.extend(fuzzer.run(kind, digests, muts, cut).problems)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            fuzz()
            # Keep fuzzing until the killer is through: how fast the examples run must
            # not decide how many kills they see (bounded by the killer's own waits).
            while thread.is_alive():
                fuzz()
        finally:
            done.set()
            thread.join(60)
            fuzzer.close()
            good.stop()
        print(f"keeper fuzz: {fuzzer.runs} sessions, {kills[0]} kills, good host "
              f"{good.ops} verified ops")
        assert found == []
        assert kills[0] == max_kills
        assert good.error is None and good.mismatches == 0 and good.ops > 0
        with Host("127.0.0.1", port, NQN) as h:
            h.create_io_queues(1)
            h.write(1, 3, b"\x17" * 512, 512)
            assert h.read(1, 3, 1, 512) == b"\x17" * 512
