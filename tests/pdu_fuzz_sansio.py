"""The sans-I/O side of the PDU fuzzer: a fresh target per example, driven by direct calls.

:class:`SansIoTarget` is TargetCore + Engine with a RAM bdev wrapped in
:class:`BoundsChecked` (any access outside the device or unaligned is recorded); no
sockets, no threads, no clock. :func:`run_case` is one example: a valid session of a
kind, mutated (tests/pdu_fuzz.py), fed in pieces to a new queue pair, every answer
checked by the host-side :class:`~tests.pdu_fuzz.OutputChecker`.
"""
from __future__ import annotations

import traceback
from collections.abc import Callable

from nvmf_phoenix.embedded.controllers import Engine
from nvmf_phoenix.embedded.qpair import QueuePair

from nvmf_phoenix.model import ListenAddress
from tests.pdu_fuzz import (
    BLOCKS,
    BS,
    Mutation,
    Outcome,
    OutputChecker,
    admin_session,
    chunks,
    mutate,
    session,
)
from tests.target_fixture import build_core


class BoundsChecked:
    """A block device wrapper that records any access outside the device or unaligned."""

    def __init__(self, dev: object, faults: list[str]) -> None:
        self.dev = dev
        self.block_size: int = dev.block_size      # type: ignore[attr-defined]
        self.num_blocks: int = dev.num_blocks      # type: ignore[attr-defined]
        self.faults = faults

    def _check(self, op: str, offset: int, length: int) -> None:
        size = self.block_size * self.num_blocks
        if offset < 0 or length < 0 or offset + length > size or offset % self.block_size \
                or length % self.block_size:
            self.faults.append(f"{op} at {offset} length {length} on a {size}-byte device")

    def read(self, offset: int, length: int) -> bytes | memoryview:
        self._check("read", offset, length)
        return self.dev.read(offset, length)       # type: ignore[attr-defined]

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self._check("write", offset, len(data))
        self.dev.write(offset, data)               # type: ignore[attr-defined]

    def flush(self) -> None:
        self.dev.flush()                           # type: ignore[attr-defined]

    def discard(self, offset: int, length: int) -> None:
        self._check("discard", offset, length)
        self.dev.discard(offset, length)           # type: ignore[attr-defined]

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check("write_zeroes", offset, length)
        self.dev.write_zeroes(offset, length)      # type: ignore[attr-defined]

    def close(self) -> None:
        self.dev.close()                           # type: ignore[attr-defined]



class SansIoTarget:
    """A fresh embedded target driven by direct calls: no sockets, no threads, no clock."""

    def __init__(self, transport: dict | None = None) -> None:
        self.core = build_core(4420, num_blocks=BLOCKS, block_size=BS, transport=transport)
        self.faults: list[str] = []
        for name, dev in list(self.core.block_devices.items()):
            self.core.block_devices[name] = BoundsChecked(dev, self.faults)
        self.engine = Engine(self.core)
        self.listen = ListenAddress.make("127.0.0.1", 4420)
        self.now = 1000.0
        self.conns = 0

    def open(self) -> QueuePair:
        self.conns += 1
        qp = QueuePair(self.engine, self.conns, self.listen, None)
        self.engine.qpairs[qp.conn_id] = qp
        return qp

    def feed(self, qp: QueuePair, data: bytes) -> bytes:
        self.now += 0.001
        qp.receive(data, self.now)
        self.engine.tick(self.now)
        return bytes(qp.writer.take())

    def close(self, qp: QueuePair) -> None:
        self.engine.qpairs.pop(qp.conn_id, None)
        qp.close("host closed the connection")
        qp.detach()

    def shutdown(self) -> None:
        for dev in self.core.block_devices.values():
            dev.close()
        self.core.block_devices.clear()

    def prepare(self, kind: str, hdgst: bool, ddgst: bool) -> QueuePair | None:
        """For an I/O session: an admin queue that enabled controller 1 and asked for
        queues, left open (the I/O queue joins it)."""
        if kind != "io":
            return None
        admin = self.open()
        self.feed(admin, admin_session(hdgst, ddgst).encode())
        return admin


def run_sansio(kind: str, data_chunks: list[bytes], hdgst: bool = False,
               transport: dict | None = None) -> Outcome:
    """Feed ``data_chunks`` to a new queue pair of a fresh target and check everything."""
    out = Outcome()
    t = SansIoTarget(transport)
    try:
        admin = t.prepare(kind, hdgst, hdgst)
        qp = t.open()
        check = OutputChecker(max_data=max(t.engine.opts.max_io_size, 4096))
        for chunk in data_chunks:
            if qp.closing:
                break
            check.feed(t.feed(qp, chunk))
        if qp.closing and not check.term and qp.phase == "ic" and check.pdus:
            check.problems.append("closed during ICReq without a C2HTermReq")
        if check.term and not qp.closing:
            out.problems.append("C2HTermReq sent but the connection stays open")
        out.closed = bool(qp.closing)
        out.pdus_out = check.pdus
        t.close(qp)
        if admin is not None:
            t.close(admin)
        out.problems += check.problems + t.faults
        errors = getattr(t.engine.stats, "internal_errors", 0)
        if errors:
            out.crash = f"{errors} internal errors contained by the queue pair"
    except Exception:
        out.crash = traceback.format_exc()
    finally:
        t.shutdown()
    return out


def run_case(kind: str, hdgst: bool, mutations: list[Mutation], cuts: list[int],
             transport: dict | None = None) -> Outcome:
    """One fuzz example: a valid session of ``kind``, mutated, fed in pieces."""
    data = mutate(session(kind, hdgst, hdgst), mutations)
    return run_sansio(kind, chunks(data, cuts), hdgst, transport)


def crash_signature(text: str) -> str:
    """The last frame and the exception line: what makes two crashes the same bug."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    where = next((ln.strip() for ln in reversed(lines) if ln.strip().startswith("File ")), "")
    return f"{where} | {lines[-1] if lines else text}"



Runner = Callable[[str, bool, list[Mutation], list[int]], Outcome]
