"""Two targets serving one namespace as a hot-standby pair, configured by JSON-RPC the way
../shared/reference/ana-standby.md describes (and the pair supervisor will).

Both open the same backing file as an AIO bdev with the same UUID and export it in the
same subsystem with the same serial and namespace identities, with ANA reporting on and
disjoint controller ID ranges; each has its own NVMe listener and discovery listener on
loopback, and a referral to the other's discovery service.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nvmf_phoenix.rpc import RpcClient
from nvmf_phoenix.rpc import bdev as rb
from nvmf_phoenix.rpc import nvmf as rn

from nvmf_phoenix.model import DISCOVERY_NQN
from tests.target_fixture import free_port
from tests.target_process import TargetProcess

NQN = "nqn.2016-06.io.phx:pair"
SERIAL = "PHXPAIR0001"
UUID = "6e767068-7061-6972-8000-000000000001"
NGUID = "6E76706870616972800000000000000A"
EUI64 = "6e76706870616972"
BLOCK_SIZE = 4096
CNTLID_RANGES = ((1, 32767), (32768, 65519))


@dataclass
class Member:
    """One target of the pair: its process, RPC client and addresses."""

    name: str
    port: int
    disc_port: int
    cntlids: tuple[int, int]
    kind: str = "embedded"          # or "spdk": $SPDK_NVMF_TGT (tests/target_process.py)
    tp: TargetProcess | None = None
    client: RpcClient | None = field(default=None, repr=False)

    @property
    def address(self) -> dict[str, str]:
        return rn.listen_address("127.0.0.1", self.port)

    def rpc(self) -> RpcClient:
        assert self.client is not None, f"{self.name} is not running"
        return self.client

    def set_ana(self, state: str) -> None:
        rn.nvmf_subsystem_listener_set_ana_state(self.rpc(), NQN, self.address, state)

    def start(self, tmp_path: Path, image: Path, other_disc_port: int, ana_state: str,
              generation: int = 0) -> None:
        """Start the target process and configure it; the NVMe listener comes last, so
        a host reconnecting in the background finds the namespace complete."""
        self.tp = TargetProcess(str(tmp_path / f"{self.name}{generation}.sock"), kind=self.kind)
        self.client = c = RpcClient.connect(self.tp.sock)
        rb.bdev_aio_create(c, str(image), "D0", block_size=BLOCK_SIZE, uuid=UUID)
        rn.nvmf_create_transport(c, "TCP")
        rn.nvmf_create_subsystem(c, NQN, serial_number=SERIAL, allow_any_host=True,
                                 ana_reporting=True, min_cntlid=self.cntlids[0],
                                 max_cntlid=self.cntlids[1])
        rn.nvmf_subsystem_add_ns(c, NQN, "D0", nsid=1, uuid=UUID, nguid=NGUID, eui64=EUI64)
        rn.nvmf_subsystem_add_listener(c, DISCOVERY_NQN,
                                       rn.listen_address("127.0.0.1", self.disc_port))
        rn.nvmf_discovery_add_referral(c, rn.listen_address("127.0.0.1", other_disc_port))
        rn.nvmf_subsystem_add_listener(c, NQN, self.address, ana_state=ana_state)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.tp is not None:
            self.tp.kill()
            self.tp.stop()

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.tp is not None:
            self.tp.stop()


def make_pair(tmp_path: Path, blocks: int = 1024, kind: str = "embedded",
              same_cntlids: bool = False) -> tuple[Member, Member, Path]:
    """Start A (optimized) and B (non-optimized) on one backing file; returns them and
    the file. The caller stops both (``Member.stop``)."""
    image = tmp_path / "pair.img"
    with image.open("wb") as f:
        f.truncate(blocks * BLOCK_SIZE)
    ranges = (CNTLID_RANGES[0], CNTLID_RANGES[0]) if same_cntlids else CNTLID_RANGES
    a = Member("a", free_port(), free_port(), ranges[0], kind)
    b = Member("b", free_port(), free_port(), ranges[1], kind)
    try:
        a.start(tmp_path, image, b.disc_port, "optimized")
        b.start(tmp_path, image, a.disc_port, "non_optimized")
    except BaseException:
        a.stop()
        b.stop()
        raise
    return a, b, image
