"""The pair of tests/pair_lab.py, run by the product: ``PairSupervisor`` (what
``nvmf-phoenix supervise --standby`` runs) with both members inside the lab's network
namespace. The user's configuration goes through the supervisor's public socket with
nothing pair-specific in it; the supervisor derives the standby (port + 1: 4421 and
8010, as pair_lab's PORTS), the cntlid ranges, the ANA states and the referrals. A
"failover" here only kills: promoting the standby and restarting the dead member as
the new one is the supervisor's job.
"""
from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nvmf_phoenix.recovery.pair import PairSupervisor
from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn

from nvmf_phoenix.model import DISCOVERY_NQN
from tests.netlab import netns_cmd
from tests.pair_lab import (
    BDEV,
    BDEV_UUID,
    BLOCK_SIZE,
    EUI64,
    IMAGE_BYTES,
    MODEL,
    NGUID,
    PORTS,
    SERIAL,
    SUBNQN,
    VethNamespace,
    member_command,
    pair_kind,
)


@dataclass
class Kill:
    killed: str
    at: float        # monotonic time of the SIGKILL


class SupervisedPair:
    def __init__(self, workdir: Path, kind: str | None = None) -> None:
        self.kind = kind or pair_kind()
        self.image = workdir / "pair.img"
        with open(self.image, "wb") as f:
            f.truncate(IMAGE_BYTES)
        self.net = VethNamespace()
        self.addr = self.net.addr
        cmd = netns_cmd(self.net.name, member_command(self.kind))
        self.public = str(workdir / "public.sock")
        self.sup = PairSupervisor((cmd, cmd), (str(workdir / "a.sock"),
                                               str(workdir / "b.sock")),
                                  self.public, str(workdir / "state"), max_restarts=10**6)

    @property
    def active(self) -> str:
        return self.sup.active.upper()

    @property
    def disc_port(self) -> int:
        return PORTS["A"][1]

    def start(self) -> None:
        self.sup.start()
        with RpcClient.connect(self.public, timeout=30) as c:
            rn.nvmf_create_transport(c, "TCP")
            rb.bdev_aio_create(c, str(self.image), BDEV, block_size=BLOCK_SIZE,
                               uuid=BDEV_UUID)
            rn.nvmf_create_subsystem(c, SUBNQN, serial_number=SERIAL, model_number=MODEL,
                                     allow_any_host=True)
            rn.nvmf_subsystem_add_ns(c, SUBNQN, BDEV, nsid=1, uuid=BDEV_UUID, nguid=NGUID,
                                     eui64=EUI64)
            rn.nvmf_subsystem_add_listener(c, SUBNQN,
                                           rn.listen_address(self.addr, PORTS["A"][0]))
            rn.nvmf_subsystem_add_listener(c, DISCOVERY_NQN,
                                           rn.listen_address(self.addr, PORTS["A"][1]))

    def failover(self, killed: str) -> Kill:
        """SIGKILL member ``killed`` (the active); the supervisor does the rest."""
        assert killed == self.active, f"{killed} is not the active member"
        proc = self.sup.members[killed.lower()].proc
        assert proc is not None
        at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        return Kill(killed, at)

    def close(self) -> None:
        try:
            self.sup.stop()
            self.sup.store.region.unlink()
        finally:
            self.net.close()


@contextlib.contextmanager
def supervised_pair(workdir: Path, kind: str | None = None) -> Iterator[SupervisedPair]:
    lab = SupervisedPair(workdir, kind)
    try:
        lab.start()
        yield lab
    finally:
        lab.close()
